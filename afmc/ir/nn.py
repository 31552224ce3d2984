"""The ``nn`` dialect: digital tensor ops with exact ONNX semantics (canonical opset ``OPSET``).

An ``nn`` op is the ONNX node it came from: same operands in the same order (``none`` for an
omitted optional input), every attribute spelled out with its default, results typed statically.
``nn.constant`` reads a tensor from the module's constant pool by symbol.
"""

from __future__ import annotations

from ..errors import VerifyError
from .core import Module, Op, SymbolRef
from .dialects import register_op

#: The opset every model is converted to before import.
OPSET = 21

#: ONNX op type -> nn op name. The frontend imports exactly these; the interpreter runs them.
ONNX_TO_NN: dict[str, str] = {
    "Abs": "nn.abs",
    "Add": "nn.add",
    "AveragePool": "nn.average_pool",
    "BatchNormalization": "nn.batch_normalization",
    "Cast": "nn.cast",
    "Clip": "nn.clip",
    "Concat": "nn.concat",
    "ConstantOfShape": "nn.constant_of_shape",
    "Conv": "nn.conv",
    "ConvTranspose": "nn.conv_transpose",
    "Div": "nn.div",
    "Equal": "nn.equal",
    "Erf": "nn.erf",
    "Exp": "nn.exp",
    "Expand": "nn.expand",
    "Flatten": "nn.flatten",
    "Gather": "nn.gather",
    "Gemm": "nn.gemm",
    "GlobalAveragePool": "nn.global_average_pool",
    "Greater": "nn.greater",
    "HardSigmoid": "nn.hard_sigmoid",
    "HardSwish": "nn.hard_swish",
    "Identity": "nn.identity",
    "LayerNormalization": "nn.layer_normalization",
    "LeakyRelu": "nn.leaky_relu",
    "Less": "nn.less",
    "Log": "nn.log",
    "MatMul": "nn.matmul",
    "Max": "nn.max",
    "MaxPool": "nn.max_pool",
    "Min": "nn.min",
    "Mul": "nn.mul",
    "Neg": "nn.neg",
    "Not": "nn.not",
    "Pad": "nn.pad",
    "Pow": "nn.pow",
    "Range": "nn.range",
    "Reciprocal": "nn.reciprocal",
    "ReduceMax": "nn.reduce_max",
    "ReduceMean": "nn.reduce_mean",
    "ReduceSum": "nn.reduce_sum",
    "Relu": "nn.relu",
    "Reshape": "nn.reshape",
    "Resize": "nn.resize",
    "Shape": "nn.shape",
    "Sigmoid": "nn.sigmoid",
    "Slice": "nn.slice",
    "Softmax": "nn.softmax",
    "Split": "nn.split",
    "Sqrt": "nn.sqrt",
    "Squeeze": "nn.squeeze",
    "Sub": "nn.sub",
    "Tanh": "nn.tanh",
    "Transpose": "nn.transpose",
    "Unsqueeze": "nn.unsqueeze",
    "Where": "nn.where",
}

NN_TO_ONNX: dict[str, str] = {nn: onnx for onnx, nn in ONNX_TO_NN.items()}


def _verify_constant(op: Op, module: Module) -> None:
    ref = op.attr("value")
    if op.operands or len(op.results) != 1 or not isinstance(ref, SymbolRef):
        raise VerifyError("nn.constant takes no operands, one result and a symbol 'value'", node=op.loc or None)
    constant = module.constants.get(ref.name)
    if constant is None:
        raise VerifyError(f"nn.constant refers to unknown constant @{ref.name}", node=op.loc or None)
    if constant.type != op.result.type:
        raise VerifyError(
            f"nn.constant result {op.result.type} differs from @{ref.name} {constant.type}", node=op.loc or None
        )


register_op("nn.constant", "A tensor from the constant pool, referenced by symbol.", _verify_constant)
for _onnx_type, _name in ONNX_TO_NN.items():
    register_op(_name, f"ONNX {_onnx_type} (opset {OPSET} semantics).")
