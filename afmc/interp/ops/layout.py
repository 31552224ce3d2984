"""Layout ops that rearrange or mask elements without arithmetic: Tile, Trilu, DepthToSpace,
SpaceToDepth."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...ir.core import Op
from ..registry import impl
from .common import ints, unsupported

Array = np.ndarray


@impl("nn.tile")
def tile(op: Op, args: Sequence[Array | None]) -> list[Array]:
    x = np.asarray(args[0])
    return [np.tile(x, ints(args[1]))]


@impl("nn.trilu")
def trilu(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """Keep the upper (``upper = 1``) or lower triangle of the last two axes, shifted by ``k``."""
    x = np.asarray(args[0])
    k_arg = args[1] if len(args) > 1 else None
    k = ints(k_arg)[0] if k_arg is not None and np.asarray(k_arg).size else 0
    rows, cols = x.shape[-2], x.shape[-1]
    k = max(min(k, cols), -rows)  # a diagonal beyond the matrix keeps all or nothing (no int64 overflow)
    keep = np.triu(np.ones((rows, cols), bool), k) if op.attr("upper", 1) else np.tril(np.ones((rows, cols), bool), k)
    return [np.where(keep, x, np.zeros((), x.dtype))]


@impl("nn.depth_to_space")
def depth_to_space(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """[N, C·b², H, W] -> [N, C, H·b, W·b]; ``DCR`` takes depth as (b, b, C), ``CRD`` as (C, b, b)."""
    x = np.asarray(args[0])
    b = int(op.attr("blocksize"))
    n, c, h, w = x.shape
    mode = op.attr("mode", "DCR")
    if mode not in ("DCR", "CRD"):
        raise unsupported(op, f"mode {mode!r}")
    if mode == "CRD":
        y = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    else:
        y = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    return [y.reshape(n, c // (b * b), h * b, w * b)]


@impl("nn.space_to_depth")
def space_to_depth(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """[N, C, H·b, W·b] -> [N, C·b², H, W], depth ordered as (b, b, C) (DepthToSpace DCR's inverse)."""
    x = np.asarray(args[0])
    b = int(op.attr("blocksize"))
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b).transpose(0, 3, 5, 1, 2, 4)
    return [y.reshape(n, c * b * b, h // b, w // b)]
