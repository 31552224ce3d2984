"""The ONNX frontend: load, validate, convert to the canonical opset and lower to the nn dialect."""

from . import recurrent  # noqa: F401  (registers the LSTM/GRU/RNN handlers)
from .importer import FOLD_MAX_BYTES, HANDLERS, handles, import_model, import_onnx
from .loader import MAX_TENSOR_BYTES

__all__ = ["FOLD_MAX_BYTES", "HANDLERS", "MAX_TENSOR_BYTES", "handles", "import_model", "import_onnx"]
