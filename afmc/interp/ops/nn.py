"""Neural-network ops: convolutions, Gemm/MatMul, normalisations, pooling, Softmax, Resize, Pad.

Convolution is im2col over a strided view plus one batched matmul per call (groups are a batch
axis), so any rank, stride, dilation and group count costs one BLAS call. Pooling loops over
kernel taps (never over elements). Float16 work is done in float32; other accumulations that
onnxruntime does in float32 are done in float64 where it only brings results closer to exact.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ...ir.core import Op
from ..registry import impl
from .common import attr_ints, compute_float, ints, norm_axis, result_dtype, to_dtype, unsupported

Array = np.ndarray


# -- geometry -------------------------------------------------------------------------------------
def _same_pads(auto_pad: str, total: int) -> tuple[int, int]:
    """SAME_UPPER puts the odd pixel at the end, SAME_LOWER at the beginning."""
    small, big = total // 2, total - total // 2
    return (small, big) if auto_pad == "SAME_UPPER" else (big, small)


@dataclass(frozen=True)
class Window:
    """Sliding-window geometry per spatial dim: kernel, strides, dilations, pads and output sizes."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    begin: tuple[int, ...]
    end: tuple[int, ...]
    out: tuple[int, ...]

    @property
    def extent(self) -> tuple[int, ...]:
        """Span of one window in input pixels: (k - 1) * d + 1."""
        return tuple((k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations))


def window(op: Op, in_sizes: Sequence[int], kernel: Sequence[int], ceil_mode: bool = False) -> Window:
    """Conv/pool geometry from ``auto_pad``/``pads``/``strides``/``dilations`` (ONNX and onnxruntime rules).

    With ``ceil_mode`` a last, partial window is kept only if it starts inside the input or the
    leading padding (the PyTorch/onnxruntime rule).
    """
    nd = len(in_sizes)
    strides = attr_ints(op, "strides", (1,) * nd)
    dilations = attr_ints(op, "dilations", (1,) * nd)
    pads = attr_ints(op, "pads", (0,) * (2 * nd))
    auto_pad = op.attr("auto_pad", "NOTSET") or "NOTSET"
    begin, end, out = [], [], []
    for i, size in enumerate(in_sizes):
        extent = (kernel[i] - 1) * dilations[i] + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            n_out = -(-size // strides[i])
            lo, hi = _same_pads(auto_pad, max((n_out - 1) * strides[i] + extent - size, 0))
        else:
            lo, hi = (0, 0) if auto_pad == "VALID" else (pads[i], pads[i + nd])
            span = size + lo + hi - extent
            n_out = (-(-span // strides[i]) if ceil_mode else span // strides[i]) + 1
            if ceil_mode and (n_out - 1) * strides[i] >= size + lo:
                n_out -= 1
        begin.append(lo)
        end.append(hi)
        out.append(max(n_out, 0))
    return Window(tuple(kernel), strides, dilations, tuple(begin), tuple(end), tuple(out))


def _pad_for(x: Array, win: Window, fill: Any) -> Array:
    """Pad the spatial dims so every window (including ceil-mode partial ones) lies inside."""
    widths = [(0, 0)] * (x.ndim - len(win.kernel))
    for i, size in enumerate(x.shape[x.ndim - len(win.kernel) :]):
        need = (win.out[i] - 1) * win.strides[i] + win.extent[i] if win.out[i] else 0
        widths.append((win.begin[i], max(win.end[i], need - size - win.begin[i], 0)))
    if all(w == (0, 0) for w in widths):
        return x
    return np.pad(x, widths, mode="constant", constant_values=fill)


def _tap(xp: Array, win: Window, offset: Sequence[int]) -> Array:
    """The strided view of ``xp`` that kernel tap ``offset`` sees for every output position."""
    lead = (slice(None),) * (xp.ndim - len(offset))
    spatial = tuple(
        slice(k * d, k * d + (n - 1) * s + 1, s)
        for k, d, n, s in zip(offset, win.dilations, win.out, win.strides)
    )
    return xp[lead + spatial]


# -- convolution ----------------------------------------------------------------------------------
@impl("nn.conv")
def conv(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """Grouped N-d convolution: im2col on a strided view, then one batched matmul over groups."""
    x, w = np.asarray(args[0]), np.asarray(args[1])
    bias = args[2] if len(args) > 2 else None
    work = compute_float(x.dtype)
    groups = int(op.attr("group", 1))
    n = x.shape[0]
    m, cg = w.shape[:2]
    kernel = tuple(w.shape[2:])
    win = window(op, x.shape[2:], kernel)
    xp = np.ascontiguousarray(_pad_for(x.astype(work, copy=False), win, 0))
    s = xp.strides
    nd = len(kernel)
    view = as_strided(
        xp,
        shape=(n, groups, *win.out, cg, *kernel),
        strides=(
            s[0],
            s[1] * cg,
            *(s[2 + i] * win.strides[i] for i in range(nd)),
            s[1],
            *(s[2 + i] * win.dilations[i] for i in range(nd)),
        ),
        writeable=False,
    )
    positions = math.prod(win.out)
    cols = view.reshape(n, groups, positions, cg * math.prod(kernel))
    weights = w.astype(work, copy=False).reshape(groups, m // groups, -1).transpose(0, 2, 1)
    y = np.matmul(cols, weights)  # (n, groups, positions, m/groups)
    y = y.transpose(0, 1, 3, 2).reshape(n, m, *win.out)
    if bias is not None:
        y = y + np.asarray(bias, dtype=work).reshape(m, *(1,) * nd)
    return [to_dtype(y, x.dtype)]


def _transpose_pads(
    op: Op, in_sizes: Sequence[int], kernel: Sequence[int]
) -> tuple[list[int], list[int], list[int]]:
    """ConvTranspose's (begin pads, output sizes, output_padding), per the ONNX formulas.

    ``output_shape`` (or SAME auto_pad, whose output is input * stride) fixes the output size and the
    pads are derived from it: SAME_UPPER puts the odd padding at the end, otherwise at the beginning.
    """
    nd = len(in_sizes)
    strides = attr_ints(op, "strides", (1,) * nd)
    dilations = attr_ints(op, "dilations", (1,) * nd)
    out_pad = attr_ints(op, "output_padding", (0,) * nd)
    pads = attr_ints(op, "pads", (0,) * (2 * nd))
    output_shape = ints(op.attr("output_shape"))[-nd:] if ints(op.attr("output_shape")) else ()
    auto_pad = op.attr("auto_pad", "NOTSET") or "NOTSET"
    full = [
        (in_sizes[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 + out_pad[i] for i in range(nd)
    ]
    if output_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = list(output_shape) if output_shape else [in_sizes[i] * strides[i] for i in range(nd)]
        begin = []
        for i in range(nd):
            total = full[i] - out[i]
            begin.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
        return begin, out, list(out_pad)
    if auto_pad == "VALID":
        return [0] * nd, full, list(out_pad)
    return list(pads[:nd]), [full[i] - pads[i] - pads[i + nd] for i in range(nd)], list(out_pad)


@impl("nn.conv_transpose")
def conv_transpose(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """Gradient-of-conv: one matmul gives every (output channel, tap) column, then a scatter-add per tap."""
    x, w = np.asarray(args[0]), np.asarray(args[1])
    bias = args[2] if len(args) > 2 else None
    work = compute_float(x.dtype)
    groups = int(op.attr("group", 1))
    n, c = x.shape[:2]
    cg, mg = c // groups, w.shape[1]
    kernel = tuple(w.shape[2:])
    nd = len(kernel)
    in_sizes = x.shape[2:]
    strides = attr_ints(op, "strides", (1,) * nd)
    dilations = attr_ints(op, "dilations", (1,) * nd)
    begin, out, out_pad = _transpose_pads(op, in_sizes, kernel)
    taps = math.prod(kernel)
    # (groups, mg * taps, cg) @ (n, groups, cg, P) -> (n, groups, mg * taps, P)
    wt = w.astype(work, copy=False).reshape(groups, cg, mg * taps).transpose(0, 2, 1)
    cols = np.matmul(wt, x.astype(work, copy=False).reshape(n, groups, cg, -1))
    cols = cols.reshape(n, groups, mg, taps, *in_sizes)
    full = [
        (in_sizes[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 + out_pad[i] for i in range(nd)
    ]
    acc = np.zeros((n, groups, mg, *full), dtype=work)
    for t, offset in enumerate(np.ndindex(*kernel)):
        region = tuple(
            slice(k * d, k * d + (size - 1) * s + 1, s)
            for k, d, s, size in zip(offset, dilations, strides, in_sizes)
        )
        acc[(slice(None),) * 3 + region] += cols[:, :, :, t]
    acc = acc.reshape(n, groups * mg, *full)
    y = np.zeros((n, groups * mg, *out), dtype=work)
    src, dst = [], []
    for i in range(nd):
        lo, hi = max(begin[i], 0), min(begin[i] + out[i], full[i])
        src.append(slice(lo, max(hi, lo)))
        dst.append(slice(lo - begin[i], lo - begin[i] + max(hi - lo, 0)))
    y[(slice(None), slice(None)) + tuple(dst)] = acc[(slice(None), slice(None)) + tuple(src)]
    if bias is not None:
        y = y + np.asarray(bias, dtype=work).reshape(-1, *(1,) * nd)
    return [to_dtype(y, x.dtype)]


# -- dense ----------------------------------------------------------------------------------------
def _matmul_dtype(dtype: np.dtype) -> np.dtype:
    return compute_float(dtype) if dtype.kind == "f" else dtype


@impl("nn.matmul")
def matmul(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """numpy matmul is ONNX MatMul: 1-D promotion and batch broadcasting included."""
    a, b = np.asarray(args[0]), np.asarray(args[1])
    work = _matmul_dtype(a.dtype)
    return [to_dtype(np.matmul(a.astype(work, copy=False), b.astype(work, copy=False)), a.dtype)]


@impl("nn.matmul_integer")
def matmul_integer(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """(A - a_zero_point) @ (B - b_zero_point) in int32; a per-row a_zero_point (1-D, one per row of
    A) and a per-column b_zero_point (1-D, one per column of B) broadcast as such."""
    a, b = np.asarray(args[0]).astype(np.int32), np.asarray(args[1]).astype(np.int32)
    a_zero = args[2] if len(args) > 2 else None
    b_zero = args[3] if len(args) > 3 else None
    if a_zero is not None:
        z = np.asarray(a_zero).astype(np.int32)
        a = a - (z.reshape(-1, 1) if z.ndim == 1 and z.size > 1 else z.reshape(()) if z.size == 1 else z)
    if b_zero is not None:
        b = b - np.asarray(b_zero).astype(np.int32)
    return [np.matmul(a, b).astype(np.int32)]


@impl("nn.gemm")
def gemm(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """alpha * A' B' + beta * C; C is skipped when absent or beta is 0 (so inf * 0 cannot leak NaN)."""
    a, b = np.asarray(args[0]), np.asarray(args[1])
    c = args[2] if len(args) > 2 else None
    work = _matmul_dtype(a.dtype)
    if op.attr("transA", 0):
        a = a.T
    if op.attr("transB", 0):
        b = b.T
    y = np.matmul(a.astype(work, copy=False), b.astype(work, copy=False))
    alpha, beta = float(op.attr("alpha", 1.0)), float(op.attr("beta", 1.0))
    if alpha != 1.0:
        y = y * np.asarray(alpha, dtype=work if work.kind == "f" else np.float64)
    if c is not None and beta != 0.0:
        term = np.asarray(c).astype(work, copy=False)
        y = y + (
            term if beta == 1.0 else term * np.asarray(beta, dtype=work if work.kind == "f" else np.float64)
        )
    return [to_dtype(y, a.dtype)]


# -- normalisation --------------------------------------------------------------------------------
@impl("nn.batch_normalization")
def batch_normalization(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """Per-channel (axis 1) affine normalisation; training mode uses batch statistics and also
    returns the momentum-updated running mean and (population) variance."""
    x = np.asarray(args[0])
    stats_dtype = np.asarray(args[3]).dtype
    scale, bias, mean, var = (np.asarray(a, dtype=np.float64) for a in args[1:5])
    eps = float(op.attr("epsilon", 1e-5))
    shape = (-1,) + (1,) * (x.ndim - 2)
    x64 = x.astype(np.float64)
    extra: list[Array] = []
    if op.attr("training_mode", 0):
        axes = (0, *range(2, x.ndim))
        batch_mean, batch_var = x64.mean(axis=axes), x64.var(axis=axes)
        momentum = float(op.attr("momentum", 0.9))
        extra = [mean * momentum + batch_mean * (1 - momentum), var * momentum + batch_var * (1 - momentum)]
        mean, var = batch_mean, batch_var
    y = (x64 - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * scale.reshape(shape) + bias.reshape(
        shape
    )
    outs = [to_dtype(y, x.dtype)] + [to_dtype(v, stats_dtype) for v in extra]
    return outs[: len(op.results)]


@impl("nn.layer_normalization")
def layer_normalization(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """Normalise over dims ``axis..`` (two-pass statistics in float32, float64 for float64 inputs, as
    onnxruntime); optional Mean and InvStdDev results."""
    x = np.asarray(args[0])
    work = compute_float(x.dtype)
    scale = np.asarray(args[1]).astype(work, copy=False)
    bias = args[2] if len(args) > 2 else None
    axis = norm_axis(int(op.attr("axis", -1)), x.ndim)
    eps = float(op.attr("epsilon", 1e-5))
    axes = tuple(range(axis, x.ndim))
    mean = x.mean(axis=axes, keepdims=True, dtype=work)
    centered = np.subtract(x, mean, dtype=work)
    y = np.square(centered)
    inv_std = y.mean(axis=axes, keepdims=True)
    inv_std += np.asarray(eps, work)
    np.sqrt(inv_std, out=inv_std)
    np.reciprocal(inv_std, out=inv_std)
    np.multiply(centered, inv_std, out=y)
    y *= scale
    if bias is not None:
        y += np.asarray(bias).astype(work, copy=False)
    outs = [y, mean, inv_std]
    return [to_dtype(v, result_dtype(op, i)) for i, v in enumerate(outs[: len(op.results)])]


@impl("nn.softmax")
def softmax(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """exp(x - max) / sum along one axis (opset 13 semantics), in float32 (float64 for float64)."""
    x = np.asarray(args[0])
    axis = norm_axis(int(op.attr("axis", -1)), x.ndim)
    work = compute_float(x.dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.subtract(x, x.max(axis=axis, keepdims=True), dtype=work)
        np.exp(e, out=e)
        e /= e.sum(axis=axis, keepdims=True)
        return [to_dtype(e, x.dtype)]


def _lowest(dtype: np.dtype) -> Any:
    """MaxPool's start value: the lowest finite number, as onnxruntime (so a window of padding or
    of -inf gives it, not -inf)."""
    return np.finfo(dtype).min if dtype.kind == "f" else np.iinfo(dtype).min


@impl("nn.max_pool")
def max_pool(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """Max over kernel taps; padding never wins. NaN inputs are skipped, as onnxruntime's ``>`` does.

    The optional Indices result is the flat index into the input (``storage_order`` 1: column-major
    spatial dims), first maximum wins.
    """
    x = np.asarray(args[0])
    kernel = ints(op.attr("kernel_shape"))
    nd = len(kernel)
    win = window(op, x.shape[2:], kernel, bool(op.attr("ceil_mode", 0)))
    lowest = _lowest(x.dtype)
    xp = _pad_for(x, win, lowest)
    y = np.full((*x.shape[:2], *win.out), lowest, dtype=x.dtype)
    want_indices = len(op.results) > 1
    if want_indices:
        index = np.zeros(y.shape, dtype=np.int64)
        column_major = bool(op.attr("storage_order", 0))
        sizes = x.shape[2:]
        dim_strides = [math.prod(sizes[:i]) if column_major else math.prod(sizes[i + 1 :]) for i in range(nd)]
        base = (np.arange(x.shape[0])[:, None] * x.shape[1] + np.arange(x.shape[1])) * math.prod(sizes)
        base = base.reshape(*x.shape[:2], *(1,) * nd)
    for offset in np.ndindex(*kernel):
        tap = _tap(xp, win, offset)
        if want_indices:
            better = tap > y
            flat = base.copy()
            for i in range(nd):
                coord = np.arange(win.out[i]) * win.strides[i] - win.begin[i] + offset[i] * win.dilations[i]
                flat = flat + (coord * dim_strides[i]).reshape((1,) * (2 + i) + (-1,) + (1,) * (nd - i - 1))
            index = np.where(better, flat, index)
            y = np.where(better, tap, y)
        else:
            y = np.fmax(y, tap)
    return [y, index] if want_indices else [y]


def _counts(win: Window, in_sizes: Sequence[int], include_pad: bool) -> Array:
    """How many taps of each window fall inside the input (or inside input + explicit pads)."""
    total: Array = np.ones((), dtype=np.float64)
    for i, size in enumerate(in_sizes):
        starts = np.arange(win.out[i]) * win.strides[i] - win.begin[i]
        taps = starts[:, None] + np.arange(win.kernel[i]) * win.dilations[i]
        lo, hi = (-win.begin[i], size + win.end[i]) if include_pad else (0, size)
        per_dim = ((taps >= lo) & (taps < hi)).sum(axis=1).astype(np.float64)
        total = np.multiply.outer(total, per_dim)
    return total


@impl("nn.average_pool")
def average_pool(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """Sum over taps / number of counted taps (``count_include_pad`` counts the explicit padding,
    never the ceil-mode overhang)."""
    x = np.asarray(args[0])
    kernel = ints(op.attr("kernel_shape"))
    win = window(op, x.shape[2:], kernel, bool(op.attr("ceil_mode", 0)))
    xp = _pad_for(x.astype(np.float64), win, 0.0)
    acc = np.zeros((*x.shape[:2], *win.out), dtype=np.float64)
    for offset in np.ndindex(*kernel):
        acc += _tap(xp, win, offset)
    counts = np.broadcast_to(_counts(win, x.shape[2:], bool(op.attr("count_include_pad", 0))), acc.shape)
    # A ceil-mode window with dilation can miss the input entirely: onnxruntime gives 0 there.
    mean = np.divide(acc, counts, out=np.zeros_like(acc), where=counts > 0)
    return [to_dtype(mean, x.dtype)]


@impl("nn.global_average_pool")
def global_average_pool(op: Op, args: Sequence[Array | None]) -> list[Array]:
    x = np.asarray(args[0])
    axes = tuple(range(2, x.ndim))
    return [to_dtype(np.mean(x, axis=axes, keepdims=True, dtype=np.float64), x.dtype)]


# -- pad ------------------------------------------------------------------------------------------
_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}


@impl("nn.pad")
def pad(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """Negative pads crop first; the positive remainder is padded in ``mode``."""
    x = np.asarray(args[0])
    pads = ints(args[1])
    value = args[2] if len(args) > 2 else None
    axes_arg = args[3] if len(args) > 3 else None
    axes = [norm_axis(a, x.ndim) for a in ints(axes_arg)] if axes_arg is not None else list(range(x.ndim))
    mode = op.attr("mode", "constant")
    if mode not in _PAD_MODES:
        raise unsupported(op, f"mode {mode!r}")
    widths = [(0, 0)] * x.ndim
    for i, axis in enumerate(axes):
        widths[axis] = (pads[i], pads[i + len(axes)])
    crop = tuple(slice(max(-lo, 0), x.shape[d] - max(-hi, 0)) for d, (lo, hi) in enumerate(widths))
    x = x[crop]
    positive = [(max(lo, 0), max(hi, 0)) for lo, hi in widths]
    if mode == "constant":
        fill = np.asarray(value).reshape(-1)[0] if value is not None and np.asarray(value).size else 0
        return [np.pad(x, positive, mode="constant", constant_values=fill)]
    numpy_mode: Any = _PAD_MODES[mode]
    return [np.pad(x, positive, mode=numpy_mode)]


# -- resize ---------------------------------------------------------------------------------------
def _linear_kernel(t: Array, a: float) -> Array:
    return np.clip(1.0 - np.abs(t), 0.0, 1.0)


def _cubic_kernel(t: Array, a: float) -> Array:
    """Keys' cubic convolution kernel with coefficient ``a`` (ONNX ``cubic_coeff_a``)."""
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


#: mode -> (kernel, support radius in input pixels)
_FILTERS: dict[str, tuple[Callable[[Array, float], Array], int]] = {
    "linear": (_linear_kernel, 1),
    "cubic": (_cubic_kernel, 2),
}

_NEAREST: dict[str, Callable[[Array], Array]] = {
    "round_prefer_floor": lambda v: np.ceil(v - 0.5),
    "round_prefer_ceil": lambda v: np.floor(v + 0.5),
    "floor": np.floor,
    "ceil": np.ceil,
}


def _source_coords(
    mode: str, out_len: int, in_len: int, scale: float, resized: float, roi: tuple[float, float]
) -> tuple[Array, Array | None]:
    """Input coordinate of every output index (ONNX coordinate_transformation_mode), and for
    tf_crop_and_resize the mask of outputs that fall outside the input (extrapolated).

    ``resized`` is the spec's ``length_resized``: ``in_len * scale`` when scales are given, which
    may be fractional (align_corners then divides by it minus one, as the ONNX reference and its
    conformance tests do; onnxruntime uses the integer output length instead).

    Computed in float32 like onnxruntime: scales are float32 tensors, and float64 arithmetic would
    move coordinates such as 1.5 / 0.6 - 0.5 off an integer and change nearest-pixel picks.
    """
    f32 = np.float32
    o = np.arange(out_len, dtype=np.float32)
    s = f32(scale)
    extrapolated = None
    if mode == "half_pixel":
        coords = (o + f32(0.5)) / s - f32(0.5)
    elif mode == "pytorch_half_pixel":
        coords = (o + f32(0.5)) / s - f32(0.5) if resized > 1 else np.zeros_like(o)
    elif mode == "half_pixel_symmetric":
        adjustment = f32(out_len) / (s * f32(in_len))
        offset = f32(in_len / 2) * (f32(1) - adjustment)
        coords = offset + (o + f32(0.5)) / s - f32(0.5)
    elif mode == "align_corners":
        coords = o * f32(in_len - 1) / f32(resized - 1) if resized != 1 else np.zeros_like(o)
    elif mode == "asymmetric":
        coords = o / s
    elif mode == "tf_half_pixel_for_nn":
        coords = (o + f32(0.5)) / s
    elif mode == "tf_crop_and_resize":
        start, end = f32(roi[0]), f32(roi[1])
        if resized != 1:
            coords = start * f32(in_len - 1) + o * (end - start) * f32(in_len - 1) / f32(resized - 1)
        else:
            coords = np.full_like(o, f32(0.5) * (start + end) * f32(in_len - 1))
        extrapolated = (coords < 0) | (coords > in_len - 1)
    else:
        raise ValueError(f"coordinate_transformation_mode {mode!r}")
    return coords.astype(np.float64), extrapolated


def _taps(op: Op, coords: Array, in_len: int, scale: float) -> tuple[Array, Array]:
    """(indices, weights), each (out, taps): the interpolation filter sampled around each coordinate.

    Taps are the ``n`` pixels nearest each coordinate; out-of-range taps are clamped to the edge
    (or dropped and renormalised with ``exclude_outside``). ``antialias`` stretches the filter by
    1/scale when downsampling and normalises the weights, as the ONNX reference does.
    """
    mode = op.attr("mode", "nearest")
    kernel, radius = _FILTERS[mode]
    stretch = min(scale, 1.0) if op.attr("antialias", 0) else 1.0
    n = 2 * math.ceil(radius / stretch)
    first = np.ceil(coords).astype(np.int64) - n // 2
    idx = first[:, None] + np.arange(n)
    weights = kernel((idx - coords[:, None]) * stretch, float(op.attr("cubic_coeff_a", -0.75)))
    if op.attr("antialias", 0):
        weights = weights / weights.sum(axis=1, keepdims=True)
    if op.attr("exclude_outside", 0):
        weights = np.where((idx < 0) | (idx >= in_len), 0.0, weights)
        total = weights.sum(axis=1, keepdims=True)
        weights = weights / np.where(total == 0, 1.0, total)
    return np.clip(idx, 0, in_len - 1), weights


@dataclass(frozen=True)
class _AxisPlan:
    """How one axis is resized: its output length, scale, ``length_resized`` and roi."""

    axis: int
    out_len: int
    scale: float
    resized: float
    roi: tuple[float, float]


def _resize_plan(op: Op, x: Array, args: Sequence[Array | None]) -> list[_AxisPlan]:
    """One plan per resized axis from the scales/sizes/roi operands and the ``axes`` attribute."""
    roi_arg = args[1] if len(args) > 1 else None
    scales_arg = args[2] if len(args) > 2 else None
    sizes_arg = args[3] if len(args) > 3 else None
    axes = [norm_axis(a, x.ndim) for a in ints(op.attr("axes"))] or list(range(x.ndim))
    in_sizes = [x.shape[a] for a in axes]
    if scales_arg is not None and np.asarray(scales_arg).size:
        scales = [float(v) for v in np.asarray(scales_arg, dtype=np.float64).reshape(-1)]
        resized = [size * s for size, s in zip(in_sizes, scales)]
        out = [math.floor(r) for r in resized]
    else:
        out = list(ints(sizes_arg))
        scales = [o / size for o, size in zip(out, in_sizes)]
        policy = op.attr("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            common = min(scales) if policy == "not_larger" else max(scales)
            scales = [common] * len(axes)
            out = [int(common * size + 0.5) for size in in_sizes]
        resized = [float(o) for o in out]
    declared = op.results[0].type.shape
    if len(declared) == x.ndim and all(d >= 0 for d in declared):
        out = [declared[a] for a in axes]
    rois = [(0.0, 1.0)] * len(axes)
    if roi_arg is not None and np.asarray(roi_arg).size:
        roi = [float(v) for v in np.asarray(roi_arg, dtype=np.float64).reshape(-1)]
        half = len(roi) // 2
        picks = axes if half == x.ndim and half != len(axes) else range(len(axes))
        rois = [(roi[p], roi[p + half]) for p in picks]
    return [_AxisPlan(*fields) for fields in zip(axes, out, scales, resized, rois)]


@impl("nn.resize")
def resize(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """Separable resize, one axis at a time: nearest gathers; linear/cubic sum weighted taps."""
    x = np.asarray(args[0])
    mode = op.attr("mode", "nearest")
    coord_mode = op.attr("coordinate_transformation_mode", "half_pixel")
    if mode != "nearest" and mode not in _FILTERS:
        raise unsupported(op, f"mode {mode!r}")
    nearest = _NEAREST.get(op.attr("nearest_mode", "round_prefer_floor"))
    if mode == "nearest" and nearest is None:
        raise unsupported(op, f"nearest_mode {op.attr('nearest_mode')!r}")
    y = x if mode == "nearest" else x.astype(np.float64)
    outside = np.zeros((1,) * x.ndim, dtype=bool)
    for plan in _resize_plan(op, x, args):
        axis, out_len, scale = plan.axis, plan.out_len, plan.scale
        in_len = x.shape[axis]
        if out_len == in_len and scale == 1.0 and coord_mode != "tf_crop_and_resize":
            continue
        coords, extrapolated = _source_coords(coord_mode, out_len, in_len, scale, plan.resized, plan.roi)
        if extrapolated is not None:
            shape = [1] * x.ndim
            shape[axis] = out_len
            outside = outside | extrapolated.reshape(shape)
        if mode == "nearest":
            picks = np.clip(nearest(coords), 0, in_len - 1).astype(np.intp)  # type: ignore[misc]
            y = np.take(y, picks, axis=axis)
            continue
        idx, weights = _taps(op, coords, in_len, scale)
        shape = [1] * x.ndim
        shape[axis] = out_len
        acc = np.zeros(y.shape[:axis] + (out_len,) + y.shape[axis + 1 :], dtype=np.float64)
        for t in range(idx.shape[1]):
            acc += np.take(y, idx[:, t].astype(np.intp), axis=axis) * weights[:, t].reshape(shape)
        y = acc
    if outside.any():
        y = np.where(outside, np.asarray(float(op.attr("extrapolation_value", 0.0))).astype(y.dtype), y)
    if x.dtype.kind in "iu" and y.dtype.kind == "f":
        info = np.iinfo(x.dtype)
        y = np.clip(np.rint(y), info.min, info.max)
    return [to_dtype(y, x.dtype)]


# -- grid sample ----------------------------------------------------------------------------------
def _keys_cubic(t: Array) -> list[Array]:
    """Keys' cubic convolution weights (α = −0.75) of the taps at −1, 0, 1, 2 for fractions ``t``."""
    a = -0.75
    return [
        ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
        ((a + 2) * t - (a + 3)) * t * t + 1,
        ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
        ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a,
    ]


def _reflect(x: Array, lo: float, hi: float) -> Array:
    """Fold ``x`` back into [lo, hi] by reflecting at the near border as often as needed."""
    span = hi - lo
    if span <= 0:
        return np.full_like(x, lo)
    below, above = x < lo, x > hi
    dx = np.where(below, lo - x, np.where(above, x - hi, 0.0))
    n = np.floor(dx / span)
    r = dx - n * span
    even = np.mod(n, 2) == 0
    return np.where(below, np.where(even, lo + r, hi - r), np.where(above, np.where(even, hi - r, lo + r), x))


@impl("nn.grid_sample")
def grid_sample(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """Sample X (N, C, D1..Dn) at the normalised grid (N, O1..Om, n) positions (the last grid axis lists
    x, y, ... for Dn, Dn-1, ...): nearest (half to even), linear or cubic (Keys, α = −0.75) taps,
    separable over the dims; for nearest and linear, positions outside the borders are clamped
    (``border``) or reflected (``reflection``) first; taps outside the input read 0 (``zeros``), the edge
    (``border``) or their reflection (``reflection``). Cubic pads each tap alone, as PyTorch and
    onnxruntime do (the ONNX reference clamps the position first: it differs with ``border``)."""
    x, grid = np.asarray(args[0]), np.asarray(args[1], np.float64)
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(op.attr("mode", "linear"), op.attr("mode", "linear"))
    padding = op.attr("padding_mode", "zeros")
    align = bool(op.attr("align_corners", 0))
    if mode not in ("nearest", "linear", "cubic"):
        raise unsupported(op, f"mode {mode!r}")
    if padding not in ("zeros", "border", "reflection"):
        raise unsupported(op, f"padding_mode {padding!r}")
    n, c, dims = x.shape[0], x.shape[1], x.shape[2:]
    out_shape = (n, c, *grid.shape[1:-1])
    if math.prod(out_shape) == 0:
        return [np.zeros(out_shape, x.dtype)]
    flat_grid = grid.reshape(n, -1, grid.shape[-1])  # (N, Q, nd)
    taps_per_dim: list[tuple[list[Array], list[Array]]] = []  # per spatial dim: tap indices, weights
    for axis, size in enumerate(dims):
        g = flat_grid[..., len(dims) - 1 - axis]
        pos = (g + 1) / 2 * (size - 1) if align else ((g + 1) * size - 1) / 2
        lo, hi = (0.0, size - 1.0) if align else (-0.5, size - 0.5)
        if mode == "nearest":
            pos = np.rint(pos)
        outside = (pos < lo) | (pos > hi)
        if mode == "cubic":
            pass  # the taps are padded one by one (PyTorch and onnxruntime; the ONNX reference clamps first)
        elif padding == "border":
            pos = np.where(outside, np.clip(pos, 0, size - 1), pos)
        elif padding == "reflection":
            pos = np.where(outside, _reflect(pos, lo, hi), pos)
        if mode == "nearest":
            taps, weights = [np.trunc(pos)], [np.ones_like(pos)]
        else:
            base = np.floor(pos)
            t = pos - base
            if mode == "linear":
                taps, weights = [base, base + 1], [1 - t, t]
            else:
                taps, weights = [base - 1, base, base + 1, base + 2], _keys_cubic(t)
        fetched: list[Array] = []
        valid: list[Array] = []
        for tap in taps:
            if padding == "zeros":
                valid.append((tap >= 0) & (tap < size))
                fetched.append(np.clip(tap, 0, size - 1))
            elif padding == "border":
                valid.append(np.ones(tap.shape, bool))
                fetched.append(np.clip(tap, 0, size - 1))
            else:
                valid.append(np.ones(tap.shape, bool))
                fetched.append(np.trunc(_reflect(tap, lo, hi)))
        taps_per_dim.append(([f.astype(np.intp) for f in fetched],
                             [w * v for w, v in zip(weights, valid)]))
    source = x.reshape(n, c, -1).astype(np.float64)
    strides = [math.prod(dims[axis + 1:]) for axis in range(len(dims))]
    acc = np.zeros((n, c, flat_grid.shape[1]))
    for combo in itertools.product(*[range(len(t[0])) for t in taps_per_dim]):
        index = sum(taps_per_dim[a][0][k] * strides[a] for a, k in enumerate(combo))
        weight = math.prod(taps_per_dim[a][1][k] for a, k in enumerate(combo))
        acc += np.take_along_axis(source, np.asarray(index)[:, None, :], axis=2) * np.asarray(weight)[:, None, :]
    return [to_dtype(acc.reshape(out_shape), x.dtype)]
