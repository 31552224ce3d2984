"""Calibration in the ``xbar`` dialect: converter ranges, drift compensation and per-column correction.

The ``calibrate`` pass (``passes/calibrate.py``, ``docs/calibration.md``) adds these to a tiled layer::

    %t = xbar.mvm(%a, %l) {..., input_scale = 0.91, adc_range = [-2.4, 2.4]}    (attributes, optional)
    %s = xbar.accumulate(%t, ...) {...}
    %d = xbar.drift_compensate(%s) {layer, group, cols = [c0, c1], mode = "global", reference = 0.0172,
                                    amplitude = 1.0}
    %c = xbar.calibrate(%d) {layer, group, cols = [c0, c1], gain = dense<...>, offset = dense<...>}
    %y = xbar.assemble(%c, ...)

``xbar.mvm`` attributes (both optional; absent means the target's default):

- ``input_scale`` (float > 0): the static input (DAC) range of the array. An input ``x`` is driven as
  ``x / input_scale`` on the DAC's normalised ``dac.input_range`` (quantised, clipped at full scale).
  Absent: dynamic noise management, every input vector divided by its own max|x| (REFERENCE.md §2).
- ``adc_range`` ([lo, hi], normalised MVM units): the output (ADC) range of the array. It must be the
  target's ``adc.output_range`` scaled by one positive factor (same codes, another step). Absent: the
  target's range.

``xbar.drift_compensate`` (one per ``xbar.accumulate``): the result is ``y · α`` with ``α = reference / r_t``
per column (``mode = "column"``, ``reference`` a dense vector of c1-c0) or per layer (``mode = "global"``,
``reference`` one float, the same in every op of the layer). ``r_t`` is the layer's *reference readout* at
the time of the inference: every input row k of the layer is driven alone (one-hot, at ``amplitude`` on
the normalised input scale) through the non-ideal path, the reads combined like the layer's outputs
(``xbar.accumulate``), which gives the measured weight matrix W_t (K × N); ``r_t = mean_k |W_t[k, n]|``
per column, or ``mean_{k,n} |W_t|`` over the whole layer. ``reference`` is that readout right after
programming (REFERENCE.md §1). A readout ``r_t`` of 0 (no one-hot read above the ADC's first step) gives
``α = 1``; the pass inserts no compensation for a layer whose weights are all zero. Ideal arrays do not
drift: the ideal semantics are the identity.

``xbar.calibrate`` (one per ``xbar.accumulate``, after the drift compensation): ``y · gain + offset``
per column (f64 ``dense`` vectors of c1-c0), learned by least squares from the analog outputs against
the digital reference on calibration data. A digital op: the ideal semantics apply it too.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import VerifyError
from .core import Module, Op
from .dialects import OPS, op_verifier, register_op
from .xbar import _span

DRIFT_MODES = ("global", "column")
DRIFT_ATTRS = ("layer", "group", "cols", "mode", "reference", "amplitude")
CALIBRATE_ATTRS = ("layer", "group", "cols", "gain", "offset")


def _fail(op: Op, message: str) -> VerifyError:
    return VerifyError(f"{op.name}: {message}", node=op.loc or None)


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _column_vector(op: Op, key: str, width: int, positive: bool = False) -> None:
    value = op.attr(key)
    if not isinstance(value, np.ndarray) or value.dtype != np.float64 or value.shape != (width,):
        raise _fail(op, f"'{key}' must be an f64 dense vector of {width} columns, got {value!r}")
    if not np.all(np.isfinite(value)) or (positive and not np.all(value > 0)):
        raise _fail(op, f"'{key}' must hold finite{' positive' if positive else ''} numbers")


def _same_shape_unary(op: Op, keys: tuple[str, ...]) -> int:
    missing = [k for k in keys if k not in op.attributes]
    if missing:
        raise _fail(op, f"missing attribute(s) {', '.join(missing)}")
    if len(op.operands) != 1 or op.operands[0] is None or len(op.results) != 1:
        raise _fail(op, "takes one operand and has one result")
    source = op.operands[0]
    c0, c1 = _span(op, "cols")
    if source.type != op.result.type or op.result.type.rank != 2 or op.result.type.shape[1] != c1 - c0:
        raise _fail(op, f"operand and result must both be M × (c1-c0) = M × {c1 - c0}, got "
                        f"{source.type} and {op.result.type}")
    return c1 - c0


def _verify_drift(op: Op, module: Module) -> None:
    width = _same_shape_unary(op, DRIFT_ATTRS)
    mode = op.attr("mode")
    if mode not in DRIFT_MODES:
        raise _fail(op, f"mode must be one of {', '.join(DRIFT_MODES)}, got {mode!r}")
    if mode == "global":
        if not _positive(op.attr("reference")):
            raise _fail(op, f"'reference' must be a positive float in global mode, got {op.attr('reference')!r}")
    else:
        _column_vector(op, "reference", width, positive=True)
    if not _positive(op.attr("amplitude")) or op.attr("amplitude") > 1:
        raise _fail(op, f"'amplitude' must be in (0, 1], got {op.attr('amplitude')!r}")


def _verify_calibrate(op: Op, module: Module) -> None:
    width = _same_shape_unary(op, CALIBRATE_ATTRS)
    _column_vector(op, "gain", width)
    _column_vector(op, "offset", width)


register_op("xbar.drift_compensate",
            "Scale a layer's outputs by reference / readout: the one-hot readout now against at programming.",
            _verify_drift)
register_op("xbar.calibrate", "Per-column affine correction y·gain + offset learned from calibration data.",
            _verify_calibrate)

_verify_mvm_base = OPS["xbar.mvm"].verify


@op_verifier("xbar.mvm")
def _verify_mvm(op: Op, module: Module) -> None:
    """The tile verifier, plus the optional converter ranges set by ``calibrate``."""
    if _verify_mvm_base is not None:
        _verify_mvm_base(op, module)
    scale = op.attr("input_scale")
    if scale is not None and not _positive(scale):
        raise _fail(op, f"'input_scale' must be a positive float, got {scale!r}")
    adc_range = op.attr("adc_range")
    if adc_range is not None and not (
        isinstance(adc_range, tuple) and len(adc_range) == 2
        and all(isinstance(v, float) and math.isfinite(v) for v in adc_range) and adc_range[0] < adc_range[1]
    ):
        raise _fail(op, f"'adc_range' must be [lo, hi] with lo < hi, got {adc_range!r}")


__all__ = ["CALIBRATE_ATTRS", "DRIFT_ATTRS", "DRIFT_MODES"]
