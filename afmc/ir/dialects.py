"""The op registry: every op name the IR may hold, with a one-line doc and an optional verifier.

Dialects register their ops here by decorator or call (``nn`` in ``nn.py``; ``xbar`` with the
analog passes). The verifier rejects op names that no dialect registered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .core import Module, Op

#: Checks one op; raises ``VerifyError`` naming what is wrong.
OpVerifier = Callable[["Op", "Module"], None]


@dataclass(frozen=True)
class OpDef:
    name: str
    doc: str = ""
    verify: OpVerifier | None = None


OPS: dict[str, OpDef] = {}


def register_op(name: str, doc: str = "", verify: OpVerifier | None = None) -> OpDef:
    """Declare an op name (``dialect.op``). Registering the same name twice is a bug."""
    if name in OPS:
        raise ValueError(f"op {name} is registered twice")
    OPS[name] = OpDef(name, doc, verify)
    return OPS[name]


def op_verifier(name: str) -> Callable[[OpVerifier], OpVerifier]:
    """Decorator attaching a verifier to an already registered op."""

    def wrap(fn: OpVerifier) -> OpVerifier:
        OPS[name] = OpDef(name, OPS[name].doc, fn)
        return fn

    return wrap
