"""The reference interpreter's op implementations against onnxruntime, one ONNX node at a time.

Each case builds a one-node ONNX model (opset 21), runs it in onnxruntime with graph optimisations
off, builds the matching ``nn`` op (all schema defaults filled in, result types from onnxruntime's
outputs) and compares with ``rtol = atol = 1e-5`` unless a case says otherwise, and why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import defs, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from afmc.interp import evaluate_op
from afmc.interp.ops.elementwise import erf
from afmc.ir.core import Module, TensorType
from afmc.ir.nn import ONNX_TO_NN, OPSET

RNG = np.random.default_rng(0)
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _ir_attr(value: Any) -> Any:
    """ONNX attribute value -> IR attribute value (bytes -> str, lists -> tuples, tensors -> arrays)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, list):
        return tuple(_ir_attr(v) for v in value)
    return value


def schema_attrs(op_type: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """Every attribute with a schema default, overridden by ``given`` (as the frontend does)."""
    attrs: dict[str, Any] = {}
    for name, spec in defs.get_schema(op_type, OPSET).attributes.items():
        if spec.default_value.type:
            attrs[name] = _ir_attr(helper.get_attribute_value(spec.default_value))
    for name, value in given.items():
        attrs[name] = _ir_attr(value) if not isinstance(value, np.ndarray) else value
    return attrs


def one_node_model(
    op_type: str, inputs: Sequence[np.ndarray | None], attrs: Mapping[str, Any], n_out: int
) -> onnx.ModelProto:
    names = [f"in{i}" if x is not None else "" for i, x in enumerate(inputs)]
    outs = [f"out{i}" for i in range(n_out)]
    onnx_attrs = {
        k: (numpy_helper.from_array(v) if isinstance(v, np.ndarray) else v) for k, v in attrs.items()
    }
    node = helper.make_node(op_type, names, outs, **onnx_attrs)
    graph_inputs = [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)
        for n, x in zip(names, inputs)
        if x is not None
    ]
    graph_outputs = [helper.make_empty_tensor_value_info(o) for o in outs]
    graph = helper.make_graph([node], "g", graph_inputs, graph_outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    return model


def feeds_of(inputs: Sequence[np.ndarray | None]) -> dict[str, np.ndarray]:
    return {f"in{i}": x for i, x in enumerate(inputs) if x is not None}


def run_ort(
    op_type: str, inputs: Sequence[np.ndarray | None], attrs: Mapping[str, Any], n_out: int
) -> list[np.ndarray]:
    model = one_node_model(op_type, inputs, attrs, n_out)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds_of(inputs))


def run_reference(
    op_type: str, inputs: Sequence[np.ndarray | None], attrs: Mapping[str, Any], n_out: int
) -> list[np.ndarray]:
    """onnx's ReferenceEvaluator, for the few cases where onnxruntime departs from the ONNX spec."""
    model = one_node_model(op_type, inputs, attrs, n_out)
    return [np.asarray(r) for r in ReferenceEvaluator(model).run(None, feeds_of(inputs))]


def run_afmc(
    op_type: str,
    inputs: Sequence[np.ndarray | None],
    attrs: Mapping[str, Any],
    result_types: Sequence[TensorType],
    ir_overrides: Mapping[str, Any] | None = None,
) -> list[np.ndarray]:
    module = Module()
    operands = [
        None if x is None else module.add_input(f"in{i}", TensorType.of(x)) for i, x in enumerate(inputs)
    ]
    ir_attrs = schema_attrs(op_type, attrs)
    ir_attrs.update(ir_overrides or {})
    op = module.create_op(ONNX_TO_NN[op_type], operands, result_types, ir_attrs)
    return evaluate_op(op, list(inputs))


def check(
    op_type: str,
    inputs: Sequence[np.ndarray | None],
    n_out: int = 1,
    tol: Mapping[str, float] = TOL,
    ir_overrides: Mapping[str, Any] | None = None,
    reference: bool = False,
    **attrs: Any,
) -> list[np.ndarray]:
    """Run both and compare dtype, shape and values; returns afmc's results.

    ``reference`` compares with onnx's ReferenceEvaluator instead of onnxruntime.
    """
    expected = (run_reference if reference else run_ort)(op_type, inputs, attrs, n_out)
    got = run_afmc(op_type, inputs, attrs, [TensorType.of(e) for e in expected], ir_overrides)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert isinstance(g, np.ndarray)
        assert g.dtype == e.dtype, (g.dtype, e.dtype)
        assert g.shape == e.shape, (g.shape, e.shape)
        if e.dtype.kind in "fc":
            np.testing.assert_allclose(g, e, **tol)
        else:
            np.testing.assert_array_equal(g, e)
    return got


def rand(*shape: int, dtype: Any = np.float32, low: float = -3.0, high: float = 3.0) -> np.ndarray:
    return RNG.uniform(low, high, size=shape).astype(dtype)


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


# -- elementwise ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("op_type", "x"),
    [
        ("Abs", rand(3, 4)),
        ("Abs", np.array([-3, 0, 7], np.int32)),
        ("Neg", rand(3, 4)),
        ("Neg", np.array([-3, 0, 7], np.int64)),
        ("Exp", rand(3, 4)),
        ("Log", rand(3, 4, low=0.01, high=10)),
        ("Sqrt", rand(3, 4, low=0.0, high=10)),
        ("Reciprocal", rand(3, 4, low=0.5, high=4)),
        ("Tanh", rand(3, 4)),
        ("Sigmoid", np.concatenate([rand(20, low=-20, high=20), np.array([-100, 100, 0], np.float32)])),
        ("Erf", np.concatenate([rand(50, low=-5, high=5), np.array([0, -7, 7, 2, -2, 6], np.float32)])),
        ("Relu", rand(3, 4)),
        ("Relu", np.array([-3, 0, 7], np.int32)),
        ("Not", np.array([True, False, True])),
        ("Exp", rand(2, 3, dtype=np.float16)),
        ("Sigmoid", rand(2, 3, dtype=np.float64)),
    ],
)
def test_unary(op_type: str, x: np.ndarray) -> None:
    check(op_type, [x])


def test_erf_accuracy_against_math() -> None:
    xs = np.concatenate([np.linspace(-8, 8, 20001), [0.0, 1e-300, -1e-10, 2.0, 6.0, np.inf, -np.inf]])
    expected = np.array([math.erf(v) for v in xs])
    np.testing.assert_allclose(erf(xs), expected, rtol=0, atol=1e-13)
    assert np.isnan(erf(np.array([np.nan]))).all()
    assert erf(np.float32(0.5) * np.ones((), np.float32)).dtype == np.float32


def test_float32_erf_is_within_two_ulp_of_math() -> None:
    """float32 inputs take a float32 path: within 2 ulp of the correctly rounded erf on a dense grid."""
    xs = np.concatenate([np.linspace(-4.5, 4.5, 900_001, dtype=np.float32),
                         np.float32([0.0, 1e-30, 1e-40, -1.0, 1.0, 3.92, 4.0, 8.0, -1e30, np.inf, -np.inf])])
    got = erf(xs)
    assert got.dtype == np.float32
    want = np.array([math.erf(float(v)) for v in xs])
    ulp = np.spacing(np.abs(want.astype(np.float32))).astype(np.float64)
    assert np.max(np.abs(got - want) / ulp) <= 2.0
    assert np.isnan(erf(np.float32([np.nan]))).all() and np.signbit(erf(np.float32([-0.0])))[0]


@pytest.mark.parametrize(
    ("op_type", "attrs"),
    [
        ("LeakyRelu", {}),
        ("LeakyRelu", {"alpha": 0.3}),
        ("HardSigmoid", {}),
        ("HardSigmoid", {"alpha": 0.5, "beta": 0.1}),
        ("HardSwish", {}),
    ],
)
def test_activation_attributes(op_type: str, attrs: dict[str, Any]) -> None:
    check(op_type, [rand(4, 5, low=-6, high=6)], **attrs)


@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize(
    ("sa", "sb"), [((2, 3, 4), (2, 3, 4)), ((2, 3, 4), (4,)), ((1, 3, 1), (2, 1, 5)), ((), (3,))]
)
def test_arithmetic_broadcast(op_type: str, sa: tuple[int, ...], sb: tuple[int, ...]) -> None:
    b = rand(*sb, low=0.5, high=3.0) * np.where(RNG.random(sb) < 0.5, -1, 1).astype(np.float32)
    check(op_type, [rand(*sa), b.astype(np.float32)])


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul", "Div"])
def test_integer_arithmetic(op_type: str, dtype: type) -> None:
    a = np.array([[7, -7, 9, -9, 0, 100]], dtype=dtype)
    b = np.array([[2], [-2], [3]], dtype=dtype)
    check(op_type, [a, b])


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (rand(3, 4, low=0.1, high=3), rand(3, 4)),
        (rand(3, 4), np.array([2.0], np.float32)),
        (rand(3, 4), np.array(3, np.int64)),
        (np.array([1, 2, 3], np.int32), np.array([4.0, 5.0, 6.0], np.float32)),
        (np.array([1, 2, 3], np.int64), np.array([4, 5, 2], np.int64)),
    ],
)
def test_pow(a: np.ndarray, b: np.ndarray) -> None:
    check("Pow", [a, b])


@pytest.mark.parametrize("op_type", ["Equal", "Greater", "Less"])
@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.int32])
def test_compare(op_type: str, dtype: type) -> None:
    a = RNG.integers(-2, 3, size=(2, 3, 4)).astype(dtype)
    b = RNG.integers(-2, 3, size=(3, 1)).astype(dtype)
    check(op_type, [a, b])


def test_equal_bool() -> None:
    check("Equal", [np.array([True, False, True]), np.array([True, True, False])])


@pytest.mark.parametrize("op_type", ["Min", "Max"])
def test_min_max_variadic(op_type: str) -> None:
    check(op_type, [rand(2, 3, 4), rand(3, 1), rand(4)])
    check(op_type, [rand(2, 3)])
    check(op_type, [np.array([1, 5, -2], np.int64), np.array([3], np.int64)])


def test_where_broadcast() -> None:
    check("Where", [RNG.random((3, 1)) < 0.5, rand(1, 4), rand(3, 4)])


@pytest.mark.parametrize(
    "bounds",
    [
        (None, None),
        (np.array(-1.0, np.float32), None),
        (None, np.array(0.5, np.float32)),
        (np.array(-1.0, np.float32), np.array(0.5, np.float32)),
        (np.array(2.0, np.float32), np.array(1.0, np.float32)),
    ],
)
def test_clip(bounds: tuple[np.ndarray | None, np.ndarray | None]) -> None:
    inputs = [rand(3, 4), *bounds]
    while inputs and inputs[-1] is None:
        inputs.pop()
    check("Clip", inputs)


def test_clip_int() -> None:
    check("Clip", [np.array([-5, 0, 5, 10], np.int32), np.array(-1, np.int32), np.array(6, np.int32)])


@pytest.mark.parametrize(
    ("x", "to", "ir_to"),
    [
        (rand(3, 4), onnx.TensorProto.FLOAT16, "f16"),
        (rand(3, 4, low=-100, high=100), onnx.TensorProto.INT32, "i32"),
        (np.array([0.0, 1.5, -2.0, np.nan], np.float32), onnx.TensorProto.BOOL, "bool"),
        (np.array([1, -2, 3], np.int64), onnx.TensorProto.FLOAT, "f32"),
        (np.array([True, False]), onnx.TensorProto.FLOAT, "f32"),
        (rand(3, dtype=np.float64), onnx.TensorProto.FLOAT, "f32"),
        (np.array([300, -1], np.int32), onnx.TensorProto.UINT8, "u8"),
    ],
)
def test_cast_enum_and_ir_name(x: np.ndarray, to: int, ir_to: str) -> None:
    check("Cast", [x], to=to)
    check("Cast", [x], to=to, ir_overrides={"to": ir_to})


# -- shape ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "target", "allowzero"),
    [
        ((2, 3, 4), (6, -1), 0),
        ((2, 3, 4), (0, -1), 0),
        ((2, 3, 4), (0, 4, 3), 0),
        ((0, 3), (3, 0), 1),
        ((2, 3), (-1,), 0),
    ],
)
def test_reshape(shape: tuple[int, ...], target: tuple[int, ...], allowzero: int) -> None:
    check("Reshape", [rand(*shape), i64(*target)], allowzero=allowzero)


@pytest.mark.parametrize("perm", [None, [0, 2, 1, 3], [3, 2, 0, 1]])
def test_transpose(perm: list[int] | None) -> None:
    attrs = {} if perm is None else {"perm": perm}
    check("Transpose", [rand(2, 3, 4, 5)], **attrs)


@pytest.mark.parametrize("axes", [None, i64(0), i64(-1, 0)])
def test_squeeze(axes: np.ndarray | None) -> None:
    check("Squeeze", [rand(1, 3, 1)] + ([] if axes is None else [axes]))


@pytest.mark.parametrize("axes", [i64(0), i64(-1), i64(1, 3), i64(-1, 0)])
def test_unsqueeze(axes: np.ndarray) -> None:
    check("Unsqueeze", [rand(2, 3), axes])


@pytest.mark.parametrize("axis", [0, 1, 2, -1, 3])
def test_flatten(axis: int) -> None:
    check("Flatten", [rand(2, 3, 4)], axis=axis)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis: int) -> None:
    check("Concat", [rand(2, 3, 2), rand(2, 3, 2), rand(2, 3, 2)], axis=axis)


def test_split_variants() -> None:
    check("Split", [rand(7, 3), i64(2, 5)], n_out=2, axis=0)
    check("Split", [rand(2, 7)], n_out=3, axis=1, num_outputs=3)
    check("Split", [rand(6, 2)], n_out=3, num_outputs=3)
    check("Split", [rand(2, 4)], n_out=2, axis=-1, num_outputs=2)
    check("Split", [rand(2, 4), i64(1, 0, 3)], n_out=3, axis=-1)


@pytest.mark.parametrize(
    ("starts", "ends", "axes", "steps"),
    [
        ((0, 1), (2, 3), None, None),
        ((-3,), (-1,), (1,), None),
        ((5,), (-100,), (0,), (-2,)),
        ((-1, 0), (-1000, 1000), (2, 0), (-1, 3)),
        ((1,), (2**63 - 1,), (-1,), (2,)),
        ((-10,), (-20,), (0,), (-1,)),
    ],
)
def test_slice(
    starts: tuple[int, ...],
    ends: tuple[int, ...],
    axes: tuple[int, ...] | None,
    steps: tuple[int, ...] | None,
) -> None:
    inputs = [rand(6, 5, 4), i64(*starts), i64(*ends)]
    if axes is not None:
        inputs.append(i64(*axes))
    if steps is not None:
        inputs.append(i64(*steps))
    check("Slice", inputs)


@pytest.mark.parametrize(
    ("indices", "axis"),
    [(i64(0, -1, 2), 0), (np.array([[1, -2], [0, 0]], np.int32), 1), (np.array(-1, np.int64), 2)],
)
def test_gather(indices: np.ndarray, axis: int) -> None:
    check("Gather", [rand(3, 4, 5), indices], axis=axis)


@pytest.mark.parametrize(("shape", "target"), [((3, 1), (2, 3, 4)), ((2, 3), (1, 1)), ((4,), (3, 1))])
def test_expand(shape: tuple[int, ...], target: tuple[int, ...]) -> None:
    check("Expand", [rand(*shape), i64(*target)])


@pytest.mark.parametrize("attrs", [{}, {"start": 1}, {"start": -2}, {"end": -1}, {"start": 1, "end": 10}])
def test_shape(attrs: dict[str, int]) -> None:
    check("Shape", [rand(2, 3, 4, 5)], **attrs)


@pytest.mark.parametrize("value", [None, np.array([7], np.int64), np.array([0.5], np.float32)])
def test_constant_of_shape(value: np.ndarray | None) -> None:
    attrs = {} if value is None else {"value": value}
    check("ConstantOfShape", [i64(2, 3)], **attrs)


@pytest.mark.parametrize(
    "bounds",
    [(0, 10, 3), (10, 0, -3), (5, 5, 1), (1.0, 2.0, 0.3), (3.5, -1.0, -0.7)],
)
def test_range(bounds: tuple[float, float, float]) -> None:
    dtype = np.int64 if isinstance(bounds[0], int) else np.float32
    check("Range", [np.array(b, dtype) for b in bounds])


def test_identity() -> None:
    check("Identity", [rand(2, 3)])


# -- reduce ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("op_type", ["ReduceSum", "ReduceMean", "ReduceMax"])
@pytest.mark.parametrize(
    ("axes", "keepdims", "noop"),
    [(i64(1), 1, 0), (i64(-1, 0), 0, 0), (None, 1, 0), (None, 0, 0), (None, 1, 1), (i64(), 0, 1)],
)
def test_reduce(op_type: str, axes: np.ndarray | None, keepdims: int, noop: int) -> None:
    inputs = [rand(2, 3, 4)] + ([] if axes is None else [axes])
    check(op_type, inputs, keepdims=keepdims, noop_with_empty_axes=noop)


def test_reduce_int_and_empty() -> None:
    check("ReduceSum", [np.arange(12, dtype=np.int64).reshape(3, 4), i64(0)])
    check("ReduceMax", [np.arange(12, dtype=np.int32).reshape(3, 4), i64(1)], keepdims=0)
    check("ReduceMax", [np.zeros((2, 0, 3), np.float32), i64(1)])
    check("ReduceSum", [np.zeros((2, 0, 3), np.float32), i64(1)])


# -- nn -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("x_shape", "w_shape", "attrs", "bias"),
    [
        ((1, 3, 7, 7), (4, 3, 3, 3), {}, True),
        ((2, 3, 8, 9), (4, 3, 3, 2), {"pads": [1, 0, 2, 1], "strides": [2, 1]}, False),
        ((1, 2, 9, 9), (3, 2, 3, 3), {"dilations": [2, 2]}, True),
        ((1, 4, 6, 6), (6, 2, 3, 3), {"group": 2, "pads": [1, 1, 1, 1]}, True),
        ((1, 4, 6, 6), (8, 1, 3, 3), {"group": 4, "strides": [2, 2], "pads": [1, 1, 1, 1]}, True),
        ((1, 3, 7, 8), (2, 3, 3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, False),
        ((1, 3, 7, 8), (2, 3, 4, 4), {"auto_pad": "SAME_LOWER", "strides": [2, 3]}, False),
        ((1, 3, 7, 8), (2, 3, 3, 3), {"auto_pad": "VALID", "strides": [2, 2]}, True),
        ((2, 3, 11), (4, 3, 3), {"pads": [2, 1], "strides": [2]}, True),
        ((1, 2, 5, 6, 4), (3, 2, 3, 2, 2), {"pads": [1, 0, 1, 1, 0, 0]}, True),
        ((1, 16, 5, 5), (16, 16, 1, 1), {}, True),
    ],
)
def test_conv(x_shape: tuple[int, ...], w_shape: tuple[int, ...], attrs: dict[str, Any], bias: bool) -> None:
    inputs = [rand(*x_shape), rand(*w_shape)] + ([rand(w_shape[0])] if bias else [])
    check("Conv", inputs, **attrs)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_conv_hypothesis(data: st.DataObject) -> None:
    """Random grouped 2-D convolutions: strides, dilations, asymmetric pads, every auto_pad."""
    groups, cg, mg = (data.draw(st.integers(1, 3)) for _ in range(3))
    kh, kw = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 3))
    h, w = data.draw(st.integers(1, 9)), data.draw(st.integers(1, 9))
    auto_pad = data.draw(st.sampled_from(["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    dilations = [data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        dilations = [1, 1]  # onnxruntime rejects dilation with SAME padding
    pads = [data.draw(st.integers(0, 2)) for _ in range(4)]
    if auto_pad != "NOTSET":
        pads = [0, 0, 0, 0]
    if h + pads[0] + pads[2] < dilations[0] * (kh - 1) + 1 or w + pads[1] + pads[3] < dilations[1] * (kw - 1) + 1:
        return  # the window does not fit: no output
    attrs: dict[str, Any] = {
        "group": groups,
        "strides": [data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))],
        "dilations": dilations,
        "auto_pad": auto_pad,
    }
    if auto_pad == "NOTSET":
        attrs["pads"] = pads
    x = rand(data.draw(st.integers(1, 2)), groups * cg, h, w)
    check("Conv", [x, rand(groups * mg, cg, kh, kw), rand(groups * mg)], **attrs)


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "attrs"),
    [
        ((1, 2, 3, 3), (2, 3, 3, 3), {}),
        ((2, 2, 4, 3), (2, 3, 3, 2), {"strides": [2, 3], "pads": [1, 0, 1, 1]}),
        ((1, 2, 3, 3), (2, 2, 3, 3), {"strides": [2, 2], "output_padding": [1, 1]}),
        ((1, 2, 3, 3), (2, 2, 3, 3), {"strides": [2, 2], "output_shape": [7, 8]}),
        ((1, 2, 3, 3), (2, 2, 3, 3), {"strides": [2, 2], "output_shape": [6, 6]}),
        ((1, 4, 3, 3), (4, 2, 2, 2), {"group": 2, "strides": [2, 2]}),
        ((1, 2, 4, 4), (2, 1, 3, 3), {"dilations": [2, 2], "pads": [1, 1, 2, 2]}),
        ((1, 2, 3, 4), (2, 2, 3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
        ((1, 2, 3, 4), (2, 2, 2, 2), {"auto_pad": "SAME_LOWER", "strides": [2, 2]}),
        ((1, 2, 3, 4), (2, 2, 3, 3), {"auto_pad": "VALID", "strides": [1, 2]}),
        ((1, 2, 5), (2, 3, 3), {"strides": [3], "pads": [1, 2]}),
    ],
)
def test_conv_transpose(x_shape: tuple[int, ...], w_shape: tuple[int, ...], attrs: dict[str, Any]) -> None:
    groups = attrs.get("group", 1)
    check("ConvTranspose", [rand(*x_shape), rand(*w_shape), rand(w_shape[1] * groups)], **attrs)


@pytest.mark.parametrize(
    ("sa", "sb", "sc", "attrs"),
    [
        ((3, 4), (4, 5), (5,), {}),
        ((4, 3), (4, 5), (3, 5), {"transA": 1, "alpha": 0.5, "beta": 2.0}),
        ((3, 4), (5, 4), (1, 5), {"transB": 1}),
        ((3, 4), (4, 5), None, {}),
        ((3, 4), (4, 5), (), {"beta": 0.0}),
    ],
)
def test_gemm(
    sa: tuple[int, ...], sb: tuple[int, ...], sc: tuple[int, ...] | None, attrs: dict[str, Any]
) -> None:
    inputs = [rand(*sa), rand(*sb)] + ([] if sc is None else [rand(*sc)])
    check("Gemm", inputs, **attrs)


@pytest.mark.parametrize(
    ("sa", "sb"),
    [
        ((3, 4), (4, 5)),
        ((4,), (4, 5)),
        ((3, 4), (4,)),
        ((4,), (4,)),
        ((2, 1, 3, 4), (5, 4, 2)),
        ((2, 3, 4), (4, 6)),
    ],
)
def test_matmul(sa: tuple[int, ...], sb: tuple[int, ...]) -> None:
    check("MatMul", [rand(*sa), rand(*sb)])


def test_matmul_int() -> None:
    check("MatMul", [np.arange(6, dtype=np.int32).reshape(2, 3), np.arange(6, dtype=np.int32).reshape(3, 2)])


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (4, 3), (2, 3, 4)])
def test_batch_normalization(shape: tuple[int, ...]) -> None:
    c = shape[1]
    check(
        "BatchNormalization",
        [rand(*shape), rand(c), rand(c), rand(c), rand(c, low=0.1, high=2)],
        epsilon=1e-3,
    )


def test_batch_normalization_training() -> None:
    check(
        "BatchNormalization",
        [rand(2, 3, 4), rand(3), rand(3), rand(3), rand(3, low=0.1, high=2)],
        n_out=3,
        training_mode=1,
        momentum=0.8,
    )


@pytest.mark.parametrize(
    ("axis", "n_out", "bias"), [(-1, 1, True), (1, 3, True), (2, 3, False), (0, 2, True)]
)
def test_layer_normalization(axis: int, n_out: int, bias: bool) -> None:
    x = rand(2, 3, 4)
    norm_shape = x.shape[axis % 3 :]
    inputs = [x, rand(*norm_shape)] + ([rand(*norm_shape)] if bias else [])
    check("LayerNormalization", inputs, n_out=n_out, axis=axis)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_softmax(axis: int) -> None:
    check("Softmax", [rand(2, 3, 4, low=-30, high=30)], axis=axis)


POOL_CASES: list[tuple[tuple[int, ...], dict[str, Any]]] = [
    ((1, 2, 6, 6), {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ((2, 3, 7, 8), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    ((1, 2, 7, 7), {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 0, 1]}),
    ((1, 1, 7, 7), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    ((1, 1, 6, 6), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}),
    ((1, 1, 8, 8), {"kernel_shape": [2, 2], "dilations": [2, 2]}),
    ((1, 1, 7, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ((1, 1, 7, 8), {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    ((1, 1, 7, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "VALID"}),
    ((2, 3, 9), {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}),
    ((1, 2, 4, 5, 6), {"kernel_shape": [2, 2, 3], "strides": [1, 2, 2]}),
    # a ceil-mode dilated window that only sees padding (max: lowest float, average: 0)
    ((1, 1, 3, 1), {"kernel_shape": [1, 2], "dilations": [1, 2], "pads": [0, 1, 0, 0], "ceil_mode": 1}),
]


@pytest.mark.parametrize(("shape", "attrs"), POOL_CASES)
def test_max_pool(shape: tuple[int, ...], attrs: dict[str, Any]) -> None:
    check("MaxPool", [rand(*shape)], **attrs)


@pytest.mark.parametrize(("shape", "attrs"), POOL_CASES)
@pytest.mark.parametrize("include_pad", [0, 1])
def test_average_pool(shape: tuple[int, ...], attrs: dict[str, Any], include_pad: int) -> None:
    check("AveragePool", [rand(*shape)], count_include_pad=include_pad, **attrs)


@pytest.mark.parametrize("storage_order", [0, 1])
def test_max_pool_indices(storage_order: int) -> None:
    attrs = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "storage_order": storage_order}
    check("MaxPool", [rand(2, 3, 7, 6)], n_out=2, **attrs)


def test_max_pool_int8() -> None:
    x = RNG.integers(-128, 128, size=(1, 2, 5, 5)).astype(np.int8)
    check("MaxPool", [x], kernel_shape=[2, 2], pads=[1, 1, 0, 0])


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_pool_hypothesis(data: st.DataObject) -> None:
    """Random 2-D max/average pooling: pads below the kernel size, strides, dilations, ceil_mode."""
    kernel = [data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))]
    dilations = [data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))]
    pads = [data.draw(st.integers(0, kernel[i % 2] - 1)) for i in range(4)]
    size = [data.draw(st.integers(1, 9)), data.draw(st.integers(1, 9))]
    if any(size[i] + pads[i] + pads[i + 2] < dilations[i] * (kernel[i] - 1) + 1 for i in range(2)):
        return  # the window does not fit: no output
    attrs = {
        "kernel_shape": kernel,
        "strides": [data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))],
        "pads": pads,
        "ceil_mode": int(data.draw(st.booleans())),
        "dilations": dilations,
    }
    x = rand(1, 2, *size)
    check("MaxPool", [x], **attrs)
    check("AveragePool", [x], count_include_pad=int(data.draw(st.booleans())), **attrs)


def test_global_average_pool() -> None:
    check("GlobalAveragePool", [rand(2, 3, 5, 4)])
    check("GlobalAveragePool", [rand(2, 3, 5)])


def _scales(*values: float) -> np.ndarray:
    return np.array(values, np.float32)


@pytest.mark.parametrize("nearest_mode", ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"])
@pytest.mark.parametrize(
    "coord_mode", ["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel", "half_pixel_symmetric"]
)
@pytest.mark.parametrize("scales", [(1, 1, 2.0, 3.0), (1, 1, 0.5, 0.6), (1, 1, 1.7, 0.8)])
def test_resize_nearest(nearest_mode: str, coord_mode: str, scales: tuple[float, ...]) -> None:
    """align_corners with a fractional ``length_resized`` (in * scale) follows the ONNX spec and its
    reference (and conformance tests); onnxruntime divides by the integer output length instead."""
    x = rand(1, 2, 5, 6)
    fractional = any(not float(np.float32(s) * n).is_integer() for s, n in zip(scales, x.shape))
    check(
        "Resize",
        [x, None, _scales(*scales)],
        mode="nearest",
        nearest_mode=nearest_mode,
        coordinate_transformation_mode=coord_mode,
        reference=coord_mode == "align_corners" and fractional,
    )


@pytest.mark.parametrize(
    "coord_mode", ["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel", "half_pixel_symmetric"]
)
@pytest.mark.parametrize(("mode", "exclude_outside"), [("linear", 0), ("cubic", 0), ("cubic", 1)])
def test_resize_linear_cubic(coord_mode: str, mode: str, exclude_outside: int) -> None:
    x = rand(1, 2, 5, 6)
    check(
        "Resize",
        [x, None, _scales(1, 1, 2.0, 0.5)],
        mode=mode,
        coordinate_transformation_mode=coord_mode,
        exclude_outside=exclude_outside,
    )
    check(
        "Resize",
        [x, None, None, i64(1, 2, 3, 9)],
        mode=mode,
        coordinate_transformation_mode=coord_mode,
        exclude_outside=exclude_outside,
    )


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_axes_and_aspect_ratio(mode: str) -> None:
    x = rand(1, 2, 6, 8)
    check("Resize", [x, None, _scales(2.0, 0.5)], mode=mode, axes=[3, 2])
    for policy in ("not_larger", "not_smaller"):
        check("Resize", [x, None, None, i64(5, 5)], mode=mode, axes=[2, 3], keep_aspect_ratio_policy=policy)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_resize_tf_crop_and_resize(mode: str) -> None:
    x = rand(1, 1, 6, 6)
    roi = np.array([0, 0, 0.2, -0.3, 1, 1, 0.9, 1.2], np.float32)
    check(
        "Resize",
        [x, roi, None, i64(1, 1, 4, 5)],
        mode=mode,
        coordinate_transformation_mode="tf_crop_and_resize",
        extrapolation_value=7.5,
    )


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("scales", [(1, 1, 2.0, 1.5), (1, 1, 0.5, 0.6), (1, 1, 0.3, 0.8)])
@pytest.mark.parametrize("exclude_outside", [0, 1])
def test_resize_antialias(mode: str, scales: tuple[float, ...], exclude_outside: int) -> None:
    """Antialias stretches the filter by 1/scale when shrinking; upsampling is plain interpolation."""
    x = rand(1, 1, 8, 9)
    check("Resize", [x, None, _scales(*scales)], mode=mode, antialias=1, exclude_outside=exclude_outside)


def test_resize_uint8() -> None:
    x = RNG.integers(0, 256, size=(1, 1, 4, 4)).astype(np.uint8)
    check("Resize", [x, None, _scales(1, 1, 2, 2)], mode="nearest")


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
@pytest.mark.parametrize(
    ("pads", "axes"), [((1, 2, 0, 1, 2, 1), None), ((1, 2, 2, 0), (1, -1)), ((0, 1, 0, 2), (0, 2))]
)
def test_pad(mode: str, pads: tuple[int, ...], axes: tuple[int, ...] | None) -> None:
    inputs: list[np.ndarray | None] = [rand(3, 4, 5), i64(*pads), np.array(1.5, np.float32)]
    if axes is not None:
        inputs.append(i64(*axes))
    check("Pad", inputs, mode=mode)


def test_pad_negative_and_default_value() -> None:
    check("Pad", [rand(3, 4), i64(-1, 1, 0, -2)])
    check("Pad", [np.arange(12, dtype=np.int32).reshape(3, 4), i64(1, 1, 1, 1), np.array(9, np.int32)])


# -- broadcasting and slicing properties ----------------------------------------------------------
_dims = st.lists(st.integers(1, 4), min_size=0, max_size=4)


@settings(max_examples=50, deadline=None)
@given(_dims, st.data(), st.sampled_from(["Add", "Sub", "Mul", "Div", "Max", "Less"]))
def test_binary_broadcast_hypothesis(shape: list[int], data: st.DataObject, op_type: str) -> None:
    other = [d if data.draw(st.booleans()) else 1 for d in shape][data.draw(st.integers(0, len(shape))) :]
    a = rand(*shape)
    b = rand(*other, low=0.5, high=2.0)
    pair = [a, b] if data.draw(st.booleans()) else [b, a]
    check(op_type, pair)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=3), st.data())
def test_slice_hypothesis(shape: list[int], data: st.DataObject) -> None:
    rank = len(shape)
    axes = data.draw(
        st.lists(st.integers(-rank, rank - 1), min_size=1, max_size=rank, unique_by=lambda a: a % rank)
    )
    starts = [data.draw(st.integers(-8, 8)) for _ in axes]
    ends = [data.draw(st.integers(-8, 8)) for _ in axes]
    steps = [data.draw(st.sampled_from([-3, -2, -1, 1, 2, 3])) for _ in axes]
    check("Slice", [rand(*shape), i64(*starts), i64(*ends), i64(*axes), i64(*steps)])


def test_every_nn_op_has_an_implementation() -> None:
    from afmc.interp.registry import IMPLS

    assert sorted(set(ONNX_TO_NN.values()) - set(IMPLS)) == []


# -- spec-over-onnxruntime and float16 cases -------------------------------------------------------
@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_resize_align_corners_fractional_length(mode: str) -> None:
    """scales * in = 2.4: ``length_resized`` is fractional; compared with the ONNX reference (see
    test_resize_nearest for why not onnxruntime)."""
    check(
        "Resize",
        [rand(1, 1, 4, 4), None, _scales(1, 1, 0.6, 0.6)],
        mode=mode,
        coordinate_transformation_mode="align_corners",
        reference=True,
    )


#: float16 results: one fp16 ulp is ~1e-3 relative, and onnxruntime rounds intermediate results
#: to fp16 where afmc accumulates in float32, so a few ulps of difference are expected.
FP16_TOL = {"rtol": 1e-2, "atol": 1e-2}


@pytest.mark.parametrize(
    ("op_type", "inputs", "attrs"),
    [
        (
            "Conv",
            [
                rand(1, 2, 5, 5, dtype=np.float16, low=-1, high=1),
                rand(3, 2, 3, 3, dtype=np.float16, low=-1, high=1),
            ],
            {"pads": [1, 1, 1, 1]},
        ),
        (
            "MatMul",
            [rand(3, 4, dtype=np.float16, low=-1, high=1), rand(4, 2, dtype=np.float16, low=-1, high=1)],
            {},
        ),
        ("MaxPool", [rand(1, 1, 5, 5, dtype=np.float16)], {"kernel_shape": [2, 2]}),
        ("AveragePool", [rand(1, 1, 5, 5, dtype=np.float16)], {"kernel_shape": [2, 2]}),
        ("Softmax", [rand(2, 5, dtype=np.float16)], {}),
        ("Resize", [rand(1, 1, 3, 3, dtype=np.float16), None, _scales(1, 1, 2, 2)], {"mode": "linear"}),
        ("Erf", [rand(10, dtype=np.float16)], {}),
    ],
)
def test_float16(op_type: str, inputs: list[np.ndarray | None], attrs: dict[str, Any]) -> None:
    check(op_type, inputs, tol=FP16_TOL, **attrs)


def test_cast_float_to_int_truncates_toward_zero() -> None:
    check("Cast", [np.array([-2.7, -0.5, 0.5, 2.7, 1e3], np.float32)], to=onnx.TensorProto.INT64)


def test_constant_of_shape_ignores_declared_type() -> None:
    """The fill value's type is the result type, whatever a (folding) caller declares."""
    module = Module()
    shape_in = module.add_input("s", TensorType((1,), "i64"))
    op = module.create_op(
        "nn.constant_of_shape", [shape_in], [TensorType((), "f32")], {"value": np.array([3], np.int32)}
    )
    (out,) = evaluate_op(op, [i64(2)])
    assert out.dtype == np.int32 and out.tolist() == [3, 3]
