"""Index-driven data movement: GatherElements, GatherND, ScatterElements, ScatterND, OneHot, TopK.

Indices may be negative (counting from the end of their axis), as ONNX allows. Scatter reductions
apply duplicates in index order with numpy's unbuffered ``ufunc.at``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ...ir.core import Op
from ..registry import impl
from .common import ints, norm_axis, to_dtype, unsupported

Array = np.ndarray


def _wrapped(indices: Array, size: int | Array) -> Array:
    """Negative indices count from the end: ``i + size`` where ``i < 0``."""
    idx = np.asarray(indices).astype(np.int64)
    return np.where(idx < 0, idx + size, idx)


@impl("nn.gather_elements")
def gather_elements(op: Op, args: Sequence[Array | None]) -> list[Array]:
    x, indices = np.asarray(args[0]), np.asarray(args[1])
    axis = norm_axis(int(op.attr("axis", 0)), x.ndim)
    return [np.take_along_axis(x, _wrapped(indices, x.shape[axis]), axis=axis)]


@impl("nn.gather_nd")
def gather_nd(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """Each index tuple (last axis of ``indices``) selects a slice of ``data``; the first
    ``batch_dims`` axes of both are batch axes walked in step."""
    x, indices = np.asarray(args[0]), np.asarray(args[1]).astype(np.int64)
    batch_dims = int(op.attr("batch_dims", 0))
    batch_shape, depth = x.shape[:batch_dims], indices.shape[-1]
    batches = math.prod(batch_shape)
    data = x.reshape((batches, *x.shape[batch_dims:]))
    idx = indices.reshape((batches, *indices.shape[batch_dims:]))
    inner = idx.shape[1:-1]
    batch = np.arange(batches).reshape((batches,) + (1,) * len(inner))
    positions = (batch, *(_wrapped(idx[..., k], data.shape[1 + k]) for k in range(depth)))
    out = data[positions]
    return [np.asarray(out.reshape(batch_shape + inner + x.shape[batch_dims + depth :]))]


_REDUCTIONS = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _scatter(op: Op, out: Array, positions: tuple[Array, ...], updates: Array) -> Array:
    """``out[positions] = updates``, or combined with ``reduction``; ``out`` is modified."""
    reduction = str(op.attr("reduction", "none"))
    if reduction == "none":
        out[positions] = updates
        return out
    ufunc = _REDUCTIONS.get(reduction)
    if ufunc is None:
        raise unsupported(op, f"reduction '{reduction}'")
    ufunc.at(out, positions, updates)
    return out


@impl("nn.scatter_elements")
def scatter_elements(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """``out[..., indices[i, j, ...], ...] = updates[i, j, ...]`` along ``axis``."""
    x, indices, updates = (np.asarray(a) for a in args[:3])
    axis = norm_axis(int(op.attr("axis", 0)), x.ndim)
    grid: list[Array] = list(np.indices(indices.shape, sparse=True))
    grid[axis] = _wrapped(indices, x.shape[axis])
    return [_scatter(op, x.copy(), tuple(grid), updates.astype(x.dtype, copy=False))]


@impl("nn.scatter_nd")
def scatter_nd(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """Each index tuple of ``indices`` names a slice of ``data`` that takes one slice of ``updates``."""
    x, indices, updates = np.asarray(args[0]), np.asarray(args[1]).astype(np.int64), np.asarray(args[2])
    positions = tuple(_wrapped(indices[..., k], x.shape[k]) for k in range(indices.shape[-1]))
    return [_scatter(op, x.copy(), positions, updates.astype(x.dtype, copy=False))]


@impl("nn.one_hot")
def one_hot(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """``values[1]`` where the new ``axis`` equals the index (negatives wrap once), ``values[0]``
    elsewhere; out-of-range indices give an all-off row."""
    indices, depth_arg, values = (np.asarray(a) for a in args[:3])
    depth = int(np.asarray(depth_arg).reshape(-1)[0])
    rank = indices.ndim + 1
    axis = norm_axis(int(op.attr("axis", -1)), rank)
    idx = indices.astype(np.int64)  # float indices truncate toward zero
    idx = np.where(idx < 0, idx + depth, idx)
    classes = np.arange(depth, dtype=np.int64).reshape((depth,) + (1,) * (rank - 1 - axis))
    hot = np.expand_dims(idx, axis) == classes
    off, on = values.reshape(-1)[0], values.reshape(-1)[1]
    return [to_dtype(np.where(hot, on, off), values.dtype)]


@impl("nn.top_k")
def top_k(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """The ``k`` largest (``largest = 0``: smallest) along ``axis``, sorted, with int64 indices;
    equal values keep the lower index first, as onnxruntime does."""
    x = np.asarray(args[0])
    k = ints(args[1])[0]
    axis = norm_axis(int(op.attr("axis", -1)), x.ndim)
    n = x.shape[axis]
    if op.attr("largest", 1):
        # a stable ascending sort of the reversed axis, read backwards, is descending with ties
        # in ascending original index (negating would overflow unsigned and minimum integers)
        order = np.argsort(np.flip(x, axis), axis=axis, kind="stable")
        order = (n - 1 - np.flip(order, axis)) if n else order
    else:
        order = np.argsort(x, axis=axis, kind="stable")
    order = np.take(order, np.arange(min(k, n)), axis=axis)
    return [np.take_along_axis(x, order, axis=axis), order.astype(np.int64)]

