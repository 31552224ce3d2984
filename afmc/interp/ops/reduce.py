"""Reductions with axes as an operand (opset 18 style): ReduceMean, ReduceSum, ReduceMax.

Float sums and means accumulate in float64 and round once, which is at least as close to the exact
value as onnxruntime's float32 accumulation. Empty reductions give ONNX's identities (0, -inf/min).
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


def _max(x: Array, axes: tuple[int, ...], keepdims: bool) -> Array:
    return np.max(x, axis=axes, keepdims=keepdims, initial=_lowest(x.dtype))


_REDUCERS: dict[str, Callable[[Array, tuple[int, ...], bool], Array]] = {
    "nn.reduce_sum": _sum,
    "nn.reduce_mean": _mean,
    "nn.reduce_max": _max,
}


@impl(*_REDUCERS)
def reduce(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """Empty or absent axes reduce everything, unless ``noop_with_empty_axes`` makes it the identity."""
    x = np.asarray(args[0])
    axes_arg = args[1] if len(args) > 1 else None
    axes = tuple(sorted({norm_axis(a, x.ndim) for a in ints(axes_arg)}))
    if not axes:
        if op.attr("noop_with_empty_axes", 0):
            return [x]
        axes = tuple(range(x.ndim))
    keepdims = bool(op.attr("keepdims", 1))
    return [to_dtype(_REDUCERS[op.name](x, axes, keepdims), x.dtype)]
