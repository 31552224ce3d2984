"""Reductions with axes as an operand (opset 18 style): ReduceMean, ReduceSum, ReduceMax, ReduceMin,
ReduceProd, ReduceL1, ReduceL2, ReduceSumSquare, ReduceLogSumExp; and ArgMax/ArgMin.

Float sums, products and means accumulate in float64 and round once, which is at least as close to
the exact value as onnxruntime's float32 accumulation. Empty reductions give ONNX's identities
(0, 1, -inf/min, +inf/max). ``noop_with_empty_axes`` reduces over no axis, so the element-wise
part (|x|, x², ...) still applies, as in onnxruntime and the ONNX reference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ...ir.core import Op
from ..registry import impl
from .common import ints, norm_axis, to_dtype

Array = np.ndarray


def _accumulator(dtype: np.dtype) -> np.dtype | None:
    return np.dtype(np.float64) if dtype.kind == "f" else None


def _sum(x: Array, axes: tuple[int, ...], keepdims: bool) -> Array:
    return np.sum(x, axis=axes, keepdims=keepdims, dtype=_accumulator(x.dtype))


def _mean(x: Array, axes: tuple[int, ...], keepdims: bool) -> Array:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.mean(x, axis=axes, keepdims=keepdims, dtype=_accumulator(x.dtype))


def _lowest(dtype: np.dtype) -> Any:
    if dtype.kind == "f":
        return -np.inf
    if dtype.kind == "b":
        return False
    return np.iinfo(dtype).min


def _highest(dtype: np.dtype) -> Any:
    if dtype.kind == "f":
        return np.inf
    if dtype.kind == "b":
        return True
    return np.iinfo(dtype).max


def _max(x: Array, axes: tuple[int, ...], keepdims: bool) -> Array:
    return np.max(x, axis=axes, keepdims=keepdims, initial=_lowest(x.dtype))


def _min(x: Array, axes: tuple[int, ...], keepdims: bool) -> Array:
    return np.min(x, axis=axes, keepdims=keepdims, initial=_highest(x.dtype))


def _prod(x: Array, axes: tuple[int, ...], keepdims: bool) -> Array:
    return np.prod(x, axis=axes, keepdims=keepdims, dtype=_accumulator(x.dtype))


def _sum_square(x: Array, axes: tuple[int, ...], keepdims: bool) -> Array:
    work = x.astype(_accumulator(x.dtype) or x.dtype, copy=False)
    return np.sum(work * work, axis=axes, keepdims=keepdims)


def _l1(x: Array, axes: tuple[int, ...], keepdims: bool) -> Array:
    return np.sum(np.abs(x), axis=axes, keepdims=keepdims, dtype=_accumulator(x.dtype))


def _l2(x: Array, axes: tuple[int, ...], keepdims: bool) -> Array:
    with np.errstate(invalid="ignore"):
        return np.sqrt(_sum_square(x, axes, keepdims))


def _log_sum_exp(x: Array, axes: tuple[int, ...], keepdims: bool) -> Array:
    """max + log Σ e^(x − max): no overflow; an all −inf (or empty) slice gives −inf."""
    x64 = x.astype(np.float64)
    peak = np.max(x64, axis=axes, keepdims=True, initial=-np.inf)
    shift = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(np.sum(np.exp(x64 - shift), axis=axes, keepdims=True)) + shift
    return out if keepdims else np.squeeze(out, axis=axes)


_REDUCERS: dict[str, Callable[[Array, tuple[int, ...], bool], Array]] = {
    "nn.reduce_sum": _sum,
    "nn.reduce_mean": _mean,
    "nn.reduce_max": _max,
    "nn.reduce_min": _min,
    "nn.reduce_prod": _prod,
    "nn.reduce_sum_square": _sum_square,
    "nn.reduce_l1": _l1,
    "nn.reduce_l2": _l2,
    "nn.reduce_log_sum_exp": _log_sum_exp,
}


@impl(*_REDUCERS)
def reduce(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """Empty or absent axes reduce everything, unless ``noop_with_empty_axes`` makes it the identity."""
    x = np.asarray(args[0])
    axes_arg = args[1] if len(args) > 1 else None
    axes = tuple(sorted({norm_axis(a, x.ndim) for a in ints(axes_arg)}))
    if not axes:
        axes = () if op.attr("noop_with_empty_axes", 0) else tuple(range(x.ndim))
    keepdims = bool(op.attr("keepdims", 1))
    return [to_dtype(_REDUCERS[op.name](x, axes, keepdims), x.dtype)]


@impl("nn.arg_max", "nn.arg_min")
def arg_extreme(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """int64 index of the first (``select_last_index``: the last) extreme along ``axis``."""
    x = np.asarray(args[0])
    axis = norm_axis(int(op.attr("axis", 0)), x.ndim)
    find = np.argmax if op.name == "nn.arg_max" else np.argmin
    if op.attr("select_last_index", 0):
        index = x.shape[axis] - 1 - find(np.flip(x, axis), axis=axis)
    else:
        index = find(x, axis=axis)
    if op.attr("keepdims", 1):
        index = np.expand_dims(index, axis)
    return [np.asarray(index, dtype=np.int64)]
