"""Small helpers shared by the op implementations: attribute reading and dtype rules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import UnsupportedError
from ...ir import dtypes
from ...ir.core import Op


def result_dtype(op: Op, index: int = 0) -> np.dtype:
    """The numpy dtype the IR declares for result ``index``."""
    return dtypes.to_numpy(op.results[index].type.dtype)


def ints(value: Any) -> tuple[int, ...]:
    """A tuple of Python ints from an attribute or a 1-D integer operand (``None`` -> ``()``)."""
    if value is None:
        return ()
    return tuple(int(v) for v in np.asarray(value).reshape(-1))


def attr_ints(op: Op, key: str, default: Sequence[int]) -> tuple[int, ...]:
    """An int-list attribute, ``default`` when absent or empty (ONNX's 'not given')."""
    value = ints(op.attr(key))
    return value if value else tuple(default)


def norm_axis(axis: int, rank: int) -> int:
    """ONNX axes may be negative: count from the end."""
    return axis + rank if axis < 0 else axis


def unsupported(op: Op, what: str) -> UnsupportedError:
    return UnsupportedError(f"{op.name}: {what} is not supported by afmc", node=op.loc or None)


def compute_float(dtype: np.dtype) -> np.dtype:
    """Float type for internal arithmetic: at least float32 so fp16 inputs keep precision."""
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def to_dtype(array: Any, dtype: np.dtype) -> np.ndarray:
    """``array`` as an ndarray of ``dtype`` (numpy scalars become 0-d arrays)."""
    return np.asarray(array).astype(dtype, copy=False)
