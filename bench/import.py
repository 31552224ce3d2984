"""Benchmark of the ONNX frontend: import speed against onnxruntime, and peak memory on big weights.

1. Time of ``import_onnx`` + ``verify`` against onnxruntime's ``InferenceSession`` creation on the
   same files (``samples/*.onnx`` and generated models), as ratios measured in the same run
   (median of ``--repeat`` runs each).
2. Peak RSS of importing a generated transformer-like model whose weights (~``--big-gib`` GiB) are
   external data, measured in a fresh subprocess (its ``VmHWM``; ``ru_maxrss`` where there is no
   /proc), against the weight bytes.
   Target: peak <= 1.5x the weight bytes. Also shown: the same import followed by reading every
   weight once (the memory-mapped pages then count as resident), the same weights embedded in the
   .onnx file, and onnxruntime's session creation on the external-data model.

Run: ``python bench/import.py [--repeat 5] [--big-gib 1.0] [--skip-big]``. Never run as a test.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from afmc.frontend import import_onnx
from afmc.ir import verify

ROOT = Path(__file__).resolve().parent.parent
F = TensorProto.FLOAT


# -- generated models --------------------------------------------------------------------------


class GraphBuilder:
    """A tiny helper that names values and collects nodes and initializers."""

    def __init__(self, seed: int = 0) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.rng = np.random.default_rng(seed)
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"/{hint}_{self.count}"

    def weight(self, hint: str, *shape: int, scale: float | None = None) -> str:
        name = f"{hint}.{self.count}"
        self.count += 1
        std = scale if scale is not None else 1.0 / math.sqrt(shape[-1] if len(shape) > 1 else 1.0)
        data = self.rng.standard_normal(shape, dtype=np.float32)
        data *= np.float32(std)
        self.inits.append(numpy_helper.from_array(data, name))
        return name

    def const(self, hint: str, array: np.ndarray) -> str:
        out = self.name(hint)
        self.nodes.append(helper.make_node("Constant", [], [out], value=numpy_helper.from_array(np.asarray(array), out)))
        return out

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs: object) -> str | list[str]:
        outs = [self.name(op_type) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.name(op_type + "_node"), **attrs))
        return outs[0] if n_out == 1 else outs


def transformer_model(d: int, ff: int, heads: int, layers: int, seq: int, transposed_weights: bool = True) -> onnx.ModelProto:
    """A pre-LN encoder written the way torch.onnx exports it: batch size from a Shape subgraph,
    weights as initializers behind a Transpose in front of MatMul (when ``transposed_weights``)."""
    g = GraphBuilder()
    dh = d // heads
    x = "input"

    def linear(h: str, d_in: int, d_out: int) -> str:
        if transposed_weights:
            w = g.op("Transpose", [g.weight("w", d_out, d_in)], perm=[1, 0])
        else:
            w = g.weight("w", d_in, d_out)
        return g.op("Add", [g.weight("b", d_out, scale=0.01), g.op("MatMul", [h, w])])

    def batch_dim(h: str) -> str:
        shape = g.op("Shape", [h])
        b = g.op("Gather", [shape, g.const("zero", np.array(0, np.int64))], axis=0)
        return g.op("Unsqueeze", [b, g.const("axes", np.array([0], np.int64))])

    for _ in range(layers):
        ln = g.op("LayerNormalization", [x, g.weight("ln_g", d, scale=1.0), g.weight("ln_b", d, scale=0.01)], axis=-1)
        b1 = batch_dim(ln)
        split_shape = g.op("Concat", [b1, g.const("s", np.array([seq, heads, dh], np.int64))], axis=0)
        q, k, v = (g.op("Transpose", [g.op("Reshape", [linear(ln, d, d), split_shape])], perm=[0, 2, 1, 3]) for _ in range(3))
        scores = g.op("Mul", [g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])]),
                              g.const("scale", np.array(1.0 / math.sqrt(dh), np.float32))])
        attn = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
        merge_shape = g.op("Concat", [batch_dim(attn), g.const("m", np.array([seq, d], np.int64))], axis=0)
        merged = g.op("Reshape", [g.op("Transpose", [attn], perm=[0, 2, 1, 3]), merge_shape])
        x = g.op("Add", [x, linear(merged, d, d)])
        ln2 = g.op("LayerNormalization", [x, g.weight("ln_g", d, scale=1.0), g.weight("ln_b", d, scale=0.01)], axis=-1)
        h = linear(ln2, d, ff)
        gelu = g.op("Mul", [g.op("Mul", [h, g.const("half", np.array(0.5, np.float32))]),
                            g.op("Add", [g.op("Erf", [g.op("Div", [h, g.const("sqrt2", np.array(math.sqrt(2), np.float32))])]),
                                         g.const("one", np.array(1.0, np.float32))])])
        x = g.op("Add", [x, linear(gelu, ff, d)])
    g.nodes.append(helper.make_node("ReduceMean", [x], ["logits"], axes=[1], keepdims=0))
    graph = helper.make_graph(
        g.nodes, "transformer", [helper.make_tensor_value_info("input", F, ["N", seq, d])],
        [helper.make_tensor_value_info("logits", F, ["N", d])], g.inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def cnn_model(channels: int = 64, blocks: int = 8, size: int = 32) -> onnx.ModelProto:
    """A ResNet-like stack of Conv + BatchNormalization + Relu with residual Adds."""
    g = GraphBuilder(1)
    x = g.op("Conv", ["input", g.weight("stem", channels, 3, 3, 3, scale=0.2)], pads=[1, 1, 1, 1])
    for _ in range(blocks):
        h = x
        for _ in range(2):
            h = g.op("Conv", [h, g.weight("w", channels, channels, 3, 3, scale=0.05), g.weight("b", channels, scale=0.01)],
                     pads=[1, 1, 1, 1])
            stats = [g.weight("bn", channels, scale=0.1) for _ in range(3)]
            var = g.op("Abs", [g.weight("var", channels, scale=1.0)])
            h = g.op("Relu", [g.op("BatchNormalization", [h, stats[0], stats[1], stats[2], var])])
        x = g.op("Add", [x, h])
    pooled = g.op("Flatten", [g.op("GlobalAveragePool", [x])])
    g.nodes.append(helper.make_node("Gemm", [pooled, g.weight("fc", 10, channels), g.weight("fcb", 10, scale=0.01)],
                                    ["logits"], transB=1))
    graph = helper.make_graph(
        g.nodes, "cnn", [helper.make_tensor_value_info("input", F, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", F, ["N", 10])], g.inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def mlp_model(width: int = 1024, layers: int = 6) -> onnx.ModelProto:
    g = GraphBuilder(2)
    x = "input"
    for _ in range(layers):
        x = g.op("Relu", [g.op("Gemm", [x, g.weight("w", width, width), g.weight("b", width, scale=0.01)], transB=1)])
    g.nodes.append(helper.make_node("Gemm", [x, g.weight("head", 10, width)], ["logits"], transB=1))
    graph = helper.make_graph(
        g.nodes, "mlp", [helper.make_tensor_value_info("input", F, ["N", width])],
        [helper.make_tensor_value_info("logits", F, ["N", 10])], g.inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


# -- timing ------------------------------------------------------------------------------------


def static_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Batch 1 for every symbolic dimension of every real input."""
    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    shapes = {}
    for info in model.graph.input:
        if info.name not in inits:
            shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in info.type.tensor_type.shape.dim)
    return shapes


def median_time(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def afmc_import(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    verify(import_onnx(path, shapes))


def ort_session(path: Path) -> None:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def timing_table(paths: list[Path], repeat: int) -> None:
    print(f"import + verify vs onnxruntime InferenceSession creation (median of {repeat})")
    print(f"{'model':28} {'nodes':>6} {'weights':>10} {'afmc ms':>9} {'ort ms':>9} {'afmc/ort':>9}")
    ratios = []
    for path in paths:
        shapes = static_shapes(path)
        model = onnx.load(str(path), load_external_data=False)
        weights = sum(math.prod(t.dims) * 4 for t in model.graph.initializer)
        afmc_import(path, shapes)  # warm caches (schemas, imports) for both sides fairly
        ort_session(path)
        ours = median_time(lambda p=path, s=shapes: afmc_import(p, s), repeat)  # type: ignore[misc]
        theirs = median_time(lambda p=path: ort_session(p), repeat)  # type: ignore[misc]
        ratios.append(ours / theirs)
        print(f"{path.stem:28} {len(model.graph.node):6d} {weights / 2**20:8.1f}Mi {ours * 1e3:9.1f} {theirs * 1e3:9.1f} "
              f"{ours / theirs:9.2f}")
    print(f"geometric mean afmc/ort: {math.exp(statistics.fmean(math.log(r) for r in ratios)):.2f}")


# -- peak memory -------------------------------------------------------------------------------

_PEAK_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time
    mode, path = sys.argv[1], sys.argv[2]

    def peak_bytes():
        # VmHWM is this process's own high-water mark; ru_maxrss would also count the parent's
        # memory, which a vfork+exec child inherits into its rusage on Linux.
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    import numpy as np
    import onnxruntime as ort
    from afmc.frontend import import_onnx
    from afmc.ir import verify
    before = peak_bytes()
    start = time.perf_counter()
    if mode == "ort":
        ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    else:
        module = import_onnx(path, {"input": (1, int(sys.argv[3]), int(sys.argv[4]))})
        verify(module)
        if mode == "touch":  # read every weight once, as a later pass would
            total = 0.0
            for c in module.constants.values():
                total += float(np.asarray(c.data).sum(dtype=np.float64))
    seconds = time.perf_counter() - start
    peak = peak_bytes()
    print(json.dumps({"baseline": before, "peak": peak, "seconds": seconds}))
    """
)


def peak_rss(mode: str, path: Path, seq: int, d: int) -> dict[str, float]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, mode, str(path), str(seq), str(d)],
        check=True, capture_output=True, text=True, env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_report(big_gib: float, workdir: Path) -> None:
    d, heads, seq = 2048, 16, 16
    per_layer = 12 * d * d * 4
    layers = max(1, round(big_gib * 2**30 / per_layer))
    model = transformer_model(d, 4 * d, heads, layers, seq)
    weight_bytes = sum(math.prod(t.dims) * 4 for t in model.graph.initializer)
    ext_dir, emb_dir = workdir / "external", workdir / "embedded"
    ext_dir.mkdir()
    emb_dir.mkdir()
    ext_path, emb_path = ext_dir / "model.onnx", emb_dir / "model.onnx"
    onnx.save(model, str(emb_path))  # before the external save, which rewrites the protos in place
    onnx.save(model, str(ext_path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=1024)
    del model
    print(f"\npeak RSS: transformer d={d} ff={4 * d} layers={layers} seq={seq}, "
          f"{weight_bytes / 2**30:.2f} GiB of weights (fresh subprocess each, VmHWM)")
    print(f"{'case':44} {'baseline':>9} {'peak':>9} {'peak-base':>10} {'peak/W':>7} {'(p-b)/W':>8} {'s':>6}")
    cases = [
        ("afmc import, external data", "import", ext_path),
        ("afmc import + read every weight, external", "touch", ext_path),
        ("afmc import, weights embedded in .onnx", "import", emb_path),
        ("onnxruntime session, external data", "ort", ext_path),
    ]
    for label, mode, path in cases:
        r = peak_rss(mode, path, seq, d)
        print(f"{label:44} {r['baseline'] / 2**20:7.0f}Mi {r['peak'] / 2**20:7.0f}Mi {(r['peak'] - r['baseline']) / 2**20:8.0f}Mi "
              f"{r['peak'] / weight_bytes:7.2f} {(r['peak'] - r['baseline']) / weight_bytes:8.2f} {r['seconds']:6.1f}")
    print("target: peak/W <= 1.5 for the external-data import")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--big-gib", type=float, default=1.0)
    parser.add_argument("--skip-big", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="afmc-bench-") as tmp:
        workdir = Path(tmp)
        generated = {
            "gen_mlp_1024x6": mlp_model(),
            "gen_cnn_64x8": cnn_model(),
            "gen_transformer_d256_l4": transformer_model(256, 1024, 8, 4, 64),
            "gen_transformer_d512_l12": transformer_model(512, 2048, 8, 12, 128),
        }
        paths = sorted((ROOT / "samples").glob("*.onnx"))
        for name, model in generated.items():
            path = workdir / f"{name}.onnx"
            onnx.save(model, str(path))
            paths.append(path)
        timing_table(paths, args.repeat)
        if not args.skip_big:
            memory_report(args.big_gib, workdir)


if __name__ == "__main__":
    main()
