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
from ..registry import registrar
from . import dtypes, nn, xbar, xbar_calibration  # noqa: F401  (register the dialects)
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
        present = [v for v in op.operands if v is not None]
        if len({id(v) for v in present}) == len(present):  # each operand once: a use each
            for operand in present:
                users = operand.uses
                if not (len(users) == 1 and users[0] is op) and recorded_uses(operand)[id(op)] != 1:
                    raise _fail(op, f"use list of %{operand.name} is out of date")
        else:
            uses = Counter(id(v) for v in present)
            for operand in present:
                if recorded_uses(operand)[id(op)] != uses[id(operand)]:
                    raise _fail(op, f"use list of %{operand.name} is out of date")
        for result in op.results:
            if result.producer is not op:
                raise _fail(op, f"result %{result.name} names another producer")
            if not result.type.is_static:
                raise _fail(op, f"result %{result.name} has a dynamic shape {result.type}")
            define(op, result, result.name)
        if op.name in nn.NN_TO_ONNX:
            _verify_nn(op)
            check_nn_rules(op)
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
    return isinstance(v, int) and -(2**63) <= v < 2**63  # an ONNX int64


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


# -- shapes and attribute values of the ops the analog passes read -------------------------------

#: ``rule(op)`` per nn op: operand ranks and sizes and attribute values that ONNX's checker and
#: per-node inference let through (inference gives up quietly on a rank-1 Conv weight, and a
#: declared type then stands in) but that partition, tile and fold-batchnorm rely on.
NN_RULES: dict[str, Callable[[Op], None]] = {}


nn_rule = registrar(NN_RULES, "nn rules")


def check_nn_rules(op: Op) -> None:
    """The ``NN_RULES`` check of ``op``, if it has one (the ONNX frontend runs it on every op it
    creates, before folding it; ``verify`` runs it too)."""
    rule = NN_RULES.get(op.name)
    if rule is not None:
        rule(op)


def _spatial_attrs(op: Op, spatial: int, kernel_required: bool) -> tuple[int, ...] | None:
    """kernel_shape, strides, dilations (positive, one per spatial axis) and pads (two per axis, >= 0)."""
    kernel = op.attr("kernel_shape")
    if kernel is None and kernel_required:
        raise _fail(op, "needs attribute 'kernel_shape'")
    for name, low, count in (("kernel_shape", 1, spatial), ("strides", 1, spatial), ("dilations", 1, spatial),
                             ("pads", 0, 2 * spatial)):
        values = op.attr(name)
        if values is None:
            continue
        if len(values) != count or any(v < low for v in values):
            raise _fail(op, f"attribute '{name}' must be {count} integers >= {low} for {spatial} spatial axes, "
                            f"got {_shown(list(values))}")
    return None if kernel is None else tuple(kernel)


@nn_rule("nn.conv", "nn.conv_transpose")
def _rule_conv(op: Op) -> None:
    x, w = op.operands[0], op.operands[1]
    b = op.operands[2] if len(op.operands) > 2 else None
    if x is None or w is None:  # required operands: _verify_nn says so
        return
    spatial = x.type.rank - 2
    if spatial < 1 or w.type.rank != x.type.rank:
        raise _fail(op, f"data {x.type} and weight {w.type} must have the same rank, 3 or more")
    group = op.attr("group", 1)
    if group < 1:
        raise _fail(op, f"attribute 'group' must be >= 1, got {group}")
    channels = x.type.shape[1]
    if op.name == "nn.conv":
        fits = w.type.shape[1] * group == channels and w.type.shape[0] % group == 0
        outputs = w.type.shape[0]
    else:
        fits = w.type.shape[0] == channels and channels % group == 0
        outputs = w.type.shape[1] * group
    if not fits:
        raise _fail(op, f"weight {w.type} does not match {channels} input channels in {group} group(s)")
    if b is not None and b.type.shape != (outputs,):
        raise _fail(op, f"bias {b.type} must hold one value per output channel ({outputs})")
    kernel = _spatial_attrs(op, spatial, kernel_required=False)
    if kernel is not None and kernel != w.type.shape[2:]:
        raise _fail(op, f"kernel_shape {list(kernel)} differs from the weight's {list(w.type.shape[2:])}")


def _data_of_rank(op: Op, min_rank: int) -> Value | None:
    """The op's data operand (operand 0), checked to have at least ``min_rank`` dims; None if absent."""
    x = op.operands[0]
    if x is not None and x.type.rank < min_rank:
        raise _fail(op, f"data {x.type} must have rank {min_rank} or more")
    return x


@nn_rule("nn.max_pool", "nn.average_pool")
def _rule_pool(op: Op) -> None:
    x = _data_of_rank(op, 3)
    if x is not None:
        _spatial_attrs(op, x.type.rank - 2, kernel_required=True)


@nn_rule("nn.global_average_pool")
def _rule_global_pool(op: Op) -> None:
    _data_of_rank(op, 3)


@nn_rule("nn.batch_normalization")
def _rule_batch_norm(op: Op) -> None:
    x = _data_of_rank(op, 2)
    if x is None:
        return
    channels = x.type.shape[1]
    for index, value in enumerate(op.operands[1:5], 1):
        if value is not None and value.type.shape != (channels,):
            raise _fail(op, f"operand {index} {value.type} must hold one value per channel ({channels})")


@nn_rule("nn.group_normalization", "nn.instance_normalization")
def _rule_channel_norm(op: Op) -> None:
    """Per-channel scale and bias (opset 21); GroupNormalization's groups divide the channels."""
    x = _data_of_rank(op, 3 if op.name == "nn.instance_normalization" else 2)
    if x is None:
        return
    channels = x.type.shape[1]
    if op.name == "nn.group_normalization":
        groups = op.attr("num_groups")
        if not isinstance(groups, int) or groups < 1 or channels % groups:
            raise _fail(op, f"num_groups {groups!r} must be >= 1 and divide the {channels} channels of {x.type}")
    for index, value in enumerate(op.operands[1:3], 1):
        if value is not None and value.type.shape != (channels,):
            raise _fail(op, f"operand {index} {value.type} must hold one value per channel ({channels})")


@nn_rule("nn.gemm")
def _rule_gemm(op: Op) -> None:
    a, b = op.operands[0], op.operands[1]
    if a is None or b is None:
        return
    if a.type.rank != 2 or b.type.rank != 2:
        raise _fail(op, f"operands {a.type} and {b.type} must be matrices")
    k_a = a.type.shape[0] if op.attr("transA", 0) else a.type.shape[1]
    k_b = b.type.shape[1] if op.attr("transB", 0) else b.type.shape[0]
    if k_a != k_b:
        raise _fail(op, f"inner dimensions differ: {a.type} and {b.type} (transA={op.attr('transA', 0)}, "
                        f"transB={op.attr('transB', 0)})")


@nn_rule("nn.matmul")
def _rule_matmul(op: Op) -> None:
    a, b = op.operands[0], op.operands[1]
    if a is None or b is None:
        return
    if a.type.rank < 1 or b.type.rank < 1:
        raise _fail(op, f"operands {a.type} and {b.type} must not be scalars")
    k_a = a.type.shape[-1]
    k_b = b.type.shape[0] if b.type.rank == 1 else b.type.shape[-2]
    if k_a != k_b:
        raise _fail(op, f"inner dimensions differ: {a.type} and {b.type}")


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


# -- nn result types against ONNX type inference ---------------------------------------------------

#: Constant operands up to this many elements are shown to type inference as data (shapes, axes).
_DATA_MAX_ELEMENTS = 1 << 12

#: Ops whose result dims may be one less than ONNX's inference says: with ``ceil_mode`` a last
#: window starting in the padding is dropped (the reference and onnxruntime do; inference does not).
_CEIL_MODE_POOLS = frozenset({"nn.max_pool", "nn.average_pool"})


def verify_nn_types(module: Module) -> None:
    """Every ``nn`` op's results have the element types and shapes that ONNX type inference gives
    for its operands (and its small constant operands' values); inference failing is an error too.

    About 50 us per op, so this runs where IR comes from outside afmc (``parse_module``: a ``.mlir``
    file, a bundle), not around every pass. It keeps hand-edited or corrupted text from reaching a
    pass that trusts an op's shapes (a Conv whose result claims to be a scalar).
    """
    for op in module.ops:
        if op.name in nn.NN_TO_ONNX:
            _verify_nn(op)  # counts and attribute types first: the conversion below relies on them
            _verify_nn_types(module, op)


def _verify_nn_types(module: Module, op: Op) -> None:
    import onnx
    from onnx import numpy_helper

    schema = _nn_schema(op.name)
    node = onnx.NodeProto(op_type=nn.NN_TO_ONNX[op.name], name=op.loc)
    node.input.extend(v.name if v is not None else "" for v in op.operands)
    node.output.extend(r.name for r in op.results)
    for name, spec in schema.attributes.items():
        if name in op.attributes:
            node.attribute.append(_attribute_proto(name, spec.type, op.attributes[name]))
    types: dict[str, onnx.TypeProto] = {}
    data: dict[str, onnx.TensorProto] = {}
    for value in op.operands:
        if value is None:
            continue
        types[value.name] = onnx.helper.make_tensor_type_proto(dtypes.to_onnx(value.type.dtype), value.type.shape)
        array = _constant_data(module, value)
        if array is not None and array.size <= _DATA_MAX_ELEMENTS:
            data[value.name] = numpy_helper.from_array(np.asarray(array), value.name)
    try:
        inferred = onnx.shape_inference.infer_node_outputs(
            schema, node, types, data, opset_imports=[onnx.helper.make_opsetid("", nn.OPSET)]
        )
    except Exception as exc:  # noqa: BLE001  (InferenceError, ValidationError and kin)
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise _fail(op, f"ONNX type inference rejects it: {reason}") from None
    for result in op.results:
        found = inferred.get(result.name)
        if found is None or found.WhichOneof("value") != "tensor_type":
            continue
        elem = found.tensor_type.elem_type
        if elem and elem != dtypes.to_onnx(result.type.dtype):
            shown = dtypes.from_onnx(elem) if elem in _ONNX_DTYPES else str(elem)
            raise _fail(op, f"result %{result.name} is {result.type}, but its operands make it {shown}")
        if not found.tensor_type.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in found.tensor_type.shape.dim]
        declared = result.type.shape
        if len(dims) != len(declared) or not all(
            d is None or d == e or (op.name in _CEIL_MODE_POOLS and op.attr("ceil_mode") and e == d - 1)
            for d, e in zip(dims, declared)
        ):
            shown = ", ".join("?" if d is None else str(d) for d in dims)
            raise _fail(op, f"result %{result.name} is {result.type}; its operands give shape [{shown}]")


def _constant_data(module: Module, value: Value) -> np.ndarray | None:
    """``module.constant_of(value)`` that tolerates what ``verify`` has not checked yet (a
    reference to a missing constant, data that does not match its type): None then."""
    producer = value.producer
    if producer is None or producer.name != "nn.constant":
        return None
    ref = producer.attributes.get("value")
    constant = module.constants.get(getattr(ref, "name", None))  # type: ignore[arg-type]
    if constant is None or constant.data is None or constant.type != value.type:
        return None
    if tuple(constant.data.shape) != constant.type.shape:
        return None
    return constant.data


_ONNX_DTYPES = frozenset(dtypes.to_onnx(name) for name in dtypes.DTYPES)


def _attribute_proto(name: str, kind: Any, value: Any) -> Any:
    """An attribute of the IR (already checked by ``_verify_nn``) as ONNX's ``AttributeProto``."""
    from onnx import AttributeProto, numpy_helper

    attr = AttributeProto(name=name, type=kind)
    if name in _DTYPE_ATTRS and kind == AttributeProto.INT:
        attr.i = dtypes.to_onnx(value)
    elif kind == AttributeProto.INT:
        attr.i = int(value)
    elif kind == AttributeProto.FLOAT:
        attr.f = float(value)
    elif kind == AttributeProto.STRING:
        attr.s = str(value).encode()
    elif kind == AttributeProto.INTS:
        attr.ints.extend(int(v) for v in value)
    elif kind == AttributeProto.FLOATS:
        attr.floats.extend(float(v) for v in value)
    elif kind == AttributeProto.STRINGS:
        attr.strings.extend(str(v).encode() for v in value)
    elif kind == AttributeProto.TENSOR:
        attr.t.CopyFrom(numpy_helper.from_array(np.asarray(value)))
    return attr
