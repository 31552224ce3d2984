"""``fold-batchnorm``: fold inference-mode BatchNormalization into the Conv/Gemm/MatMul before it.

BN(y) = a·y + b per channel with a = scale/√(var+ε) and b = B − mean·a, so scaling the producer's
output channels by a and adding b to its bias removes the BN without changing the function.

Every inference-mode BN whose variance is a constant is checked first, folded or not: var + ε
must be finite and > 0 on every channel, else √(var+ε) is NaN and the model computes NaN. Such a
model is bad input (a `FrontendError`, exit 2, naming the node), never silent NaN weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from afmc.errors import FrontendError
from afmc.ir.core import Module, Op
from afmc.pipeline import Pass, PassContext, register_pass
from afmc.registry import registrar

#: Producer op -> folder(module, producer, a, b) returning the ops that replace the producer.
Folder = Callable[[Module, Op, np.ndarray, np.ndarray], "list[Op] | None"]
FOLDERS: dict[str, Folder] = {}


folder = registrar(FOLDERS, "batch-norm folders")


def _const(module: Module, array: np.ndarray, like: np.ndarray, hint: str, loc: str) -> Op:
    return module.add_constant(array.astype(like.dtype), hint, loc)[1]


def _weight_and_bias(module: Module, op: Op) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The op's constant weight and bias (None when it has none), or None when either operand is
    computed at run time (then the op cannot absorb the normalisation)."""
    weight = module.constant_of(op.operands[1])
    value = op.operands[2] if len(op.operands) > 2 else None
    bias = module.constant_of(value)
    if weight is None or (value is not None and bias is None):
        return None
    return weight, bias


def _rewire(module: Module, op: Op, weight: np.ndarray, scaled: np.ndarray, bias: np.ndarray) -> list[Op]:
    """Point ``op`` at new weight and bias constants; return them followed by ``op``."""
    new_weight = _const(module, scaled, weight, f"{op.loc}.weight.bn", op.loc)
    new_bias = _const(module, bias, weight, f"{op.loc}.bias.bn", op.loc)
    while len(op.operands) < 3:
        op.operands.append(None)
    op.set_operand(1, new_weight.result)
    op.set_operand(2, new_bias.result)
    return [new_weight, new_bias, op]


@folder("nn.conv")
def fold_into_conv(module: Module, op: Op, a: np.ndarray, b: np.ndarray) -> list[Op] | None:
    found = _weight_and_bias(module, op)
    if found is None:
        return None
    weight, bias = found
    old_bias = bias if bias is not None else np.zeros(weight.shape[0], weight.dtype)
    return _rewire(module, op, weight, weight * a.reshape((-1,) + (1,) * (weight.ndim - 1)), old_bias * a + b)


@folder("nn.conv_transpose")
def fold_into_conv_transpose(module: Module, op: Op, a: np.ndarray, b: np.ndarray) -> list[Op] | None:
    found = _weight_and_bias(module, op)
    if found is None:
        return None
    weight, bias = found
    group = int(op.attr("group", 1))
    c_in, c_out_g = weight.shape[:2]
    grouped = weight.reshape((group, c_in // group, c_out_g) + weight.shape[2:])
    scale = a.reshape((group, 1, c_out_g) + (1,) * (weight.ndim - 2))
    old_bias = bias if bias is not None else np.zeros(group * c_out_g, weight.dtype)
    return _rewire(module, op, weight, (grouped * scale).reshape(weight.shape), old_bias * a + b)


@folder("nn.gemm")
def fold_into_gemm(module: Module, op: Op, a: np.ndarray, b: np.ndarray) -> list[Op] | None:
    found = _weight_and_bias(module, op)
    if found is None or op.result.type.rank != 2:
        return None
    weight, bias = found
    scaled = weight * (a[:, None] if op.attr("transB") == 1 else a[None, :])
    old_bias = float(op.attr("beta", 1.0)) * bias if bias is not None else np.zeros(a.shape, np.float64)
    op.set_attrs(beta=1.0)  # the new bias already carries beta
    return _rewire(module, op, weight, scaled, old_bias * a + b)


@folder("nn.matmul")
def fold_into_matmul(module: Module, op: Op, a: np.ndarray, b: np.ndarray) -> list[Op] | None:
    """A 2-D MatMul followed by BN becomes a Gemm with the folded bias."""
    weight = module.constant_of(op.operands[1])
    if weight is None or weight.ndim != 2 or op.result.type.rank != 2 or op.operands[0] is None:
        return None
    new_weight = _const(module, weight * a[None, :], weight, f"{op.loc}.weight.bn", op.loc)
    new_bias = _const(module, b, weight, f"{op.loc}.bias.bn", op.loc)
    attrs = {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0}
    gemm = module.create_op(
        "nn.gemm", [op.operands[0], new_weight.result, new_bias.result], [op.result.type], attrs, op.loc
    )
    module.replace_uses(op.result, gemm.result)
    op.drop_operands()
    return [new_weight, new_bias, gemm]


def check_variance(module: Module, bn: Op) -> None:
    """Raise a FrontendError naming ``bn`` if its constant variance + epsilon is not finite and > 0."""
    if bn.attr("training_mode", 0) != 0 or len(bn.operands) < 5 or bn.operands[4] is None:
        return  # training mode normalises with the batch's own (non-negative) variance
    var = module.constant_of(bn.operands[4])
    if var is None:
        return
    eps = float(bn.attr("epsilon", 1e-5))
    with np.errstate(all="ignore"):
        total = np.asarray(var, np.float64).reshape(-1) + eps
        bad = np.flatnonzero(~(np.isfinite(total) & (total > 0)))
    if bad.size:
        c = int(bad[0])
        raise FrontendError(
            f"BatchNormalization variance + epsilon must be finite and > 0: channel {c} has "
            f"{float(np.asarray(var, np.float64).reshape(-1)[c]):g} + {eps:g} ({bad.size} of {total.size} channels bad)",
            node=bn.loc or None,
        )


def _bn_affine(module: Module, bn: Op) -> tuple[np.ndarray, np.ndarray] | None:
    params = [module.constant_of(v) for v in bn.operands[1:5]]
    if any(p is None for p in params) or bn.attr("training_mode", 0) != 0 or len(bn.results) != 1:
        return None
    scale, shift, mean, var = (np.asarray(p, np.float64) for p in params)  # type: ignore[arg-type]
    a = scale / np.sqrt(var + float(bn.attr("epsilon", 1e-5)))
    return a, shift - mean * a


@register_pass
@dataclass(frozen=True)
class FoldBatchnorm(Pass):
    """Fold inference BatchNormalization into the preceding Conv, ConvTranspose, Gemm or 2-D MatMul."""

    name: ClassVar[str] = "fold-batchnorm"

    def run(self, module: Module, ctx: PassContext) -> None:
        for op in module.ops:
            if op.name == "nn.batch_normalization":
                check_variance(module, op)
        replaced: dict[int, list[Op]] = {}
        for bn in module.ops:
            if bn.name != "nn.batch_normalization" or bn.operands[0] is None:
                continue
            producer = bn.operands[0].producer
            if producer is None or producer.name not in FOLDERS or len(bn.operands[0].uses) != 1:
                continue
            if id(producer) in replaced or bn.operands[0] in module.outputs:
                continue
            affine = _bn_affine(module, bn)
            if affine is None:
                continue
            new_ops = FOLDERS[producer.name](module, producer, *affine)
            if new_ops is None:
                continue
            result = new_ops[-1].result
            if not module.forward(bn.result, result):
                continue
            replaced[id(producer)] = new_ops
            bn.drop_operands()
        if not replaced:
            return
        ops: list[Op] = []
        for op in module.ops:
            ops.extend(replaced.get(id(op), [op]))
        module.ops = ops
        module.remove_dead()
