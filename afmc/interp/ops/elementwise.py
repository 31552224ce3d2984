"""Element-wise ops: unary math and activations, broadcasting binary math, comparisons, Where, Cast, Clip.

Results keep the input element type (ONNX's ``T -> T``); comparisons give ``bool``. Where a float32
formula loses precision (sigmoid tails, erf), it runs in float64 and rounds once at the end.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
from numpy.polynomial import chebyshev

from ...ir import dtypes
from ...ir.core import Op
from ..registry import impl
from .common import compute_float, to_dtype

Array = np.ndarray


# -- erf ------------------------------------------------------------------------------------------
# scipy is not a dependency and math.erf per element is ~10x slower than polynomials, so erf is two
# Chebyshev interpolants fitted to math.erf/math.erfc once at import (max abs error ~1e-14):
#   |x| <= 2 : erf(x) = x * P(x^2 / 2 - 1)
#   2 < |x| < 6 : erf(x) = 1 - exp(-x^2) * Q(u),  u linear in 1/x over [1/6, 1/2]
#   |x| >= 6 : erf(x) = +-1 (erfc(6) = 2e-17, below float64 resolution at 1)
_ERF_SPLIT, _ERF_ONE = 2.0, 6.0
_INV_LO, _INV_HI = 1.0 / _ERF_ONE, 1.0 / _ERF_SPLIT


def _fit_erf_core() -> Array:
    def f(u: Array) -> Array:
        x = np.sqrt((u + 1.0) * 2.0)
        return np.array([math.erf(v) / v if v > 0 else 2.0 / math.sqrt(math.pi) for v in x])

    return chebyshev.chebinterpolate(f, 18)


def _fit_erfc_tail() -> Array:
    def f(u: Array) -> Array:
        x = 1.0 / (_INV_LO + (u + 1.0) * (_INV_HI - _INV_LO) / 2.0)
        return np.array([math.erfc(v) * math.exp(v * v) for v in x])

    return chebyshev.chebinterpolate(f, 14)


_ERF_CORE = _fit_erf_core()
_ERFC_TAIL = _fit_erfc_tail()


def erf(x: Array) -> Array:
    """The error function, vectorised, accurate to ~1e-14 in float64; result in ``x``'s dtype."""
    x64 = np.asarray(x, dtype=np.float64)
    ax = np.abs(x64)
    out = np.ones_like(x64)
    core = ax <= _ERF_SPLIT
    a = ax[core]
    out[core] = a * chebyshev.chebval(a * a / 2.0 - 1.0, _ERF_CORE)
    tail = (ax > _ERF_SPLIT) & (ax < _ERF_ONE)
    a = ax[tail]
    u = (1.0 / a - _INV_LO) * (2.0 / (_INV_HI - _INV_LO)) - 1.0
    out[tail] = 1.0 - np.exp(-a * a) * chebyshev.chebval(u, _ERFC_TAIL)
    out[np.isnan(x64)] = np.nan
    return to_dtype(np.copysign(out, x64), np.asarray(x).dtype)


def _sigmoid(x: Array) -> Array:
    """1 / (1 + e^-x) in float64: exact tails, no cancellation, overflow gives the right limit."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


_UNARY: dict[str, Callable[[Array], Array]] = {
    "nn.abs": np.abs,
    "nn.neg": np.negative,
    "nn.exp": np.exp,
    "nn.log": np.log,
    "nn.sqrt": np.sqrt,
    "nn.reciprocal": np.reciprocal,
    "nn.tanh": np.tanh,
    "nn.sigmoid": _sigmoid,
    "nn.erf": erf,
    "nn.relu": lambda x: np.maximum(x, np.zeros((), x.dtype)),
    "nn.not": np.logical_not,
}


@impl(*_UNARY)
def unary(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """Table-driven ``T -> T`` math; numpy's inf/nan results are ONNX's too, so warnings are muted."""
    x = np.asarray(args[0])
    with np.errstate(all="ignore"):
        return [to_dtype(_UNARY[op.name](x), x.dtype)]


@impl("nn.leaky_relu")
def leaky_relu(op: Op, args: Sequence[Array | None]) -> list[Array]:
    x = np.asarray(args[0])
    alpha = float(op.attr("alpha", 0.01))
    return [to_dtype(np.where(x >= 0, x, x * np.asarray(alpha, x.dtype)), x.dtype)]


@impl("nn.hard_sigmoid")
def hard_sigmoid(op: Op, args: Sequence[Array | None]) -> list[Array]:
    x = np.asarray(args[0])
    alpha, beta = float(op.attr("alpha", 0.2)), float(op.attr("beta", 0.5))
    return [to_dtype(np.clip(x * np.asarray(alpha, x.dtype) + np.asarray(beta, x.dtype), 0, 1), x.dtype)]


@impl("nn.hard_swish")
def hard_swish(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """x * HardSigmoid(x) with ONNX's fixed alpha = 1/6, beta = 0.5."""
    x = np.asarray(args[0])
    gate = np.clip(x * np.asarray(1.0 / 6.0, x.dtype) + np.asarray(0.5, x.dtype), 0, 1)
    return [to_dtype(x * gate, x.dtype)]


# -- binary ---------------------------------------------------------------------------------------
def _div(a: Array, b: Array) -> Array:
    """True division for floats; integers truncate toward zero (C++ and onnxruntime semantics)."""
    if a.dtype.kind in "iu":
        safe = np.where(b == 0, 1, b).astype(a.dtype)
        quotient = a // safe
        fix = (a % safe != 0) & ((a < 0) != (safe < 0))
        return np.where(b == 0, 0, quotient + fix.astype(a.dtype))
    return np.divide(a, b.astype(a.dtype, copy=False))


def _pow(a: Array, b: Array) -> Array:
    """Pow(T, T1) -> T: integer bases keep exact integer powers; float exponents round toward zero."""
    if a.dtype.kind in "iu" and b.dtype.kind in "iu" and not (b < 0).any():
        return np.power(a, b.astype(a.dtype))
    if a.dtype.kind in "iu":
        return np.trunc(np.power(a.astype(np.float64), b.astype(np.float64)))
    work = compute_float(a.dtype)
    return np.power(a.astype(work, copy=False), b.astype(work, copy=False))


_ARITH: dict[str, Callable[[Array, Array], Array]] = {
    "nn.add": np.add,
    "nn.sub": np.subtract,
    "nn.mul": np.multiply,
    "nn.div": _div,
    "nn.pow": _pow,
}


@impl(*_ARITH)
def arithmetic(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """Numpy broadcasting is ONNX's multidirectional broadcasting; the result takes A's type."""
    a, b = np.asarray(args[0]), np.asarray(args[1])
    with np.errstate(all="ignore"):
        return [to_dtype(_ARITH[op.name](a, b), a.dtype)]


_COMPARE: dict[str, Callable[[Array, Array], Array]] = {
    "nn.equal": np.equal,
    "nn.greater": np.greater,
    "nn.less": np.less,
}


@impl(*_COMPARE)
def compare(op: Op, args: Sequence[Array | None]) -> list[Array]:
    a, b = np.asarray(args[0]), np.asarray(args[1])
    return [to_dtype(_COMPARE[op.name](a, b), np.dtype(bool))]


_VARIADIC: dict[str, Callable[[Array, Array], Array]] = {"nn.min": np.minimum, "nn.max": np.maximum}


@impl(*_VARIADIC)
def variadic(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """Min/Max over any number of broadcast inputs; NaN propagates as in onnxruntime."""
    arrays = [np.asarray(a) for a in args if a is not None]
    out = functools.reduce(_VARIADIC[op.name], arrays)
    return [to_dtype(out, arrays[0].dtype)]


@impl("nn.where")
def where(op: Op, args: Sequence[Array | None]) -> list[Array]:
    cond, x, y = (np.asarray(a) for a in args)
    return [to_dtype(np.where(cond, x, y), x.dtype)]


@impl("nn.clip")
def clip(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """max(min) then min(max): when min > max every element becomes max, as ONNX specifies."""
    x = np.asarray(args[0])
    low = args[1] if len(args) > 1 else None
    high = args[2] if len(args) > 2 else None
    out = x
    if low is not None and np.asarray(low).size:
        out = np.maximum(out, np.asarray(low).astype(x.dtype).reshape(()))
    if high is not None and np.asarray(high).size:
        out = np.minimum(out, np.asarray(high).astype(x.dtype).reshape(()))
    return [to_dtype(out, x.dtype)]


def cast_target(to: object) -> np.dtype:
    """The numpy type of Cast's ``to``: an IR dtype name ("f32") or an ONNX TensorProto enum."""
    if isinstance(to, str):
        return dtypes.to_numpy(to)
    return dtypes.to_numpy(dtypes.from_onnx(int(to)))  # type: ignore[call-overload]


@impl("nn.cast")
def cast(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """numpy casts round float->float to nearest even and truncate float->int, like onnxruntime."""
    x = np.asarray(args[0])
    target = cast_target(op.attr("to"))
    if target.kind == "O":
        return [np.vectorize(str, otypes=[object])(x) if x.size else x.astype(object)]
    if x.dtype.kind == "O":
        return [x.astype(np.float64).astype(target) if target.kind != "b" else x.astype(target)]
    with np.errstate(all="ignore"):
        return [np.asarray(x.astype(target))]
