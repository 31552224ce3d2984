"""The IR's data structures: tensor types, SSA values, ops, the constant pool and the module.

A module is one SSA graph: inputs, a list of ops in a valid (topological) order, outputs, and a
pool of named constants that ``nn.constant`` ops reference by symbol. Ops are mutable containers
(passes rewire them), but their attributes are a frozen mapping that is replaced, never edited.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from . import dtypes


@dataclass(frozen=True)
class TensorType:
    """A static tensor type: shape and element type (``tensor<1x3x8x8xf32>``)."""

    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        if self.dtype not in dtypes.DTYPES:
            raise ValueError(f"unknown element type {self.dtype!r}")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * (8 if self.dtype == "str" else dtypes.to_numpy(self.dtype).itemsize)

    @property
    def is_static(self) -> bool:
        return all(d >= 0 for d in self.shape)

    @classmethod
    def of(cls, array: np.ndarray) -> TensorType:
        return cls(tuple(int(d) for d in array.shape), dtypes.from_numpy(array.dtype))

    def __str__(self) -> str:
        dims = "".join(f"{'?' if d < 0 else d}x" for d in self.shape)
        return f"tensor<{dims}{self.dtype}>"


@dataclass(frozen=True)
class SymbolRef:
    """A reference to a named module-level entity (a constant in the pool): ``@name``."""

    name: str


#: What an attribute may hold. Arrays are small inline tensors (``dense<...>``).
AttrValue = Union[bool, int, float, str, SymbolRef, TensorType, np.ndarray, tuple, "Attrs"]


class Attrs(Mapping[str, Any]):
    """An immutable, key-sorted attribute dictionary."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        self._items: dict[str, Any] = {k: _freeze(v) for k, v in sorted(pairs, key=_key_of)}

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    # Straight to the dict: Mapping's generic get/__contains__ go through __getitem__ and an
    # exception, and verification asks millions of times on 10^4-tile modules.
    def get(self, key: str, default: Any = None) -> Any:
        return self._items.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def replace(self, **changes: Any) -> Attrs:
        """A copy with ``changes`` applied; a value of ``None`` removes the key. Only the changes
        are frozen: the kept values already are (re-freezing copied every array attribute again,
        seconds for a pass that sets ``core`` on 20,000 tiles)."""
        merged = dict(self._items)
        for key, value in changes.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = _freeze(value)
        copy = Attrs.__new__(Attrs)
        copy._items = dict(sorted(merged.items(), key=_key_of))
        return copy

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Attrs) or list(self) != list(other):
            return False
        return all(_attr_equal(self[k], other[k]) for k in self)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Attrs({self._items!r})"


def _key_of(pair: tuple[str, Any]) -> str:
    return pair[0]


#: Immutable scalars that ``_freeze`` returns as they are (checked first: most attributes are these).
_PLAIN = frozenset({int, float, str, bool, type(None)})


def _freeze(value: Any) -> Any:
    if type(value) in _PLAIN:
        return value
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, tuple):
        if type(value) is tuple and all(type(v) in _PLAIN for v in value):
            return value  # already frozen: spans like (0, 8)
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return Attrs(value)
    if isinstance(value, np.ndarray):
        frozen = np.array(value, copy=True)
        frozen.flags.writeable = False
        return frozen
    if isinstance(value, np.generic):
        return value.item()
    return value


def _attr_equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
        )
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_attr_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


class Value:
    """An SSA value: a graph input or one result of an op."""

    __slots__ = ("name", "producer", "type", "uses")

    def __init__(self, name: str, type: TensorType, producer: Op | None = None) -> None:
        self.name = name
        self.type = type
        self.producer = producer
        self.uses: list[Op] = []

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


class Op:
    """An operation: ``dialect.name`` with operands, results, frozen attributes and a location."""

    __slots__ = ("attributes", "loc", "name", "operands", "results")

    def __init__(
        self,
        name: str,
        operands: Iterable[Value | None],
        results: Iterable[Value],
        attributes: Mapping[str, Any] | None = None,
        loc: str = "",
    ) -> None:
        self.name = name
        self.operands: list[Value | None] = list(operands)
        self.results: list[Value] = list(results)
        self.attributes = attributes if isinstance(attributes, Attrs) else Attrs(attributes or {})
        self.loc = loc
        for operand in self.operands:
            if operand is not None:
                operand.uses.append(self)
        for result in self.results:
            result.producer = self

    @property
    def dialect(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def result(self) -> Value:
        """The single result of a one-result op."""
        if len(self.results) != 1:
            raise ValueError(f"{self.name} has {len(self.results)} results")
        return self.results[0]

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attributes.get(key, default)

    def set_attrs(self, **changes: Any) -> None:
        """Replace the attribute mapping with a copy carrying ``changes`` (``None`` removes)."""
        self.attributes = self.attributes.replace(**changes)

    def set_operand(self, index: int, value: Value | None) -> None:
        old = self.operands[index]
        if old is not None:
            old.uses.remove(self)
        self.operands[index] = value
        if value is not None:
            value.uses.append(self)

    def drop_operands(self) -> None:
        for index in range(len(self.operands)):
            self.set_operand(index, None)

    def __repr__(self) -> str:
        names = ", ".join(f"%{r.name}" for r in self.results)
        return f"<{names} = {self.name} loc({self.loc!r})>"


#: The digest of a placeholder constant, whose contents were never computed.
PLACEHOLDER_DIGEST = "0" * 16


class Constant:
    """A pool entry: a named tensor. ``data`` is ``None`` when parsed from a dump that elided it."""

    __slots__ = ("_digest", "data", "name", "type")

    def __init__(self, name: str, type: TensorType, data: np.ndarray | None, digest: str | None = None) -> None:
        self.name = name
        self.type = type
        self.data = data
        self._digest = digest

    @property
    def digest(self) -> str:
        """First 16 hex digits of the SHA-256 of the raw little-endian bytes: a stable identity."""
        if self._digest is None:
            assert self.data is not None
            self._digest = array_digest(self.data)
        return self._digest


def array_digest(array: np.ndarray) -> str:
    hasher = hashlib.sha256()
    if array.dtype.kind in "OUS":
        for item in array.reshape(-1):
            hasher.update(str(item).encode() + b"\0")
    else:
        flat = np.ascontiguousarray(array).reshape(-1)
        flat = flat.astype(flat.dtype.newbyteorder("<"), copy=False)
        chunk = max(1, (1 << 24) // max(flat.itemsize, 1))
        for start in range(0, flat.size, chunk):
            hasher.update(flat[start : start + chunk].tobytes())
    return hasher.hexdigest()[:16]


_NAME_SAFE = re.compile(r"[^A-Za-z0-9_.$-]")


class Module:
    """One SSA graph with its constant pool: the unit every pass transforms."""

    def __init__(self, name: str = "main", attributes: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self.attributes = attributes if isinstance(attributes, Attrs) else Attrs(attributes or {})
        self.constants: dict[str, Constant] = {}
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.ops: list[Op] = []
        self._names: set[str] = set()

    # -- names -----------------------------------------------------------------------------
    def fresh_name(self, hint: str) -> str:
        """A value name not used yet in this module, derived from ``hint``."""
        base = hint or "v"
        name, counter = base, 1
        while name in self._names:
            name = f"{base}_{counter}"
            counter += 1
        self._names.add(name)
        return name

    def fresh_symbol(self, hint: str) -> str:
        base = _NAME_SAFE.sub("_", hint) or "c"
        name, counter = base, 1
        while name in self.constants:
            name = f"{base}_{counter}"
            counter += 1
        return name

    def has_name(self, name: str) -> bool:
        """Whether a value of this module has (or reserved) ``name``."""
        return name in self._names

    def claim_name(self, name: str) -> None:
        """Reserve an exact name (from a parsed file or an ONNX graph); duplicates are an error."""
        if name in self._names:
            raise ValueError(f"duplicate value name %{name}")
        self._names.add(name)

    # -- building --------------------------------------------------------------------------
    def add_input(self, name: str, type: TensorType) -> Value:
        self.claim_name(name)
        value = Value(name, type)
        self.inputs.append(value)
        return value

    def create_op(
        self,
        name: str,
        operands: Iterable[Value | None],
        result_types: Iterable[TensorType],
        attributes: Mapping[str, Any] | None = None,
        loc: str = "",
        result_names: Iterable[str] | None = None,
    ) -> Op:
        """Make an op with fresh result values; the caller places it in ``ops``."""
        types = list(result_types)
        hints = list(result_names) if result_names is not None else [loc or name.split(".")[-1]] * len(types)
        results = [Value(self.fresh_name(hint), t) for hint, t in zip(hints, types)]
        return Op(name, operands, results, attributes, loc)

    def append(self, op: Op) -> Op:
        self.ops.append(op)
        return op

    def add_constant(self, array: np.ndarray, hint: str, loc: str = "") -> tuple[Constant, Op]:
        """Put ``array`` in the pool and make the ``nn.constant`` op that reads it (not placed)."""
        array = np.asarray(array)
        symbol = self.fresh_symbol(hint)
        constant = Constant(symbol, TensorType.of(array), array)
        self.constants[symbol] = constant
        op = self.create_op(
            "nn.constant", [], [constant.type], {"value": SymbolRef(symbol)}, loc or hint, [hint]
        )
        return constant, op

    def add_placeholder(self, type: TensorType, hint: str, loc: str = "") -> tuple[Constant, Op]:
        """Like ``add_constant`` for a tensor whose contents are not computed: only its type is known
        (printed elided, refused by the interpreter)."""
        symbol = self.fresh_symbol(hint)
        constant = Constant(symbol, type, None, PLACEHOLDER_DIGEST)
        self.constants[symbol] = constant
        op = self.create_op("nn.constant", [], [type], {"value": SymbolRef(symbol)}, loc or hint, [hint])
        return constant, op

    # -- queries ---------------------------------------------------------------------------
    def constant_of(self, value: Value | None) -> np.ndarray | None:
        """The array behind ``value`` if it is produced by ``nn.constant`` with data, else ``None``."""
        if value is None or value.producer is None or value.producer.name != "nn.constant":
            return None
        return self.constants[value.producer.attributes["value"].name].data

    def values(self) -> Iterator[Value]:
        yield from self.inputs
        for op in self.ops:
            yield from op.results

    # -- rewriting -------------------------------------------------------------------------
    def replace_uses(self, old: Value, new: Value) -> None:
        """Make every user of ``old`` (and the module outputs) use ``new`` instead."""
        for user in list(old.uses):
            for index, operand in enumerate(user.operands):
                if operand is old:
                    user.set_operand(index, new)
        self.outputs = [new if v is old else v for v in self.outputs]

    def forward(self, old: Value, new: Value) -> bool:
        """Replace ``old`` by ``new`` everywhere, keeping graph output names stable.

        When ``old`` is a graph output, ``new`` takes over its name; that is impossible when
        ``new`` is itself a graph input or output, and then nothing changes and ``False`` returns.
        """
        outputs = {id(v) for v in self.outputs}
        if id(old) in outputs:
            if new.producer is None or id(new) in outputs:
                return False
            self._names.discard(new.name)
            old_name = old.name
            old.name = self.fresh_name(f"{old_name}.replaced")
            new.name = old_name
            self._names.add(old_name)
        self.replace_uses(old, new)
        return True

    def remove_dead(self) -> int:
        """Drop ops whose results are unused and not outputs, and unreferenced constants."""
        live_outputs = {id(v) for v in self.outputs}
        kept: list[Op] = []
        removed = 0
        for op in reversed(self.ops):
            if any(r.uses or id(r) in live_outputs for r in op.results):
                kept.append(op)
            else:
                op.drop_operands()
                for result in op.results:
                    self._names.discard(result.name)
                removed += 1
        self.ops = kept[::-1]
        used = {op.attributes["value"].name for op in self.ops if op.name == "nn.constant"}
        for symbol in [s for s in self.constants if s not in used]:
            del self.constants[symbol]
        return removed

    def rebuild_names(self) -> None:
        self._names = {v.name for v in self.values()}
