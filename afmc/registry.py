"""Tables keyed by op name, filled by decorators: how afmc picks an implementation, a rule or a
lowering for an op without if/elif chains."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def registrar(table: dict[str, F], what: str) -> Callable[..., Callable[[F], F]]:
    """A decorator factory for ``table``: ``@register("nn.conv", "nn.gemm")`` stores the decorated
    function under each name. A name registered twice is a bug (two modules claiming one op), so it
    raises instead of letting the import order decide."""

    def by_names(*names: str) -> Callable[[F], F]:
        def register(fn: F) -> F:
            for name in names:
                if name in table:
                    raise ValueError(f"two {what} for {name}")
                table[name] = fn
            return fn

        return register

    return by_names
