"""Edge cases of the ops added for third-party models, one node at a time against onnxruntime (the
harness and its 1e-5 tolerance are ``test_interp_ops``'s). The ONNX node tests
(``test_conformance``) cover the documented examples; these cover what they leave out: integer
types, ties, negative indices, infinities, reductions and duplicates."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from test_interp_ops import check, i64, rand


@pytest.mark.parametrize(
    ("op_type", "x", "attrs"),
    [
        ("Gelu", rand(4, 5, low=-8, high=8), {}),
        ("Gelu", rand(4, 5, low=-8, high=8), {"approximate": "tanh"}),
        ("Elu", rand(4, 5, low=-8, high=8), {"alpha": 0.7}),
        ("Selu", rand(4, 5, low=-8, high=8), {}),
        ("Celu", rand(4, 5, low=-8, high=8), {"alpha": 2.0}),
        ("Softplus", np.array([-100, -20, -1, 0, 1, 20, 100], np.float32), {}),
        ("Softsign", rand(4, 5), {}),
        ("Mish", np.array([-100, -20, -1, 0, 1, 20, 100], np.float32), {}),
        ("ThresholdedRelu", rand(4, 5), {"alpha": 0.5}),
        ("Shrink", rand(4, 5), {"bias": 0.25, "lambd": 0.75}),
        ("Shrink", np.array([-5, -1, 0, 1, 5], np.int32), {"bias": 2.0, "lambd": 1.0}),
        ("Floor", np.array([-1.5, -0.5, 0.5, 1.5, np.inf, -np.inf, np.nan], np.float32), {}),
        ("Ceil", np.array([-1.5, -0.5, 0.5, 1.5, np.inf, -np.inf, np.nan], np.float32), {}),
        ("Round", np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 2.6], np.float32), {}),
        ("Sign", np.array([-3, 0, 7], np.int64), {}),
        ("Sign", np.array([-0.5, 0.0, 2.0, np.nan], np.float32), {}),
        ("Sin", rand(4, 5, low=-100, high=100), {}),
        ("Cos", rand(4, 5, low=-100, high=100), {}),
        ("IsNaN", np.array([np.nan, 0, np.inf], np.float32), {}),
        ("IsInf", np.array([np.nan, 0, np.inf, -np.inf], np.float32), {"detect_negative": 0}),
        ("LogSoftmax", np.array([[-1000, 0, 1000], [1, 2, 3]], np.float32), {}),
        ("LogSoftmax", rand(2, 3, 4), {"axis": 1}),
        ("Hardmax", np.array([[1, 3, 3], [2, 2, 1]], np.float32), {}),
    ],
)
def test_unary(op_type: str, x: np.ndarray, attrs: dict[str, Any]) -> None:
    check(op_type, [x], **attrs)


@pytest.mark.parametrize(  # ONNX requires fmod = 1 for floats
    ("dtype", "fmod"), [(np.int32, 0), (np.int64, 0), (np.int8, 0), (np.int32, 1), (np.int64, 1), (np.float32, 1)]
)
def test_mod_signs(fmod: int, dtype: Any) -> None:
    a = np.array([-7, -7, 7, 7, 5, -5, 0], dtype)
    b = np.array([3, -3, 3, -3, 5, 2, 4], dtype)
    check("Mod", [a, b], fmod=fmod)


def test_mod_broadcast_float() -> None:
    check("Mod", [rand(3, 4, low=-10, high=10), np.array([0.7, -1.3, 2.0, 3.5], np.float32)], fmod=1)


@pytest.mark.parametrize("op_type", ["GreaterOrEqual", "LessOrEqual"])
def test_comparisons(op_type: str) -> None:
    check(op_type, [np.array([[1, 2, 3]], np.int64), np.array([[2], [1]], np.int64)])
    check(op_type, [rand(2, 3), rand(3)])


@pytest.mark.parametrize("op_type", ["And", "Or", "Xor"])
def test_logic(op_type: str) -> None:
    a = np.array([[True, False, True, False]])
    check(op_type, [a, np.array([[True], [False]])])


@pytest.mark.parametrize("op_type", ["Sum", "Mean"])
def test_variadic(op_type: str) -> None:
    check(op_type, [rand(2, 3), rand(3), rand(1, 3)])
    check(op_type, [rand(2, 3, dtype=np.float16), rand(3, dtype=np.float16)])


@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
def test_cumsum(exclusive: int, reverse: int) -> None:
    check("CumSum", [rand(3, 4), np.array(1, np.int64)], exclusive=exclusive, reverse=reverse)
    check("CumSum", [np.arange(12, dtype=np.int32).reshape(3, 4), np.array(-2, np.int32)],
          exclusive=exclusive, reverse=reverse)


@pytest.mark.parametrize(
    "op_type", ["ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp"]
)
@pytest.mark.parametrize(("axes", "keepdims"), [(i64(1), 1), (i64(-1, 0), 0), (None, 1)])
def test_reductions(op_type: str, axes: np.ndarray | None, keepdims: int) -> None:
    check(op_type, [rand(3, 4, 2, low=0.5, high=1.5), axes], keepdims=keepdims)


def test_reduce_log_sum_exp_is_stable() -> None:
    check("ReduceLogSumExp", [np.array([[1000, 1000], [-np.inf, -np.inf], [-1000, 0]], np.float32), i64(1)])


@pytest.mark.parametrize("op_type", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("last", [0, 1])
def test_arg_extremes_with_ties(op_type: str, last: int) -> None:
    x = np.array([[1, 3, 3, 0, 0], [2, 2, 2, 2, 2]], np.float32)
    check(op_type, [x], axis=1, select_last_index=last)
    check(op_type, [x], axis=0, keepdims=0, select_last_index=last)


@pytest.mark.parametrize("largest", [0, 1])
def test_top_k_ties_keep_the_lower_index(largest: int) -> None:
    x = np.array([[3, 1, 3, 2, 1, 3], [0, 0, 0, 0, 0, 0]], np.float32)
    check("TopK", [x, i64(4)], n_out=2, largest=largest)
    check("TopK", [np.array([5, 0, 255, 7, 255], np.uint8), i64(3)], n_out=2, largest=largest)
    check("TopK", [rand(4, 3, 2), i64(2)], n_out=2, axis=0, largest=largest)


@pytest.mark.parametrize("upper", [0, 1])
@pytest.mark.parametrize("k", [-5, -1, 0, 2, 9])
def test_trilu(upper: int, k: int) -> None:
    check("Trilu", [rand(2, 3, 4), np.array(k, np.int64)], upper=upper)


def test_tile_and_depth_space() -> None:
    check("Tile", [rand(2, 3), i64(2, 3)])
    x = rand(2, 8, 3, 3)
    for mode in ("DCR", "CRD"):
        check("DepthToSpace", [x], blocksize=2, mode=mode)
    check("SpaceToDepth", [rand(2, 3, 4, 6)], blocksize=2)


def test_gathers_with_negative_indices() -> None:
    x = rand(3, 4)
    check("GatherElements", [x, np.array([[0, -1], [2, -4], [1, 1]], np.int64)], axis=1)
    data = rand(2, 3, 4)
    check("GatherND", [data, np.array([[0, -1], [1, 2]], np.int64)])
    check("GatherND", [data, np.array([[[2], [0]], [[-1], [1]]], np.int64)], batch_dims=1)


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatters(reduction: str) -> None:
    data = rand(3, 4)
    duplicates = reduction != "none"
    rows = np.array([[1, 0, 2, 1], [0, 2, 1, 1]] if duplicates else [[1, 0, 2, 1], [0, 2, 1, 0]], np.int64)
    check("ScatterElements", [data, rows, rand(2, 4)], axis=0, reduction=reduction)
    index = np.array([[2], [0], [2]] if duplicates else [[2], [0], [-2]], np.int64)
    check("ScatterND", [data, index, rand(3, 4)], reduction=reduction)


def test_one_hot() -> None:
    values = np.array([0.0, 5.0], np.float32)
    check("OneHot", [np.array([[0, 3, -1], [9, -5, 2]], np.int64), np.array(4, np.int64), values])
    check("OneHot", [np.array([0, 2, -3], np.int64), np.array([3], np.int64), np.array([-1, 1], np.int64)], axis=0)
    check("OneHot", [np.array([0.7, 2.2, -1.5], np.float32), np.array(3.0, np.float32), values], axis=0)


def test_normalizations() -> None:
    check("InstanceNormalization", [rand(2, 3, 4, 5), rand(3), rand(3)], epsilon=1e-3)
    check("GroupNormalization", [rand(2, 6, 4, 5), rand(6), rand(6)], num_groups=3)
    for p in (1, 2):
        check("LpNormalization", [np.concatenate([rand(3, 4), np.zeros((1, 4), np.float32)]), ], p=p, axis=-1)
    check("GlobalMaxPool", [rand(2, 3, 4, 5)])


def test_prelu_broadcasts_the_slope() -> None:
    check("PRelu", [rand(2, 3, 4), rand(3, 1)])
    # onnxruntime has no integer PRelu kernel: the ONNX reference implementation is the oracle
    check("PRelu", [np.array([-4, 0, 4], np.int32), np.array([2], np.int32)], reference=True)


@pytest.mark.parametrize(
    ("equation", "shapes"),
    [
        ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
        ("bhqd,bhkd->bhqk", [(2, 2, 3, 4), (2, 2, 5, 4)]),
        ("ii->i", [(4, 4)]),
        ("ij->", [(3, 4)]),
        ("...ij,jk", [(2, 3, 4), (4, 2)]),
        ("i,j,k->ijk", [(2,), (3,), (4,)]),
    ],
)
def test_einsum(equation: str, shapes: list[tuple[int, ...]]) -> None:
    check("Einsum", [rand(*s) for s in shapes], equation=equation)


def _grid(n: int, *out: int, dims: int = 2) -> np.ndarray:
    """Normalised positions, a third of them outside [-1, 1], with the corners and the centre exactly."""
    grid = rand(n, *out, dims, low=-1.6, high=1.6)
    grid.reshape(-1)[: 3 * dims] = np.repeat(np.array([-1.0, 1.0, 0.0], np.float32), dims)
    return grid


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [0, 1])
def test_grid_sample_2d(mode: str, padding_mode: str, align_corners: int) -> None:
    """RT-DETR's deformable attention samples with GridSample. Cubic with border padding pads each tap
    (onnxruntime and PyTorch); the ONNX reference clamps the position first and differs there."""
    check("GridSample", [rand(2, 3, 5, 4), _grid(2, 4, 3)], mode=mode, padding_mode=padding_mode,
          align_corners=align_corners)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_grid_sample_3d_and_one_pixel_inputs(mode: str, padding_mode: str) -> None:
    check("GridSample", [rand(1, 2, 3, 4, 5), _grid(1, 2, 3, 2, dims=3)], mode=mode, padding_mode=padding_mode)
    check("GridSample", [rand(2, 2, 1, 1), _grid(2, 3, 3)], mode=mode, padding_mode=padding_mode, align_corners=0)
