"""The IR's text form: deterministic, MLIR-like, and parsed back by ``parser.py``.

Constants of up to ``INLINE_LIMIT`` elements are always printed; larger ones are elided to their
digest unless ``constants=True`` asks for the raw bytes in base64.
"""

from __future__ import annotations

import base64
import json
import math
import re
from typing import Any

import numpy as np

from .core import Attrs, Constant, Module, Op, SymbolRef, TensorType, Value

INLINE_LIMIT = 16
_BARE = re.compile(r"^[A-Za-z0-9_.$/-]+$")


def name_token(sigil: str, name: str) -> str:
    """``%name`` or ``%"quoted name"`` when the name has characters the lexer would split on."""
    return f"{sigil}{name}" if _BARE.match(name) else f"{sigil}{json.dumps(name)}"


def format_float(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    text = repr(float(x))
    return text if any(c in text for c in ".e") else text + ".0"


def format_scalar(x: Any) -> str:
    if isinstance(x, (bool, np.bool_)):
        return "true" if x else "false"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return format_float(float(x))
    if isinstance(x, (str, bytes)):
        return json.dumps(x.decode("utf-8", "replace") if isinstance(x, bytes) else x)
    raise TypeError(f"cannot print {type(x).__name__} {x!r}")


def format_dense(array: np.ndarray) -> str:
    items = ", ".join(format_scalar(x) for x in np.asarray(array).reshape(-1).tolist())
    return f"dense<[{items}]> : {TensorType.of(np.asarray(array))}"


def format_attr(value: Any) -> str:
    if isinstance(value, SymbolRef):
        return name_token("@", value.name)
    if isinstance(value, TensorType):
        return str(value)
    if isinstance(value, np.ndarray):
        return format_dense(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(format_attr(v) for v in value) + "]"
    if isinstance(value, Attrs):
        return format_attr_dict(value)
    return format_scalar(value)


def format_attr_dict(attrs: Attrs) -> str:
    return "{" + ", ".join(f"{name_token('', k) if k else k} = {format_attr(v)}" for k, v in attrs.items()) + "}"


def format_constant(constant: Constant, constants: bool) -> str:
    head = f"const {name_token('@', constant.name)} : {constant.type} = "
    data = constant.data
    if data is not None and (constant.type.numel <= INLINE_LIMIT or constant.type.dtype == "str"):
        return head + format_dense(data).rsplit(" : ", 1)[0]
    if data is not None and constants:
        raw = np.ascontiguousarray(data).astype(data.dtype.newbyteorder("<"), copy=False).tobytes()
        return head + f'base64<"{base64.b64encode(raw).decode()}">'
    return head + f'elided<"{constant.digest}">'


def format_op(op: Op) -> str:
    results = ", ".join(name_token("%", r.name) for r in op.results)
    operands = ", ".join("none" if v is None else name_token("%", v.name) for v in op.operands)
    text = f"{results} = " if op.results else ""
    text += f"{op.name}({operands})"
    if op.attributes:
        text += " " + format_attr_dict(op.attributes)
    text += " : " + ", ".join(str(r.type) for r in op.results) if op.results else " : ()"
    if op.loc:
        text += f" loc({json.dumps(op.loc)})"
    return text


def _signature(values: list[Value]) -> str:
    return ", ".join(f"{name_token('%', v.name)}: {v.type}" for v in values)


def print_module(module: Module, constants: bool = False) -> str:
    """The module as text. Same module, same text, byte for byte."""
    head = f"module {name_token('@', module.name)}"
    if module.attributes:
        head += " attributes " + format_attr_dict(module.attributes)
    lines = [head + " {"]
    lines += [f"  {format_constant(c, constants)}" for c in module.constants.values()]
    lines.append(f"  graph({_signature(module.inputs)}) {{")
    lines += [f"    {format_op(op)}" for op in module.ops]
    lines.append("    return " + ", ".join(name_token("%", v.name) for v in module.outputs))
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"
