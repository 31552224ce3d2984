"""The target registry: built-in chips (the .toml files here), paths, and plugins.

A plugin registers under the ``afmc.targets`` entry-point group; the loaded object is a
`TargetSpec`, a path to a .toml file, or a callable returning either. Built-in names win over
plugins of the same name. See docs/targets.md.
"""

from __future__ import annotations

import os
from importlib import metadata, resources
from importlib.resources.abc import Traversable
from pathlib import Path

from afmc.errors import TargetError

from .spec import TargetSpec, from_dict, from_toml, from_toml_text

__all__ = ["ENTRY_POINT_GROUP", "TargetSpec", "builtin_targets", "list_targets", "load_target"]

ENTRY_POINT_GROUP = "afmc.targets"


def builtin_targets() -> dict[str, Traversable]:
    """Built-in target files by name."""
    return {
        f.name.removesuffix(".toml"): f
        for f in resources.files(__name__).iterdir()
        if f.name.endswith(".toml")
    }


def _plugins() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def list_targets() -> list[str]:
    """Names `load_target` accepts: built-ins and plugins, sorted."""
    return sorted(builtin_targets().keys() | _plugins().keys())


def load_target(name_or_path: str | os.PathLike[str]) -> TargetSpec:
    """A built-in or plugin name, or a path to a .toml file (anything with a separator or .toml suffix)."""
    text = os.fspath(name_or_path)
    if text.endswith(".toml") or os.sep in text or (os.altsep and os.altsep in text) or "/" in text:
        return from_toml(text)
    builtins = builtin_targets()
    if text in builtins:
        return from_toml_text(builtins[text].read_text(encoding="utf-8"), f"{text}.toml (built-in)")
    plugins = _plugins()
    if text in plugins:
        return _load_plugin(plugins[text])
    if Path(text).is_file():
        return from_toml(text)
    raise TargetError(
        f"unknown target '{text}'; available: {', '.join(list_targets())} (or give a path to a .toml file)"
    )


def _load_plugin(ep: metadata.EntryPoint) -> TargetSpec:
    """Resolve an entry point; re-validate a ready-made spec, since its constructor checks nothing."""
    source = f"plugin target '{ep.name}' ({ep.value})"
    try:
        obj = ep.load()
        if callable(obj) and not isinstance(obj, TargetSpec):
            obj = obj()
    except Exception as exc:  # a broken plugin is bad input, not an afmc bug
        raise TargetError(f"cannot load: {type(exc).__name__}: {exc}", file=source) from exc
    if isinstance(obj, TargetSpec):
        return from_dict(obj.to_dict(), source)
    if isinstance(obj, (str, os.PathLike)):
        return from_toml(obj)
    raise TargetError(
        f"gave {type(obj).__name__}; expected a TargetSpec, a path to a .toml file "
        "or a callable returning one",
        file=source,
    )
