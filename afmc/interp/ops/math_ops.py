"""Element-wise math and logic beyond ``elementwise``: rounding (Floor, Ceil, Round), Sign, Sin, Cos,
IsNaN, IsInf, Mod, the ``>=``/``<=`` comparisons, And/Or/Xor, variadic Sum and Mean, and CumSum.

Float sums (Sum, Mean, CumSum) accumulate in float64 and round once; trigonometry runs in float64
too, so results are the correctly rounded float32 values in practice.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np

from ...ir.core import Op
from ..registry import impl
from .common import ints, norm_axis, to_dtype
from .elementwise import register_predicates, register_unary

Array = np.ndarray


def _in_float64(fn: Callable[[Array], Array]) -> Callable[[Array], Array]:
    return lambda x: fn(np.asarray(x, dtype=np.float64))


_UNARY: dict[str, Callable[[Array], Array]] = {
    "nn.floor": np.floor,
    "nn.ceil": np.ceil,
    "nn.round": np.round,  # half to even, as ONNX specifies
    "nn.sign": np.sign,
    "nn.sin": _in_float64(np.sin),
    "nn.cos": _in_float64(np.cos),
}


register_unary(_UNARY)


@impl("nn.is_nan")
def is_nan(op: Op, args: Sequence[Array | None]) -> list[Array]:
    return [np.isnan(np.asarray(args[0]))]


@impl("nn.is_inf")
def is_inf(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """Infinities of the signs ``detect_positive``/``detect_negative`` select."""
    x = np.asarray(args[0])
    positive = bool(op.attr("detect_positive", 1)) & (x == np.inf)
    negative = bool(op.attr("detect_negative", 1)) & (x == -np.inf)
    return [np.asarray(positive | negative)]


@impl("nn.mod")
def mod(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """``fmod = 0``: the remainder takes the divisor's sign (Python's ``%``); ``fmod = 1``: the
    dividend's (C's ``fmod``). An integer remainder by zero is 0, as numpy gives it."""
    a, b = np.asarray(args[0]), np.asarray(args[1])
    fn = np.fmod if op.attr("fmod", 0) else np.mod
    with np.errstate(all="ignore"):
        return [to_dtype(fn(a, b), a.dtype)]


_BINARY_BOOL: dict[str, Callable[[Array, Array], Array]] = {
    "nn.greater_or_equal": np.greater_equal,
    "nn.less_or_equal": np.less_equal,
    "nn.and": np.logical_and,
    "nn.or": np.logical_or,
    "nn.xor": np.logical_xor,
}


register_predicates(_BINARY_BOOL)


@impl("nn.sum", "nn.mean")
def sum_mean(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """Variadic broadcasting Sum and Mean of floats: accumulate in float64, Mean divides once."""
    arrays = [np.asarray(a) for a in args if a is not None]
    with np.errstate(all="ignore"):
        total = functools.reduce(np.add, [a.astype(np.float64) for a in arrays])
        if op.name == "nn.mean":
            total = total / len(arrays)
    return [to_dtype(total, arrays[0].dtype)]


@impl("nn.cum_sum")
def cum_sum(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """Running sum along ``axis``; ``exclusive`` shifts it by one, ``reverse`` runs from the end."""
    x = np.asarray(args[0])
    axis = norm_axis(ints(args[1])[0], x.ndim)
    work = x.astype(np.float64) if x.dtype.kind == "f" else x
    if op.attr("reverse", 0):
        work = np.flip(work, axis)
    out = np.cumsum(work, axis=axis, dtype=work.dtype)
    if op.attr("exclusive", 0) and out.shape[axis]:  # shift by one: element i holds the sum of the elements before it
        head = np.zeros_like(np.take(out, [0], axis=axis))
        out = np.concatenate([head, np.take(out, np.arange(out.shape[axis] - 1), axis=axis)], axis=axis)
    if op.attr("reverse", 0):
        out = np.flip(out, axis)
    return [to_dtype(out, x.dtype)]
