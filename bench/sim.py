"""Benchmark of the functional simulator (``afmc run``) against onnxruntime, measured in the same run.

For every sample model (``samples/*.onnx``) and generated models (a transformer encoder and a ResNet-like
CNN, built with ``bench/import.py``'s generators), on one batch of 64 inputs:

- onnxruntime: ``InferenceSession.run`` (CPU, default threads) — median of ``--repeat`` runs;
- afmc ideal: ``AnalogSimulator(..., SimOptions(ideal=True)).run`` — exact arrays, no converters;
- afmc full: every non-ideality on (DAC/ADC, output noise, PCM programming noise, drift to 1 h, read
  noise, IR drop) — the per-batch hot path; programming and the 1 h read happen once per instance and are
  reported separately (``setup``);

and the ratios afmc / onnxruntime. Targets (brief, issue 5): ≤ 2× ideal and ≤ 3× full where
onnxruntime needs over 10 ms per batch. For the small samples, where per-op overhead dominates, the
``where`` columns split the full-mode time into the analog layer reads, the digital ops and the
interpreter's per-op overhead.

Models are compiled up to ``tile`` (``--pipeline``): placement and scheduling do not change what the
functional simulator computes. Run: ``python bench/sim.py [--target pcm] [--repeat 5]``. Never run as a test.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from afmc.driver import compile_module, load_module
from afmc.sim.simulator import AnalogSimulator, SimOptions
from afmc.targets import load_target

ROOT = Path(__file__).resolve().parent.parent
BATCH = 64
PIPELINE = "canonicalize,fold-constants,fold-batchnorm,canonicalize,partition,tile"


def _generators():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_import", ROOT / "bench" / "import.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def median_time(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class Profiled(AnalogSimulator):
    """Accumulates the time spent in each kind of op."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.spent: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def run_op(self, op, args):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        out = super().run_op(op, args)
        kind = ("analog reads" if op.name == "xbar.mvm" else "xbar digital" if op.name.startswith("xbar.")
                else "constants" if op.name == "nn.constant" else "nn digital")
        self.spent[kind] += time.perf_counter() - start
        self.calls[kind] += 1
        return out


def ort_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def bench_model(name: str, path: Path, inputs: dict[str, np.ndarray], target_name: str, pipeline: str,
                repeat: int) -> dict[str, float]:
    target = load_target(target_name)
    module = load_module(path, {k: v.shape for k, v in inputs.items()})
    compile_module(module, target, pipeline)
    session = ort_session(path)
    names = [o.name for o in session.get_outputs()]
    t_ort = median_time(lambda: session.run(names, inputs), repeat)
    ideal = AnalogSimulator(module, target, SimOptions(ideal=True))
    t_ideal = median_time(lambda: ideal.run(inputs), repeat)
    start = time.perf_counter()
    full = Profiled(module, target, SimOptions(t_inference=3600.0))
    setup = time.perf_counter() - start
    t_full = median_time(lambda: full.run(inputs), repeat)
    runs = repeat + 1
    spent = {k: v / runs for k, v in full.spent.items()}
    calls = sum(full.calls.values()) // runs
    overhead = max(t_full - sum(spent.values()), 0.0)
    return {"ort": t_ort, "ideal": t_ideal, "full": t_full, "setup": setup, "reads": spent.get("analog reads", 0.0),
            "nn": spent.get("nn digital", 0.0), "xbar": spent.get("xbar digital", 0.0) + spent.get("constants", 0.0),
            "overhead": overhead, "ops": calls, "arrays": sum(len(layer.reads) for layer in full.layers)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="pcm")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--pipeline", default=PIPELINE)
    parser.add_argument("--skip-generated", action="store_true")
    args = parser.parse_args()
    gen = _generators()
    rng = np.random.default_rng(0)
    models: list[tuple[str, Path, dict[str, np.ndarray]]] = []
    for sample in ("mlp_digits", "cnn_digits", "transformer_digits"):
        with np.load(ROOT / "samples" / f"{sample}_test.npz") as data:
            models.append((sample, ROOT / "samples" / f"{sample}.onnx", {"input": data["input"][:BATCH]}))
    with tempfile.TemporaryDirectory(prefix="afmc-bench-sim-") as tmp:
        if not args.skip_generated:
            generated = {
                "gen_transformer_d256_l4": (gen.transformer_model(256, 1024, 8, 4, 64), (BATCH, 64, 256)),
                "gen_cnn_64x4_16px": (gen.cnn_model(64, 4, 16), (BATCH, 3, 16, 16)),
            }
            for name, (model, shape) in generated.items():
                path = Path(tmp) / f"{name}.onnx"
                onnx.save(model, str(path))
                models.append((name, path, {"input": rng.standard_normal(shape).astype(np.float32)}))
        print(f"afmc run vs onnxruntime, batch {BATCH}, target {args.target}, median of {args.repeat} "
              f"(onnxruntime {ort.__version__}, numpy {np.__version__})")
        header = (f"{'model':26} {'arrays':>6} {'ops':>5} {'ort ms':>8} {'ideal ms':>9} {'full ms':>9} "
                  f"{'ideal/ort':>9} {'full/ort':>9} {'setup ms':>9} | where (full): reads nn xbar overhead ms")
        print(header)
        for name, path, inputs in models:
            r = bench_model(name, path, inputs, args.target, args.pipeline, args.repeat)
            print(f"{name:26} {r['arrays']:6d} {r['ops']:5d} {r['ort'] * 1e3:8.2f} {r['ideal'] * 1e3:9.2f} "
                  f"{r['full'] * 1e3:9.2f} {r['ideal'] / r['ort']:9.2f} {r['full'] / r['ort']:9.2f} "
                  f"{r['setup'] * 1e3:9.1f} | {r['reads'] * 1e3:.2f} {r['nn'] * 1e3:.2f} {r['xbar'] * 1e3:.2f} "
                  f"{r['overhead'] * 1e3:.2f}")
            sys.stdout.flush()
        print("targets where onnxruntime > 10 ms: ideal/ort <= 2, full/ort <= 3. 'setup' = programming every "
              "device and reading it at 1 h (once per Monte-Carlo instance and time, not per batch).")


if __name__ == "__main__":
    main()
