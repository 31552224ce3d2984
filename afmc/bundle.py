"""Write and read the bundle: ``manifest.json``, ``arrays.npz``, ``constants.npz``, ``inputs.npz``,
``ir.mlir`` and ``report.json`` in one directory (``docs/bundle-format.md``).

Byte-identical for the same inputs and seed (sorted keys where order is not meaningful, fixed zip
timestamps, UTF-8 text, no pickles), and atomic: everything is written to a temporary sibling
directory (``.NAME.XXXXXXXX``) that is renamed into place, so a failure or an interrupt (SIGINT,
SIGTERM: see ``diagnostics.signals_deferred``) never leaves a half bundle or a staging directory,
and an existing bundle replaced with ``force`` is swapped in one step, never lost. A report written
beside the bundle (``afmc compile --report F``) is staged too and committed with it: both land or
neither does (`_commit`).

Test hook: ``AFMC_TEST_WRITE_DELAY=SECONDS`` sleeps that long after each file written to the
staging directory, so that tests can interrupt ``afmc compile`` in the middle of a bundle write.
Nothing else reads it.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
import time
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .diagnostics import log, signals_deferred
from .errors import AfmcError, UsageError
from .ir import dtypes
from .ir.core import Module, Op, array_digest
from .ir.parser import parse_module
from .ir.printer import print_module
from .ir.verify import format_bytes, max_tensor_bytes, verify
from .report import to_json

SCHEMA_VERSION = 1
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """An ``.npz`` that numpy reads with ``allow_pickle=False``, with fixed timestamps and order.
    String tensors (object arrays in the IR) are stored as fixed-width text (``storable``).

    Entries are deflated at level 1 (the cell levels and conductance targets shrink about as much as
    at the default level 6, seven times faster), and an entry of over 1 MiB whose first 256 KiB do not
    shrink below 90 % (float weights) is stored: deflating BERT-base's bundle took a minute at level 6."""
    with zipfile.ZipFile(path, "w") as archive:
        for name in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(storable(arrays[name])), allow_pickle=False)
            data = buffer.getbuffer()
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED if _deflates(data) else zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data, compresslevel=_DEFLATE_LEVEL)


_DEFLATE_LEVEL = 1
_PROBE_BYTES = 1 << 18


def _deflates(data: memoryview) -> bool:
    """Whether deflating ``data`` pays: its first 256 KiB shrink below 90 % (always, up to 1 MiB)."""
    if len(data) <= 1 << 20:
        return True
    probe = bytes(data[:_PROBE_BYTES])
    return len(zlib.compress(probe, _DEFLATE_LEVEL)) < 0.9 * len(probe)


def storable(array: np.ndarray) -> np.ndarray:
    """``array`` in a dtype ``.npy`` holds without pickles: an object array (the IR's ``str``
    tensors) becomes bytes (``S``) when every item is bytes, else text (``U``)."""
    array = np.asarray(array)
    if array.dtype != object:
        return array
    items = array.reshape(-1).tolist()
    if items and all(isinstance(item, bytes) for item in items):
        return np.array(items, dtype=bytes).reshape(array.shape)
    return np.array([str(item) for item in items], dtype=str).reshape(array.shape)


def restored(array: np.ndarray, dtype: str) -> np.ndarray:
    """The inverse of ``storable`` for a tensor of IR element type ``dtype``."""
    if dtype != "str" or array.dtype == object:
        return array
    return np.array(array.reshape(-1).tolist(), dtype=object).reshape(array.shape)


def conductance_targets(levels: np.ndarray, device: Any) -> np.ndarray:
    """Cell levels to programmed conductance targets in µS, as the simulator programs them: one
    scale per array, the array's largest level at g_max (REFERENCE.md §1), linear from g_min."""
    from .sim.devices import full_scale_levels, target_conductances

    params = getattr(device, "params", {}) or {}
    full_scale = full_scale_levels(levels, tuple(range(levels.ndim)))
    return target_conductances(levels, full_scale, float(params.get("g_min_us", 0.0)), float(params.get("g_max_us", 1.0)))


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
    report_path: Path | None = None,
) -> None:
    """Write the bundle for a compiled module to ``path`` (a directory), atomically; with
    ``report_path``, also the report there, committed in the same step (both or neither)."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not force:
            raise UsageError(f"{path} exists; pass --force to overwrite it")
        if not replaceable_bundle(path):
            raise UsageError(f"{path} is not an afmc bundle (a directory with manifest.json); "
                             "--force replaces only bundles and empty directories")
    if report_path is not None:
        _check_report_path(Path(report_path), path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging: Path | None = None
    staged_report: Path | None = None
    try:
        with signals_deferred():  # a signal cannot fall between creating it and knowing its name
            staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        staging.chmod(0o755)
        arrays = {
            op.attributes["array"].name: conductance_targets(
                module.constants[op.attributes["array"].name].data, getattr(target, "device", None)  # type: ignore[arg-type]
            )
            for op in tile_entries(module)
        }
        write_npz(staging / "arrays.npz", arrays)
        _test_delay()
        write_npz(staging / "constants.npz", {c.name: c.data for c in module.constants.values() if c.data is not None})
        _test_delay()
        if inputs is None:
            inputs = bundled_sample_inputs(module, int(extra.get("seed", 0)))
        write_npz(staging / "inputs.npz", dict(inputs))
        _test_delay()
        (staging / "ir.mlir").write_text(print_module(module), encoding="utf-8")
        _test_delay()
        manifest = build_manifest(module, target, report, extra)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, default=_plain) + "\n", encoding="utf-8")
        _test_delay()
        report_text = to_json(report)
        (staging / "report.json").write_text(report_text, encoding="utf-8")
        _test_delay()
        moves = [(staging, path)]
        if report_path is not None:
            report_path = Path(report_path)
            report_path.parent.mkdir(parents=True, exist_ok=True)
            with signals_deferred():
                fd, name = tempfile.mkstemp(prefix=f".{report_path.name}.", dir=report_path.parent)
                staged_report = Path(name)
            _write_plain_file(fd, report_text)
            _test_delay()
            moves.append((staged_report, report_path))
        with signals_deferred():  # the outputs are committed, or not: never a signal in between
            _commit(moves)
            staging = staged_report = None
    except BaseException:
        with signals_deferred():
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            if staged_report is not None:
                staged_report.unlink(missing_ok=True)
        raise


def _check_report_path(report_path: Path, bundle: Path, force: bool) -> None:
    """A report may replace (with ``force``) only a regular file, and never sit in the bundle."""
    if report_path.exists() and not force:
        raise UsageError(f"{report_path} exists; pass --force to overwrite it")
    if report_path.exists() and not report_path.is_file():  # a device (/dev/null), a FIFO, a directory
        raise UsageError(f"{report_path} is not a regular file; --force replaces only files")
    where, home = report_path.resolve(), bundle.resolve()
    if where == home or home in where.parents:
        raise UsageError(f"--report {report_path} is inside the bundle {bundle}, which holds report.json itself")


def _write_plain_file(fd: int, text: str) -> None:
    """Write ``text`` to the open ``fd`` (from mkstemp) with the umask's permissions, not mkstemp's 0600."""
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
        umask = os.umask(0o022)
        os.umask(umask)
        os.fchmod(handle.fileno(), 0o666 & ~umask)


def replaceable_bundle(path: Path) -> bool:
    """What ``--force`` may replace: a bundle or an empty directory, never a link, a file or a
    device (``-o /dev/null --force`` as root must not delete /dev/null; ``-o ~`` not your home)."""
    if path.is_symlink() or not path.is_dir():
        return False
    return (path / "manifest.json").is_file() or not any(path.iterdir())


def _test_delay() -> None:
    """The ``AFMC_TEST_WRITE_DELAY`` test hook (see the module docstring)."""
    delay = os.environ.get("AFMC_TEST_WRITE_DELAY")
    if delay:
        time.sleep(float(delay))


def _swap_into_place(staging: Path, path: Path) -> None:
    """Rename ``staging`` to ``path`` (`_commit` of one output)."""
    _commit([(staging, path)])


def _commit(moves: Sequence[tuple[Path, Path]]) -> None:
    """Rename each staged path to its destination, all or none: an existing destination (with
    --force) is moved aside first; if any step fails, the new outputs go back to their staging
    names and the old ones are restored, so the caller's cleanup leaves what was there before.
    The old outputs are removed only once every rename succeeded. Callers hold signals
    (``signals_deferred``), so an interrupt cannot split the bundle from its report."""
    asides: list[Path] = []
    done: list[tuple[Path, Path, Path | None, bool]] = []  # (staged, destination, old copy, renamed)
    try:
        for staged, dest in moves:
            old: Path | None = None
            if dest.exists() or dest.is_symlink():
                aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
                asides.append(aside)
                old = aside / "old"
                os.replace(dest, old)
            done.append((staged, dest, old, False))
            os.replace(staged, dest)
            done[-1] = (staged, dest, old, True)
    except BaseException:
        kept: set[Path] = set()
        for staged, dest, old, renamed in reversed(done):
            try:
                if renamed:
                    os.replace(dest, staged)
                if old is not None:
                    os.replace(old, dest)
            except OSError:  # cannot happen short of a vanished folder; then keep the old copy
                if old is not None:
                    kept.add(old.parent)
        for aside in asides:
            if aside not in kept:
                shutil.rmtree(aside, ignore_errors=True)
        raise
    for aside in asides:
        shutil.rmtree(aside, ignore_errors=True)


#: A bundle carries seeded sample inputs only up to this many bytes in all: a model that declares
#: a 3 GiB input must not turn ``afmc compile`` into 3 GiB of random numbers (``afmc run`` then
#: needs ``--inputs``).
SAMPLE_INPUTS_MAX_BYTES = 64 << 20


def bundled_sample_inputs(module: Module, seed: int) -> dict[str, np.ndarray]:
    """``sample_inputs``, or none at all (with a warning) when they would pass ``SAMPLE_INPUTS_MAX_BYTES``."""
    total = sum(v.type.nbytes for v in module.inputs)
    if total > SAMPLE_INPUTS_MAX_BYTES:
        log.warning("the inputs take %s, over the %s a bundle's sample inputs may: inputs.npz is empty "
                    "(give afmc run --inputs)", format_bytes(total), format_bytes(SAMPLE_INPUTS_MAX_BYTES))
        return {}
    return sample_inputs(module, seed)


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
    """The arrays of an ``.npz``, each header checked before its data is read: no Python objects
    (pickles), no array over the tensor size limit (``$AFMC_MAX_TENSOR_BYTES``)."""
    limit = max_tensor_bytes()
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                name = info.filename.removesuffix(".npy")
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    read_header = (
                        np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read_header(member)
                if dtype.hasobject:
                    raise AfmcError(f"array '{name}' holds Python objects; afmc never reads pickles", file=str(path))
                nbytes = math.prod(shape) * dtype.itemsize
                if nbytes > limit:
                    raise AfmcError(
                        f"array '{name}' is {format_bytes(nbytes)} {list(shape)}, over the {format_bytes(limit)} "
                        "limit for one tensor", file=str(path),
                    )
                with archive.open(info) as member:
                    arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
    except AfmcError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise AfmcError(f"cannot read: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=str(path)) from None
    return arrays


def load_bundle(path: str | Path) -> tuple[Module, dict[str, Any], dict[str, np.ndarray]]:
    """The compiled module (constants restored and checked against their digests), the manifest and
    the bundle's sample inputs."""
    path = Path(path)
    if not (path / "manifest.json").is_file():
        raise AfmcError("not an afmc bundle (no manifest.json)", file=str(path))
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        text = (path / "ir.mlir").read_text(encoding="utf-8")
    except (OSError, ValueError, RecursionError) as exc:
        raise AfmcError(f"cannot read bundle: {exc}", file=str(path)) from None
    if not isinstance(manifest, dict):
        raise AfmcError("manifest.json is not a JSON object", file=str(path))
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise AfmcError(f"bundle schema {manifest.get('schema_version')} is not {SCHEMA_VERSION}", file=str(path))
    module = parse_module(text, file=str(path / "ir.mlir"))
    constants = read_npz(path / "constants.npz")
    for name, constant in module.constants.items():
        if constant.data is not None:
            continue
        data = constants.get(name)
        if data is not None:
            data = restored(data, constant.type.dtype)
        if data is None or array_digest(data) != constant.digest or tuple(data.shape) != constant.type.shape:
            raise AfmcError(f"constant @{name} is missing or does not match its digest", file=str(path / "constants.npz"))
        constant.data = data
    verify(module)
    return module, manifest, read_npz(path / "inputs.npz")
