"""``canonicalize``: local rewrites to a fixpoint, then dead-code removal.

Rewrites are registered per op name with ``@pattern``; each returns the ops that replace the
matched one (``[]`` to delete it) or ``None`` when it does not apply. Graph output names are kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from afmc.ir.core import Module, Op
from afmc.pipeline import Pass, PassContext, register_pass

from .fold_constants import fold_op

Rewrite = Callable[[Module, Op], "list[Op] | None"]
PATTERNS: dict[str, list[Rewrite]] = {}

#: Layout ops on a constant are folded into the constant ("transposes folded into weights").
LAYOUT_OPS = ("nn.transpose", "nn.reshape", "nn.squeeze", "nn.unsqueeze", "nn.flatten", "nn.cast", "nn.identity")
FOLD_LIMIT = 1 << 30


def pattern(*names: str) -> Callable[[Rewrite], Rewrite]:
    def register(fn: Rewrite) -> Rewrite:
        for name in names:
            PATTERNS.setdefault(name, []).append(fn)
        return fn

    return register


@pattern(*LAYOUT_OPS)
def fold_layout_of_constant(module: Module, op: Op) -> list[Op] | None:
    return fold_op(module, op, FOLD_LIMIT)


@pattern("nn.identity", "nn.reshape", "nn.squeeze", "nn.unsqueeze", "nn.flatten", "nn.cast", "nn.expand")
def remove_noop(module: Module, op: Op) -> list[Op] | None:
    """An op whose result has its operand's type and values is its operand."""
    source = op.operands[0]
    if source is None or len(op.results) != 1 or source.type != op.result.type:
        return None
    return [] if module.forward(op.result, source) else None


@pattern("nn.transpose")
def simplify_transpose(module: Module, op: Op) -> list[Op] | None:
    """Identity permutations vanish; two transposes in a row become one."""
    source = op.operands[0]
    assert source is not None
    perm = tuple(op.attr("perm") or range(source.type.rank - 1, -1, -1))
    if perm == tuple(range(len(perm))):
        return [] if module.forward(op.result, source) else None
    inner = source.producer
    if inner is None or inner.name != "nn.transpose" or inner.operands[0] is None:
        return None
    inner_perm = tuple(inner.attr("perm") or range(source.type.rank - 1, -1, -1))
    combined = tuple(inner_perm[p] for p in perm)
    fused = module.create_op("nn.transpose", [inner.operands[0]], [op.result.type], {"perm": combined}, op.loc)
    if not module.forward(op.result, fused.result):
        return None
    return [fused]


@pattern("nn.reshape")
def merge_reshapes(module: Module, op: Op) -> list[Op] | None:
    """``reshape(reshape(x))`` is one reshape of ``x`` to the final shape."""
    inner = op.operands[0].producer if op.operands[0] is not None else None
    if inner is None or inner.name != "nn.reshape" or inner.operands[0] is None:
        return None
    _, shape_op = module.add_constant(np.array(op.result.type.shape, np.int64), f"{op.result.name}.shape", op.loc)
    fused = module.create_op(
        "nn.reshape", [inner.operands[0], shape_op.result], [op.result.type], {"allowzero": 0}, op.loc
    )
    if not module.forward(op.result, fused.result):
        return None
    return [shape_op, fused]


@pattern("nn.gemm")
def gemm_weights_untransposed(module: Module, op: Op) -> list[Op] | None:
    """``Gemm(transB=1)`` with a constant B stores B transposed, so every weight is K×N."""
    weight = module.constant_of(op.operands[1])
    if op.attr("transB") != 1 or weight is None:
        return None
    _, const_op = module.add_constant(np.ascontiguousarray(weight.T), f"{op.operands[1].name}.T", op.loc)  # type: ignore[union-attr]
    op.set_operand(1, const_op.result)
    op.set_attrs(transB=0)
    return [const_op, op]


def apply_patterns(module: Module, max_rounds: int = 16) -> int:
    """Run the registered rewrites until nothing changes; return how many applied."""
    applied = 0
    for _ in range(max_rounds):
        changed = 0
        new_ops: list[Op] = []
        for op in module.ops:
            for rewrite in PATTERNS.get(op.name, ()):
                replacement = rewrite(module, op)
                if replacement is not None:
                    if not any(r is op for r in replacement):
                        op.drop_operands()
                    new_ops.extend(replacement)
                    changed += 1
                    break
            else:
                new_ops.append(op)
        module.ops = new_ops
        module.remove_dead()
        applied += changed
        if not changed:
            break
    return applied


@register_pass
@dataclass(frozen=True)
class Canonicalize(Pass):
    """Remove dead code and identities, fold layout ops into weights, fuse transposes and reshapes."""

    name: ClassVar[str] = "canonicalize"
    max_rounds: int = 16

    def run(self, module: Module, ctx: PassContext) -> None:
        apply_patterns(module, self.max_rounds)
