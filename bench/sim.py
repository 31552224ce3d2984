"""Benchmark of the functional simulator (``afmc run``) against onnxruntime, measured in the same run.

For every sample model (``samples/*.onnx``) and generated models (a transformer encoder and a ResNet-like
CNN, built with ``bench/import.py``'s generators), on one batch of 64 inputs:

- onnxruntime: ``InferenceSession.run`` (CPU, default threads); every timing is the fastest of
  ``--repeat`` runs, the four contenders run in turn so that outside load hits them alike;
- afmc ideal: ``AnalogSimulator(..., SimOptions(ideal=True)).run`` — exact arrays, no converters;
- afmc full: every non-ideality on (DAC/ADC, output noise, PCM programming noise, drift to 1 h, read
  noise, IR drop) — the per-batch hot path; programming and the 1 h read happen once per instance and are
  reported separately (``setup``); and the same without IR drop (``no-IR``);

and the ratios afmc / onnxruntime. Targets (brief, issue 5): ≤ 2× ideal and ≤ 3× full where
onnxruntime needs over 10 ms per batch. For the small samples, where per-op overhead dominates, the
``where`` columns split the full-mode time into the analog layer reads, the digital ops and the
interpreter's per-op overhead.

Models are compiled up to ``tile`` (``--pipeline``): placement and scheduling do not change what the
functional simulator computes. Run: ``python bench/sim.py [--target pcm] [--repeat 5] [--threads N]``
(``--threads`` pins both onnxruntime and numpy's BLAS, which makes ratios stable on a shared machine).
Never run as a test.
"""

from __future__ import annotations

import os
import sys


def _threads_from_argv() -> int | None:
    """``--threads N`` must take effect before numpy loads its BLAS."""
    for i, arg in enumerate(sys.argv):
        if arg == "--threads" and i + 1 < len(sys.argv):
            return int(sys.argv[i + 1])
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
    return None


THREADS = _threads_from_argv()
if THREADS is not None:
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(THREADS)

import argparse
import importlib.util
import math
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from afmc.targets import load_target

from afmc.driver import compile_module, load_module
from afmc.sim.simulator import AnalogSimulator, SimOptions

ROOT = Path(__file__).resolve().parent.parent
BATCH = 64
PIPELINE = "canonicalize,fold-constants,fold-batchnorm,canonicalize,partition,tile"


def _generators():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_import", ROOT / "bench" / "import.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: The clock of every measurement: wall time, or with ``--clock cpu`` (and ``--threads 1``) the process's CPU
#: time, which other processes on a shared machine disturb much less.
CLOCK: Callable[[], float] = time.perf_counter


def interleaved_min(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """The fastest of ``repeat`` runs of each function, run in turn (so that load from other processes
    hits all of them alike; the minimum is the least disturbed run)."""
    for fn in fns.values():
        fn()  # warm up
    best = {name: math.inf for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = CLOCK()
            fn()
            best[name] = min(best[name], CLOCK() - start)
    return best


class Profiled(AnalogSimulator):
    """Accumulates the time spent in each kind of op."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.spent: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.erf = 0.0

    def run_op(self, op, args):  # type: ignore[no-untyped-def]
        start = CLOCK()
        out = super().run_op(op, args)
        kind = ("analog reads" if op.name == "xbar.mvm" else "xbar digital" if op.name.startswith("xbar.")
                else "constants" if op.name == "nn.constant" else "nn digital")
        spent = CLOCK() - start
        self.spent[kind] += spent
        self.calls[kind] += 1
        if op.name == "nn.erf":
            self.erf += spent
        return out


def ort_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if THREADS is not None:
        options.intra_op_num_threads = THREADS
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def bench_model(name: str, path: Path, inputs: dict[str, np.ndarray], target_name: str, pipeline: str,
                repeat: int) -> dict[str, float]:
    target = load_target(target_name)
    module = load_module(path, {k: v.shape for k, v in inputs.items()})
    compile_module(module, target, pipeline)
    session = ort_session(path)
    names = [o.name for o in session.get_outputs()]
    ideal = Profiled(module, target, SimOptions(ideal=True))
    start = time.perf_counter()
    full = Profiled(module, target, SimOptions(t_inference=3600.0))
    setup = time.perf_counter() - start
    no_ir = AnalogSimulator(module, target, SimOptions(t_inference=3600.0, ir_drop=0.0))
    best = interleaved_min({
        "ort": lambda: session.run(names, inputs), "ideal": lambda: ideal.run(inputs),
        "full": lambda: full.run(inputs), "no_ir": lambda: no_ir.run(inputs),
    }, repeat)
    ideal.spent.clear()
    ideal.run(inputs)
    ideal_reads = ideal.spent.get("analog reads", 0.0)
    full.spent.clear()
    full.calls.clear()
    full.erf = 0.0
    start = CLOCK()
    full.run(inputs)  # one profiled run: where the time goes
    total = CLOCK() - start
    spent, calls = dict(full.spent), sum(full.calls.values())
    return {**best, "setup": setup, "ideal_reads": ideal_reads, "reads": spent.get("analog reads", 0.0),
            "nn": spent.get("nn digital", 0.0),
            "erf": full.erf, "xbar": spent.get("xbar digital", 0.0) + spent.get("constants", 0.0),
            "overhead": max(total - sum(spent.values()), 0.0), "ops": calls,
            "arrays": sum(len(layer.reads) for layer in full.layers)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="pcm")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--pipeline", default=PIPELINE)
    parser.add_argument("--skip-generated", action="store_true")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for both onnxruntime and numpy's BLAS (default: each library's own)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall time, or process CPU time (needs --threads 1)")
    args = parser.parse_args()
    global CLOCK
    if args.clock == "cpu":
        if args.threads != 1:
            parser.error("--clock cpu needs --threads 1 (CPU time adds up the threads)")
        CLOCK = time.process_time
    gen = _generators()
    rng = np.random.default_rng(0)
    models: list[tuple[str, Path, dict[str, np.ndarray]]] = []
    for sample in ("mlp_digits", "cnn_digits", "transformer_digits"):
        with np.load(ROOT / "samples" / f"{sample}_test.npz", allow_pickle=False) as data:
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
        print(f"afmc run vs onnxruntime, batch {BATCH}, target {args.target}, fastest of {args.repeat} interleaved "
              f"runs (onnxruntime {ort.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
              f"threads {THREADS or 'default'}, {args.clock} clock)")
        print(f"{'model':24} {'arrays':>6} {'ops':>4} {'ort ms':>8} {'ideal ms':>9} {'full ms':>9} {'no-IR ms':>9} "
              f"{'ideal/ort':>9} {'full/ort':>8} {'noIR/ort':>8} {'setup ms':>9} | full run: reads (ideal reads), "
              f"nn (erf), xbar digital, interpreter overhead, ms/op")
        for name, path, inputs in models:
            r = bench_model(name, path, inputs, args.target, args.pipeline, args.repeat)
            ms = {k: v * 1e3 for k, v in r.items() if isinstance(v, float)}
            print(f"{name:24} {r['arrays']:6d} {r['ops']:4d} {ms['ort']:8.2f} {ms['ideal']:9.2f} {ms['full']:9.2f} "
                  f"{ms['no_ir']:9.2f} {r['ideal'] / r['ort']:9.2f} {r['full'] / r['ort']:8.2f} "
                  f"{r['no_ir'] / r['ort']:8.2f} {ms['setup']:9.1f} | {ms['reads']:.1f} ({ms['ideal_reads']:.1f}), {ms['nn']:.1f} "
                  f"({ms['erf']:.1f}), {ms['xbar']:.1f}, {ms['overhead']:.1f}, "
                  f"{ms['full'] / max(r['ops'], 1):.3f}")
            sys.stdout.flush()
        print("targets where onnxruntime > 10 ms: ideal/ort <= 2, full/ort <= 3. full = every non-ideality on at 1 h; "
              "no-IR = the same without IR drop. setup = programming every device and reading it at 1 h (once per "
              "Monte-Carlo instance and time, not per batch). ms/op = full time / ops run.")


if __name__ == "__main__":
    main()
