"""A chip as data: the TOML schema of a target, validated into a frozen `TargetSpec`.

Every key is declared once, as a dataclass field whose metadata holds the rule that reads it
(type, range, meaning). One generic loader walks those declarations, so the schema, its
validation, `to_dict` and `to_toml` cannot drift apart. Errors are `TargetError`s that name
the dotted key (``array.rows``) and say why. `docs/targets.md` documents every key.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from afmc.errors import TargetError
from afmc.textfile import read_text_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "DEVICE_PARAMS",
    "TECHNOLOGIES",
    "AdcSpec",
    "ArraySpec",
    "ChipSpec",
    "DacSpec",
    "DeviceSpec",
    "EnergySpec",
    "FrozenTable",
    "Param",
    "PhotonicSpec",
    "TargetSpec",
    "TimingSpec",
    "from_dict",
    "from_toml",
    "from_toml_text",
]

V = TypeVar("V")
S = TypeVar("S", bound="_Section")


# ---------------------------------------------------------------------------------------------
# Where a value sits, for error messages
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _At:
    """The dotted key of a value and the file it came from, so an error can name both."""

    key: str
    file: str | None

    def __truediv__(self, name: str) -> _At:
        return _At(f"{self.key}.{name}" if self.key else name, self.file)

    def index(self, i: int) -> _At:
        return _At(f"{self.key}[{i}]", self.file)

    def error(self, why: str) -> TargetError:
        return TargetError(why, file=self.file, key=self.key or None)


def _kind(raw: object) -> str:
    """The TOML name of a raw value's type, for 'expected X, got Y' messages."""
    names = (
        (bool, "boolean"),
        (int, "integer"),
        (float, "float"),
        (str, "string"),
        (list, "array"),
        (Mapping, "table"),
    )
    return next((name for t, name in names if isinstance(raw, t)), type(raw).__name__)


def _show(raw: object) -> str:
    """A raw value for a message, cut short so the error stays one readable line."""
    try:
        text = repr(raw)
    except (ValueError, RecursionError):  # an integer of thousands of digits, a deeply nested array
        return f"({_kind(raw)} too large to show)"
    return text if len(text) <= 60 else text[:57] + "..."


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _unknown_keys(raw: Mapping[str, object], known: Iterable[str], at: _At) -> None:
    """Reject the first key not in `known`, suggesting the closest known one."""
    known = list(known)
    for name in raw:
        if name not in known:
            allowed = ", ".join(known) if known else "none"
            raise (at / name).error(f"unknown key{_did_you_mean(name, known)}; allowed: {allowed}")


# ---------------------------------------------------------------------------------------------
# Rules: how one key is read from TOML and written back
# ---------------------------------------------------------------------------------------------


class Rule:
    """Reads one raw TOML value into its spec value, or raises a TargetError saying why."""

    what: ClassVar[str] = "a value"

    def load(self, raw: object, at: _At) -> Any:
        raise NotImplementedError

    def dump(self, value: Any) -> Any:
        """The JSON/TOML form of a loaded value (tuples become lists)."""
        return value

    def describe(self) -> str:
        """What the key expects, e.g. 'an integer in 1..65536'."""
        return self.what


@dataclass(frozen=True)
class Int(Rule):
    """An integer in lo..hi (booleans and floats are rejected, never coerced)."""

    lo: int = 1
    hi: int = 2**31 - 1

    def load(self, raw: object, at: _At) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise at.error(f"expected an integer, got {_kind(raw)} {_show(raw)}")
        if not self.lo <= raw <= self.hi:
            raise at.error(f"must be in {self.lo}..{self.hi}, got {_show(raw)}")
        return raw

    def describe(self) -> str:
        return f"an integer in {self.lo}..{self.hi}"


@dataclass(frozen=True)
class Float(Rule):
    """A finite number in [lo, hi]; `positive` excludes lo itself (a strictly positive quantity)."""

    lo: float = 0.0
    hi: float = math.inf
    positive: bool = False

    def load(self, raw: object, at: _At) -> float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise at.error(f"expected a number, got {_kind(raw)} {_show(raw)}")
        try:
            value = float(raw)
        except OverflowError:  # an integer beyond any float
            value = math.inf if raw > 0 else -math.inf
        if not math.isfinite(value):
            raise at.error(f"must be finite, got {_show(raw)}")
        if value < self.lo or value > self.hi or (self.positive and value == self.lo):
            raise at.error(f"must be {self._bounds()}, got {_show(raw)}")
        return value

    def _bounds(self) -> str:
        low = f"> {self.lo:g}" if self.positive else f">= {self.lo:g}"
        return low if math.isinf(self.hi) else f"{low} and <= {self.hi:g}"

    def describe(self) -> str:
        return f"a number {self._bounds()}"


@dataclass(frozen=True)
class Bool(Rule):
    """true or false."""

    what: ClassVar[str] = "true or false"

    def load(self, raw: object, at: _At) -> bool:
        if not isinstance(raw, bool):
            raise at.error(f"expected true or false, got {_kind(raw)} {_show(raw)}")
        return raw


@dataclass(frozen=True)
class Text(Rule):
    """A string, optionally matching `pattern` (described by `shape` in errors)."""

    pattern: str = ""
    shape: str = ""

    def load(self, raw: object, at: _At) -> str:
        if not isinstance(raw, str):
            raise at.error(f"expected a string, got {_kind(raw)} {_show(raw)}")
        if self.pattern and not re.fullmatch(self.pattern, raw):
            raise at.error(f"must be {self.shape}, got {_show(raw)}")
        return raw

    def describe(self) -> str:
        return f"a string: {self.shape}" if self.shape else "a string"


@dataclass(frozen=True)
class Choice(Rule):
    """One of a fixed set of strings."""

    options: tuple[str, ...]

    def load(self, raw: object, at: _At) -> str:
        if not isinstance(raw, str):
            raise at.error(f"expected a string, got {_kind(raw)} {_show(raw)}")
        if raw not in self.options:
            raise at.error(f"must be {self.describe()}, got {_show(raw)}{_did_you_mean(raw, self.options)}")
        return raw

    def describe(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.options)


@dataclass(frozen=True)
class Floats(Rule):
    """A fixed-length array of numbers; `ascending` requires low < high for a [low, high] range."""

    length: int
    ascending: bool = False

    def load(self, raw: object, at: _At) -> tuple[float, ...]:
        if not isinstance(raw, list) or len(raw) != self.length:
            raise at.error(f"expected an array of {self.length} numbers, got {_kind(raw)} {_show(raw)}")
        values = tuple(Float(-math.inf).load(v, at.index(i)) for i, v in enumerate(raw))
        if self.ascending and not all(a < b for a, b in itertools.pairwise(values)):
            raise at.error(f"must be increasing ([low, high] with low < high), got {_show(raw)}")
        return values

    def dump(self, value: Any) -> Any:
        return list(value)

    def describe(self) -> str:
        return "a [low, high] pair, low < high" if self.ascending else f"an array of {self.length} numbers"


@dataclass(frozen=True)
class Coord(Rule):
    """A mesh position [x, y] of non-negative integers (bounds are checked against the mesh)."""

    what: ClassVar[str] = "an [x, y] pair of integers >= 0"

    def load(self, raw: object, at: _At) -> tuple[int, int]:
        if not isinstance(raw, list) or len(raw) != 2:
            raise at.error(f"expected {self.what}, got {_kind(raw)} {_show(raw)}")
        x, y = (Int(0).load(v, at.index(i)) for i, v in enumerate(raw))
        return (x, y)

    def dump(self, value: Any) -> Any:
        return list(value)


@dataclass(frozen=True)
class Coords(Rule):
    """An array of mesh positions."""

    what: ClassVar[str] = "an array of [x, y] pairs"

    def load(self, raw: object, at: _At) -> tuple[tuple[int, int], ...]:
        if not isinstance(raw, list):
            raise at.error(f"expected {self.what}, got {_kind(raw)} {_show(raw)}")
        return tuple(Coord().load(v, at.index(i)) for i, v in enumerate(raw))

    def dump(self, value: Any) -> Any:
        return [list(v) for v in value]


@dataclass(frozen=True)
class Strings(Rule):
    """A table of non-empty strings (the sources table)."""

    what: ClassVar[str] = "a table of strings"

    def load(self, raw: object, at: _At) -> FrozenTable[str]:
        if not isinstance(raw, Mapping):
            raise at.error(f"expected a table, got {_kind(raw)} {_show(raw)}")
        return FrozenTable(
            (k, Text(r"(?s).*\S.*", "a non-empty string").load(v, at / k)) for k, v in raw.items()
        )

    def dump(self, value: Any) -> Any:
        return dict(value)


@dataclass(frozen=True)
class AnyTable(Rule):
    """A table whose keys are checked later, by the section that owns it (device parameters)."""

    what: ClassVar[str] = "a table"

    def load(self, raw: object, at: _At) -> FrozenTable[Any]:
        if not isinstance(raw, Mapping):
            raise at.error(f"expected a table, got {_kind(raw)} {_show(raw)}")
        return FrozenTable(raw)

    def dump(self, value: Any) -> Any:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}


@dataclass(frozen=True)
class Section(Rule):
    """A nested table read into another spec dataclass."""

    cls: type[_Section]
    what: ClassVar[str] = "a table"

    def load(self, raw: object, at: _At) -> _Section:
        return _build(self.cls, raw, at)

    def dump(self, value: Any) -> Any:
        return value.to_dict()


@dataclass(frozen=True)
class Pipeline(Rule):
    """A pass pipeline string, MLIR style: `a,b{opt=1},c`. Pass names are resolved at use."""

    what: ClassVar[str] = "a pass pipeline string such as 'canonicalize,partition{min-macs=4096},tile'"
    _item: ClassVar[re.Pattern[str]] = re.compile(r"[a-z][a-z0-9-]*(\{[^{}]*\})?")

    def load(self, raw: object, at: _At) -> str:
        text = Text().load(raw, at)
        for i, item in enumerate(_split_top_level(text)):
            if not self._item.fullmatch(item.strip()):
                raise at.error(
                    f"pass {i + 1} {item.strip()!r} is not a kebab-case pass name "
                    f"with optional {{options}} (in {text!r})"
                )
        return text


def _split_top_level(text: str) -> list[str]:
    """Split a pipeline at commas outside braces."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return items


def _meta(rule: Rule, doc: str) -> dict[str, Any]:
    """The field metadata declaring one TOML key: the rule that reads it and its meaning."""
    return {"rule": rule, "doc": doc}


# ---------------------------------------------------------------------------------------------
# The generic loader and dumper
# ---------------------------------------------------------------------------------------------


class _Section:
    """Base of every spec section: loaded by `_build`, dumped by `to_dict`."""

    def _check(self, at: _At) -> None:
        """Cross-key checks that one rule cannot make; raise `at / key` errors."""

    def to_dict(self) -> dict[str, Any]:
        """The TOML-shaped dict of this section, in declaration order; omits absent sections."""
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = f.metadata["rule"].dump(value)
        return out


def _build(cls: type[S], raw: object, at: _At) -> S:
    """Read a TOML table into `cls`: unknown keys first (a typo is not 'missing'), then each field."""
    if not isinstance(raw, Mapping):
        raise at.error(f"expected a table, got {_kind(raw)} {_show(raw)}")
    declared = fields(cls)  # type: ignore[arg-type]
    _unknown_keys(raw, (f.name for f in declared), at)
    values: dict[str, Any] = {}
    for f in declared:
        rule: Rule = f.metadata["rule"]
        if f.name in raw:
            values[f.name] = rule.load(raw[f.name], at / f.name)
        elif f.default is MISSING:
            raise (at / f.name).error(f"required key is missing (expected {rule.describe()})")
    spec = cls(**values)
    spec._check(at)
    return spec


# ---------------------------------------------------------------------------------------------
# Frozen table (device parameters, sources)
# ---------------------------------------------------------------------------------------------


class FrozenTable(Mapping[str, V]):
    """An immutable, hashable, ordered str-keyed table, so that specs stay frozen and hashable."""

    __slots__ = ("_data",)

    def __init__(self, items: Mapping[str, V] | Iterable[tuple[str, V]] = ()) -> None:
        self._data: dict[str, V] = dict(items)

    def __getitem__(self, key: str) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return f"FrozenTable({self._data!r})"


# ---------------------------------------------------------------------------------------------
# Device models and their parameters
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One device-model parameter: its rule, its default (a documented reference value) and meaning."""

    rule: Rule
    default: Any
    doc: str


_STUCK = {
    "stuck_off_rate": Param(Float(0, 1), 0.0, "fraction of devices stuck at g = 0"),
    "stuck_on_rate": Param(Float(0, 1), 0.0, "fraction of devices stuck at g = g_max"),
}

# The parameters each device model takes. PCM defaults are aihwkit's PCMLikeNoiseModel
# (REFERENCE.md §1); the others are assumptions documented in docs/targets.md.
DEVICE_PARAMS: dict[str, dict[str, Param]] = {
    "ideal": {},
    "pcm": {
        "g_max_us": Param(Float(positive=True), 25.0, "maximum conductance, uS"),
        "t_read_s": Param(Float(positive=True), 250e-9, "read pulse duration for 1/f noise, s"),
        "t0_s": Param(Float(positive=True), 20.0, "time of the first read after programming, s"),
        "prog_noise_coeffs": Param(
            Floats(3),
            (0.26348, 1.9650, -1.1731),
            "sigma_prog(x) = c0 + c1*x + c2*x^2 in uS at g_max = 25 uS, x = g/g_max",
        ),
        "drift_mean_coeffs": Param(Floats(2), (-0.0155, 0.0244), "mu_nu = a*ln(g/g_max) + b"),
        "drift_mean_clip": Param(Floats(2, ascending=True), (0.049, 0.1), "clip range of mu_nu"),
        "drift_std_coeffs": Param(Floats(2), (-0.0125, -0.0059), "sigma_nu = a*ln(g/g_max) + b"),
        "drift_std_clip": Param(Floats(2, ascending=True), (0.008, 0.045), "clip range of sigma_nu"),
        "read_noise_q": Param(Float(), 0.0088, "1/f read-noise scale Q_s at g = g_max"),
        "read_noise_exp": Param(Float(), 0.65, "exponent of g/g_max in Q_s"),
        "read_noise_q_max": Param(Float(), 0.2, "upper clip of Q_s"),
        **_STUCK,
    },
    "rram": {
        "g_min_us": Param(Float(), 1.0, "conductance of the lowest level (HRS), uS"),
        "g_max_us": Param(Float(positive=True), 100.0, "conductance of the highest level (LRS), uS"),
        "prog_noise": Param(Float(0, 1), 0.02, "programming sigma as a fraction of g_max"),
        "read_noise": Param(Float(0, 1), 0.005, "per-read sigma as a fraction of g_max"),
        **_STUCK,
    },
    "flash": {
        "g_max_us": Param(Float(positive=True), 1.0, "maximum cell conductance at the read bias, uS"),
        "prog_noise": Param(Float(0, 1), 0.004, "programming sigma as a fraction of g_max"),
        "read_noise": Param(Float(0, 1), 0.002, "per-read sigma as a fraction of g_max"),
        "drift_per_decade": Param(
            Float(0, 1), 0.001, "fractional conductance loss per decade of time after t0 (charge loss)"
        ),
        "t0_s": Param(Float(positive=True), 20.0, "time of the first read after programming, s"),
        **_STUCK,
    },
    "photonic": {
        "phase_noise_rad": Param(Float(), 0.005, "sigma of each programmed phase, rad"),
        "crosstalk": Param(Float(0, 1), 0.0, "fraction of a neighbour's phase leaking in (thermal)"),
        "detector_noise": Param(Float(0, 1), 0.01, "photodetector sigma as a fraction of full scale"),
    },
}

# Keys that must be ordered when both are present: low < high.
_ORDERED_PARAMS = (("g_min_us", "g_max_us"),)


# ---------------------------------------------------------------------------------------------
# The sections
# ---------------------------------------------------------------------------------------------

# technology -> the section that describes its compute element; the other sections are refused.
TECHNOLOGIES: dict[str, str] = {"rram": "array", "pcm": "array", "flash": "array", "photonic": "photonic"}
ENCODINGS = ("differential", "offset")


@dataclass(frozen=True, kw_only=True)
class ArraySpec(_Section):
    """A crossbar: rows are inputs (word lines), cols are outputs read by the ADCs (bit lines).

    A weight is quantised to `weight_bits` and split into `slices` cells of `bits_per_cell`
    bits each, of increasing significance, in adjacent columns. `differential` stores |w| on a
    (+, -) pair of devices inside one unit cell; `offset` stores w + 2^(b-1) on one polarity and
    reserves one reference column per array whose output is subtracted.
    """

    rows: int = field(metadata=_meta(Int(1, 65536), "word lines: inputs per array"))
    cols: int = field(metadata=_meta(Int(1, 65536), "bit lines read out: output columns per array"))
    bits_per_cell: int = field(metadata=_meta(Int(1, 16), "bits one device stores (2^bits levels)"))
    weight_bits: int = field(metadata=_meta(Int(1, 16), "weight precision, signed"))
    encoding: str = field(metadata=_meta(Choice(ENCODINGS), "how signed weights are stored"))
    parallel_devices: int = field(
        default=1, metadata=_meta(Int(1, 64), "devices summed per polarity and slice")
    )

    @property
    def magnitude_bits(self) -> int:
        """Bits a cell must hold: the sign lives in the polarity for differential encoding."""
        return self.weight_bits - 1 if self.encoding == "differential" else self.weight_bits

    @property
    def slices(self) -> int:
        """Arrays (of increasing significance) one weight spans: each bit slice of a weight block
        lives in its own array, as PUMA spreads a 16-bit weight over 8 crossbars."""
        return max(1, -(-self.magnitude_bits // self.bits_per_cell))

    @property
    def polarities(self) -> int:
        return 2 if self.encoding == "differential" else 1

    @property
    def devices_per_weight(self) -> int:
        return self.slices * self.parallel_devices * self.polarities

    @property
    def reference_cols(self) -> int:
        """Columns reserved per array: one offset reference column for offset encoding."""
        return 1 if self.encoding == "offset" else 0

    @property
    def weight_cols(self) -> int:
        """Logical weight columns (output neurons) one array holds, for one bit slice."""
        return self.cols - self.reference_cols

    def _check(self, at: _At) -> None:
        if self.encoding == "differential" and self.weight_bits < 2:
            raise (at / "weight_bits").error("a signed differential weight needs at least 2 bits")
        if self.weight_cols < 1:
            raise (at / "cols").error(
                f"too few columns: an array needs one weight column besides {self.reference_cols} reference"
            )


@dataclass(frozen=True, kw_only=True)
class PhotonicSpec(_Section):
    """An MZI mesh: an NxN matrix as U S V^H (two NxN meshes and N attenuators, Shen 2017)."""

    mesh_size: int = field(metadata=_meta(Int(2, 4096), "N: the mesh realises an NxN matrix"))
    phase_bits: int = field(metadata=_meta(Int(1, 16), "precision of each phase shifter setting"))
    insertion_loss_db: float = field(metadata=_meta(Float(), "optical loss per MZI, dB"))


@dataclass(frozen=True, kw_only=True)
class DacSpec(_Section):
    """Input conversion: `bits` per conversion; bit-serial DACs stream `input_bits` over several phases."""

    bits: int = field(metadata=_meta(Int(1, 16), "DAC resolution per conversion"))
    bit_serial: bool = field(
        default=False, metadata=_meta(Bool(), "inputs streamed in ceil(input_bits / bits) phases")
    )
    input_bits: int = field(
        default=0, metadata=_meta(Int(1, 16), "input (activation) precision; default: bits")
    )
    input_range: tuple[float, float] = field(
        default=(-1.0, 1.0), metadata=_meta(Floats(2, ascending=True), "[low, high] normalised input range")
    )

    def __post_init__(self) -> None:
        if self.input_bits == 0:  # not given: the DAC converts the whole input at once
            object.__setattr__(self, "input_bits", self.bits)

    @property
    def phases(self) -> int:
        """Array reads per input vector."""
        return -(-self.input_bits // self.bits) if self.bit_serial else 1

    def _check(self, at: _At) -> None:
        if not self.bit_serial and self.input_bits != self.bits:
            raise (at / "input_bits").error(
                f"must equal bits ({self.bits}) unless bit_serial = true, got {self.input_bits}"
            )
        if self.input_bits < self.bits:
            raise (at / "input_bits").error(f"must be >= bits ({self.bits}), got {self.input_bits}")


@dataclass(frozen=True, kw_only=True)
class AdcSpec(_Section):
    """Output conversion: `columns_per_adc` columns share one ADC, converted one after another."""

    bits: int = field(metadata=_meta(Int(1, 16), "ADC resolution"))
    columns_per_adc: int = field(metadata=_meta(Int(1, 65536), "columns multiplexed onto one ADC"))
    output_range: tuple[float, float] = field(
        default=(-10.0, 10.0),
        metadata=_meta(Floats(2, ascending=True), "[low, high] clipping range in normalised MVM units"),
    )


#: Arrays (or photonic meshes) one chip may have in all: 64x ISAAC's 16,128. Placement and the
#: bundle keep per-array state, so a target file must not be able to ask for 2^44 of them.
MAX_ARRAYS = 1 << 20


@dataclass(frozen=True, kw_only=True)
class ChipSpec(_Section):
    """Cores on a 2-D mesh network; dead positions hold no usable core; `io` hosts the digital unit."""

    cores: int = field(metadata=_meta(Int(1, 2**24), "working cores: mesh_x*mesh_y - len(dead_cores)"))
    mesh_x: int = field(metadata=_meta(Int(1, 4096), "mesh width"))
    mesh_y: int = field(metadata=_meta(Int(1, 4096), "mesh height"))
    arrays_per_core: int = field(metadata=_meta(Int(1, 2**20), "arrays (or photonic meshes) per core"))
    dead_cores: tuple[tuple[int, int], ...] = field(
        default=(), metadata=_meta(Coords(), "mesh positions without a usable core")
    )
    io: tuple[int, int] = field(
        default=(0, 0), metadata=_meta(Coord(), "mesh position of the IO / digital unit")
    )

    @property
    def core_positions(self) -> tuple[tuple[int, int], ...]:
        """Working core positions, row-major (y outer, x inner)."""
        dead = set(self.dead_cores)
        return tuple((x, y) for y in range(self.mesh_y) for x in range(self.mesh_x) if (x, y) not in dead)

    def _inside(self, xy: tuple[int, int]) -> bool:
        return xy[0] < self.mesh_x and xy[1] < self.mesh_y

    def _check(self, at: _At) -> None:
        mesh = f"the {self.mesh_x}x{self.mesh_y} mesh (x in 0..{self.mesh_x - 1}, y in 0..{self.mesh_y - 1})"
        seen: set[tuple[int, int]] = set()
        for i, xy in enumerate(self.dead_cores):
            if not self._inside(xy):
                raise (at / "dead_cores").index(i).error(f"core {list(xy)} is outside {mesh}")
            if xy in seen:  # a set: a file may list a hundred thousand cores
                raise (at / "dead_cores").index(i).error(f"core {list(xy)} is listed twice")
            seen.add(xy)
        if not self._inside(self.io):
            raise (at / "io").error(f"{list(self.io)} is outside {mesh}")
        working = self.mesh_x * self.mesh_y - len(self.dead_cores)
        if self.cores != working:
            raise (at / "cores").error(
                f"must equal mesh_x*mesh_y - dead cores = {self.mesh_x}*{self.mesh_y} - "
                f"{len(self.dead_cores)} = {working}, got {self.cores}"
            )
        arrays = self.cores * self.arrays_per_core
        if arrays > MAX_ARRAYS:
            raise (at / "arrays_per_core").error(
                f"cores x arrays_per_core = {self.cores} x {self.arrays_per_core} = {arrays} arrays, over the "
                f"{MAX_ARRAYS} (2^{MAX_ARRAYS.bit_length() - 1}) one chip may have"
            )


@dataclass(frozen=True, kw_only=True)
class DeviceSpec(_Section):
    """The device model the simulator applies, and its parameters (see `DEVICE_PARAMS`)."""

    model: str = field(metadata=_meta(Choice(tuple(DEVICE_PARAMS)), "device model"))
    params: FrozenTable[Any] = field(
        default=FrozenTable(),
        metadata=_meta(AnyTable(), "model parameters; omitted ones take their defaults"),
    )

    def _check(self, at: _At) -> None:
        schema = DEVICE_PARAMS[self.model]
        where = at / "params"
        _unknown_keys(self.params, schema, where)
        resolved = {
            name: p.rule.load(self.params[name], where / name) if name in self.params else p.default
            for name, p in schema.items()
        }
        for low, high in _ORDERED_PARAMS:
            if low in resolved and not resolved[low] < resolved[high]:
                raise (where / low).error(f"must be < {high} ({resolved[high]}), got {resolved[low]}")
        if resolved.get("stuck_off_rate", 0.0) + resolved.get("stuck_on_rate", 0.0) > 1.0:
            raise (where / "stuck_on_rate").error("stuck_off_rate + stuck_on_rate must be <= 1")
        object.__setattr__(self, "params", FrozenTable(resolved))


@dataclass(frozen=True, kw_only=True)
class TimingSpec(_Section):
    """Latency constants; the simulator composes them per op (docs/targets.md gives the model)."""

    clock_hz: float = field(
        metadata=_meta(Float(positive=True), "clock of the digital logic and network, Hz")
    )
    mvm_ns: float = field(
        metadata=_meta(Float(), "one array read for one input phase (drive, settle, integrate), ns")
    )
    dac_ns: float = field(metadata=_meta(Float(), "one DAC conversion, ns"))
    adc_ns: float = field(metadata=_meta(Float(), "one ADC conversion, ns"))
    hop_ns_per_byte: float = field(metadata=_meta(Float(), "moving one byte over one mesh hop, ns"))
    digital_ops_per_s: float = field(metadata=_meta(Float(positive=True), "digital unit throughput, ops/s"))


@dataclass(frozen=True, kw_only=True)
class EnergySpec(_Section):
    """Energy constants per operation, pJ."""

    mvm_pj: float = field(metadata=_meta(Float(), "one array read for one input phase, pJ"))
    dac_pj: float = field(metadata=_meta(Float(), "one DAC conversion (one row, one phase), pJ"))
    adc_pj: float = field(metadata=_meta(Float(), "one ADC conversion, pJ"))
    hop_pj_per_byte: float = field(metadata=_meta(Float(), "moving one byte over one mesh hop, pJ"))
    digital_pj_per_op: float = field(metadata=_meta(Float(), "one digital operation, pJ"))


@dataclass(frozen=True, kw_only=True)
class TargetSpec(_Section):
    """A chip: what the compiler tiles, places and schedules onto, and what the simulator models."""

    name: str = field(
        metadata=_meta(Text(r"[a-z][a-z0-9_-]*", "lower-case letters, digits, '-' or '_'"), "target name")
    )
    description: str = field(default="", metadata=_meta(Text(), "one line for `afmc targets`"))
    technology: str = field(metadata=_meta(Choice(tuple(TECHNOLOGIES)), "compute technology"))
    pipeline: str = field(metadata=_meta(Pipeline(), "default pass pipeline"))
    array: ArraySpec | None = field(
        default=None, metadata=_meta(Section(ArraySpec), "crossbar geometry (rram, pcm, flash)")
    )
    photonic: PhotonicSpec | None = field(
        default=None, metadata=_meta(Section(PhotonicSpec), "MZI mesh geometry (photonic)")
    )
    dac: DacSpec = field(metadata=_meta(Section(DacSpec), "input converters"))
    adc: AdcSpec = field(metadata=_meta(Section(AdcSpec), "output converters"))
    chip: ChipSpec = field(metadata=_meta(Section(ChipSpec), "cores and their mesh"))
    device: DeviceSpec = field(metadata=_meta(Section(DeviceSpec), "device model"))
    timing: TimingSpec = field(metadata=_meta(Section(TimingSpec), "latency constants"))
    energy: EnergySpec = field(metadata=_meta(Section(EnergySpec), "energy constants"))
    sources: FrozenTable[str] = field(
        default=FrozenTable(), metadata=_meta(Strings(), "citation per short source id")
    )

    @property
    def tile_rows(self) -> int:
        """Inputs one array (or photonic mesh) takes."""
        return self.array.rows if self.array else self._photonic().mesh_size

    @property
    def tile_cols(self) -> int:
        """Weight columns (outputs) one array (or photonic mesh) holds."""
        return self.array.weight_cols if self.array else self._photonic().mesh_size

    @property
    def tile_outputs(self) -> int:
        """Physical output lines of one array (before slicing), i.e. what the ADCs read."""
        return self.array.cols if self.array else self._photonic().mesh_size

    @property
    def total_arrays(self) -> int:
        """Arrays (or meshes) on the working cores."""
        return self.chip.cores * self.chip.arrays_per_core

    def _photonic(self) -> PhotonicSpec:
        assert self.photonic is not None, "validated: a target has an array or a photonic mesh"
        return self.photonic

    def _check(self, at: _At) -> None:
        wanted = TECHNOLOGIES[self.technology]
        for section in sorted(set(TECHNOLOGIES.values())):
            present = getattr(self, section) is not None
            if section == wanted and not present:
                raise (at / section).error(f"required section is missing for technology '{self.technology}'")
            if section != wanted and present:
                users = sorted(t for t, s in TECHNOLOGIES.items() if s == section)
                raise (at / section).error(
                    f"only allowed for technology {' or '.join(map(repr, users))}, not '{self.technology}'"
                )
        if self.device.model not in (self.technology, "ideal"):
            raise (at / "device" / "model").error(
                f"must be '{self.technology}' or 'ideal' for technology '{self.technology}', "
                f"got '{self.device.model}'"
            )
        if self.adc.columns_per_adc > self.tile_outputs:
            raise (at / "adc" / "columns_per_adc").error(
                f"must be <= the {self.tile_outputs} output columns of one array, "
                f"got {self.adc.columns_per_adc}"
            )

    def to_toml(self) -> str:
        """This spec as a TOML document (defaults filled in); it parses back to an equal spec."""
        return _toml_table(self.to_dict(), "")


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def from_dict(data: Mapping[str, Any], source: str | None = None) -> TargetSpec:
    """Validate a TOML-shaped dict (as `tomllib` returns it) into a spec; `source` names the file."""
    return _build(TargetSpec, data, _At("", source))


#: A target file is a few KiB; anything larger than this is refused unread (``/dev/zero`` never ends).
MAX_TARGET_FILE_BYTES = 1 << 20


def from_toml_text(text: str, source: str | None = None) -> TargetSpec:
    """Parse and validate TOML text; syntax errors name the source and the line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"invalid TOML: {exc}", file=source) from None
    except ValueError as exc:  # tomllib converts integers with int(): more than 4300 digits fail
        raise TargetError(f"invalid TOML: {exc}", file=source) from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise TargetError("invalid TOML: arrays or inline tables nested too deeply", file=source) from None
    return from_dict(data, source)


def from_toml(path: str | os.PathLike[str]) -> TargetSpec:
    """Read a target file: a regular file of at most ``MAX_TARGET_FILE_BYTES``, UTF-8."""
    text = read_text_file(
        path, what="target file", limit=MAX_TARGET_FILE_BYTES, error=TargetError,
        too_large=f"larger than {MAX_TARGET_FILE_BYTES >> 10} KiB; not a target file",
    )
    return from_toml_text(text, os.fspath(path))


# ---------------------------------------------------------------------------------------------
# TOML writer (only what to_dict produces: scalars, arrays, nested tables)
# ---------------------------------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def _toml_table(table: Mapping[str, Any], prefix: str) -> str:
    lines = [f"[{prefix}]"] if prefix else []
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, Mapping)]
    for k, v in table.items():
        if isinstance(v, Mapping):
            lines.append("")
            lines.append(_toml_table(v, f"{prefix}.{_toml_key(k)}" if prefix else _toml_key(k)).rstrip("\n"))
    return "\n".join(lines) + "\n"
