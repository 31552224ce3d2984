"""The ``xbar`` dialect: a weight-stationary layer lowered onto analog arrays.

One analog layer (an ``nn.conv``/``nn.gemm``/``nn.matmul``/``nn.conv_transpose`` that ``partition``
marked analog) becomes, after ``tile``::

    %a  = xbar.unfold(%x) {layer, kind, groups, ...geometry}   : tensor<G x M x K xf32>
    %l  = nn.constant {value = @sym}                          : the array's cell levels (pool constant)
    %t  = xbar.mvm(%a, %l) {layer, group, rows = [r0, r1], cols = [c0, c1], slice, significance,
                            array = @sym, encoding, replicas, ...}   : tensor<M x (c1-c0) xf32>  (one per array)
    %s  = xbar.accumulate(%t, ...) {layer, group, cols, scales = [...]}  : tensor<M x (c1-c0) xf32>  (digital
                                                                  shift-add of slices and row-split partial sums)
    %y  = xbar.assemble(%s, ..., %bias?) {layer, kind, ...}    : the nn op's result type (digital concat of
                                                                  column blocks and groups, bias, layout)

Attributes (exactly these; later passes may add placement attributes):

- ``xbar.unfold``: ``layer`` (the nn op's loc), ``kind`` (``conv`` | ``conv_transpose`` | ``gemm`` |
  ``matmul``), ``groups``; convolutions add ``kernel``, ``strides``, ``dilations``, ``input_dilations``
  and ``pads`` (begin values then end values, negative = crop): the input is zero-stuffed by
  ``input_dilations`` (a ConvTranspose runs as the equivalent convolution), padded, and unrolled
  im2col-style with K ordered (C_in/groups, k_1, ..., k_n) and M ordered (batch, out_1, ..., out_n).
  ``gemm`` adds ``trans_a`` (0 | 1); ``matmul`` flattens the leading dims of its operand into M.
- ``xbar.mvm``: ``layer``, ``group``, ``rows = [r0, r1]`` (half-open in K), ``cols = [c0, c1]``
  (half-open in N), ``slice``, ``significance`` (= 2^(slice·bits_per_cell)), ``array`` (symbol of the
  levels constant, which is also operand 1 through ``nn.constant``), ``rows_used``, ``cols_used``
  (physical, with the reference column), ``encoding`` (``differential`` | ``offset``), ``replicas``,
  ``input_slices``, ``dac_bits``, ``adc_bits``, ``weight_scale`` (the layer's float, or with per-column
  scales an f64 ``dense`` of the c1-c0 scales of this block).
- ``xbar.accumulate``: ``layer``, ``group``, ``cols = [c0, c1]``, ``scales`` (one float per operand:
  significance × alpha × the layer's weight scale; with per-column scales, significance × alpha only),
  and with per-column scales ``column_scales`` (f64 ``dense`` of c1-c0 weight scales, applied after the sum).
- ``xbar.assemble``: ``layer``, ``kind``, ``groups``, ``col_splits``, ``bias_scale`` (Gemm's beta, else 1.0).
  Operands are the accumulate results group-major then column block, then the bias if there is one.

``xbar.mvm`` is one physical array (times ``replicas``, which only split its M vectors in time), or
one more read of it: the time steps of a recurrence read one set of arrays, so their ``xbar.mvm``
ops name the same ``array`` (and read the same levels constant) under their own ``layer``:
``array`` names the pool constant holding its programmed cell levels (integers in
[0, 2^bits_per_cell − 1]): shape ``(2, r1-r0, c1-c0)`` for a differential pair (positive, negative)
or ``(r1-r0, c1-c0 + 1)`` for offset encoding, whose last column is the reference column. Its ideal
result is the level-domain product ``a[group][:, r0:r1] @ signed_levels(levels)``, i.e.
``a @ (P − N)`` or ``a @ (L[:, :-1] − L[:, -1:])``. The levels are an SSA operand (besides the
symbol) so that interpreters read them like any constant and dead-code removal keeps them.
``xbar.accumulate`` weights each input by ``scales[i]``, sums them, then multiplies by ``column_scales``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import VerifyError
from .core import Module, Op, SymbolRef
from .dialects import register_op

ENCODINGS = ("differential", "offset")

UNFOLD_ATTRS = ("layer", "kind", "groups")
MVM_ATTRS = (
    "layer", "group", "rows", "cols", "slice", "significance", "array", "rows_used", "cols_used",
    "encoding", "replicas", "input_slices", "dac_bits", "adc_bits", "weight_scale",
)
ACCUMULATE_ATTRS = ("layer", "group", "cols", "scales")
ASSEMBLE_ATTRS = ("layer", "kind", "groups", "col_splits", "bias_scale")


def signed_levels(levels: np.ndarray, encoding: str) -> np.ndarray:
    """An array's signed level matrix (rows × weight columns): what its ideal read multiplies by."""
    cells = np.asarray(levels).astype(np.int64)
    if encoding == "differential":
        return cells[0] - cells[1]
    return cells[:, :-1] - cells[:, -1:]


def level_shape(rows: int, cols: int, encoding: str) -> tuple[int, ...]:
    """Shape of the levels constant of an array using ``rows`` × ``cols`` weight cells."""
    return (2, rows, cols) if encoding == "differential" else (rows, cols + 1)


def _fail(op: Op, message: str) -> VerifyError:
    return VerifyError(f"{op.name}: {message}", node=op.loc or None)


def _require(op: Op, keys: tuple[str, ...]) -> None:
    attributes = op.attributes
    if all(k in attributes for k in keys):
        return
    missing = [k for k in keys if k not in attributes]
    if missing:
        raise _fail(op, f"missing attribute(s) {', '.join(missing)}")


def _span(op: Op, key: str) -> tuple[int, int]:
    value = op.attr(key)
    if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], int) and isinstance(value[1], int)):
        raise _fail(op, f"'{key}' must be [start, stop], got {value!r}")
    start, stop = value
    if not 0 <= start < stop:
        raise _fail(op, f"'{key}' = [{start}, {stop}] is empty or negative")
    return start, stop


def _verify_unfold(op: Op, module: Module) -> None:
    _require(op, UNFOLD_ATTRS)
    if len(op.operands) != 1 or op.operands[0] is None or len(op.results) != 1:
        raise _fail(op, "takes one operand and has one result")
    shape = op.result.type.shape
    if len(shape) != 3 or shape[0] != op.attr("groups"):
        raise _fail(op, f"result must be groups × M × K, got {op.result.type}")


def _verify_mvm(op: Op, module: Module) -> None:
    _require(op, MVM_ATTRS)
    if len(op.operands) != 2 or any(v is None for v in op.operands) or len(op.results) != 1:
        raise _fail(op, "takes the unfolded input and the levels constant, and has one result")
    encoding = op.attr("encoding")
    if encoding not in ENCODINGS:
        raise _fail(op, f"unknown encoding {encoding!r}")
    (r0, r1), (c0, c1) = _span(op, "rows"), _span(op, "cols")
    source, levels = op.operands
    assert source is not None and levels is not None
    if source.type.rank != 3 or r1 > source.type.shape[2] or not 0 <= op.attr("group") < source.type.shape[0]:
        raise _fail(op, f"rows {[r0, r1]} or group {op.attr('group')} outside its input {source.type}")
    array = op.attr("array")
    producer = levels.producer
    if not isinstance(array, SymbolRef) or producer is None or producer.name != "nn.constant" \
            or producer.attr("value") != array:
        raise _fail(op, f"operand 1 must be the nn.constant of its 'array' {array!r}")
    expected = level_shape(r1 - r0, c1 - c0, encoding)
    if levels.type.shape != expected:
        raise _fail(op, f"levels @{array.name} are {levels.type}, expected shape {expected}")
    if op.attr("rows_used") != r1 - r0 or op.attr("cols_used") != expected[-1]:
        raise _fail(op, "rows_used/cols_used disagree with rows/cols")
    if op.result.type.shape != (source.type.shape[1], c1 - c0):
        raise _fail(op, f"result must be M × (c1-c0) = {(source.type.shape[1], c1 - c0)}, got {op.result.type}")
    if op.attr("replicas") < 1 or op.attr("input_slices") < 1:
        raise _fail(op, "replicas and input_slices must be >= 1")


def _verify_accumulate(op: Op, module: Module) -> None:
    _require(op, ACCUMULATE_ATTRS)
    scales = op.attr("scales")
    if not isinstance(scales, tuple) or len(scales) != len(op.operands) or not op.operands:
        raise _fail(op, "needs one scale per operand")
    c0, c1 = _span(op, "cols")
    for value in op.operands:
        if value is None or value.type.shape != op.result.type.shape:
            raise _fail(op, f"operands must all have the result's shape {op.result.type}")
    if op.result.type.rank != 2 or op.result.type.shape[1] != c1 - c0:
        raise _fail(op, f"result must be M × (c1-c0), got {op.result.type}")
    column_scales = op.attr("column_scales")
    if column_scales is not None and np.shape(column_scales) != (c1 - c0,):
        raise _fail(op, "column_scales must hold one scale per column")


def _verify_assemble(op: Op, module: Module) -> None:
    _require(op, ASSEMBLE_ATTRS)
    blocks = op.attr("groups") * op.attr("col_splits")
    if len(op.operands) not in (blocks, blocks + 1) or any(v is None for v in op.operands[:blocks]):
        raise _fail(op, f"takes {blocks} column blocks and an optional bias, got {len(op.operands)} operands")


VERIFIERS: dict[str, Callable[[Op, Module], None]] = {
    "xbar.unfold": _verify_unfold,
    "xbar.mvm": _verify_mvm,
    "xbar.accumulate": _verify_accumulate,
    "xbar.assemble": _verify_assemble,
}

register_op("xbar.unfold", "Lay a layer's input out as G×M×K row vectors for the arrays (im2col for convolutions).",
            VERIFIERS["xbar.unfold"])
register_op("xbar.mvm", "One array's analog matrix-vector products over its rows and columns of the layer.",
            VERIFIERS["xbar.mvm"])
register_op("xbar.accumulate", "Digital shift-and-add of bit slices and row-split partial sums.",
            VERIFIERS["xbar.accumulate"])
register_op("xbar.assemble", "Digital concatenation of column blocks and groups, bias, and output layout.",
            VERIFIERS["xbar.assemble"])
