"""The ``tile`` pass: exact reassembly of the quantised weights, exact ideal execution, tile counts,
replication, verification and the IR round trip.

Numeric tolerance: a tiled layer run by the ideal xbar semantics must match the untiled layer with
its weight replaced by the dequantised W_q·s to 1e-5 of the output's largest magnitude (float32
results; the arithmetic inside the xbar ops is float64, the references run in float32).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from afmc.passes.tile import (
    Tile,
    capacity_of,
    dequantize,
    encode,
    near_equal_splits,
    plan_replicas,
    quantize,
    reassemble,
    slice_count,
    tileable,
)
from afmc.targets import load_target
from afmc.targets.spec import TargetSpec, from_dict
from helpers import SAMPLE_NAMES, sample_inputs, sample_path, sample_shapes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from afmc.driver import check_passes, compile_module, load_module
from afmc.errors import AfmcError, PassError, UsageError, VerifyError
from afmc.frontend.importer import import_model
from afmc.interp import run_module
from afmc.ir import Module, Op, TensorType, parse_module, print_module, verify
from afmc.matrix import MATRIX_OPS, matrix_view
from afmc.pipeline import PassContext, parse_pipeline, run_passes

# -- helpers ----------------------------------------------------------------------------------------


def target_with(base: str = "crossbar", chip: dict[str, Any] | None = None, **array: Any) -> TargetSpec:
    """A built-in target with some array (and chip) keys changed, validated like a TOML file."""
    data = load_target(base).to_dict()
    data["array"].update(array)
    data["chip"].update(chip or {})
    data["adc"]["columns_per_adc"] = min(data["adc"]["columns_per_adc"], data["array"]["cols"])
    return from_dict(data, f"{base}+test")


#: Small arrays so that every layer is split: offset with 3 slices, differential with 2.
SMALL_OFFSET = target_with("crossbar", rows=7, cols=5, bits_per_cell=2, weight_bits=6, encoding="offset")
SMALL_DIFF = target_with("pcm", rows=9, cols=4, bits_per_cell=3, weight_bits=7, encoding="differential")
SMALL_TARGETS = [pytest.param(SMALL_OFFSET, id="offset"), pytest.param(SMALL_DIFF, id="differential")]


def node_model(op_type: str, inputs: dict[str, tuple[int, ...]], weights: dict[str, np.ndarray],
               order: list[str], **attrs: Any) -> onnx.ModelProto:
    """One ONNX node named ``layer`` over activations ``inputs`` and initializers ``weights``."""
    node = helper.make_node(op_type, order, ["y"], name="layer", **attrs)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(w, np.float32), n) for n, w in weights.items()],
    )
    return finish(graph)


def finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    """An opset-21 model whose output shapes are filled in (the checker wants them)."""
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))


def mark_analog(module: Module) -> None:
    for op in module.ops:
        if op.name in MATRIX_OPS and matrix_view(module, op) is not None:
            op.set_attrs(region="analog", reason="static-weight (test)")


def tiled(model: onnx.ModelProto | Module, target: TargetSpec, **options: Any) -> tuple[Module, PassContext]:
    module = import_model(model) if isinstance(model, onnx.ModelProto) else model
    mark_analog(module)
    ctx = PassContext(target=target)
    run_passes(module, [Tile(**options)], ctx)  # verifies before and after
    return module, ctx


def ort_run(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)[0]


def assert_close(got: np.ndarray, ref: np.ndarray, what: str) -> None:
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    err = float(np.max(np.abs(got.astype(np.float64) - ref))) if ref.size else 0.0
    bound = 1e-5 * max(float(np.max(np.abs(ref))) if ref.size else 0.0, 1e-30)
    assert err <= bound, f"{what}: max error {err:.3g} > {bound:.3g}"


def channel_matrix(weight: np.ndarray, kind: str, groups: int, trans_b: bool = False) -> np.ndarray:
    """The layer's (G, K, N) matrix, written independently of the pass (K = C_in/g·k..., N = C_out/g)."""
    if kind == "conv":
        return weight.reshape(groups, weight.shape[0] // groups, -1).transpose(0, 2, 1)
    if kind == "conv_transpose":
        flipped = weight[(slice(None), slice(None), *([slice(None, None, -1)] * (weight.ndim - 2)))]
        c_in, c_out_g = weight.shape[:2]
        grouped = flipped.reshape(groups, c_in // groups, c_out_g, -1).transpose(0, 1, 3, 2)
        return grouped.reshape(groups, -1, c_out_g)
    return (weight.T if trans_b else weight)[None]


def dequantised(weight: np.ndarray, kind: str, groups: int, bits: int, per_column: bool,
                trans_b: bool = False) -> np.ndarray:
    """W_q·s in the weight's own layout (per output channel for per-column scales)."""
    if not per_column:
        return dequantize(*quantize(weight, bits, False)).astype(np.float32)
    deq = dequantize(*quantize(channel_matrix(weight, kind, groups, trans_b), bits, True))
    if kind == "conv":
        return deq.transpose(0, 2, 1).reshape(weight.shape).astype(np.float32)
    if kind == "conv_transpose":
        c_in, c_out_g = weight.shape[:2]
        back = deq.reshape(groups, c_in // groups, -1, c_out_g).transpose(0, 1, 3, 2).reshape(weight.shape)
        return back[(slice(None), slice(None), *([slice(None, None, -1)] * (weight.ndim - 2)))].astype(np.float32)
    return (deq[0].T if trans_b else deq[0]).astype(np.float32)


def check_exact(op_type: str, inputs: dict[str, tuple[int, ...]], weights: dict[str, np.ndarray], order: list[str],
                target: TargetSpec, scale: str = "layer", seed: int = 0, **attrs: Any) -> Module:
    """Tile the node, run it ideally, compare with onnxruntime and afmc's interpreter on W_q·s."""
    kind = {"Conv": "conv", "ConvTranspose": "conv_transpose", "Gemm": "gemm", "MatMul": "matmul"}[op_type]
    model = node_model(op_type, inputs, weights, order, **attrs)
    module, _ = tiled(model, target, scale=scale)
    assert not any(op.name in MATRIX_OPS for op in module.ops), "the matrix op was not lowered"
    deq = dict(weights)
    deq["w"] = dequantised(weights["w"], kind, int(attrs.get("group", 1)), target.array.weight_bits,
                           scale == "column", bool(attrs.get("transB", 0)))
    ref_model = node_model(op_type, inputs, deq, order, **attrs)
    rng = np.random.default_rng(seed)
    feed = {n: rng.standard_normal(s).astype(np.float32) for n, s in inputs.items()}
    got = run_module(module, feed)["y"]
    assert got.dtype == np.float32
    assert_close(got, ort_run(ref_model, feed).astype(np.float64), f"{op_type} vs onnxruntime")
    assert_close(got, run_module(import_model(ref_model), feed)["y"].astype(np.float64), f"{op_type} vs interp")
    return module


def mvms(module: Module, layer: str | None = None) -> list[Op]:
    return [op for op in module.ops if op.name == "xbar.mvm" and (layer is None or op.attr("layer") == layer)]


def signed(levels: np.ndarray, encoding: str) -> np.ndarray:
    cells = levels.astype(np.int64)
    return cells[0] - cells[1] if encoding == "differential" else cells[:, :-1] - cells[:, -1:]


def reassemble_module(module: Module, groups: int, k: int, n: int) -> np.ndarray:
    """Σ significance × signed levels, each array added at its coordinates in the layer's matrix."""
    total = np.zeros((groups, k, n), np.int64)
    for op in mvms(module):
        levels = module.constants[op.attr("array").name].data
        (r0, r1), (c0, c1) = op.attr("rows"), op.attr("cols")
        total[op.attr("group"), r0:r1, c0:c1] += op.attr("significance") * signed(levels, op.attr("encoding"))
    return total


# -- quantisation and encoding ----------------------------------------------------------------------


def test_quantize_follows_the_definition() -> None:
    w = np.array([[0.5, -1.0], [0.25, 0.126]])
    w_q, s = quantize(w, 4, per_column=False)  # s = 1/7
    assert s == pytest.approx(1 / 7) and w_q.dtype == np.int64
    np.testing.assert_array_equal(w_q, [[4, -7], [2, 1]])  # 3.5 -> 4 (half to even), 1.75 -> 2, 0.882 -> 1
    w_q, s = quantize(w, 4, per_column=True)
    np.testing.assert_allclose(s, [0.5 / 7, 1 / 7])
    np.testing.assert_array_equal(w_q, [[7, -7], [4, 1]])
    w_q, s = quantize(np.zeros((3, 2)), 8, per_column=False)
    assert float(s) == 0.0 and not w_q.any()
    w_q, s = quantize(np.array([[0.0, 2.0]]), 8, per_column=True)
    np.testing.assert_array_equal(s, [0.0, 2 / 127])
    with pytest.raises(ValueError):
        quantize(w, 1, False)


@settings(max_examples=300, deadline=None)
@given(
    bits=st.integers(2, 16), bits_per_cell=st.integers(1, 16), encoding=st.sampled_from(["differential", "offset"]),
    seed=st.integers(0, 2**32 - 1), shape=st.tuples(st.integers(1, 5), st.integers(1, 5)),
)
def test_encode_reassemble_is_exact(bits: int, bits_per_cell: int, encoding: str, seed: int,
                                    shape: tuple[int, int]) -> None:
    qmax = 2 ** (bits - 1) - 1
    w_q = np.random.default_rng(seed).integers(-qmax, qmax + 1, shape)
    w_q.flat[0] = qmax if seed % 2 else -qmax  # the extremes always appear
    enc = encode(w_q, bits, bits_per_cell, encoding)
    assert enc.slices == slice_count(bits, bits_per_cell, encoding)
    assert all(lv.min() >= 0 and lv.max() < 2**bits_per_cell for lv in enc.levels)
    if encoding == "offset":
        assert sum(o << (i * bits_per_cell) for i, o in enumerate(enc.reference)) == 2 ** (bits - 1)
    np.testing.assert_array_equal(reassemble(enc), w_q)


def test_near_equal_splits() -> None:
    assert near_equal_splits(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert near_equal_splits(784, 4) == [(0, 196), (196, 392), (392, 588), (588, 784)]
    sizes = [b - a for a, b in near_equal_splits(1000, 8)]
    assert sizes == [125] * 8
    for size, parts in [(5, 5), (7, 2), (127, 9)]:
        sizes = [b - a for a, b in near_equal_splits(size, parts)]
        assert sum(sizes) == size and max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
        assert sizes == [len(p) for p in np.array_split(np.arange(size), parts)]


# -- the reassembly invariant over shapes, arrays, cell bits and encodings --------------------------


@st.composite
def tiling_cases(draw: st.DrawFn) -> dict[str, Any]:
    encoding = draw(st.sampled_from(["differential", "offset"]))
    bits = draw(st.integers(2, 9))
    bits_per_cell = draw(st.integers(1, 8))
    slices = slice_count(bits, bits_per_cell, encoding)
    reference = int(encoding == "offset")
    rows = draw(st.integers(1, 16))
    cols = draw(st.integers(slices + reference, slices + reference + 10))  # the spec needs cols >= S + ref
    kind = draw(st.sampled_from(["matmul", "conv"]))
    if kind == "matmul":
        groups, k_in, kernel, n = 1, draw(st.integers(1, 48)), 1, draw(st.integers(1, 40))
    else:
        groups, k_in, kernel, n = (draw(st.integers(1, 3)), draw(st.integers(1, 4)),
                                   draw(st.integers(1, 3)), draw(st.integers(1, 6)))
    values = draw(st.sampled_from(["normal", "sparse", "zeros", "halves", "tiny"]))
    return {"encoding": encoding, "bits": bits, "bits_per_cell": bits_per_cell, "rows": rows, "cols": cols,
            "kind": kind, "groups": groups, "k_in": k_in, "kernel": kernel, "n": n, "values": values,
            "seed": draw(st.integers(0, 2**32 - 1)), "scale": draw(st.sampled_from(["layer", "column"]))}


def _weights(case: dict[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(case["seed"])
    w = rng.standard_normal(shape)
    if case["values"] == "sparse":
        w[rng.random(shape) < 0.7] = 0.0
    elif case["values"] == "zeros":
        w[:] = 0.0
    elif case["values"] == "halves":  # many exact rounding ties
        w = rng.integers(-8, 9, shape) / 2.0
    elif case["values"] == "tiny":
        w *= 1e-30
    return w.astype(np.float32)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tiling_cases())
def test_tiles_reassemble_to_the_quantised_weights(case: dict[str, Any]) -> None:
    target = target_with("crossbar" if case["encoding"] == "offset" else "pcm", rows=case["rows"], cols=case["cols"],
                         bits_per_cell=case["bits_per_cell"], weight_bits=case["bits"], encoding=case["encoding"])
    groups, n = case["groups"], case["n"]
    if case["kind"] == "matmul":
        weight = _weights(case, (case["k_in"], n))
        model = node_model("MatMul", {"x": (3, case["k_in"])}, {"w": weight}, ["x", "w"])
    else:
        kernel = case["kernel"]
        weight = _weights(case, (groups * n, case["k_in"], kernel, kernel))
        model = node_model("Conv", {"x": (1, groups * case["k_in"], 4, 4)}, {"w": weight}, ["x", "w"],
                           group=groups, pads=[1, 1, 1, 1])
    module, ctx = tiled(model, target, scale=case["scale"])
    matrix = channel_matrix(weight, case["kind"], groups)
    _, k, _ = matrix.shape
    w_q, _ = quantize(matrix, case["bits"], case["scale"] == "column")

    np.testing.assert_array_equal(reassemble_module(module, groups, k, n), w_q)

    # Tiles: one per (group, row split, column split, slice), each within the physical array.
    usable = case["cols"] - (case["encoding"] == "offset")
    n_r, n_c = math.ceil(k / case["rows"]), math.ceil(n / usable)
    slices = slice_count(case["bits"], case["bits_per_cell"], case["encoding"])
    ops = mvms(module)
    assert len(ops) == groups * n_r * n_c * slices == module.attributes["tiles_required"]
    assert ctx.report["tiles"][0]["arrays"] == len(ops)
    keys = Counter((op.attr("group"), tuple(op.attr("rows")), tuple(op.attr("cols")), op.attr("slice")) for op in ops)
    assert max(keys.values()) == 1
    row_sizes = sorted({b - a for _, (a, b), _, _ in keys}, reverse=True)
    col_sizes = sorted({b - a for _, _, (a, b), _ in keys}, reverse=True)
    assert row_sizes[0] - row_sizes[-1] <= 1 and col_sizes[0] - col_sizes[-1] <= 1
    for op in ops:
        levels = module.constants[op.attr("array").name].data
        assert levels.min() >= 0 and levels.max() < 2 ** case["bits_per_cell"]
        assert op.attr("rows_used") <= case["rows"] and op.attr("cols_used") <= case["cols"]
        assert op.attr("significance") == 2 ** (op.attr("slice") * case["bits_per_cell"])


# -- exact execution against the dequantised untiled layer -------------------------------------------

RNG = np.random.default_rng(1234)


def w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


CONV_CASES = {
    "3x3-pad-bias": ({"x": (2, 3, 6, 6)}, {"w": w(4, 3, 3, 3), "b": w(4)}, ["x", "w", "b"], {"pads": [1, 1, 1, 1]}),
    "stride-dilation-asym-pads": ({"x": (1, 2, 9, 8)}, {"w": w(5, 2, 3, 2)}, ["x", "w"],
                                  {"strides": [2, 3], "dilations": [2, 1], "pads": [1, 0, 2, 1]}),
    "groups": ({"x": (1, 4, 5, 5)}, {"w": w(6, 2, 3, 3), "b": w(6)}, ["x", "w", "b"], {"group": 2, "pads": [1, 1, 1, 1]}),
    "depthwise": ({"x": (2, 3, 5, 5)}, {"w": w(6, 1, 3, 3)}, ["x", "w"], {"group": 3}),
    "same-upper": ({"x": (1, 2, 5, 5)}, {"w": w(3, 2, 3, 3)}, ["x", "w"], {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    "same-lower": ({"x": (1, 2, 6, 5)}, {"w": w(3, 2, 4, 2)}, ["x", "w"], {"strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    "valid": ({"x": (1, 2, 6, 6)}, {"w": w(3, 2, 3, 3)}, ["x", "w"], {"auto_pad": "VALID", "strides": [2, 1]}),
    "1x1": ({"x": (3, 8, 2, 2)}, {"w": w(9, 8, 1, 1), "b": w(9)}, ["x", "w", "b"], {}),
    "1d": ({"x": (2, 3, 11)}, {"w": w(4, 3, 3), "b": w(4)}, ["x", "w", "b"], {"strides": [2], "pads": [2, 1]}),
    "3d": ({"x": (1, 2, 4, 5, 4)}, {"w": w(3, 2, 2, 3, 2)}, ["x", "w"], {"pads": [1, 0, 1, 0, 1, 0]}),
}

CONV_TRANSPOSE_CASES = {
    "stride2": ({"x": (1, 3, 4, 4)}, {"w": w(3, 2, 3, 3), "b": w(2)}, ["x", "w", "b"], {"strides": [2, 2]}),
    "pads-outpad-dilation": ({"x": (2, 2, 4, 3)}, {"w": w(2, 3, 3, 2)}, ["x", "w"],
                             {"strides": [3, 2], "pads": [0, 2, 1, 1], "dilations": [2, 1], "output_padding": [1, 0]}),
    "groups": ({"x": (1, 4, 3, 3)}, {"w": w(4, 3, 2, 2), "b": w(6)}, ["x", "w", "b"], {"group": 2, "strides": [2, 2]}),
    "output-shape": ({"x": (1, 2, 4, 4)}, {"w": w(2, 2, 3, 3)}, ["x", "w"], {"strides": [2, 2], "output_shape": [8, 7]}),
    "same-upper": ({"x": (1, 2, 4, 4)}, {"w": w(2, 3, 3, 3)}, ["x", "w"], {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    "same-lower": ({"x": (1, 2, 4, 4)}, {"w": w(2, 3, 3, 3)}, ["x", "w"], {"strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    "valid": ({"x": (1, 2, 3, 3)}, {"w": w(2, 2, 2, 2)}, ["x", "w"], {"auto_pad": "VALID", "strides": [2, 2]}),
    "1d": ({"x": (2, 3, 5)}, {"w": w(3, 4, 3), "b": w(4)}, ["x", "w", "b"], {"strides": [2], "pads": [1, 0]}),
    "stride1-pad": ({"x": (1, 3, 5, 5)}, {"w": w(3, 4, 3, 3)}, ["x", "w"], {"pads": [1, 1, 1, 1]}),
}

GEMM_CASES = {
    "plain": ({"x": (3, 20)}, {"w": w(20, 11)}, ["x", "w"], {}),
    "transB-bias": ({"x": (3, 20)}, {"w": w(11, 20), "c": w(11)}, ["x", "w", "c"], {"transB": 1}),
    "transA-alpha-beta": ({"x": (20, 4)}, {"w": w(20, 11), "c": w(1, 11)}, ["x", "w", "c"],
                          {"transA": 1, "alpha": 0.5, "beta": 2.0}),
    "full-c": ({"x": (4, 13)}, {"w": w(13, 6), "c": w(4, 6)}, ["x", "w", "c"], {"alpha": -1.5, "beta": 0.25}),
    "column-c": ({"x": (4, 13)}, {"w": w(13, 6), "c": w(4, 1)}, ["x", "w", "c"], {}),
    "beta0": ({"x": (2, 9)}, {"w": w(9, 3), "c": w(3)}, ["x", "w", "c"], {"beta": 0.0}),
}

MATMUL_CASES = {
    "2d": ({"x": (5, 30)}, {"w": w(30, 17)}, ["x", "w"], {}),
    "batched-3d": ({"x": (2, 3, 30)}, {"w": w(30, 17)}, ["x", "w"], {}),
    "batched-4d": ({"x": (2, 2, 3, 12)}, {"w": w(12, 5)}, ["x", "w"], {}),
    "vector": ({"x": (12,)}, {"w": w(12, 5)}, ["x", "w"], {}),
}

ALL_CASES = [
    pytest.param(op_type, *case, id=f"{op_type}-{name}")
    for op_type, cases in (("Conv", CONV_CASES), ("ConvTranspose", CONV_TRANSPOSE_CASES), ("Gemm", GEMM_CASES),
                           ("MatMul", MATMUL_CASES))
    for name, case in cases.items()
]


@pytest.mark.parametrize("target", SMALL_TARGETS)
@pytest.mark.parametrize(("op_type", "inputs", "weights", "order", "attrs"), ALL_CASES)
def test_tiled_equals_dequantised(op_type: str, inputs: dict, weights: dict, order: list, attrs: dict,
                                  target: TargetSpec) -> None:
    module = check_exact(op_type, inputs, weights, order, target, **attrs)
    assert mvms(module), "nothing was tiled"


@pytest.mark.parametrize("target", SMALL_TARGETS)
@pytest.mark.parametrize(("op_type", "inputs", "weights", "order", "attrs"), [
    pytest.param("Conv", *CONV_CASES["groups"], id="conv-groups"),
    pytest.param("Conv", *CONV_CASES["depthwise"], id="conv-depthwise"),
    pytest.param("ConvTranspose", *CONV_TRANSPOSE_CASES["groups"], id="conv_transpose-groups"),
    pytest.param("Gemm", *GEMM_CASES["transB-bias"], id="gemm-transB"),
    pytest.param("Gemm", *GEMM_CASES["transA-alpha-beta"], id="gemm-transA-alpha"),
    pytest.param("MatMul", *MATMUL_CASES["batched-3d"], id="matmul-batched"),
])
def test_per_column_scales_are_exact(op_type: str, inputs: dict, weights: dict, order: list, attrs: dict,
                                     target: TargetSpec) -> None:
    module = check_exact(op_type, inputs, weights, order, target, scale="column", **attrs)
    for op in mvms(module):
        assert isinstance(op.attr("weight_scale"), np.ndarray)
    assert all("column_scales" in op.attributes for op in module.ops if op.name == "xbar.accumulate")


def test_builtin_targets_run_a_chain_exactly() -> None:
    """Two layers with an activation between them on every built-in target: each layer dequantised."""
    w1, w2 = w(40, 30), w(30, 7)
    relu = helper.make_node("Relu", ["h"], ["r"], name="relu")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), relu,
         helper.make_node("Gemm", ["r", "w2"], ["y"], name="fc2", alpha=2.0)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 40])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = finish(graph)
    x = RNG.standard_normal((4, 40)).astype(np.float32)
    for name in ("pcm", "flash", "crossbar"):
        target = load_target(name)
        bits = target.array.weight_bits
        module, _ = tiled(model, target)
        h = np.maximum(x.astype(np.float64) @ dequantize(*quantize(w1, bits, False)), 0)
        ref = 2.0 * h.astype(np.float32).astype(np.float64) @ dequantize(*quantize(w2, bits, False))
        assert_close(run_module(module, {"x": x})["y"], ref, name)


# -- tile counts -------------------------------------------------------------------------------------

EXPECTED_COUNTS = {"pcm": (4, 4), "flash": (1, 1), "crossbar": (28, 32)}


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_tile_counts_on_builtin_targets(name: str) -> None:
    target = load_target(name)
    array = target.array
    usable = array.cols - (array.encoding == "offset")
    slices = slice_count(array.weight_bits, array.bits_per_cell, array.encoding)
    counts = []
    for k, n in ((784, 10), (100, 1000)):
        module, ctx = tiled(node_model("MatMul", {"x": (1, k)}, {"w": w(k, n)}, ["x", "w"]), target)
        formula = math.ceil(k / array.rows) * math.ceil(n / usable) * slices
        assert len(mvms(module)) == formula == module.attributes["tiles_required"]
        row = ctx.report["tiles"][0]
        assert (row["rows"], row["cols"], row["arrays"], row["physical_arrays"]) == (k, n, formula, formula)
        assert row["utilization"] == pytest.approx(k * n * slices / (formula * array.rows * array.cols))
        counts.append(formula)
    assert tuple(counts) == EXPECTED_COUNTS[name]


def test_grouped_conv_count() -> None:
    """G × ceil(K/rows) × ceil(N/usable) × S for a grouped convolution."""
    model = node_model("Conv", {"x": (1, 8, 6, 6)}, {"w": w(12, 4, 3, 3)}, ["x", "w"], group=2)
    module, ctx = tiled(model, SMALL_OFFSET)  # K = 36 -> 6 row splits of 7 rows; N = 6 -> 2 of 4 cols; S = 3
    assert len(mvms(module)) == 2 * 6 * 2 * 3
    assert ctx.report["tiles"][0] | {"utilization": 0} == {
        "layer": "layer", "kind": "conv", "groups": 2, "rows": 36, "cols": 6, "row_splits": 6, "col_splits": 2,
        "slices": 3, "arrays": 72, "replicas": 1, "physical_arrays": 72, "utilization": 0,
    }


# -- replication -------------------------------------------------------------------------------------


def test_replicate_n() -> None:
    module, ctx = tiled(node_model("MatMul", {"x": (8, 20)}, {"w": w(20, 9)}, ["x", "w"]), SMALL_DIFF, replicate="3")
    arrays = len(mvms(module))
    assert {op.attr("replicas") for op in mvms(module)} == {3}
    assert module.attributes["tiles_required"] == 3 * arrays == ctx.report["tiles"][0]["physical_arrays"]


def cnn() -> onnx.ModelProto:
    """conv1 (M = 64 vectors, 1 array) -> conv2 stride 2 (M = 16, 2 arrays) -> flatten -> gemm (M = 1, 4 arrays)."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["h1", "w2"], ["h2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Flatten", ["h2"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3"], ["y"], name="fc"),
    ]
    weights = {"w1": w(4, 2, 3, 3), "w2": w(4, 4, 3, 3), "w3": w(64, 10)}
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    return finish(graph)


def test_replicate_auto_relieves_the_bottleneck_within_capacity() -> None:
    target = target_with("pcm", {"cores": 4, "mesh_x": 2, "mesh_y": 2, "arrays_per_core": 3},
                         rows=32, cols=8, bits_per_cell=8, weight_bits=8, encoding="differential")
    assert capacity_of(target) == 12
    module, ctx = tiled(cnn(), target, replicate="auto")
    replicas = {row["layer"]: row["replicas"] for row in ctx.report["tiles"]}
    # Greedy by M / replicas: conv1 64 -> 32 -> 22 -> 16 -> (tie with conv2, conv1 first) 13; then conv2
    # (16, 2 arrays) does not fit in the 1 spare array, so replication stops: 5 + 2 + 4 = 11 <= 12.
    assert replicas == {"conv1": 5, "conv2": 1, "fc": 1}
    assert module.attributes["tiles_required"] == 11 <= capacity_of(target)
    x = RNG.standard_normal((1, 2, 8, 8)).astype(np.float32)
    assert run_module(module, {"x": x})["y"].shape == (1, 10)


def test_replicate_auto_never_exceeds_capacity_and_skips_single_vectors() -> None:
    target = target_with("pcm", {"arrays_per_core": 10}, rows=32, cols=8, bits_per_cell=8, weight_bits=8,
                         encoding="differential")
    module, ctx = tiled(cnn(), target, replicate="auto")
    replicas = {row["layer"]: row["replicas"] for row in ctx.report["tiles"]}
    assert replicas == {"conv1": 64, "conv2": 16, "fc": 1}  # room for one copy per vector; fc has one vector
    assert module.attributes["tiles_required"] == 64 + 16 * 2 + 4 <= capacity_of(target)
    mid = target_with("pcm", rows=32, cols=8, bits_per_cell=8, weight_bits=8, encoding="differential")
    module, ctx = tiled(cnn(), mid, replicate="auto")
    assert module.attributes["tiles_required"] <= capacity_of(mid) == 64
    tight = target_with("pcm", {"cores": 2, "mesh_x": 2, "mesh_y": 1, "arrays_per_core": 3},
                        rows=32, cols=8, bits_per_cell=8, weight_bits=8, encoding="differential")
    module, ctx = tiled(cnn(), tight, replicate="auto")  # 7 arrays needed, 6 available: no replication
    assert {row["replicas"] for row in ctx.report["tiles"]} == {1}


@dataclass
class _View:
    vectors: int


@dataclass
class _Plan:
    arrays: int
    view: _View
    input_slices: int = 1
    replicas: int = 1
    log: list[int] = field(default_factory=list)

    def cycles(self, replicas: int) -> int:
        return -(-self.view.vectors // replicas) * self.input_slices


def test_plan_replicas_greedy() -> None:
    plans = [_Plan(2, _View(100)), _Plan(1, _View(10), input_slices=8), _Plan(5, _View(1))]
    plan_replicas(plans, "auto", capacity=8 + 6)  # 6 spare
    # 100 vs 80: layer 0 (+2) -> 50; layer 1 (+1) -> 40; 0 (+2) -> 34; 1 (+1) -> 27; 0 needs 2, 0 spare left.
    assert [p.replicas for p in plans] == [3, 3, 1]
    plans = [_Plan(2, _View(100))]
    plan_replicas(plans, "4", capacity=1)
    assert plans[0].replicas == 4  # an explicit count is honoured; `check` reports the misfit


# -- IR, verification, options and errors ------------------------------------------------------------


def test_round_trip_and_verify_after_tile() -> None:
    module, _ = tiled(cnn(), SMALL_OFFSET, scale="column")
    verify(module)
    text = print_module(module, constants=True)
    again = parse_module(text)
    verify(again)
    assert print_module(again, constants=True) == text
    assert print_module(parse_module(print_module(module))) == print_module(module)
    x = RNG.standard_normal((1, 2, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(run_module(again, {"x": x})["y"], run_module(module, {"x": x})["y"])


def small_gemm_module() -> Module:
    module = Module("golden")
    x = module.add_input("x", TensorType((2, 3), "f32"))
    _, weight = module.add_constant(np.array([[1.0, -2.0], [0.5, 0.0], [-1.0, 4.0]], np.float32), "w")
    _, bias = module.add_constant(np.array([1.0, 2.0], np.float32), "b")
    gemm = module.create_op("nn.gemm", [x, weight.result, bias.result], [TensorType((2, 2), "f32")],
                            {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0, "region": "analog",
                             "reason": "test"}, "fc", ["y"])
    module.ops = [weight, bias, gemm]
    module.outputs = [gemm.result]
    return module


GOLDEN = """\
module @golden attributes {tiles_required = 8} {
  const @b : tensor<2xf32> = dense<[1.0, 2.0]>
  const @fc.g0.r0.c0.s0 : tensor<2x2xu8> = dense<[2, 0, 1, 0]>
  const @fc.g0.r0.c0.s1 : tensor<2x2xu8> = dense<[2, 2, 2, 2]>
  const @fc.g0.r1.c0.s0 : tensor<1x2xu8> = dense<[2, 0]>
  const @fc.g0.r1.c0.s1 : tensor<1x2xu8> = dense<[1, 2]>
  const @fc.g0.r0.c1.s0 : tensor<2x2xu8> = dense<[0, 0, 0, 0]>
  const @fc.g0.r0.c1.s1 : tensor<2x2xu8> = dense<[1, 2, 2, 2]>
  const @fc.g0.r1.c1.s0 : tensor<1x2xu8> = dense<[3, 0]>
  const @fc.g0.r1.c1.s1 : tensor<1x2xu8> = dense<[3, 2]>
  graph(%x: tensor<2x3xf32>) {
    %b = nn.constant() {value = @b} : tensor<2xf32> loc("b")
    %fc.unfold = xbar.unfold(%x) {groups = 1, kind = "gemm", layer = "fc", trans_a = 0} : tensor<1x2x3xf32> loc("fc")
    %fc.g0.r0.c0.s0 = nn.constant() {value = @fc.g0.r0.c0.s0} : tensor<2x2xu8> loc("fc")
    %fc.g0.r0.c0.s0.mvm = xbar.mvm(%fc.unfold, %fc.g0.r0.c0.s0) {adc_bits = 8, array = @fc.g0.r0.c0.s0, cols = [0, 1], cols_used = 2, dac_bits = 1, encoding = "offset", group = 0, input_slices = 8, layer = "fc", replicas = 1, rows = [0, 2], rows_used = 2, significance = 1, slice = 0, weight_scale = 0.5714285714285714} : tensor<2x1xf32> loc("fc")
    %fc.g0.r0.c0.s1 = nn.constant() {value = @fc.g0.r0.c0.s1} : tensor<2x2xu8> loc("fc")
    %fc.g0.r0.c0.s1.mvm = xbar.mvm(%fc.unfold, %fc.g0.r0.c0.s1) {adc_bits = 8, array = @fc.g0.r0.c0.s1, cols = [0, 1], cols_used = 2, dac_bits = 1, encoding = "offset", group = 0, input_slices = 8, layer = "fc", replicas = 1, rows = [0, 2], rows_used = 2, significance = 4, slice = 1, weight_scale = 0.5714285714285714} : tensor<2x1xf32> loc("fc")
    %fc.g0.r1.c0.s0 = nn.constant() {value = @fc.g0.r1.c0.s0} : tensor<1x2xu8> loc("fc")
    %fc.g0.r1.c0.s0.mvm = xbar.mvm(%fc.unfold, %fc.g0.r1.c0.s0) {adc_bits = 8, array = @fc.g0.r1.c0.s0, cols = [0, 1], cols_used = 2, dac_bits = 1, encoding = "offset", group = 0, input_slices = 8, layer = "fc", replicas = 1, rows = [2, 3], rows_used = 1, significance = 1, slice = 0, weight_scale = 0.5714285714285714} : tensor<2x1xf32> loc("fc")
    %fc.g0.r1.c0.s1 = nn.constant() {value = @fc.g0.r1.c0.s1} : tensor<1x2xu8> loc("fc")
    %fc.g0.r1.c0.s1.mvm = xbar.mvm(%fc.unfold, %fc.g0.r1.c0.s1) {adc_bits = 8, array = @fc.g0.r1.c0.s1, cols = [0, 1], cols_used = 2, dac_bits = 1, encoding = "offset", group = 0, input_slices = 8, layer = "fc", replicas = 1, rows = [2, 3], rows_used = 1, significance = 4, slice = 1, weight_scale = 0.5714285714285714} : tensor<2x1xf32> loc("fc")
    %fc.g0.c0 = xbar.accumulate(%fc.g0.r0.c0.s0.mvm, %fc.g0.r0.c0.s1.mvm, %fc.g0.r1.c0.s0.mvm, %fc.g0.r1.c0.s1.mvm) {cols = [0, 1], group = 0, layer = "fc", scales = [0.5714285714285714, 2.2857142857142856, 0.5714285714285714, 2.2857142857142856]} : tensor<2x1xf32> loc("fc")
    %fc.g0.r0.c1.s0 = nn.constant() {value = @fc.g0.r0.c1.s0} : tensor<2x2xu8> loc("fc")
    %fc.g0.r0.c1.s0.mvm = xbar.mvm(%fc.unfold, %fc.g0.r0.c1.s0) {adc_bits = 8, array = @fc.g0.r0.c1.s0, cols = [1, 2], cols_used = 2, dac_bits = 1, encoding = "offset", group = 0, input_slices = 8, layer = "fc", replicas = 1, rows = [0, 2], rows_used = 2, significance = 1, slice = 0, weight_scale = 0.5714285714285714} : tensor<2x1xf32> loc("fc")
    %fc.g0.r0.c1.s1 = nn.constant() {value = @fc.g0.r0.c1.s1} : tensor<2x2xu8> loc("fc")
    %fc.g0.r0.c1.s1.mvm = xbar.mvm(%fc.unfold, %fc.g0.r0.c1.s1) {adc_bits = 8, array = @fc.g0.r0.c1.s1, cols = [1, 2], cols_used = 2, dac_bits = 1, encoding = "offset", group = 0, input_slices = 8, layer = "fc", replicas = 1, rows = [0, 2], rows_used = 2, significance = 4, slice = 1, weight_scale = 0.5714285714285714} : tensor<2x1xf32> loc("fc")
    %fc.g0.r1.c1.s0 = nn.constant() {value = @fc.g0.r1.c1.s0} : tensor<1x2xu8> loc("fc")
    %fc.g0.r1.c1.s0.mvm = xbar.mvm(%fc.unfold, %fc.g0.r1.c1.s0) {adc_bits = 8, array = @fc.g0.r1.c1.s0, cols = [1, 2], cols_used = 2, dac_bits = 1, encoding = "offset", group = 0, input_slices = 8, layer = "fc", replicas = 1, rows = [2, 3], rows_used = 1, significance = 1, slice = 0, weight_scale = 0.5714285714285714} : tensor<2x1xf32> loc("fc")
    %fc.g0.r1.c1.s1 = nn.constant() {value = @fc.g0.r1.c1.s1} : tensor<1x2xu8> loc("fc")
    %fc.g0.r1.c1.s1.mvm = xbar.mvm(%fc.unfold, %fc.g0.r1.c1.s1) {adc_bits = 8, array = @fc.g0.r1.c1.s1, cols = [1, 2], cols_used = 2, dac_bits = 1, encoding = "offset", group = 0, input_slices = 8, layer = "fc", replicas = 1, rows = [2, 3], rows_used = 1, significance = 4, slice = 1, weight_scale = 0.5714285714285714} : tensor<2x1xf32> loc("fc")
    %fc.g0.c1 = xbar.accumulate(%fc.g0.r0.c1.s0.mvm, %fc.g0.r0.c1.s1.mvm, %fc.g0.r1.c1.s0.mvm, %fc.g0.r1.c1.s1.mvm) {cols = [1, 2], group = 0, layer = "fc", scales = [0.5714285714285714, 2.2857142857142856, 0.5714285714285714, 2.2857142857142856]} : tensor<2x1xf32> loc("fc")
    %y = xbar.assemble(%fc.g0.c0, %fc.g0.c1, %b) {bias_scale = 1.0, col_splits = 2, groups = 1, kind = "gemm", layer = "fc"} : tensor<2x2xf32> loc("fc")
    return %y
  }
}
"""


def test_golden_ir_of_a_tiny_gemm() -> None:
    """A 3×2 Gemm on 2×2 offset arrays with 2-bit cells and 4-bit weights: the whole IR, checked by hand."""
    target = target_with("crossbar", rows=2, cols=2, bits_per_cell=2, weight_bits=4, encoding="offset")
    module, _ = tiled(small_gemm_module(), target)
    assert print_module(module) == GOLDEN
    # s = 4/7; W_q = round(W / s) = [[2, -4], [1, 0], [-2, 7]] (-3.5 rounds to even); U = W_q + 8 in base 4
    # (10 = "22", 9 = "21", 6 = "12" | 4 = "10", 8 = "20", 15 = "33"), reference 8 = "20": levels 0 then 2.
    # One weight column per array (2 columns minus the reference): 2 row × 2 column splits × 2 slices.
    np.testing.assert_array_equal(reassemble_module(module, 1, 3, 2)[0], [[2, -4], [1, 0], [-2, 7]])
    out = run_module(module, {"x": np.eye(2, 3, dtype=np.float32)})["y"]
    np.testing.assert_allclose(out, np.array([[2, -4], [1, 0]]) * 4 / 7 + [1, 2], rtol=1e-6)


def test_pipeline_options() -> None:
    spec = "tile{replicate=auto scale=column}"
    assert str(parse_pipeline(spec)) == spec
    (pass_,) = parse_pipeline(spec).instantiate()
    assert pass_ == Tile(replicate="auto", scale="column")
    for bad in ("tile{replicate=0}", "tile{replicate=many}", "tile{scale=row}"):
        with pytest.raises(UsageError):
            parse_pipeline(bad).instantiate()


def test_needs_a_target_and_refuses_photonic() -> None:
    model = node_model("MatMul", {"x": (1, 4)}, {"w": w(4, 3)}, ["x", "w"])
    module = import_model(model)
    mark_analog(module)
    with pytest.raises(AfmcError, match="tile needs a target"):
        Tile().run(module, PassContext())
    data = load_target("crossbar").to_dict()
    del data["array"]
    data.update(technology="photonic", photonic={"mesh_size": 8, "phase_bits": 8, "insertion_loss_db": 0.1},
                device={"model": "ideal"})
    data["adc"]["columns_per_adc"] = 8
    photonic = from_dict(data)
    with pytest.raises(AfmcError, match="photonic targets are not supported yet"):
        Tile().run(module, PassContext(target=photonic))
    digital = import_model(model)  # nothing analog: nothing to refuse
    Tile().run(digital, PassContext(target=photonic))
    assert digital.attributes["tiles_required"] == 0


def test_tileable_reasons() -> None:
    too_big = node_model("ConvTranspose", {"x": (1, 1, 4, 4)}, {"w": w(1, 1, 3, 3)}, ["x", "w"],
                         strides=[2, 2], output_shape=[11, 11])
    module = import_model(too_big)
    op = next(op for op in module.ops if op.name == "nn.conv_transpose")
    assert "ambiguous" in (tileable(module, op) or "")
    op.set_attrs(region="analog")
    with pytest.raises(PassError, match="cannot be tiled"):
        run_passes(module, [Tile()], PassContext(target=SMALL_OFFSET))
    same_outpad = import_model(node_model("ConvTranspose", {"x": (1, 1, 4, 4)}, {"w": w(1, 1, 3, 3)}, ["x", "w"],
                                          strides=[2, 2], auto_pad="SAME_UPPER", output_padding=[1, 1]))
    op = next(op for op in same_outpad.ops if op.name == "nn.conv_transpose")
    assert "disagree" in (tileable(same_outpad, op) or "")
    activation = node_model("MatMul", {"x": (2, 4), "v": (4, 3)}, {}, ["x", "v"])
    module = import_model(activation)
    op = next(op for op in module.ops if op.name == "nn.matmul")
    assert tileable(module, op) is not None
    fine = import_model(node_model("Gemm", {"x": (2, 4)}, {"w": w(4, 3)}, ["x", "w"]))
    assert all(tileable(fine, op) is None for op in fine.ops if op.name == "nn.gemm")


def test_verifier_catches_a_broken_mvm() -> None:
    module, _ = tiled(node_model("MatMul", {"x": (2, 20)}, {"w": w(20, 6)}, ["x", "w"]), SMALL_DIFF)
    op = mvms(module)[0]
    other = mvms(module)[1].attr("array")
    op.set_attrs(array=other)
    with pytest.raises(VerifyError, match="nn.constant of its 'array'"):
        verify(module)
    op.set_attrs(array=op.operands[1].producer.attr("value"), rows_used=99)
    with pytest.raises(VerifyError, match="rows_used"):
        verify(module)


def test_weight_constant_is_removed_and_output_name_kept() -> None:
    module, _ = tiled(node_model("MatMul", {"x": (2, 20)}, {"w": w(20, 6)}, ["x", "w"]), SMALL_DIFF)
    assert "w" not in module.constants
    assert [v.name for v in module.outputs] == ["y"]
    assert module.outputs[0].producer.name == "xbar.assemble"


@pytest.mark.parametrize("target_name", ["pcm", "crossbar", "flash"])
@pytest.mark.parametrize("sample", SAMPLE_NAMES)
def test_check_tiles_without_levels_like_compile(sample: str, target_name: str) -> None:
    """``afmc check`` tiles without computing cell levels (placeholders): the same ops, attributes,
    types, tile and placement report as the full pass, and the placeholders refuse to run."""
    target = load_target(target_name)
    check_only = check_passes(target, None)
    assert [p.levels for p in check_only if isinstance(p, Tile)] == [False]
    full_passes = [replace(p, levels=True) if isinstance(p, Tile) else p for p in check_only]
    runs = [compile_module(load_module(sample_path(sample), sample_shapes(sample, 2)), target, passes=passes)
            for passes in (check_only, full_passes)]
    check, full = runs
    for key in ("tiles", "placement"):
        assert check.context.report[key] == full.context.report[key]

    def plain(value: Any) -> Any:
        return value.tolist() if isinstance(value, np.ndarray) else value

    def structure(module: Module) -> list[tuple[str, dict[str, Any], list[TensorType]]]:
        return [(op.name, {k: plain(v) for k, v in op.attributes.items()}, [r.type for r in op.results])
                for op in module.ops]

    assert structure(check.module) == structure(full.module)
    placeholders = [c for c in check.module.constants.values() if c.data is None]
    assert len(placeholders) == len(mvms(check.module)) > 0
    with pytest.raises(AfmcError, match="elided"):
        run_module(check.module, sample_inputs(sample, 2))
