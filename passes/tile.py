"""``tile``: lower every analog matrix op onto array-sized tiles of the target (``xbar`` dialect).

Each analog layer is seen as G products (M×K)@(K×N) (``afmc.matrix``). Its weight is quantised
symmetrically to the target's ``weight_bits`` (one scale per layer, or per output column as aihwkit
does), encoded as differential pairs or with an offset and a reference column, and bit-sliced over
cells of ``bits_per_cell`` bits. K and N are split near-equally (sizes differ by at most one, larger
first) so that every array holds at most ``rows`` × usable columns; one array per (group, row split,
column split, slice) becomes an ``xbar.mvm``. Slices and row-split partial sums are added digitally
(``xbar.accumulate``), column blocks and groups are concatenated and the bias added by
``xbar.assemble``. Reassembling the arrays gives back exactly the quantised weights (tests prove it).

Replication (``replicate=N`` or ``auto``) is an attribute: copies split an array's M vectors in time.

The time steps of a recurrence (products of one constant matrix of which one depends on another,
`afmc.matrix.recurrent_groups`: an unrolled LSTM's h·Rᵀ) share one set of arrays: the first step
programs them, every later step's ``xbar.mvm`` ops read the same levels constants (same ``array``
symbols) with its own unfold, accumulates and assemble. The steps run one after another anyway, so
copies would only sit idle; ``place`` puts the shared arrays once, ``schedule`` serialises their
reads (same ``core`` and ``slot``), and the simulator gives them one programmed state.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from afmc.errors import AfmcError, PassError
from afmc.ir.core import Module, Op, TensorType, Value
from afmc.matrix import MatrixView, matrix_view, recurrent_groups
from afmc.pipeline import Pass, PassContext, register_pass
from afmc.registry import registrar

SCALE_MODES = ("layer", "column")
FLOAT_TYPES = ("f16", "f32", "f64")

# -- quantisation and encoding ---------------------------------------------------------------------


def quantize(weight: np.ndarray, bits: int, per_column: bool) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric quantisation of a (..., K, N) weight: ``(W_q int64, scales)``.

    s = max|W| / (2^(bits-1) - 1) over the whole tensor (``scales`` 0-d) or over each column
    (``scales`` of shape (..., N)); W_q = round(W / s) (half to even); an all-zero weight or
    column gets s = 0 and W_q = 0: its outputs are exactly 0, whatever noise its arrays read (a
    scale of 1 would multiply that noise by 1 instead of by the layer's ~max|W|/127).
    """
    qmax = 2 ** (bits - 1) - 1
    w = np.asarray(weight, np.float64)
    scales = quantization_scales(w, bits, per_column)
    divisor = np.where(scales > 0, scales, 1.0)
    q = np.rint(w / (divisor[..., None, :] if per_column else divisor))
    return np.clip(q, -qmax, qmax).astype(np.int64), scales


def quantization_scales(weight: np.ndarray, bits: int, per_column: bool) -> np.ndarray:
    """``quantize``'s scales alone: max|W| / (2^(bits-1) - 1), from the extremes (no |W| copy); 0 for an
    all-zero weight or column."""
    qmax = 2 ** (bits - 1) - 1
    if qmax < 1:
        raise ValueError(f"symmetric quantisation needs at least 2 bits, got {bits}")
    axis = -2 if per_column else None
    peak = np.maximum(np.max(weight, axis=axis), -np.min(weight, axis=axis)).astype(np.float64)
    return np.asarray(peak / qmax, np.float64)


def dequantize(w_q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """W_q · s in float64 (per-column ``scales`` broadcast over K)."""
    scales = np.asarray(scales, np.float64)
    return w_q * (scales[..., None, :] if scales.ndim else scales)


@dataclass(frozen=True)
class Encoded:
    """A quantised matrix as cell levels per slice (slice 0 least significant)."""

    encoding: str
    bits_per_cell: int
    levels: tuple[np.ndarray, ...]  # per slice: (2, ..., K, N) differential (positive, negative) or (..., K, N)
    reference: tuple[int, ...]  # per slice: level of the offset reference column (0 for differential)

    @property
    def slices(self) -> int:
        return len(self.levels)

    def significance(self, index: int) -> int:
        return significance(index, self.bits_per_cell)


def significance(index: int, bits_per_cell: int) -> int:
    """The weight of slice ``index`` in the recombination: 2^(index · bits_per_cell)."""
    return 1 << (index * bits_per_cell)


def slice_count(bits: int, bits_per_cell: int, encoding: str) -> int:
    """Cells per weight: (bits-1) magnitude bits for differential, bits for offset."""
    magnitude = bits - 1 if encoding == "differential" else bits
    return max(1, -(-magnitude // bits_per_cell))


def encode(w_q: np.ndarray, bits: int, bits_per_cell: int, encoding: str) -> Encoded:
    """Split W_q into per-slice levels: base-2^bits_per_cell digits of |W_q| per polarity
    (differential) or of W_q + 2^(bits-1) (offset, whose reference digit o_s is that of 2^(bits-1))."""
    count = slice_count(bits, bits_per_cell, encoding)
    mask = (1 << bits_per_cell) - 1
    dtype = np.uint8 if bits_per_cell <= 8 else np.uint16
    w_q = np.asarray(w_q, np.int64)
    if encoding == "differential":
        magnitudes = np.stack([np.maximum(w_q, 0), np.maximum(-w_q, 0)])
        offset = 0
    elif encoding == "offset":
        offset = 1 << (bits - 1)
        magnitudes = w_q + offset
    else:
        raise ValueError(f"unknown encoding {encoding!r}")
    shifts = [s * bits_per_cell for s in range(count)]
    levels = tuple(((magnitudes >> shift) & mask).astype(dtype) for shift in shifts)
    reference = tuple((offset >> shift) & mask for shift in shifts)
    return Encoded(encoding, bits_per_cell, levels, reference)


def reassemble(encoded: Encoded) -> np.ndarray:
    """Σ_s 2^(s·bits_per_cell) · (positive − negative, or level − reference): W_q again, exactly."""
    total: np.ndarray | int = 0
    for index, (levels, ref) in enumerate(zip(encoded.levels, encoded.reference)):
        cells = levels.astype(np.int64)
        signed = cells[0] - cells[1] if encoded.encoding == "differential" else cells - ref
        total = total + encoded.significance(index) * signed
    return np.asarray(total, np.int64)


def near_equal_splits(size: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` half-open ranges covering ``size``, sizes differing by at most one, larger first."""
    base, extra = divmod(size, parts)
    sizes = [base + 1] * extra + [base] * (parts - extra)
    bounds = [0, *itertools.accumulate(sizes)]
    return list(itertools.pairwise(bounds))


# -- lowering each matrix op -------------------------------------------------------------------------


@dataclass(frozen=True)
class Lowering:
    """What the xbar ops need from one nn op: its matrix, unfold geometry, bias and gains."""

    matrix: np.ndarray  # (G, K, N) float64, K ordered like the unfolded input
    unfold: dict[str, Any]  # xbar.unfold attributes beyond layer/kind/groups
    bias: Value | None
    bias_scale: float = 1.0  # Gemm's beta
    gain: float = 1.0  # Gemm's alpha, folded into the accumulate scales


Lowerer = Callable[[Module, Op, np.ndarray], "Lowering | str"]
LOWERERS: dict[str, Lowerer] = {}


lowerer = registrar(LOWERERS, "tile lowerings")


def _ints(op: Op, key: str, default: Sequence[int]) -> tuple[int, ...]:
    """An int-list attribute; absent or empty means ONNX's default."""
    value = op.attr(key)
    items = tuple(int(v) for v in np.asarray(value).reshape(-1)) if value is not None else ()
    return items or tuple(default)


def _operand(op: Op, index: int) -> Value | None:
    return op.operands[index] if len(op.operands) > index else None


def _same_pads_begin(total: int, auto_pad: str) -> int:
    """SAME_UPPER puts the odd pad at the end, SAME_LOWER (and ConvTranspose's default) at the start."""
    return total // 2 if auto_pad == "SAME_UPPER" else total - total // 2


@dataclass(frozen=True)
class _ConvGeometry:
    """What Conv and ConvTranspose lowering share: spatial rank, kernel, strides, dilations, groups,
    the input and output spatial sizes and each kernel's dilated span."""

    n: int
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    groups: int
    in_sp: tuple[int, ...]
    out_sp: tuple[int, ...]
    span: tuple[int, ...]


def _conv_geometry(op: Op, weight: np.ndarray, *, transposed: bool) -> _ConvGeometry | str:
    """The geometry of a Conv or ConvTranspose (weights ``c_in x c_out/g``), or why it cannot be lowered."""
    source = op.operands[0]
    assert source is not None
    n = weight.ndim - 2
    if n < 1 or source.type.rank != n + 2 or op.result.type.rank != n + 2:
        return "needs a batch, channel and at least one spatial dimension"
    auto_pad = op.attr("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        return f"unknown auto_pad {auto_pad!r}"
    strides, dilations = _ints(op, "strides", [1] * n), _ints(op, "dilations", [1] * n)
    if len(strides) != n or len(dilations) != n or min(strides + dilations) < 1:
        return f"strides {strides} or dilations {dilations} do not fit {n} spatial dims"
    groups = int(op.attr("group", 1))
    in_channels = weight.shape[0] if transposed else groups * weight.shape[1]
    if groups < 1 or weight.shape[0] % groups or source.type.shape[1] != in_channels:
        return f"group={groups} does not fit weight {weight.shape} and input {source.type}"
    kernel = tuple(int(k) for k in weight.shape[2:])
    return _ConvGeometry(
        n, kernel, strides, dilations, groups,
        tuple(source.type.shape[2:]), tuple(op.result.type.shape[2:]),
        tuple((k - 1) * d + 1 for k, d in zip(kernel, dilations)),
    )


@lowerer("nn.conv")
def _lower_conv(module: Module, op: Op, weight: np.ndarray) -> Lowering | str:
    geometry = _conv_geometry(op, weight, transposed=False)
    if isinstance(geometry, str):
        return geometry
    n, kernel, strides, dilations = geometry.n, geometry.kernel, geometry.strides, geometry.dilations
    groups, in_sp, out_sp, span = geometry.groups, geometry.in_sp, geometry.out_sp, geometry.span
    c_out = weight.shape[0]
    auto_pad = op.attr("auto_pad", "NOTSET")
    if auto_pad == "NOTSET":
        pads = _ints(op, "pads", [0] * 2 * n)
        if len(pads) != 2 * n:
            return f"pads {pads} do not fit {n} spatial dims"
        begin = list(pads[:n])
    elif auto_pad == "VALID":
        begin = [0] * n
    else:
        begin = [
            _same_pads_begin(max(0, (o - 1) * s + e - i), auto_pad) for i, o, s, e in zip(in_sp, out_sp, strides, span)
        ]
    # The end pad follows from the (static) output size; any surplus ONNX pad is never read.
    end = [(o - 1) * s + e - i - b for i, o, s, e, b in zip(in_sp, out_sp, strides, span, begin)]
    matrix = weight.reshape(groups, c_out // groups, -1).transpose(0, 2, 1)
    unfold = {"kernel": kernel, "strides": strides, "dilations": dilations,
              "input_dilations": (1,) * n, "pads": tuple(begin + end)}
    return Lowering(np.asarray(matrix, np.float64), unfold, _operand(op, 2))


@lowerer("nn.conv_transpose")
def _lower_conv_transpose(module: Module, op: Op, weight: np.ndarray) -> Lowering | str:
    """ConvTranspose = convolution of the input zero-stuffed by the strides, padded by
    dilation·(k−1) − pad, with the kernel flipped and in/out channels swapped per group."""
    geometry = _conv_geometry(op, weight, transposed=True)
    if isinstance(geometry, str):
        return geometry
    n, kernel, strides, dilations = geometry.n, geometry.kernel, geometry.strides, geometry.dilations
    groups, in_sp, out_sp, span = geometry.groups, geometry.in_sp, geometry.out_sp, geometry.span
    c_in, c_out_g = weight.shape[:2]
    auto_pad = op.attr("auto_pad", "NOTSET")
    output_padding = _ints(op, "output_padding", [0] * n)
    output_shape = _ints(op, "output_shape", [])[-n:]
    if len(output_padding) != n:
        return f"output_padding {output_padding} does not fit {n} spatial dims"
    if output_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        # ONNX: the total padding follows from the wanted output size, split by _same_pads_begin.
        if not output_shape and any(output_padding):
            return "ConvTranspose with SAME auto_pad and output_padding: onnx and onnxruntime disagree on its size"
        wanted = output_shape or tuple(i * s for i, s in zip(in_sp, strides))
        totals = [s * (i - 1) + p + e - w for i, s, p, e, w in zip(in_sp, strides, output_padding, span, wanted)]
        if min(totals) < 0:  # the spec's C division and onnxruntime's clamp at 0 place this output differently
            return f"ConvTranspose output_shape {list(wanted)} exceeds the full output; its placement is ambiguous"
        begin = [_same_pads_begin(t, auto_pad) for t in totals]
    elif auto_pad == "VALID":
        begin = [0] * n
    else:
        pads = _ints(op, "pads", [0] * 2 * n)
        if len(pads) != 2 * n:
            return f"pads {pads} do not fit {n} spatial dims"
        begin = list(pads[:n])
    stuffed = [(i - 1) * s + 1 for i, s in zip(in_sp, strides)]
    conv_begin = [e - 1 - b for e, b in zip(span, begin)]
    conv_end = [o - z - cb + e - 1 for o, z, cb, e in zip(out_sp, stuffed, conv_begin, span)]
    flip = (slice(None), slice(None), *([slice(None, None, -1)] * n))
    flipped = weight[flip]
    matrix = flipped.reshape(groups, c_in // groups, c_out_g, -1).transpose(0, 1, 3, 2)
    matrix = matrix.reshape(groups, -1, c_out_g)
    unfold = {"kernel": kernel, "strides": (1,) * n, "dilations": dilations,
              "input_dilations": strides, "pads": tuple(conv_begin + conv_end)}
    return Lowering(np.asarray(matrix, np.float64), unfold, _operand(op, 2))


@lowerer("nn.gemm")
def _lower_gemm(module: Module, op: Op, weight: np.ndarray) -> Lowering | str:
    source = op.operands[0]
    assert source is not None
    if source.type.rank != 2 or weight.ndim != 2:
        return "Gemm needs 2-D operands"
    matrix = weight.T if int(op.attr("transB", 0)) else weight
    beta = float(op.attr("beta", 1.0))
    return Lowering(
        np.asarray(matrix, np.float64)[None],
        {"trans_a": int(bool(op.attr("transA", 0)))},
        _operand(op, 2) if beta != 0.0 else None,  # beta = 0 ignores C, even an infinite one (as nn.gemm does)
        bias_scale=beta,
        gain=float(op.attr("alpha", 1.0)),
    )


@lowerer("nn.matmul")
def _lower_matmul(module: Module, op: Op, weight: np.ndarray) -> Lowering | str:
    source = op.operands[0]
    assert source is not None
    if weight.ndim != 2 or source.type.rank < 1:
        return "MatMul needs a 2-D constant right operand"
    return Lowering(np.asarray(weight, np.float64)[None], {}, None)


def _lower(module: Module, op: Op) -> tuple[MatrixView, Lowering] | str:
    lower = LOWERERS.get(op.name)
    view = matrix_view(module, op)
    if lower is None or view is None:
        return f"{op.name} has no constant weight matrix to tile"
    source = op.operands[0]
    assert source is not None
    if op.result.type.dtype not in FLOAT_TYPES or source.type.dtype not in FLOAT_TYPES:
        return "only floating-point matrix ops are tiled"
    if view.macs == 0:
        return "the matrix product is empty"
    weight = module.constant_of(op.operands[1])
    assert weight is not None
    if weight.dtype.kind not in "fiu" or not np.all(np.isfinite(weight)):
        return "the weight is not finite numbers"
    lowering = lower(module, op, weight)
    if isinstance(lowering, str):
        return lowering
    if lowering.matrix.shape != (view.groups, view.rows, view.cols):
        return f"internal: matrix {lowering.matrix.shape} differs from the view {view}"
    return view, lowering


def tileable(module: Module, op: Op) -> str | None:
    """``None`` when ``tile`` can lower ``op`` exactly; otherwise why it must stay digital."""
    lowered = _lower(module, op)
    return lowered if isinstance(lowered, str) else None


# -- planning and emitting ---------------------------------------------------------------------------


@dataclass
class LayerPlan:
    """One analog layer's tiling, from shapes alone: what counting, replication and placement need.
    The weights are read again, one layer at a time, only when the arrays are emitted.

    A step of a recurrence after the first (``shares``: the first step's plan) reads the arrays the
    first step programmed: it adds no arrays and copies its replicas."""

    op: Op
    layer: str
    view: MatrixView
    rows: list[tuple[int, int]]
    cols: list[tuple[int, int]]
    slices: int
    input_slices: int
    replicas: int = 1
    shares: LayerPlan | None = None

    @property
    def arrays(self) -> int:
        """Arrays this layer programs (none when it reads another layer's)."""
        if self.shares is not None:
            return 0
        return self.view.groups * len(self.rows) * len(self.cols) * self.slices

    def cycles(self, replicas: int) -> int:
        return -(-self.view.vectors // replicas) * self.input_slices


def _lowered(module: Module, op: Op) -> tuple[MatrixView, Lowering]:
    lowered = _lower(module, op)
    if isinstance(lowered, str):
        raise PassError(f"tile: {op.name} is marked analog but cannot be tiled: {lowered}", node=op.loc or None)
    return lowered


def plan_layer(module: Module, op: Op, target: Any) -> LayerPlan:
    """Shapes only: the weights are lowered (and an op that cannot be is refused) by `emit_layer`."""
    view = matrix_view(module, op)
    if view is None:
        raise PassError(f"tile: {op.name} is marked analog but has no constant weight matrix", node=op.loc or None)
    array = target.array
    usable = array.cols - (1 if array.encoding == "offset" else 0)
    rows = near_equal_splits(view.rows, -(-view.rows // array.rows))
    cols = near_equal_splits(view.cols, -(-view.cols // usable))
    slices = slice_count(array.weight_bits, array.bits_per_cell, array.encoding)
    return LayerPlan(op, op.loc or op.result.name, view, rows, cols, slices, target.dac.phases)


def plan_replicas(plans: list[LayerPlan], replicate: str, capacity: int) -> None:
    """``replicate=N``: N copies of every array. ``auto``: greedily give the layer with the most
    array reads per copy (M × input_slices / replicas) one more copy while spare arrays allow;
    stop when that bottleneck cannot be relieved (no room, or one copy per vector already)."""
    if replicate != "auto":
        for plan in plans:
            plan.replicas = int(replicate)
        return
    spare = capacity - sum(p.arrays for p in plans)
    heap = [(-p.cycles(1), i) for i, p in enumerate(plans)]
    heapq.heapify(heap)
    while heap:
        _, i = heapq.heappop(heap)
        plan = plans[i]
        if plan.replicas >= plan.view.vectors or plan.arrays > spare:
            break
        plan.replicas += 1
        spare -= plan.arrays
        heapq.heappush(heap, (-plan.cycles(plan.replicas), i))


def capacity_of(target: Any) -> int:
    """Arrays on the working cores: (mesh − dead cores), limited by chip.cores, × arrays per core."""
    chip = target.chip
    return min(chip.mesh_x * chip.mesh_y - len(chip.dead_cores), chip.cores) * chip.arrays_per_core


def _array_levels(encoded: Encoded, s: int, g: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    (r0, r1), (c0, c1) = rows, cols
    levels = encoded.levels[s]
    if encoded.encoding == "differential":
        return np.ascontiguousarray(levels[:, g, r0:r1, c0:c1])
    block = levels[g, r0:r1, c0:c1]
    reference = np.full((r1 - r0, 1), encoded.reference[s], block.dtype)
    return np.concatenate([block, reference], axis=1)


def _levels_type(target: Any, rows: tuple[int, int], cols: tuple[int, int]) -> TensorType:
    """The type ``_array_levels`` gives one array: (2, r, c) differential, (r, c + 1) offset."""
    array = target.array
    (r0, r1), (c0, c1) = rows, cols
    dtype = "u8" if array.bits_per_cell <= 8 else "u16"
    if array.encoding == "differential":
        return TensorType((2, r1 - r0, c1 - c0), dtype)
    return TensorType((r1 - r0, c1 - c0 + 1), dtype)


@dataclass
class ArraySet:
    """The arrays one layer programmed: their levels constants by (group, row split, column split,
    slice) and the weight scales, for the later steps of its recurrence to read."""

    levels: dict[tuple[int, int, int, int], Op]
    scales: np.ndarray


def emit_layer(
    module: Module,
    plan: LayerPlan,
    target: Any,
    per_column: bool,
    with_levels: bool,
    programmed: dict[int, ArraySet] | None = None,
) -> list[Op]:
    """The xbar ops replacing ``plan.op`` (unfold, levels constants and mvms, accumulates, assemble).

    Without levels the constants are typed placeholders: the module counts, places and schedules
    but cannot run (what ``afmc check`` needs, at a fraction of the memory). ``programmed`` maps
    ``id(plan.op)`` to the arrays a layer emitted (filled here); a plan that ``shares`` reads the
    levels constants of the layer it shares with instead of making its own.
    """
    op, layer, view = plan.op, plan.layer, plan.view
    array = target.array
    _, low = _lowered(module, op)
    enc: Encoded | None = None
    reused: ArraySet | None = None
    if plan.shares is not None:
        reused = (programmed or {}).get(id(plan.shares.op))
        if reused is None:
            raise PassError(f"tile: {layer} shares the arrays of {plan.shares.layer}, which are not emitted yet",
                            node=op.loc or None)
        scales = reused.scales
    elif with_levels:
        w_q, scales = quantize(low.matrix, array.weight_bits, per_column)
        enc = encode(w_q, array.weight_bits, array.bits_per_cell, array.encoding)
        del w_q
    else:
        scales = quantization_scales(low.matrix, array.weight_bits, per_column)
    emitted = ArraySet({}, scales)
    if programmed is not None and reused is None:
        programmed[id(op)] = emitted
    encoding = array.encoding
    source = op.operands[0]
    assert source is not None
    unfold = module.create_op(
        "xbar.unfold", [source], [TensorType((view.groups, view.vectors, view.rows), "f32")],
        {"layer": layer, "kind": view.kind, "groups": view.groups, **low.unfold}, op.loc, [f"{layer}.unfold"],
    )
    ops = [unfold]
    blocks: list[Value] = []
    common = {
        "layer": layer, "encoding": encoding, "replicas": plan.replicas, "input_slices": plan.input_slices,
        "dac_bits": target.dac.bits, "adc_bits": target.adc.bits,
    }
    for g in range(view.groups):
        for ci, (c0, c1) in enumerate(plan.cols):
            weight_scale: Any = scales[g, c0:c1] if per_column else float(scales)
            parts: list[Value] = []
            gains: list[float] = []
            for ri, (r0, r1) in enumerate(plan.rows):
                for s in range(plan.slices):
                    name = f"{layer}.g{g}.r{ri}.c{ci}.s{s}"
                    new_levels = reused is None
                    if reused is not None:
                        levels_op = reused.levels[(g, ri, ci, s)]
                    elif enc is not None:
                        _, levels_op = module.add_constant(_array_levels(enc, s, g, (r0, r1), (c0, c1)), name, op.loc)
                    else:
                        _, levels_op = module.add_placeholder(_levels_type(target, (r0, r1), (c0, c1)), name, op.loc)
                    emitted.levels[(g, ri, ci, s)] = levels_op
                    weight_of_slice = significance(s, array.bits_per_cell)
                    attrs = {
                        **common, "group": g, "rows": (r0, r1), "cols": (c0, c1), "slice": s,
                        "significance": weight_of_slice, "array": levels_op.attr("value"),
                        "rows_used": r1 - r0, "cols_used": levels_op.result.type.shape[-1],
                        "weight_scale": weight_scale,
                    }
                    mvm = module.create_op(
                        "xbar.mvm", [unfold.result, levels_op.result], [TensorType((view.vectors, c1 - c0), "f32")],
                        attrs, op.loc, [f"{name}.mvm"],
                    )
                    ops += [levels_op, mvm] if new_levels else [mvm]
                    parts.append(mvm.result)
                    gain = weight_of_slice * low.gain
                    gains.append(float(gain if per_column else gain * float(scales)))
            acc_attrs: dict[str, Any] = {"layer": layer, "group": g, "cols": (c0, c1), "scales": tuple(gains)}
            if per_column:
                acc_attrs["column_scales"] = np.asarray(weight_scale, np.float64)
            acc = module.create_op(
                "xbar.accumulate", parts, [TensorType((view.vectors, c1 - c0), "f32")], acc_attrs, op.loc,
                [f"{layer}.g{g}.c{ci}"],
            )
            ops.append(acc)
            blocks.append(acc.result)
    operands = blocks + ([low.bias] if low.bias is not None else [])
    assemble = module.create_op(
        "xbar.assemble", operands, [op.result.type],
        {"layer": layer, "kind": view.kind, "groups": view.groups, "col_splits": len(plan.cols),
         "bias_scale": low.bias_scale},
        op.loc, [layer],
    )
    ops.append(assemble)
    if not module.forward(op.result, assemble.result):
        raise PassError("tile: cannot replace the layer's result", node=op.loc or None)
    op.drop_operands()
    return ops


def summary(plan: LayerPlan, target: Any) -> dict[str, Any]:
    """One row of ``ctx.report['tiles']`` (keys as ``afmc.report`` reads them: rows = K, cols = N)."""
    view, array = plan.view, target.array
    cells = view.groups * view.rows * view.cols * plan.slices
    owner = plan.shares or plan
    row = {
        "layer": plan.layer, "kind": view.kind, "groups": view.groups, "rows": view.rows, "cols": view.cols,
        "row_splits": len(plan.rows), "col_splits": len(plan.cols), "slices": plan.slices,
        "arrays": plan.arrays, "replicas": plan.replicas, "physical_arrays": plan.arrays * plan.replicas,
        "utilization": cells / (owner.arrays * array.rows * array.cols),
    }
    if plan.shares is not None:
        row["shares_arrays_of"] = plan.shares.layer
    return row


@register_pass
@dataclass(frozen=True)
class Tile(Pass):
    """Split analog matrices into quantised, encoded, bit-sliced array tiles (xbar dialect)."""

    name: ClassVar[str] = "tile"
    replicate: str = "1"
    scale: str = "layer"
    levels: bool = True

    def __post_init__(self) -> None:
        if self.replicate != "auto" and not (self.replicate.isdigit() and int(self.replicate) >= 1):
            raise ValueError(f"replicate must be a positive integer or 'auto', got {self.replicate!r}")
        if self.scale not in SCALE_MODES:
            raise ValueError(f"scale must be one of {', '.join(SCALE_MODES)}, got {self.scale!r}")

    def run(self, module: Module, ctx: PassContext) -> None:
        target = ctx.target
        if target is None:
            raise AfmcError("tile needs a target")
        analog = [op for op in module.ops if op.attr("region") == "analog" and matrix_view(module, op) is not None]
        if analog and target.array is None:
            raise AfmcError("tile: photonic targets are not supported yet", node=analog[0].loc or None)
        if analog and target.array.weight_bits < 2:
            raise AfmcError("tile: symmetric weights need array.weight_bits >= 2")
        # arrays tiled before, each once however many steps of a recurrence read it
        existing = sum({op.attr("array"): int(op.attr("replicas", 1)) for op in module.ops
                        if op.name == "xbar.mvm"}.values())
        # the steps of a recurrence run one after another: the first programs the arrays, the
        # others read them (T copies would sit idle but one at any time)
        first_of = {id(op): group[0] for group in recurrent_groups(module, analog) for op in group[1:]}
        plans = [plan_layer(module, op, target) for op in analog]
        owners = [plan for plan in plans if id(plan.op) not in first_of]
        plan_replicas(owners, self.replicate, capacity_of(target) - existing)
        plan_of = {id(plan.op): plan for plan in plans}
        for plan in plans:
            first = first_of.get(id(plan.op))
            if first is not None:
                plan.shares = plan_of[id(first)]
                plan.replicas = plan.shares.replicas
        per_column = self.scale == "column"
        programmed: dict[int, ArraySet] = {}
        lowered = {id(plan.op): emit_layer(module, plan, target, per_column, self.levels, programmed) for plan in plans}
        module.ops = [new for op in module.ops for new in lowered.get(id(op), [op])]
        module.remove_dead()
        ctx.report.setdefault("tiles", []).extend(summary(plan, target) for plan in plans)
        required = existing + sum(plan.arrays * plan.replicas for plan in plans)
        module.attributes = module.attributes.replace(tiles_required=required)


__all__ = [
    "ArraySet", "Encoded", "LayerPlan", "Lowering", "Tile", "capacity_of", "dequantize", "encode", "near_equal_splits",
    "plan_replicas", "quantization_scales", "quantize", "reassemble", "significance", "slice_count", "tileable",
]
