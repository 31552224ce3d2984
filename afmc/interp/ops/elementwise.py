"""Element-wise ops: unary math and activations, broadcasting binary math, comparisons, Where, Cast, Clip.

Results keep the input element type (ONNX's ``T -> T``); comparisons give ``bool``. Where a float32
formula loses precision (sigmoid tails), it runs in float64 and rounds once at the end; erf has its
own float32 formula, accurate to ~1.5 ulp.
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


def _erf64(x64: Array) -> Array:
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
    return np.copysign(out, x64)


# float32 inputs get a float32 erf (float64 costs 2x the memory traffic and the Chebyshev form 3
# passes per degree), accurate to ~1.5 ulp (tested against math.erf), from two polynomials whose
# float32 coefficients are fitted with each higher one already rounded (so the lower ones absorb it):
#   |x| <= 1 : erf(x) = x + x * E(x^2),  E = erf(x)/x - 1 small, so its rounding errors barely show
#   |x| > 1  : erf(x) = +-(1 - exp(-x^2) * R(1/|x|)),  R = erfc(x) e^(x^2) fitted on 1 <= |x| <= 4
#              (erfc(4) = 1.5e-8 is below half an ulp of 1, so beyond 4 the formula gives +-1 anyway)
def _fit_rounded(u: Array, f: Array, degree: int, weight: Array) -> Array:
    residual, coefficients = f.copy(), []
    for k in range(degree, -1, -1):
        c = float(np.float32(np.polynomial.polynomial.polyfit(u, residual, k, w=weight)[k]))
        coefficients.append(c)
        residual = residual - c * u**k
    return np.array(coefficients[::-1], np.float32)


def _fit_erf32() -> tuple[Array, Array]:
    nodes = np.cos(np.pi * (np.arange(2000) + 0.5) / 2000) / 2 + 0.5  # Chebyshev nodes on [0, 1]
    s = nodes  # x^2 over [0, 1]
    core = np.array([math.erf(v) / v - 1.0 if v > 0 else 2.0 / math.sqrt(math.pi) - 1.0 for v in np.sqrt(s)])
    t = 0.25 + 0.75 * nodes  # 1/x over [1/4, 1]
    tail = np.array([math.erfc(v) * math.exp(v * v) for v in 1.0 / t])
    return _fit_rounded(s, core, 6, np.ones_like(s)), _fit_rounded(t, tail, 8, 1.0 / tail)


_ERF32_CORE, _ERF32_TAIL = _fit_erf32()


def _horner(coefficients: Array, u: Array) -> Array:
    out = u * coefficients[-1]
    for c in coefficients[-2:0:-1]:
        out += c
        out *= u
    out += coefficients[0]
    return out


def _erf32(x: Array) -> Array:
    """Every element through the core formula (its overflow beyond |x| = 1 is overwritten), then
    the tail for the elements that need it."""
    s = x * x
    out = _horner(_ERF32_CORE, s)
    out *= x
    out += x
    tail = np.flatnonzero(s > 1)  # NaN stays in the core formula, which returns it
    if tail.size:
        xt, st = x.reshape(-1)[tail], s.reshape(-1)[tail]
        erfc = _horner(_ERF32_TAIL, np.float32(1.0) / np.abs(xt))
        np.negative(st, out=st)
        erfc *= np.exp(st, out=st)
        np.subtract(np.float32(1.0), erfc, out=erfc)
        out.reshape(-1)[tail] = np.copysign(erfc, xt, out=erfc)
    return out


def erf(x: Array) -> Array:
    """The error function, vectorised; result in ``x``'s dtype. float32 inputs: float32 arithmetic,
    within ~1.5 ulp; others: float64, accurate to ~1e-14."""
    x = np.asarray(x)
    with np.errstate(over="ignore", invalid="ignore"):
        if x.dtype == np.float32:
            return _erf32(np.ascontiguousarray(x))
        return to_dtype(_erf64(np.asarray(x, dtype=np.float64)), x.dtype)


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


def register_unary(table: dict[str, Callable[[Array], Array]]) -> None:
    """Implement each op of ``table`` as ``T -> T`` math on its one operand; numpy's inf/nan results
    are ONNX's too, so warnings are muted."""

    def unary(op: Op, args: Sequence[Array | None]) -> list[Array]:
        x = np.asarray(args[0])
        with np.errstate(all="ignore"):
            return [to_dtype(table[op.name](x), x.dtype)]

    impl(*table)(unary)


register_unary(_UNARY)


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


def register_predicates(table: dict[str, Callable[[Array, Array], Array]]) -> None:
    """Implement each op of ``table`` as a broadcasting comparison or logic op with a ``bool`` result."""

    def predicate(op: Op, args: Sequence[Array | None]) -> list[Array]:
        a, b = np.asarray(args[0]), np.asarray(args[1])
        return [to_dtype(table[op.name](a, b), np.dtype(bool))]

    impl(*table)(predicate)


register_predicates(_COMPARE)


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


# -- linear quantization (ONNX opset 21: scalar, per-axis and blocked scales) ---------------------------
_QUANT_RANGES = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127),
                 np.dtype(np.uint16): (0, 65535), np.dtype(np.int16): (-32768, 32767)}


def _per_element(value: Array, shape: tuple[int, ...], axis: int, block_size: int) -> Array:
    """A scale or zero point broadcastable to ``shape``: a scalar, a 1-D per-axis vector, or blocks
    along ``axis`` (each entry repeated ``block_size`` times, the last block cut to fit)."""
    value = np.asarray(value)
    if value.ndim == 0 or value.size == 1:
        return value.reshape(())
    axis = axis + len(shape) if axis < 0 else axis
    if not block_size:
        dims = [1] * len(shape)
        dims[axis] = value.size
        return value.reshape(dims)
    return np.repeat(value, block_size, axis=axis).take(range(shape[axis]), axis=axis)


@impl("nn.dequantize_linear")
def dequantize_linear(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """y = (x - zero_point) * scale, in float32, in the scale's type."""
    x, scale = np.asarray(args[0]), np.asarray(args[1])
    zero = args[2] if len(args) > 2 else None
    axis, block = int(op.attr("axis", 1)), int(op.attr("block_size", 0))
    dx = x.astype(np.float32)
    if zero is not None:
        dx = dx - _per_element(zero, x.shape, axis, block).astype(np.float32)
    return [to_dtype(dx * _per_element(scale, x.shape, axis, block).astype(np.float32), scale.dtype)]


@impl("nn.quantize_linear")
def quantize_linear(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """y = saturate(round_half_even(x / scale) + zero_point), in the zero point's type (else
    ``output_dtype``, else uint8)."""
    x, scale = np.asarray(args[0]), np.asarray(args[1])
    zero = args[2] if len(args) > 2 else None
    axis, block = int(op.attr("axis", 1)), int(op.attr("block_size", 0))
    target = dtypes.to_numpy(op.results[0].type.dtype)
    low, high = _QUANT_RANGES[target]
    q = np.rint(x / _per_element(scale, x.shape, axis, block).astype(x.dtype)).astype(np.int64)
    if zero is not None:
        q = q + _per_element(zero, x.shape, axis, block).astype(np.int64)
    return [np.clip(q, low, high).astype(target)]


@impl("nn.dynamic_quantize_linear")
def dynamic_quantize_linear(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """uint8 quantization over the range [min(0, min x), max(0, max x)] (onnxruntime's arithmetic, in
    float32): scale = (max - min) / 255 (1/255 for an all-zero x), zero point = round(-min / scale)."""
    x = np.asarray(args[0], np.float32)
    high = np.float32(max(0.0, float(x.max()))) if x.size else np.float32(0)
    low = np.float32(min(0.0, float(x.min()))) if x.size else np.float32(0)
    scale = np.float32(np.float32(1.0) if high == low else high - low) / np.float32(255)
    zero = np.float32(np.rint(np.clip(np.float32(0) - low / scale, 0, 255)))
    y = np.clip(np.rint(x / scale) + zero, 0, 255)
    return [y.astype(np.uint8), np.asarray(scale, np.float32), np.asarray(zero).astype(np.uint8)]
