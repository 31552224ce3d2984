"""The matrix view of a weight-stationary op: what an analog array actually multiplies.

A convolution is its unrolled kernel matrix (rows = C_in/groups·k_h·k_w, cols = C_out/groups, one
matrix per group); a Gemm or a MatMul with a constant right operand is its K×N weight. ConvTranspose
is run as the equivalent convolution (flipped kernel over the zero-stuffed input), so its matrix has
rows = (C_in/groups)·k_h·k_w and cols = C_out/groups, like a convolution.
Passes that partition, tile and report all read the geometry from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .ir.core import Module, Op, SymbolRef

MATRIX_OPS = ("nn.conv", "nn.conv_transpose", "nn.gemm", "nn.matmul")


@dataclass(frozen=True)
class MatrixView:
    """An op as ``groups`` independent products ``(M × rows) @ (rows × cols)``."""

    kind: str  # "conv" | "conv_transpose" | "gemm" | "matmul"
    groups: int
    rows: int  # K: inputs per output (per group)
    cols: int  # N: outputs per input vector (per group)
    vectors: int  # M: input vectors per inference (output pixels × batch, or batch rows)

    @property
    def macs(self) -> int:
        return self.groups * self.rows * self.cols * self.vectors

    @property
    def weights(self) -> int:
        return self.groups * self.rows * self.cols


def weight_operand(module: Module, op: Op) -> np.ndarray | None:
    """The constant weight of a matrix op, or ``None`` when the weight is an activation."""
    if op.name not in MATRIX_OPS or len(op.operands) < 2:
        return None
    return module.constant_of(op.operands[1])


def matrix_view(module: Module, op: Op) -> MatrixView | None:
    """The geometry of ``op`` as matrix products, or ``None`` when it is not one with a constant weight."""
    weight = weight_operand(module, op)
    if weight is None or op.operands[0] is None:
        return None
    out = op.result.type.shape
    if op.name == "nn.conv":
        groups = int(op.attr("group", 1))
        c_out, c_in_g, *kernel = weight.shape
        return MatrixView("conv", groups, c_in_g * math.prod(kernel), c_out // groups, out[0] * math.prod(out[2:]))
    if op.name == "nn.conv_transpose":
        groups = int(op.attr("group", 1))
        c_in, c_out_g, *kernel = weight.shape
        return MatrixView(
            "conv_transpose", groups, (c_in // groups) * math.prod(kernel), c_out_g, out[0] * math.prod(out[2:])
        )
    if op.name == "nn.gemm":
        k, n = weight.shape[::-1] if int(op.attr("transB", 0)) else weight.shape
        return MatrixView("gemm", 1, int(k), int(n), int(out[0]))
    if weight.ndim != 2:
        return None
    return MatrixView("matmul", 1, int(weight.shape[0]), int(weight.shape[1]), math.prod(out[:-1]))


def _sharing_key(module: Module, op: Op) -> tuple[object, ...] | None:
    """What makes two matrix ops multiply by the same matrix: one pool constant as weight, the same
    op kind and the attributes that shape the matrix (Gemm's transB and alpha, a convolution's group)."""
    if op.name not in MATRIX_OPS or len(op.operands) < 2 or op.operands[1] is None:
        return None
    producer = op.operands[1].producer
    if producer is None or producer.name != "nn.constant" or module.constant_of(op.operands[1]) is None:
        return None
    symbol = producer.attr("value")
    assert isinstance(symbol, SymbolRef)
    return symbol.name, op.name, op.attr("transB"), op.attr("alpha"), op.attr("group")


def recurrent_groups(module: Module, ops: list[Op] | None = None) -> list[list[Op]]:
    """Groups (in program order) of matrix ops that multiply by the same constant matrix and of which
    one depends on another: the time steps of an unrolled recurrence (``afmc.frontend.recurrent``
    lowers an LSTM's h·Rᵀ to one MatMul per step, all reading Rᵀ). Such products run one after
    another whatever the hardware, so they can share one set of arrays (``tile`` does) where
    separate copies would sit idle. Products of one weight that do not depend on each other (a
    weight applied to two branches) are not grouped: their copies work in parallel.

    ``ops`` limits the candidates (``tile`` passes the analog ones); the default is every op."""
    candidates = module.ops if ops is None else ops
    by_key: dict[tuple[object, ...], list[Op]] = {}
    for op in candidates:
        key = _sharing_key(module, op)
        if key is not None:
            by_key.setdefault(key, []).append(op)
    groups: list[list[Op]] = []
    for members in by_key.values():
        if len(members) < 2:
            continue
        ids = {id(op) for op in members}
        reached: set[int] = set()  # values that depend on a product of this weight
        for op in module.ops:
            depends = any(v is not None and id(v) in reached for v in op.operands)
            if depends and id(op) in ids:
                groups.append(members)
                break
            if depends or id(op) in ids:
                reached.update(id(r) for r in op.results)
    return groups
