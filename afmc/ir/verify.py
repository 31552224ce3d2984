"""The verifier: SSA, use lists, types and per-op rules. Runs before and after every pass."""

from __future__ import annotations

from collections import Counter

from ..errors import VerifyError
from . import nn, xbar  # noqa: F401  (register the dialects)
from .core import Module, Op
from .dialects import OPS


def _fail(op: Op | None, message: str) -> VerifyError:
    if op is None:
        return VerifyError(message)
    return VerifyError(f"{op.name}: {message}", node=op.loc or None)


def verify(module: Module) -> None:
    """Raise ``VerifyError`` at the first broken invariant; return quietly otherwise."""
    defined: set[int] = set()
    names: set[str] = set()

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
            if operand is not None and operand.uses.count(op) != uses[id(operand)]:
                raise _fail(op, f"use list of %{operand.name} is out of date")
        for result in op.results:
            if result.producer is not op:
                raise _fail(op, f"result %{result.name} names another producer")
            if not result.type.is_static:
                raise _fail(op, f"result %{result.name} has a dynamic shape {result.type}")
            define(op, result, result.name)
        rule = OPS[op.name].verify
        if rule is not None:
            rule(op, module)

    for value in module.outputs:
        if id(value) not in defined:
            raise _fail(None, f"graph output %{value.name} is not defined")
