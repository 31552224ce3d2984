"""The verifier: SSA, use lists, types and per-op rules. Runs before and after every pass.

Also the one size limit every declared tensor obeys (``max_tensor_bytes``): the ONNX frontend
and the IR parser refuse a tensor above it, by name and size, before anything is allocated.
"""

from __future__ import annotations

import functools
import os
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import UsageError, VerifyError
from . import nn, xbar  # noqa: F401  (register the dialects)
from .core import Module, Op, Value
from .dialects import OPS


def _fail(op: Op | None, message: str) -> VerifyError:
    if op is None:
        return VerifyError(message)
    return VerifyError(f"{op.name}: {message}", node=op.loc or None)


#: The largest single tensor (input, constant, intermediate) afmc accepts by default: 4 GiB.
DEFAULT_MAX_TENSOR_BYTES = 4 << 30

#: The environment variable that overrides it: bytes, or a number with K, M, G, T (powers of 1024).
MAX_TENSOR_BYTES_ENV = "AFMC_MAX_TENSOR_BYTES"

_SIZE = re.compile(r"\s*(\d+)\s*(?:([kmgt])(?:i?b)?|b)?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``4096``, ``512M``, ``2GiB``, ``1 T`` into bytes; ``ValueError`` otherwise."""
    match = _SIZE.fullmatch(text)
    if match is None or len(match.group(1)) > 30:
        raise ValueError(f"not a size: {text!r}")
    unit = (match.group(2) or "").lower()
    return int(match.group(1)) << (10 * " kmgt".index(unit) if unit else 0)


def max_tensor_bytes() -> int:
    """The size limit for one tensor: ``$AFMC_MAX_TENSOR_BYTES`` if set, else 4 GiB."""
    text = os.environ.get(MAX_TENSOR_BYTES_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_TENSOR_BYTES
    try:
        limit = parse_size(text)
    except ValueError:
        raise UsageError(
            f"{MAX_TENSOR_BYTES_ENV}={text[:40]!r}: expected a byte count such as 1073741824, 512M or 4G"
        ) from None
    if limit <= 0:
        raise UsageError(f"{MAX_TENSOR_BYTES_ENV}={text[:40]!r}: the limit must be positive")
    return limit


def format_bytes(n: int) -> str:
    """``1.5 GiB`` style sizes for messages (``2^70 B`` beyond any float's reach)."""
    if n >= 1 << 60:
        return f"over 2^{n.bit_length() - 1} B"
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} B"


def verify(module: Module) -> None:
    """Raise ``VerifyError`` at the first broken invariant; return quietly otherwise.

    Linear in the size of the module: a value with many users (one input feeding thousands of
    tiles) costs one pass over its use list, not one per user.
    """
    defined: set[int] = set()
    names: set[str] = set()
    use_counts: dict[int, Counter[int]] = {}

    def recorded_uses(value: Value) -> Counter[int]:
        counts = use_counts.get(id(value))
        if counts is None:
            counts = use_counts[id(value)] = Counter(id(user) for user in value.uses)
        return counts

    def define(value_owner: Op | None, value: object, name: str) -> None:
        if name in names:
            raise _fail(value_owner, f"value %{name} is defined twice")
        names.add(name)
        defined.add(id(value))

    for value in module.inputs:
        if value.producer is not None:
            raise _fail(None, f"graph input %{value.name} has a producer")
        define(None, value, value.name)
        if not value.type.is_static:
            raise _fail(None, f"graph input %{value.name} has a dynamic shape {value.type}")

    for constant in module.constants.values():
        data = constant.data
        if data is not None and (tuple(data.shape) != constant.type.shape):
            raise _fail(None, f"constant @{constant.name} holds shape {data.shape}, declared {constant.type}")

    for op in module.ops:
        if op.name not in OPS:
            raise _fail(op, "unknown op (no dialect registers it)")
        for index, operand in enumerate(op.operands):
            if operand is None:
                continue
            if id(operand) not in defined:
                raise _fail(op, f"operand {index} %{operand.name} is used before it is defined")
        uses = Counter(id(v) for v in op.operands if v is not None)
        for operand in op.operands:
            if operand is not None and recorded_uses(operand)[id(op)] != uses[id(operand)]:
                raise _fail(op, f"use list of %{operand.name} is out of date")
        for result in op.results:
            if result.producer is not op:
                raise _fail(op, f"result %{result.name} names another producer")
            if not result.type.is_static:
                raise _fail(op, f"result %{result.name} has a dynamic shape {result.type}")
            define(op, result, result.name)
        if op.name in nn.NN_TO_ONNX:
            _verify_nn(op)
        rule = OPS[op.name].verify
        if rule is not None:
            rule(op, module)

    for value in module.outputs:
        if id(value) not in defined:
            raise _fail(None, f"graph output %{value.name} is not defined")


# -- nn ops against their ONNX schema ------------------------------------------------------------

#: INT attributes that hold an element type: the IR stores its dtype name (see the frontend).
_DTYPE_ATTRS = frozenset({"to", "dtype", "output_dtype", "stash_type"})

#: IR element type -> the ONNX schema's type string.
_TYPE_STR = {
    "f16": "tensor(float16)", "f32": "tensor(float)", "f64": "tensor(double)", "i8": "tensor(int8)",
    "i16": "tensor(int16)", "i32": "tensor(int32)", "i64": "tensor(int64)", "u8": "tensor(uint8)",
    "u16": "tensor(uint16)", "u32": "tensor(uint32)", "u64": "tensor(uint64)", "bool": "tensor(bool)",
    "str": "tensor(string)",
}


def _is_int(v: object) -> bool:
    return isinstance(v, int)


def _is_number(v: object) -> bool:
    if isinstance(v, float):
        return True
    return isinstance(v, int) and abs(v) < 2**1023  # one that converts to a float


_ATTR_CHECKS: dict[str, Callable[[object], bool]] = {
    "INT": _is_int,
    "FLOAT": _is_number,
    "STRING": lambda v: isinstance(v, str),
    "INTS": lambda v: isinstance(v, tuple) and all(_is_int(x) for x in v),
    "FLOATS": lambda v: isinstance(v, tuple) and all(_is_number(x) for x in v),
    "STRINGS": lambda v: isinstance(v, tuple) and all(isinstance(x, str) for x in v),
    "TENSOR": lambda v: isinstance(v, np.ndarray),
}

_ATTR_KIND = {"INT": "an integer", "FLOAT": "a number", "STRING": "a string", "INTS": "a list of integers",
              "FLOATS": "a list of numbers", "STRINGS": "a list of strings", "TENSOR": "a dense tensor"}


@functools.cache
def _nn_schema(nn_name: str) -> Any:
    import onnx

    return onnx.defs.get_schema(nn.NN_TO_ONNX[nn_name], nn.OPSET, "")


def _verify_nn(op: Op) -> None:
    """An ``nn`` op is its ONNX node: operand and result counts, required operands, attribute
    types and element types as the op's schema at ``nn.OPSET`` says. Attributes that are not the
    schema's (``region``, ``reason``: added by passes) are left alone.

    Passes rely on this: a hand-written ``.mlir`` with ``group = nan`` or a Gemm of no operands
    fails here, by name, rather than inside the pass that reads it.
    """
    schema = _nn_schema(op.name)
    n_in, n_out = len(op.operands), len(op.results)
    if not schema.min_input <= n_in <= schema.max_input:
        raise _fail(op, f"takes {_count_range(schema.min_input, schema.max_input)} operands, has {n_in}")
    if not schema.min_output <= n_out <= schema.max_output:
        raise _fail(op, f"has {_count_range(schema.min_output, schema.max_output)} results, has {n_out}")
    for name, spec in schema.attributes.items():
        kind = spec.type.name
        if name not in op.attributes:
            if spec.required:
                raise _fail(op, f"needs attribute '{name}'")
            continue
        value = op.attributes[name]
        if name in _DTYPE_ATTRS and kind == "INT":
            if not isinstance(value, str) or value not in _TYPE_STR:
                raise _fail(op, f"attribute '{name}' must be an element type name ({', '.join(_TYPE_STR)}), got {value!r:.40}")
            continue
        check = _ATTR_CHECKS.get(kind)
        if check is not None and not check(value):
            raise _fail(op, f"attribute '{name}' must be {_ATTR_KIND[kind]}, got {_shown(value)}")
    bound: dict[str, str] = {}
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    for formals, values, what in ((schema.inputs, op.operands, "operand"), (schema.outputs, op.results, "result")):
        for index, value in enumerate(values):
            formal = formals[min(index, len(formals) - 1)]
            variadic = formal.option.name == "Variadic"
            if index >= len(formals) and not variadic:
                break
            if value is None:
                if formal.option.name == "Single":
                    raise _fail(op, f"{what} {index} ('{formal.name}') is required")
                continue
            param, type_str = formal.type_str, _TYPE_STR[value.type.dtype]
            if param in allowed:
                if type_str not in allowed[param]:
                    raise _fail(op, f"{what} {index} ('{formal.name}') cannot be {value.type.dtype}")
                if variadic and not formal.is_homogeneous:
                    continue
                if bound.setdefault(param, type_str) != type_str:
                    raise _fail(op, f"{what} {index} ('{formal.name}') is {value.type.dtype}, but {param} is "
                                    f"{_ir_dtype(bound[param])} elsewhere in this op")
            elif param.startswith("tensor(") and type_str != param:
                raise _fail(op, f"{what} {index} ('{formal.name}') must be {param}, is {value.type.dtype}")


def _count_range(low: int, high: int) -> str:
    if low == high:
        return str(low)
    return f"at least {low}" if high > 1 << 20 else f"{low} to {high}"


def _ir_dtype(type_str: str) -> str:
    return next(k for k, v in _TYPE_STR.items() if v == type_str)


def _shown(value: object) -> str:
    try:
        text = repr(value)
    except ValueError:  # an integer of thousands of digits
        return f"a {type(value).__name__} too large to show"
    return text if len(text) <= 40 else text[:37] + "..."
