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
    "And": "nn.and",
    "ArgMax": "nn.arg_max",
    "ArgMin": "nn.arg_min",
    "AveragePool": "nn.average_pool",
    "BatchNormalization": "nn.batch_normalization",
    "Cast": "nn.cast",
    "Ceil": "nn.ceil",
    "Celu": "nn.celu",
    "Clip": "nn.clip",
    "Concat": "nn.concat",
    "ConstantOfShape": "nn.constant_of_shape",
    "Conv": "nn.conv",
    "ConvTranspose": "nn.conv_transpose",
    "Cos": "nn.cos",
    "CumSum": "nn.cum_sum",
    "DepthToSpace": "nn.depth_to_space",
    "DequantizeLinear": "nn.dequantize_linear",
    "Div": "nn.div",
    "DynamicQuantizeLinear": "nn.dynamic_quantize_linear",
    "Einsum": "nn.einsum",
    "Elu": "nn.elu",
    "Equal": "nn.equal",
    "Erf": "nn.erf",
    "Exp": "nn.exp",
    "Expand": "nn.expand",
    "Flatten": "nn.flatten",
    "Floor": "nn.floor",
    "Gather": "nn.gather",
    "GatherElements": "nn.gather_elements",
    "GatherND": "nn.gather_nd",
    "Gelu": "nn.gelu",
    "Gemm": "nn.gemm",
    "GlobalAveragePool": "nn.global_average_pool",
    "GlobalMaxPool": "nn.global_max_pool",
    "Greater": "nn.greater",
    "GridSample": "nn.grid_sample",
    "GreaterOrEqual": "nn.greater_or_equal",
    "GroupNormalization": "nn.group_normalization",
    "HardSigmoid": "nn.hard_sigmoid",
    "HardSwish": "nn.hard_swish",
    "Hardmax": "nn.hardmax",
    "Identity": "nn.identity",
    "InstanceNormalization": "nn.instance_normalization",
    "IsInf": "nn.is_inf",
    "IsNaN": "nn.is_nan",
    "LayerNormalization": "nn.layer_normalization",
    "LeakyRelu": "nn.leaky_relu",
    "Less": "nn.less",
    "LessOrEqual": "nn.less_or_equal",
    "Log": "nn.log",
    "LogSoftmax": "nn.log_softmax",
    "LpNormalization": "nn.lp_normalization",
    "MatMul": "nn.matmul",
    "MatMulInteger": "nn.matmul_integer",
    "Max": "nn.max",
    "MaxPool": "nn.max_pool",
    "Mean": "nn.mean",
    "Min": "nn.min",
    "Mish": "nn.mish",
    "Mod": "nn.mod",
    "Mul": "nn.mul",
    "Neg": "nn.neg",
    "Not": "nn.not",
    "OneHot": "nn.one_hot",
    "Or": "nn.or",
    "PRelu": "nn.prelu",
    "QuantizeLinear": "nn.quantize_linear",
    "Pad": "nn.pad",
    "Pow": "nn.pow",
    "Range": "nn.range",
    "Reciprocal": "nn.reciprocal",
    "ReduceL1": "nn.reduce_l1",
    "ReduceL2": "nn.reduce_l2",
    "ReduceLogSumExp": "nn.reduce_log_sum_exp",
    "ReduceMax": "nn.reduce_max",
    "ReduceMean": "nn.reduce_mean",
    "ReduceMin": "nn.reduce_min",
    "ReduceProd": "nn.reduce_prod",
    "ReduceSum": "nn.reduce_sum",
    "ReduceSumSquare": "nn.reduce_sum_square",
    "Relu": "nn.relu",
    "Reshape": "nn.reshape",
    "Resize": "nn.resize",
    "Round": "nn.round",
    "ScatterElements": "nn.scatter_elements",
    "ScatterND": "nn.scatter_nd",
    "Selu": "nn.selu",
    "Shape": "nn.shape",
    "Shrink": "nn.shrink",
    "Sigmoid": "nn.sigmoid",
    "Sign": "nn.sign",
    "Sin": "nn.sin",
    "Slice": "nn.slice",
    "Softmax": "nn.softmax",
    "Softplus": "nn.softplus",
    "Softsign": "nn.softsign",
    "SpaceToDepth": "nn.space_to_depth",
    "Split": "nn.split",
    "Sqrt": "nn.sqrt",
    "Squeeze": "nn.squeeze",
    "Sub": "nn.sub",
    "Sum": "nn.sum",
    "Tanh": "nn.tanh",
    "ThresholdedRelu": "nn.thresholded_relu",
    "Tile": "nn.tile",
    "TopK": "nn.top_k",
    "Transpose": "nn.transpose",
    "Trilu": "nn.trilu",
    "Unsqueeze": "nn.unsqueeze",
    "Where": "nn.where",
    "Xor": "nn.xor",
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
