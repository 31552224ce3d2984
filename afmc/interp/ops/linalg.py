"""Einsum through ``np.einsum``; float operands contract in float64 and round once (numpy's float32
einsum accumulates in float32)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...ir.core import Op
from ..registry import impl
from .common import to_dtype

Array = np.ndarray


@impl("nn.einsum")
def einsum(op: Op, args: Sequence[Array | None]) -> list[Array]:
    """The ``equation`` in numpy's notation (ONNX's is the same, spaces allowed)."""
    arrays = [np.asarray(a) for a in args if a is not None]
    dtype = arrays[0].dtype
    equation = str(op.attr("equation")).replace(" ", "")
    work = [a.astype(np.float64) if dtype.kind == "f" else a for a in arrays]
    return [to_dtype(np.einsum(equation, *work, optimize=len(work) > 2), dtype)]
