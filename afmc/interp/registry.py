"""The table of op implementations for the digital reference interpreter.

An implementation takes the op (for its attributes and result types) and the operand arrays
(``None`` for an omitted optional operand) and returns one array per result. Register with
``@impl("nn.conv")``; look up with ``IMPLS``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..ir.core import Op
from ..registry import registrar

Impl = Callable[[Op, Sequence["np.ndarray | None"]], list[np.ndarray]]

IMPLS: dict[str, Impl] = {}


#: Register ``fn`` as the implementation of each op in ``names``.
impl = registrar(IMPLS, "implementations")
