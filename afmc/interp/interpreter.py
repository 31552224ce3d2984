"""The digital reference interpreter: runs a module op by op in numpy (torch.fx ``Interpreter`` style).

Subclasses (the analog simulator) override ``run_op`` for the ops they model and defer to this
class for the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import AfmcError, InternalError, UnsupportedError
from ..ir.core import Module, Op
from . import ops  # noqa: F401  (registers the implementations)
from .registry import IMPLS


def evaluate_op(op: Op, args: Sequence[np.ndarray | None]) -> list[np.ndarray]:
    """Run one op on concrete arrays; implementations return the dtypes ONNX specifies."""
    fn = IMPLS.get(op.name)
    if fn is None:
        raise UnsupportedError(f"{op.name} has no implementation in the reference interpreter", node=op.loc or None)
    outputs = fn(op, args)
    if len(outputs) != len(op.results):
        raise InternalError(f"{op.name} returned {len(outputs)} results, expected {len(op.results)}")
    return outputs


class Interpreter:
    """Evaluate a module on named inputs; returns the named outputs."""

    def __init__(self, module: Module) -> None:
        self.module = module

    def run_op(self, op: Op, args: Sequence[np.ndarray | None]) -> list[np.ndarray]:
        if op.name == "nn.constant":
            data = self.module.constants[op.attributes["value"].name].data
            if data is None:
                raise AfmcError(f"constant @{op.attributes['value'].name} was elided from this IR; it cannot run")
            return [data]
        return evaluate_op(op, args)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        env: dict[int, np.ndarray] = {}
        for value in self.module.inputs:
            if value.name not in inputs:
                raise AfmcError(f"missing input '{value.name}' ({value.type})")
            array = np.asarray(inputs[value.name])
            if tuple(array.shape) != value.type.shape:
                raise AfmcError(f"input '{value.name}' has shape {array.shape}, the model expects {value.type}")
            env[id(value)] = array
        last_use = last_uses(self.module)
        for index, op in enumerate(self.module.ops):
            args = [None if v is None else env[id(v)] for v in op.operands]
            for result, array in zip(op.results, self.run_op(op, args)):
                env[id(result)] = array
            for value_id in last_use.get(index, ()):
                env.pop(value_id, None)
        return {value.name: env[id(value)] for value in self.module.outputs}

def last_uses(module: Module) -> dict[int, list[int]]:
    """Op index -> ids of the values that die after it (graph outputs never do), so a run keeps
    only the live set in memory."""
    keep = {id(v) for v in module.outputs}
    last: dict[int, int] = {}
    for index, op in enumerate(module.ops):
        for value in op.operands:
            if value is not None:
                last[id(value)] = index
    dies: dict[int, list[int]] = {}
    for value_id, index in last.items():
        if value_id not in keep:
            dies.setdefault(index, []).append(value_id)
    return dies


def run_module(module: Module, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return Interpreter(module).run(inputs)
