"""Write and read the bundle: ``manifest.json``, ``arrays.npz``, ``constants.npz``, ``inputs.npz``,
``ir.mlir`` and ``report.json`` in one directory (``docs/bundle-format.md``).

Byte-identical for the same inputs and seed (sorted keys where order is not meaningful, fixed zip
timestamps, no pickles), and atomic: everything is written to a temporary sibling directory that is
renamed into place, so a failure or an interrupt never leaves a half bundle.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import AfmcError, UsageError
from .ir import dtypes
from .ir.core import Module, Op, array_digest
from .ir.parser import parse_module
from .ir.printer import print_module
from .ir.verify import verify
from .report import to_json

SCHEMA_VERSION = 1
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """An ``.npz`` that numpy reads with ``allow_pickle=False``, with fixed timestamps and order."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue())


def conductance_targets(levels: np.ndarray, bits_per_cell: int, device: Any) -> np.ndarray:
    """Cell levels to programmed conductance targets in µS (linear between g_min and g_max)."""
    params = getattr(device, "params", {}) or {}
    g_max = float(params.get("g_max_us", 1.0))
    g_min = float(params.get("g_min_us", 0.0))
    top = (1 << bits_per_cell) - 1
    return (g_min + levels.astype(np.float64) / top * (g_max - g_min)).astype(np.float32)


def tile_entries(module: Module) -> list[Op]:
    return [op for op in module.ops if op.name == "xbar.mvm"]


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "name") and type(value).__name__ == "SymbolRef":
        return value.name
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    return value


def build_manifest(module: Module, target: Any, report: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    tiles = []
    for op in tile_entries(module):
        entry = {key: _plain(value) for key, value in op.attributes.items()}
        entry["array"] = op.attributes["array"].name
        tiles.append(entry)
    digital = [
        {"op": op.loc, "type": op.name, "reason": op.attr("reason", "")}
        for op in module.ops
        if op.name.startswith("nn.") and op.name != "nn.constant"
    ]
    return {
        "schema_version": SCHEMA_VERSION,
        "afmc_version": __version__,
        **extra,
        "target": target.to_dict() if target is not None else None,
        "inputs": [{"name": v.name, "shape": list(v.type.shape), "dtype": v.type.dtype} for v in module.inputs],
        "outputs": [{"name": v.name, "shape": list(v.type.shape), "dtype": v.type.dtype} for v in module.outputs],
        "tiles": tiles,
        "partition": report.get("ops", []),
        "digital_remainder": digital,
        "files": {
            "arrays": "arrays.npz", "constants": "constants.npz", "inputs": "inputs.npz",
            "ir": "ir.mlir", "report": "report.json",
        },
    }


def write_bundle(
    path: Path,
    module: Module,
    target: Any,
    report: dict[str, Any],
    extra: dict[str, Any],
    inputs: Mapping[str, np.ndarray] | None = None,
    force: bool = False,
) -> None:
    """Write the bundle for a compiled module to ``path`` (a directory), atomically."""
    path = Path(path)
    if path.exists() and not force:
        raise UsageError(f"{path} exists; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        staging.chmod(0o755)
        array = getattr(target, "array", None)
        bits = array.bits_per_cell if array is not None else 8
        arrays = {
            op.attributes["array"].name: conductance_targets(
                module.constants[op.attributes["array"].name].data, bits, getattr(target, "device", None)  # type: ignore[arg-type]
            )
            for op in tile_entries(module)
        }
        write_npz(staging / "arrays.npz", arrays)
        write_npz(staging / "constants.npz", {c.name: c.data for c in module.constants.values() if c.data is not None})
        write_npz(staging / "inputs.npz", dict(inputs or sample_inputs(module, int(extra.get("seed", 0)))))
        (staging / "ir.mlir").write_text(print_module(module))
        manifest = build_manifest(module, target, report, extra)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, default=_plain) + "\n")
        (staging / "report.json").write_text(to_json(report))
        _swap_into_place(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_into_place(staging: Path, path: Path) -> None:
    """Rename ``staging`` to ``path``; an existing ``path`` (with --force) is moved aside first."""
    if path.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
        os.replace(path, aside / "old")
        os.replace(staging, path)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(staging, path)


def sample_inputs(module: Module, seed: int) -> dict[str, np.ndarray]:
    """Seeded inputs for a bundle compiled without data: standard normal floats, small integers."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for value in module.inputs:
        dtype = dtypes.to_numpy(value.type.dtype)
        if dtype.kind == "f":
            arrays[value.name] = rng.standard_normal(value.type.shape).astype(dtype)
        else:
            arrays[value.name] = rng.integers(0, 2, value.type.shape).astype(dtype)
    return arrays


def read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError) as exc:
        raise AfmcError(f"cannot read: {exc}", file=str(path)) from None


def load_bundle(path: str | Path) -> tuple[Module, dict[str, Any], dict[str, np.ndarray]]:
    """The compiled module (constants restored and checked against their digests), the manifest and
    the bundle's sample inputs."""
    path = Path(path)
    if not (path / "manifest.json").is_file():
        raise AfmcError("not an afmc bundle (no manifest.json)", file=str(path))
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        text = (path / "ir.mlir").read_text()
    except (OSError, ValueError) as exc:
        raise AfmcError(f"cannot read bundle: {exc}", file=str(path)) from None
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise AfmcError(f"bundle schema {manifest.get('schema_version')} is not {SCHEMA_VERSION}", file=str(path))
    module = parse_module(text, file=str(path / "ir.mlir"))
    constants = read_npz(path / "constants.npz")
    for name, constant in module.constants.items():
        if constant.data is not None:
            continue
        data = constants.get(name)
        if data is None or array_digest(data) != constant.digest or tuple(data.shape) != constant.type.shape:
            raise AfmcError(f"constant @{name} is missing or does not match its digest", file=str(path / "constants.npz"))
        constant.data = data
    verify(module)
    return module, manifest, read_npz(path / "inputs.npz")
