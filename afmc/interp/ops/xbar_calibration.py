"""Ideal semantics of the calibration ops of the ``xbar`` dialect (`afmc.ir.xbar_calibration`).

``xbar.drift_compensate`` is the identity: ideal arrays read the same at every time, so the
readout ratio α = reference / r_t of an ideal layer is 1. ``xbar.calibrate`` is digital and applies
its per-column gain and offset. Arithmetic in float64, results float32 (the xbar result type).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...ir.core import Op
from ..registry import impl


@impl("xbar.drift_compensate")
def drift_compensate(op: Op, args: Sequence[np.ndarray | None]) -> list[np.ndarray]:
    """α = 1 for ideal arrays: the outputs unchanged."""
    return [np.asarray(args[0], np.float32)]


@impl("xbar.calibrate")
def calibrate(op: Op, args: Sequence[np.ndarray | None]) -> list[np.ndarray]:
    """y · gain + offset, per column."""
    y = np.asarray(args[0], np.float64)
    gain = np.asarray(op.attr("gain"), np.float64)
    offset = np.asarray(op.attr("offset"), np.float64)
    return [(y * gain + offset).astype(np.float32)]
