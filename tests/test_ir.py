"""The IR's text form round-trips, and the verifier catches broken invariants."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afmc.errors import ParseError, VerifyError
from afmc.ir import Module, TensorType, parse_module, print_module, verify


def small_module() -> Module:
    module = Module("t", {"note": "x"})
    x = module.add_input("input", TensorType((1, 4), "f32"))
    _, weight = module.add_constant(np.arange(32, dtype=np.float32).reshape(4, 8) / 3, "fc.weight")
    _, shape = module.add_constant(np.array([1, -1], np.int64), "shape")
    module.append(weight)
    module.append(shape)
    mm = module.append(module.create_op("nn.matmul", [x, weight.result], [TensorType((1, 8), "f32")], {}, "/fc/MatMul"))
    out = module.append(module.create_op(
        "nn.reshape", [mm.result, shape.result], [TensorType((1, 8), "f32")], {"allowzero": 0}, "odd name:0",
        result_names=["out:0"],
    ))
    module.outputs.append(out.result)
    return module


def test_print_parse_print_is_identity() -> None:
    module = small_module()
    verify(module)
    text = print_module(module)
    assert print_module(parse_module(text)) == text
    full = print_module(module, constants=True)
    again = parse_module(full)
    assert print_module(again, constants=True) == full
    np.testing.assert_array_equal(again.constants["fc.weight"].data, module.constants["fc.weight"].data)


def test_elided_constants_keep_their_digest() -> None:
    text = print_module(small_module())
    assert 'elided<"' in text
    module = parse_module(text)
    assert module.constants["fc.weight"].data is None
    assert module.constants["fc.weight"].digest == small_module().constants["fc.weight"].digest


attr_values = st.recursive(
    st.one_of(
        st.booleans(), st.integers(-(2**62), 2**62), st.floats(width=32, allow_nan=True), st.text(max_size=8),
    ),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True), attr_values, max_size=4))
def test_attributes_round_trip(attrs: dict) -> None:
    module = Module("m")
    x = module.add_input("x", TensorType((2,), "f32"))
    op = module.append(module.create_op("nn.relu", [x], [x.type], attrs, "r"))
    module.outputs.append(op.result)
    text = print_module(module)
    parsed = parse_module(text)
    assert print_module(parsed) == text
    assert parsed.ops[0].attributes == op.attributes


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("module @m {\n  graph() {\n    return %x\n  }\n}\n", "undefined value %x"),
        ("module @m {\n  graph(%x: tensor<2xf32>) {\n    %y = nn.relu(%x) : tensor<2xf32\n", "line 3"),
        ("module @m { graph(%x: tensor<2xf32>) { %y = relu(%x) : tensor<2xf32> return %y } }", "lacks a dialect"),
        ("module @m { graph(%x: tensor<2xf32>) { %x = nn.relu(%x) : tensor<2xf32> return %x } }", "defined twice"),
    ],
)
def test_parse_errors_say_where(text: str, where: str) -> None:
    with pytest.raises(ParseError, match=where):
        parse_module(text)


def test_verifier_rejects_unknown_ops_and_bad_constants() -> None:
    module = parse_module("module @m { graph(%x: tensor<2xf32>) { %y = nn.frobnicate(%x) : tensor<2xf32> return %y } }")
    with pytest.raises(VerifyError, match="unknown op"):
        verify(module)
    module = small_module()
    module.ops[0].result.type = TensorType((9,), "f32")
    with pytest.raises(VerifyError, match="differs"):
        verify(module)


def test_forward_keeps_output_names() -> None:
    module = small_module()
    reshape = module.ops[-1]
    assert module.forward(reshape.result, reshape.operands[0])
    module.remove_dead()
    verify(module)
    assert [v.name for v in module.outputs] == ["out:0"]
