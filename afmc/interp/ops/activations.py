"""Activations beyond the basic ones: Gelu, Elu, Selu, Celu, PRelu, Softplus, Softsign, Mish,
ThresholdedRelu, Shrink, and the axis-wise LogSoftmax and Hardmax.

Float formulas run in float64 and round once to the input type: exp/log tails (softplus, elu near
0) then lose nothing to float32 cancellation, which keeps the result at least as close to exact as
onnxruntime's float32 kernels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from ...ir.core import Op
from ..registry import impl
from .common import norm_axis, to_dtype, unsupported
from .elementwise import erf

Array = np.ndarray


def _f64(x: Array) -> Array:
    return np.asarray(x, dtype=np.float64)


def _softplus(x: Array) -> Array:
    """log(1 + e^x) without overflow: logaddexp(0, x)."""
    return np.logaddexp(0.0, x)


def _gelu(op: Op, x: Array) -> Array:
    """0.5·x·(1 + erf(x/√2)), or the tanh approximation when ``approximate = "tanh"``."""
    approximate = op.attr("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise unsupported(op, f"approximate = {approximate!r}")
    if approximate == "tanh":
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)
        return 0.5 * x * (1.0 + np.tanh(inner))
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _elu(op: Op, x: Array) -> Array:
    alpha = float(op.attr("alpha", 1.0))
    return np.where(x < 0, alpha * np.expm1(np.minimum(x, 0.0)), x)


def _selu(op: Op, x: Array) -> Array:
    alpha = float(op.attr("alpha", 1.67326319217681884765625))
    gamma = float(op.attr("gamma", 1.05070102214813232421875))
    return gamma * np.where(x <= 0, alpha * np.expm1(np.minimum(x, 0.0)), x)


def _celu(op: Op, x: Array) -> Array:
    """max(0, x) + min(0, α·(e^(x/α) − 1))."""
    alpha = float(op.attr("alpha", 1.0))
    return np.maximum(x, 0.0) + np.minimum(alpha * np.expm1(np.minimum(x, 0.0) / alpha), 0.0)


def _mish(op: Op, x: Array) -> Array:
    return x * np.tanh(_softplus(x))


def _thresholded_relu(op: Op, x: Array) -> Array:
    alpha = float(op.attr("alpha", 1.0))
    return np.where(x > alpha, x, 0.0)


_FLOAT_UNARY: dict[str, Callable[[Op, Array], Array]] = {
    "nn.gelu": _gelu,
    "nn.elu": _elu,
    "nn.selu": _selu,
    "nn.celu": _celu,
    "nn.softplus": lambda op, x: _softplus(x),
    "nn.softsign": lambda op, x: x / (1.0 + np.abs(x)),
    "nn.mish": _mish,
    "nn.thresholded_relu": _thresholded_relu,
}


@impl(*_FLOAT_UNARY)
def float_unary(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """Float-only ``T -> T`` activations, computed in float64."""
    x = np.asarray(args[0])
    with np.errstate(all="ignore"):
        return [to_dtype(_FLOAT_UNARY[op.name](op, _f64(x)), x.dtype)]


@impl("nn.prelu")
def prelu(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """x where x >= 0, slope·x elsewhere; ``slope`` broadcasts to ``x`` (integers too)."""
    x, slope = np.asarray(args[0]), np.asarray(args[1])
    return [to_dtype(np.where(x < 0, x * slope.astype(x.dtype, copy=False), x), x.dtype)]


@impl("nn.shrink")
def shrink(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """x + bias below −lambd, x − bias above lambd, 0 in between (any numeric type)."""
    x = np.asarray(args[0])
    bias, lambd = float(op.attr("bias", 0.0)), float(op.attr("lambd", 0.5))
    x64 = _f64(x)
    with np.errstate(invalid="ignore"):
        y = np.where(x64 < -lambd, x64 + bias, np.where(x64 > lambd, x64 - bias, 0.0))
        return [np.asarray(y.astype(x.dtype))]


@impl("nn.log_softmax")
def log_softmax(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """x − max − log Σ e^(x − max) along one axis, in float64 (exact where Softmax underflows)."""
    x = np.asarray(args[0])
    axis = norm_axis(int(op.attr("axis", -1)), x.ndim)
    x64 = _f64(x)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        shifted = x64 - x64.max(axis=axis, keepdims=True, initial=-np.inf)
        return [to_dtype(shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True)), x.dtype)]


@impl("nn.hardmax")
def hardmax(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """1 at the first maximum along the axis, 0 elsewhere."""
    x = np.asarray(args[0])
    y = np.zeros_like(x)
    if x.size:
        axis = norm_axis(int(op.attr("axis", -1)), x.ndim)
        first = np.expand_dims(np.argmax(x, axis=axis), axis)
        np.put_along_axis(y, first, 1, axis=axis)
    return [y]
