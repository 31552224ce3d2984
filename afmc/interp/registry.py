"""The table of op implementations for the digital reference interpreter.

An implementation takes the op (for its attributes and result types) and the operand arrays
(``None`` for an omitted optional operand) and returns one array per result. Register with
``@impl("nn.conv")``; look up with ``IMPLS``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..ir.core import Op

Impl = Callable[[Op, Sequence["np.ndarray | None"]], list[np.ndarray]]

IMPLS: dict[str, Impl] = {}


def impl(*names: str) -> Callable[[Impl], Impl]:
    """Register ``fn`` as the implementation of each op in ``names``."""

    def register(fn: Impl) -> Impl:
        for name in names:
            if name in IMPLS:
                raise ValueError(f"{name} has two implementations")
            IMPLS[name] = fn
        return fn

    return register
