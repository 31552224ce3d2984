"""Normalisations over instance, group or one axis: InstanceNormalization, GroupNormalization,
LpNormalization; and GlobalMaxPool. Statistics are computed in float64 and the result rounded once."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...ir.core import Op
from ..registry import impl
from .common import norm_axis, to_dtype, unsupported

Array = np.ndarray


def _normalise(x64: Array, axes: tuple[int, ...], eps: float) -> Array:
    """(x − mean) / sqrt(var + eps) over ``axes`` (population variance)."""
    centered = x64 - x64.mean(axis=axes, keepdims=True)
    return centered / np.sqrt((centered * centered).mean(axis=axes, keepdims=True) + eps)


@impl("nn.instance_normalization")
def instance_normalization(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """Per sample and channel over the spatial axes, then a per-channel scale and bias."""
    x = np.asarray(args[0])
    scale, bias = (np.asarray(a, dtype=np.float64) for a in args[1:3])
    channel = (-1,) + (1,) * (x.ndim - 2)
    y = _normalise(x.astype(np.float64), tuple(range(2, x.ndim)), float(op.attr("epsilon", 1e-5)))
    return [to_dtype(y * scale.reshape(channel) + bias.reshape(channel), x.dtype)]


@impl("nn.group_normalization")
def group_normalization(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """Channels split into ``num_groups`` groups, each normalised over its channels and the spatial
    axes, then a per-channel scale and bias (opset 21)."""
    x = np.asarray(args[0])
    scale, bias = (np.asarray(a, dtype=np.float64) for a in args[1:3])
    n = x.shape[0]
    groups = int(op.attr("num_groups"))
    grouped = x.astype(np.float64).reshape(n, groups, -1)
    y = _normalise(grouped, (2,), float(op.attr("epsilon", 1e-5))).reshape(x.shape)
    channel = (-1,) + (1,) * (x.ndim - 2)
    return [to_dtype(y * scale.reshape(channel) + bias.reshape(channel), x.dtype)]


@impl("nn.lp_normalization")
def lp_normalization(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """x / ||x||_p along ``axis`` (p = 1 or 2); a zero norm gives 0."""
    x = np.asarray(args[0])
    axis = norm_axis(int(op.attr("axis", -1)), x.ndim)
    p = int(op.attr("p", 2))
    if p not in (1, 2):
        raise unsupported(op, f"p = {p} (ONNX defines 1 and 2)")
    x64 = x.astype(np.float64)
    norm = np.abs(x64).sum(axis=axis, keepdims=True) if p == 1 else np.sqrt((x64 * x64).sum(axis=axis, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        return [to_dtype(np.where(norm == 0, 0.0, x64 / norm), x.dtype)]


@impl("nn.global_max_pool")
def global_max_pool(op: Op, args: Sequence[Array | None]) -> list[Array]:
    x = np.asarray(args[0])
    return [np.max(x, axis=tuple(range(2, x.ndim)), keepdims=True)]
