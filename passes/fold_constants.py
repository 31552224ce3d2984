"""``fold-constants``: evaluate ops whose operands are all constants, once, at compile time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from afmc.errors import UnsupportedError
from afmc.interp import evaluate_op
from afmc.ir import dtypes
from afmc.ir.core import Module, Op
from afmc.pipeline import Pass, PassContext, register_pass

#: Ops that never fold: they read the pool already, or they are not functions of their operands.
NEVER_FOLD = frozenset({"nn.constant"})


def fold_op(module: Module, op: Op, max_bytes: int) -> list[Op] | None:
    """The ``nn.constant`` ops that replace ``op``, or ``None`` when it cannot fold.

    The caller puts the returned ops where ``op`` stood; ``op``'s results are forwarded to them.
    """
    if op.name in NEVER_FOLD or not op.name.startswith("nn.") or not op.results:
        return None
    if sum(r.type.nbytes for r in op.results) > max_bytes:
        return None
    args = [None if v is None else module.constant_of(v) for v in op.operands]
    if any(a is None and v is not None for a, v in zip(args, op.operands)):
        return None
    try:
        arrays = evaluate_op(op, args)
    except UnsupportedError:
        return None
    if any(tuple(a.shape) != r.type.shape for a, r in zip(arrays, op.results)):
        return None
    made: list[Op] = []
    for result, array in zip(op.results, arrays):
        typed = array.astype(dtypes.to_numpy(result.type.dtype), copy=False)
        _, const_op = module.add_constant(typed, f"{result.name}.folded", op.loc)
        module.forward(result, const_op.result)
        made.append(const_op)
    return made


@register_pass
@dataclass(frozen=True)
class FoldConstants(Pass):
    """Evaluate ops whose operands are all constants and put their results in the constant pool."""

    name: ClassVar[str] = "fold-constants"
    max_bytes: int = 64 << 20

    def run(self, module: Module, ctx: PassContext) -> None:
        new_ops: list[Op] = []
        for op in module.ops:
            replacement = fold_op(module, op, self.max_bytes)
            if replacement is None:
                new_ops.append(op)
            else:
                op.drop_operands()
                new_ops.extend(replacement)
        module.ops = new_ops
        module.remove_dead()
