"""Passes, the pass registry, pipeline strings and the pass manager.

A pass is a frozen dataclass with a kebab-case ``name`` and typed option fields; options are
spelled in kebab case in pipeline strings: ``canonicalize,partition{min-macs=4096 keep-digital=fc*},tile``.
``str(parse_pipeline(spec)) == spec`` for every canonical spec (options separated by one space,
only the options that were given, in the order given).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
import time
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TextIO

from .errors import AfmcError, ParseError, PassError, UsageError, VerifyError
from .ir.core import Module
from .ir.printer import print_module
from .ir.verify import verify


@dataclass
class PassContext:
    """What passes may read beyond the IR: the target, the seed, data, and a report to fill."""

    target: Any = None
    seed: int = 0
    calibration_data: dict[str, Any] | None = None
    report: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Pass:
    """Base of all passes. Subclasses set ``name`` and implement ``run``."""

    name: ClassVar[str] = ""

    def run(self, module: Module, ctx: PassContext) -> None:
        raise NotImplementedError

    @classmethod
    def options(cls) -> list[dataclasses.Field[Any]]:
        return list(dataclasses.fields(cls))

    @classmethod
    def summary(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


PASSES: dict[str, type[Pass]] = {}

P = typing.TypeVar("P", bound=type[Pass])


def register_pass(cls: P) -> P:
    """Class decorator: make the pass available to pipeline strings by its ``name``."""
    if not cls.name or cls.name in PASSES:
        raise ValueError(f"pass {cls.__name__} has no name or a taken one: {cls.name!r}")
    PASSES[cls.name] = cls
    return cls


def load_passes() -> dict[str, type[Pass]]:
    """Import every module of ``afmc.passes`` (each registers its pass); return the registry."""
    package = importlib.import_module("afmc.passes")
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        importlib.import_module(f"afmc.passes.{info.name}")
    return PASSES


def option_name(field_name: str) -> str:
    return field_name.replace("_", "-")


# -- pipeline strings -------------------------------------------------------------------------


@dataclass(frozen=True)
class PassSpec:
    """One entry of a pipeline: the pass name and the options as written."""

    name: str
    options: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        if not self.options:
            return self.name
        return self.name + "{" + " ".join(f"{k}={_quote(v)}" for k, v in self.options) + "}"


def _quote(value: str) -> str:
    return f'"{value}"' if any(c in value for c in ' {}"') or value == "" else value


@dataclass(frozen=True)
class Pipeline:
    specs: tuple[PassSpec, ...]

    def __str__(self) -> str:
        return ",".join(str(s) for s in self.specs)

    def __iter__(self) -> Iterator[PassSpec]:
        return iter(self.specs)

    def instantiate(self) -> list[Pass]:
        return [build_pass(s, str(self)) for s in self.specs]


def _caret(spec: str, pos: int, message: str) -> ParseError:
    return ParseError(f"pipeline: {message}\n  {spec}\n  {' ' * pos}^")


def _is_name_char(char: str) -> bool:
    return char.isalnum() or char in "-_"


def _scan(spec: str, pos: int, accept: Callable[[str], bool]) -> int:
    """The first position at or after ``pos`` whose character ``accept`` refuses (or the end)."""
    while pos < len(spec) and accept(spec[pos]):
        pos += 1
    return pos


def parse_pipeline(spec: str) -> Pipeline:
    """Parse ``a,b{k=v k2=v2}``; errors point a caret at the bad token."""
    load_passes()
    specs: list[PassSpec] = []
    pos = 0
    n = len(spec)
    while True:
        start, pos = pos, _scan(spec, pos, _is_name_char)
        name = spec[start:pos]
        if not name:
            raise _caret(spec, pos, "expected a pass name")
        if name not in PASSES:
            hint = difflib.get_close_matches(name, list(PASSES), n=1)
            more = f" (did you mean '{hint[0]}'?)" if hint else f" (known: {', '.join(sorted(PASSES))})"
            raise _caret(spec, start, f"unknown pass '{name}'{more}")
        options: list[tuple[str, str]] = []
        if pos < n and spec[pos] == "{":
            pos += 1
            while True:
                pos = _scan(spec, pos, lambda c: c == " ")
                if pos < n and spec[pos] == "}":
                    pos += 1
                    break
                key_start, pos = pos, _scan(spec, pos, _is_name_char)
                key = spec[key_start:pos]
                if not key:
                    raise _caret(spec, pos, "expected an option name or '}'")
                if pos >= n or spec[pos] != "=":
                    raise _caret(spec, pos, f"expected '=' after option '{key}'")
                pos += 1
                if pos < n and spec[pos] == '"':
                    end = spec.find('"', pos + 1)
                    if end < 0:
                        raise _caret(spec, pos, "unterminated quoted value")
                    value, pos = spec[pos + 1 : end], end + 1
                else:
                    value_start, pos = pos, _scan(spec, pos, lambda c: c not in " }")
                    value = spec[value_start:pos]
                option_error = _check_option(PASSES[name], key, value)
                if option_error:
                    raise _caret(spec, key_start, option_error)
                options.append((key, value))
        specs.append(PassSpec(name, tuple(options)))
        if pos == n:
            break
        if spec[pos] != ",":
            raise _caret(spec, pos, f"expected ',' or end of pipeline, found '{spec[pos]}'")
        pos += 1
    return Pipeline(tuple(specs))


def _field_for(cls: type[Pass], key: str) -> dataclasses.Field[Any] | None:
    return next((f for f in cls.options() if option_name(f.name) == key), None)


def _convert(kind: Any, text: str) -> Any:
    """Convert an option's text to its field type (int, float, bool, str, or tuple of these)."""
    origin = typing.get_origin(kind)
    if origin is tuple:
        (item,) = {a for a in typing.get_args(kind) if a is not Ellipsis}
        return tuple(_convert(item, part) for part in text.split(",") if part)
    if kind is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError("expected true or false")
    if kind in (int, float, str):
        return kind(text)
    if origin in (typing.Union, types.UnionType):
        for alternative in typing.get_args(kind):
            try:
                return _convert(alternative, text)
            except ValueError:
                continue
        raise ValueError(f"expected one of {typing.get_args(kind)}")
    raise ValueError(f"unsupported option type {kind}")


def _check_option(cls: type[Pass], key: str, value: str) -> str | None:
    fld = _field_for(cls, key)
    if fld is None:
        known = ", ".join(option_name(f.name) for f in cls.options()) or "none"
        return f"pass '{cls.name}' has no option '{key}' (options: {known})"
    try:
        _convert(_hints(cls)[fld.name], value)
    except ValueError as exc:
        return f"option '{key}' of pass '{cls.name}': bad value '{value}': {exc}"
    return None


def _hints(cls: type[Pass]) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def build_pass(spec: PassSpec, pipeline: str = "") -> Pass:
    cls = PASSES[spec.name]
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in spec.options:
        fld = _field_for(cls, key)
        assert fld is not None
        kwargs[fld.name] = _convert(hints[fld.name], value)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"pipeline '{pipeline}': pass '{spec.name}': {exc}") from None


# -- running ----------------------------------------------------------------------------------


@dataclass
class Instrumentation:
    """What to show while the pipeline runs (``--print-ir-*``, ``--dump-ir-dir``, ``--timing``)."""

    print_before: frozenset[str] = frozenset()
    print_after: frozenset[str] = frozenset()
    dump_dir: Path | None = None
    timing: bool = False
    stream: TextIO | None = None
    times: list[tuple[str, float]] = field(default_factory=list)
    _dumps: int = 0

    def _wants(self, names: frozenset[str], pass_name: str) -> bool:
        return "all" in names or pass_name in names

    def _emit(self, text: str) -> None:
        if self.stream is not None:
            self.stream.write(text)

    def before(self, pass_name: str, module: Module) -> None:
        if self._wants(self.print_before, pass_name):
            self._emit(f"// -----// IR Dump Before {pass_name} //----- //\n{print_module(module)}\n")

    def after(self, pass_name: str, module: Module) -> None:
        if self._wants(self.print_after, pass_name):
            self._emit(f"// -----// IR Dump After {pass_name} //----- //\n{print_module(module)}\n")
        self.dump(pass_name, module)

    def dump(self, label: str, module: Module) -> None:
        if self.dump_dir is not None:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
            (self.dump_dir / f"{self._dumps:03d}_{label}.mlir").write_text(print_module(module))
            self._dumps += 1

    def timing_report(self) -> str:
        total = sum(t for _, t in self.times) or 1e-12
        lines = ["===-------------------------------------------------------------------------===",
                 "                         ... Pass execution timing report ...",
                 "===-------------------------------------------------------------------------===",
                 f"  Total Execution Time: {total:.4f} seconds", "",
                 "  ----Wall Time----  ----Name----"]
        lines += [f"  {t:8.4f} ({100 * t / total:5.1f}%)  {name}" for name, t in self.times]
        lines.append(f"  {total:8.4f} (100.0%)  Total")
        return "\n".join(lines) + "\n"


def run_passes(
    module: Module,
    passes: list[Pass],
    ctx: PassContext | None = None,
    instruments: Instrumentation | None = None,
    after: Callable[[int, Module, PassContext], None] | None = None,
) -> Module:
    """Run ``passes`` in order, verifying the IR before the first and after each one; ``after(index,
    module, ctx)`` is called once pass ``index`` is done (and may raise to end the pipeline there)."""
    ctx = ctx or PassContext()
    instruments = instruments or Instrumentation()
    try:
        verify(module)
    except VerifyError as exc:
        raise VerifyError(f"IR invalid before the pipeline: {exc.message}", node=exc.node) from None
    instruments.dump("input", module)
    done: list[str] = []
    for pass_ in passes:
        instruments.before(pass_.name, module)
        start = time.perf_counter()
        try:
            pass_.run(module, ctx)
            verify(module)
        except AfmcError as exc:
            raise _pass_failure(pass_.name, done, exc) from None
        except Exception as exc:  # a bug in the pass: still name the pass and what ran before
            raise _pass_failure(pass_.name, done, exc) from exc
        instruments.times.append((pass_.name, time.perf_counter() - start))
        instruments.after(pass_.name, module)
        done.append(pass_.name)
        if after is not None:
            after(len(done) - 1, module, ctx)
    return module


def _pass_failure(name: str, done: list[str], exc: BaseException) -> AfmcError:
    after = f" (after {', '.join(done)})" if done else " (first pass)"
    if isinstance(exc, AfmcError):
        error = type(exc) if not isinstance(exc, VerifyError) else PassError
        failure = error(f"pass '{name}' failed{after}: {exc.message}", node=exc.node, file=exc.file, key=exc.key)
        failure.exit_code = PassError.exit_code if isinstance(exc, VerifyError) else exc.exit_code
        return failure
    return PassError(f"pass '{name}' failed{after}: {type(exc).__name__}: {exc}")


def describe_passes() -> list[dict[str, Any]]:
    """Every registered pass with its options (name, type, default) and one line of doc."""
    rows = []
    for name, cls in sorted(load_passes().items()):
        hints = _hints(cls)
        options = [
            {"name": option_name(f.name), "type": _type_name(hints[f.name]), "default": _default(f)}
            for f in cls.options()
        ]
        rows.append({"name": name, "summary": cls.summary(), "options": options})
    return rows


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", str(kind)).replace("typing.", "")


def _default(fld: dataclasses.Field[Any]) -> Any:
    if fld.default is not dataclasses.MISSING:
        return fld.default
    if fld.default_factory is not dataclasses.MISSING:
        return fld.default_factory()
    return None

