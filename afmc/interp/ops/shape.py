"""Data-movement ops: reshape, transpose, (un)squeeze, flatten, concat, split, slice, gather, expand,
shape, constant_of_shape, range, identity. None of them changes element values or types."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ...ir.core import Op
from ..registry import impl
from .common import compute_float, ints, norm_axis

Array = np.ndarray


@impl("nn.identity")
def identity(op: Op, args: Sequence[Array | None]) -> list[Array]:
    return [np.asarray(args[0])]


@impl("nn.reshape")
def reshape(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """A 0 copies the input dimension unless ``allowzero``; one -1 is inferred."""
    x = np.asarray(args[0])
    shape = list(ints(args[1]))
    if not op.attr("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [x.reshape(shape)]


@impl("nn.transpose")
def transpose(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """Without ``perm`` the axes are reversed."""
    x = np.asarray(args[0])
    perm = ints(op.attr("perm"))
    return [np.transpose(x, perm if len(perm) == x.ndim else None)]


@impl("nn.squeeze")
def squeeze(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """Without ``axes`` every size-1 dimension goes."""
    x = np.asarray(args[0])
    axes_arg = args[1] if len(args) > 1 else None
    if axes_arg is None:
        return [np.squeeze(x)]
    axes = tuple(norm_axis(a, x.ndim) for a in ints(axes_arg))
    return [np.squeeze(x, axis=axes)]


@impl("nn.unsqueeze")
def unsqueeze(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """Axes index the output, whose rank is the input rank plus the number of axes."""
    x = np.asarray(args[0])
    axes = ints(args[1])
    rank = x.ndim + len(axes)
    return [np.expand_dims(x, tuple(sorted(norm_axis(a, rank) for a in axes)))]


@impl("nn.flatten")
def flatten(op: Op, args: Sequence[Array | None]) -> list[Array]:
    x = np.asarray(args[0])
    axis = norm_axis(int(op.attr("axis", 1)), x.ndim)
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


@impl("nn.concat")
def concat(op: Op, args: Sequence[Array | None]) -> list[Array]:
    arrays = [np.asarray(a) for a in args if a is not None]
    axis = norm_axis(int(op.attr("axis")), arrays[0].ndim)
    return [np.concatenate(arrays, axis=axis)]


@impl("nn.split")
def split(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """Sizes from the ``split`` operand, else ceil-sized chunks (the last one smaller) per output."""
    x = np.asarray(args[0])
    axis = norm_axis(int(op.attr("axis", 0)), x.ndim)
    split_arg = args[1] if len(args) > 1 else None
    count = len(op.results)
    if split_arg is not None and np.asarray(split_arg).size:
        sizes = list(ints(split_arg))
    else:
        chunk = -(-x.shape[axis] // count)
        sizes = [min(chunk, max(x.shape[axis] - i * chunk, 0)) for i in range(count)]
    bounds = np.cumsum(sizes)[:-1]
    return [np.asarray(part) for part in np.split(x, bounds, axis=axis)]


def _clamped(start: int, end: int, step: int, dim: int) -> slice:
    """ONNX's clamping: negatives count from the end, then starts go to [0, dim] (step > 0) or
    [0, dim - 1] (step < 0) and ends to [0, dim] or [-1, dim - 1]. Python slices differ for a
    negative step with a start below 0 (Python: empty, ONNX: from index 0)."""
    start += dim if start < 0 else 0
    end += dim if end < 0 else 0
    if step > 0:
        return slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
    start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return slice(start, None if end < 0 else end, step) if dim else slice(0, 0)


@impl("nn.slice")
def slice_(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """Starts/ends are clamped per axis as ONNX specifies; steps may be negative."""
    x = np.asarray(args[0])
    starts, ends = ints(args[1]), ints(args[2])
    axes_arg = args[3] if len(args) > 3 else None
    steps_arg = args[4] if len(args) > 4 else None
    axes = ints(axes_arg) if axes_arg is not None else tuple(range(len(starts)))
    steps = ints(steps_arg) if steps_arg is not None else (1,) * len(starts)
    index: list[slice] = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        dim = norm_axis(axis, x.ndim)
        index[dim] = _clamped(start, end, step, x.shape[dim])
    return [x[tuple(index)]]


@impl("nn.gather")
def gather(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """Negative indices count from the end (numpy's ``take`` does the same)."""
    x, indices = np.asarray(args[0]), np.asarray(args[1])
    axis = norm_axis(int(op.attr("axis", 0)), x.ndim)
    return [np.take(x, indices.astype(np.intp), axis=axis)]


@impl("nn.expand")
def expand(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """Bidirectional broadcast: the target shape may itself hold 1s where the input is larger."""
    x = np.asarray(args[0])
    shape = np.broadcast_shapes(x.shape, ints(args[1]))
    return [np.array(np.broadcast_to(x, shape))]


@impl("nn.shape")
def shape(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """``start``/``end`` select a clamped sub-range of the dimensions (Python slicing semantics)."""
    dims = np.asarray(args[0]).shape
    start = int(op.attr("start", 0) or 0)
    end = op.attr("end")
    return [np.array(dims[start : None if end is None else int(end)], dtype=np.int64)]


@impl("nn.constant_of_shape")
def constant_of_shape(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """Filled with the one-element ``value`` attribute, in its type (float32 zero when absent)."""
    value = op.attr("value")
    fill = np.zeros(1, np.float32) if value is None else np.asarray(value)
    return [np.full(ints(args[0]), fill.reshape(-1)[0], dtype=fill.dtype)]


@impl("nn.range")
def range_(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """``start + i * delta`` for ``i < max(ceil((limit - start) / delta), 0)``, in the inputs' type."""
    start, limit, delta = (np.asarray(a).reshape(()) for a in args)
    dtype = start.dtype
    if dtype.kind in "iu":
        count = max(-((int(start) - int(limit)) // int(delta)), 0)
        values = int(start) + int(delta) * np.arange(count, dtype=np.int64)
        return [values.astype(dtype)]
    count = max(math.ceil((float(limit) - float(start)) / float(delta)), 0)
    work = compute_float(dtype)  # float16 counts past 2048 are not exact in float16
    values = start.astype(work) + np.arange(count, dtype=work) * delta.astype(work)
    return [values.astype(dtype)]
