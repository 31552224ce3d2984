"""Element types: the IR's short names and their numpy and ONNX counterparts, in one table."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

#: IR name -> (numpy dtype, ONNX TensorProto enum). One row per element type afmc handles.
DTYPES: dict[str, tuple[np.dtype, int]] = {
    "f16": (np.dtype(np.float16), TensorProto.FLOAT16),
    "f32": (np.dtype(np.float32), TensorProto.FLOAT),
    "f64": (np.dtype(np.float64), TensorProto.DOUBLE),
    "i8": (np.dtype(np.int8), TensorProto.INT8),
    "i16": (np.dtype(np.int16), TensorProto.INT16),
    "i32": (np.dtype(np.int32), TensorProto.INT32),
    "i64": (np.dtype(np.int64), TensorProto.INT64),
    "u8": (np.dtype(np.uint8), TensorProto.UINT8),
    "u16": (np.dtype(np.uint16), TensorProto.UINT16),
    "u32": (np.dtype(np.uint32), TensorProto.UINT32),
    "u64": (np.dtype(np.uint64), TensorProto.UINT64),
    "bool": (np.dtype(np.bool_), TensorProto.BOOL),
    "str": (np.dtype(object), TensorProto.STRING),
}

_FROM_NUMPY = {np_dtype: name for name, (np_dtype, _) in DTYPES.items() if name != "str"}
_FROM_ONNX = {onnx_type: name for name, (_, onnx_type) in DTYPES.items()}


def to_numpy(name: str) -> np.dtype:
    return DTYPES[name][0]


def to_onnx(name: str) -> int:
    return DTYPES[name][1]


def from_numpy(dtype: np.dtype | type) -> str:
    """IR name of a numpy dtype; object and unicode arrays are strings."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OUS":
        return "str"
    try:
        return _FROM_NUMPY[dtype]
    except KeyError:
        raise KeyError(f"unsupported element type {dtype}") from None


def from_onnx(elem_type: int) -> str:
    try:
        return _FROM_ONNX[elem_type]
    except KeyError:
        name = TensorProto.DataType.Name(elem_type) if elem_type in TensorProto.DataType.values() else elem_type
        raise KeyError(f"unsupported element type {name}") from None
