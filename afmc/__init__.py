"""afmc: compile ONNX models onto analog in-memory-compute chips, check the fit, simulate them."""

__version__ = "0.1.0"
