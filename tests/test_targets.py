"""Targets as data: built-ins load and round-trip; invalid files name the key; the registry resolves
names, paths and plugins."""

from __future__ import annotations

import copy
import json
import re
import sys
from collections.abc import Callable
from dataclasses import fields
from importlib import metadata
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import afmc.targets as registry
import pytest
from afmc.targets import builtin_targets, list_targets, load_target
from afmc.targets.spec import (
    DEVICE_PARAMS,
    AdcSpec,
    ArraySpec,
    ChipSpec,
    DacSpec,
    DeviceSpec,
    EnergySpec,
    PhotonicSpec,
    TargetSpec,
    TimingSpec,
    from_dict,
    from_toml,
    from_toml_text,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from afmc.errors import TargetError

BUILTINS = sorted(builtin_targets())
DOCS = Path(__file__).resolve().parents[1] / "docs" / "targets.md"

PHOTONIC = """
name = "mzi"
technology = "photonic"
pipeline = "canonicalize,fold-constants,fold-batchnorm,partition,tile"

[photonic]
mesh_size = 64
phase_bits = 8
insertion_loss_db = 0.2

[dac]
bits = 8

[adc]
bits = 8
columns_per_adc = 1

[chip]
cores = 16
mesh_x = 4
mesh_y = 4
arrays_per_core = 1

[device]
model = "photonic"
params = { phase_noise_rad = 0.01 }

[timing]
clock_hz = 1e9
mvm_ns = 1.0
dac_ns = 0.1
adc_ns = 0.1
hop_ns_per_byte = 0.25
digital_ops_per_s = 1e11

[energy]
mvm_pj = 10.0
dac_pj = 1.0
adc_pj = 1.0
hop_pj_per_byte = 0.65
digital_pj_per_op = 1.0
"""


def builtin_data(name: str) -> dict[str, Any]:
    """A built-in's raw TOML table, to mutate into invalid variants."""
    data: dict[str, Any] = tomllib.loads(builtin_targets()[name].read_text(encoding="utf-8"))
    return data


def render_of(fn: Callable[[], object]) -> str:
    with pytest.raises(TargetError) as info:
        fn()
    assert info.value.exit_code == 2
    return info.value.render()


# ---------------------------------------------------------------------------------------------
# Built-ins
# ---------------------------------------------------------------------------------------------


def test_builtins_present() -> None:
    assert {"crossbar", "pcm", "flash"} <= set(BUILTINS)
    assert list_targets() == sorted(list_targets())


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_loads_and_round_trips(name: str) -> None:
    spec = load_target(name)
    assert spec.name == name
    assert spec.sources, "a built-in cites its sources"
    data = spec.to_dict()
    assert from_dict(data) == spec
    assert from_toml_text(spec.to_toml()) == spec
    assert hash(from_dict(data)) == hash(spec)
    assert json.dumps(data) == json.dumps(load_target(name).to_dict())  # deterministic
    assert list(data)[:4] == ["name", "description", "technology", "pipeline"]


@pytest.mark.parametrize("name", BUILTINS)
def test_every_builtin_figure_has_a_source_comment(name: str) -> None:
    section = ""
    for line in builtin_targets()[name].read_text(encoding="utf-8").splitlines():
        if match := re.match(r"\s*\[([\w.]+)\]", line):
            section = match.group(1)
        elif "=" in line and not line.lstrip().startswith("#") and section != "sources":
            if not section and line.split("=")[0].strip() in ("name", "description"):
                continue  # labels, not figures
            assert re.search(r"#\s*\S", line), f"{name}.toml: no source comment on {line!r}"


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_comments_cite_known_sources(name: str) -> None:
    """A comment starts with a source id of the file, 'assumption', or DESIGN.md."""
    spec = load_target(name)
    allowed = set(spec.sources) | {"assumption", "DESIGN.md"}
    for line in builtin_targets()[name].read_text(encoding="utf-8").splitlines():
        if "=" in line and "#" in line and not line.lstrip().startswith("#"):
            comment = line.split("#", 1)[1].strip()
            first = re.split(r"[:,\s]", comment)[0]
            assert first in allowed, f"{name}.toml: {comment!r} cites unknown source {first!r}"


def test_crossbar_figures() -> None:
    spec = load_target("crossbar")
    assert spec.technology == "rram" and spec.array is not None
    assert (spec.array.rows, spec.array.cols, spec.array.bits_per_cell) == (128, 128, 2)
    assert (spec.array.weight_bits, spec.array.slices, spec.array.encoding) == (8, 4, "offset")
    assert spec.tile_cols == 127  # 128 - 1 reference column; each of the 4 slices has its own array
    assert (spec.dac.bits, spec.dac.bit_serial, spec.dac.phases) == (1, True, 8)
    assert (spec.adc.bits, spec.adc.columns_per_adc) == (8, 128)


def test_pcm_figures() -> None:
    spec = load_target("pcm")
    assert spec.array is not None
    assert (spec.chip.cores, spec.chip.mesh_x, spec.chip.mesh_y, spec.chip.arrays_per_core) == (64, 8, 8, 1)
    assert (spec.array.rows, spec.array.cols, spec.array.devices_per_weight) == (256, 256, 4)
    assert (spec.dac.bits, spec.adc.bits, spec.adc.columns_per_adc, spec.dac.phases) == (8, 8, 1, 1)
    params = spec.device.params
    assert spec.device.model == "pcm"
    assert (params["g_max_us"], params["t_read_s"], params["t0_s"]) == (25.0, 250e-9, 20.0)
    assert params["prog_noise_coeffs"] == (0.26348, 1.9650, -1.1731)
    # 16.1 TOPS over 64 cores, 2.48 TOPS/W (HERMES high-precision mode)
    ops = 2 * 256 * 256
    assert spec.timing.mvm_ns == pytest.approx(ops / (16.1e12 / 64) * 1e9, rel=1e-3)
    assert spec.energy.mvm_pj == pytest.approx(ops / 2.48e12 * 1e12, rel=1e-3)


def test_flash_figures() -> None:
    spec = load_target("flash")
    assert spec.array is not None
    assert spec.chip.cores == 76 == len(spec.chip.core_positions)
    assert spec.chip.io in spec.chip.dead_cores
    assert spec.array.weight_bits == 8 and spec.adc.bits == 8
    assert spec.total_arrays * spec.tile_rows * spec.tile_cols == pytest.approx(80e6, rel=0.01)


# ---------------------------------------------------------------------------------------------
# Invalid files name the dotted key
# ---------------------------------------------------------------------------------------------


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split(".")

    def mutate(data: dict[str, Any]) -> None:
        table = data
        for part in parents:
            table = table.setdefault(part, {})
        table[last] = value

    return mutate


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split(".")

    def mutate(data: dict[str, Any]) -> None:
        table = data
        for part in parents:
            table = table[part]
        del table[last]

    return mutate


def _both(*mutations: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        for m in mutations:
            m(data)

    return mutate


INVALID = [
    # (base target, mutation, dotted key, fragment of the reason)
    ("pcm", _delete("array.rows"), "array.rows", "required key is missing"),
    ("pcm", _delete("timing"), "timing", "required key is missing"),
    ("pcm", _delete("name"), "name", "required key is missing"),
    ("pcm", _set("array.colls", 256), "array.colls", "did you mean 'cols'"),
    ("pcm", _set("devcie", {}), "devcie", "did you mean 'device'"),
    ("pcm", _set("array.rows", "256"), "array.rows", "expected an integer, got string"),
    ("pcm", _set("array.rows", 256.0), "array.rows", "expected an integer, got float"),
    ("pcm", _set("timing.clock_hz", True), "timing.clock_hz", "expected a number, got boolean"),
    ("pcm", _set("dac.bit_serial", 1), "dac.bit_serial", "expected true or false"),
    ("pcm", _set("array", 3), "array", "expected a table"),
    ("pcm", _set("array.rows", 0), "array.rows", "must be in 1..65536"),
    ("pcm", _set("array.cols", 70000), "array.cols", "must be in 1..65536"),
    ("pcm", _set("adc.bits", 17), "adc.bits", "must be in 1..16"),
    ("pcm", _set("timing.clock_hz", 0), "timing.clock_hz", "must be > 0"),
    ("pcm", _set("energy.adc_pj", -1.0), "energy.adc_pj", "must be >= 0"),
    ("pcm", _set("technology", "pmc"), "technology", "did you mean 'pcm'"),
    ("pcm", _set("array.encoding", "diff"), "array.encoding", "one of 'differential', 'offset'"),
    ("pcm", _set("array.weight_bits", 1), "array.weight_bits", "at least 2 bits"),
    ("pcm", _set("chip.dead_cores", [[8, 0]]), "chip.dead_cores[0]", "outside the 8x8 mesh"),
    ("pcm", _set("chip.dead_cores", [[1, 1], [0, 9]]), "chip.dead_cores[1]", "outside the 8x8 mesh"),
    (
        "pcm",
        _both(_set("chip.dead_cores", [[1, 1], [1, 1]]), _set("chip.cores", 62)),
        "chip.dead_cores[1]",
        "listed twice",
    ),
    ("pcm", _set("chip.dead_cores", [[1, -1]]), "chip.dead_cores[0][1]", "must be in 0.."),
    ("pcm", _set("chip.dead_cores", [[1, 1]]), "chip.cores", "= 63, got 64"),
    ("pcm", _set("chip.io", [8, 8]), "chip.io", "outside"),
    ("pcm", _set("chip.io", [1]), "chip.io", "[x, y] pair"),
    ("pcm", _set("device", {"model": "rram"}), "device.model", "must be 'pcm' or 'ideal'"),
    ("pcm", _set("device.params.g_maxx_us", 1.0), "device.params.g_maxx_us", "did you mean 'g_max_us'"),
    ("pcm", _set("device.params.g_max_us", "25"), "device.params.g_max_us", "expected a number"),
    ("pcm", _set("device.params.prog_noise_coeffs", [1.0]), "device.params.prog_noise_coeffs", "3 numbers"),
    (
        "pcm",
        _set("device.params.drift_mean_clip", [0.1, 0.049]),
        "device.params.drift_mean_clip",
        "low < high",
    ),
    ("pcm", _set("device.params.stuck_on_rate", 1.5), "device.params.stuck_on_rate", "<= 1"),
    (
        "pcm",
        _both(_set("device.params.stuck_on_rate", 0.7), _set("device.params.stuck_off_rate", 0.7)),
        "device.params.stuck_on_rate",
        "must be <= 1",
    ),
    ("crossbar", _set("device.params.g_min_us", 200.0), "device.params.g_min_us", "must be < g_max_us"),
    (
        "pcm",
        _set("photonic", {"mesh_size": 8, "phase_bits": 8, "insertion_loss_db": 0.1}),
        "photonic",
        "only",
    ),
    ("pcm", _delete("array"), "array", "required section is missing for technology 'pcm'"),
    ("pcm", _set("adc.columns_per_adc", 512), "adc.columns_per_adc", "<= the 256 output columns"),
    ("pcm", _set("adc.output_range", [1.0, -1.0]), "adc.output_range", "low < high"),
    ("pcm", _set("dac.input_bits", 4), "dac.input_bits", "unless bit_serial"),
    ("crossbar", _set("dac.bits", 16), "dac.input_bits", "must be >= bits (16)"),
    ("crossbar", _set("array.cols", 1), "array.cols", "too few columns"),
    ("pcm", _set("pipeline", "canonicalize,Tile"), "pipeline", "pass 2 'Tile'"),
    ("pcm", _set("pipeline", "tile{a=1"), "pipeline", "kebab-case"),
    ("pcm", _set("name", "My Chip"), "name", "lower-case"),
    ("pcm", _set("sources.x", ""), "sources.x", "non-empty"),
    ("pcm", _set("timing.mvm_ns", float("inf")), "timing.mvm_ns", "finite"),
]


@pytest.mark.parametrize(("base", "mutate", "key", "why"), INVALID, ids=[f"{c[2]}-{c[3]}" for c in INVALID])
def test_invalid_names_key(base: str, mutate: Callable[[dict[str, Any]], None], key: str, why: str) -> None:
    data = copy.deepcopy(builtin_data(base))
    mutate(data)
    message = render_of(lambda: from_dict(data, "chip.toml"))
    assert message.startswith(f"chip.toml: key '{key}': "), message
    assert why in message, message
    assert "\n" not in message


def test_bad_toml_syntax_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('name = "x"\n[array\nrows = 1\n', encoding="utf-8")
    message = render_of(lambda: load_target(str(path)))
    assert str(path) in message and "line 2" in message and "invalid TOML" in message


def test_missing_file_names_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    message = render_of(lambda: load_target(path))
    assert str(path) in message


def test_unknown_name_lists_available() -> None:
    message = render_of(lambda: load_target("pmc"))
    assert "unknown target 'pmc'" in message
    for name in ("crossbar", "flash", "pcm"):
        assert name in message


@settings(max_examples=50)
@given(st.one_of(st.integers(max_value=0), st.integers(min_value=65537)))
def test_any_out_of_range_rows_is_named(rows: int) -> None:
    data = builtin_data("pcm")
    data["array"]["rows"] = rows
    assert "key 'array.rows': must be in 1..65536" in render_of(lambda: from_dict(data))


# ---------------------------------------------------------------------------------------------
# Paths and photonic
# ---------------------------------------------------------------------------------------------


def test_path_target(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    text = load_target("pcm").to_toml().replace('name = "pcm"', 'name = "mine"')
    path.write_text(
        text.replace("cores = 64", "cores = 62").replace("dead_cores = []", "dead_cores = [[0, 7], [7, 7]]"),
        encoding="utf-8",
    )
    for arg in (str(path), path):
        spec = load_target(arg)
        assert spec.name == "mine" and spec.chip.cores == 62
        assert (0, 7) not in spec.chip.core_positions and len(spec.chip.core_positions) == 62
    assert from_toml(path) == spec


def test_photonic_target_validates(tmp_path: Path) -> None:
    path = tmp_path / "mzi.toml"
    path.write_text(PHOTONIC, encoding="utf-8")
    spec = load_target(str(path))
    assert spec.technology == "photonic" and spec.array is None and spec.photonic is not None
    assert (spec.tile_rows, spec.tile_cols, spec.total_arrays) == (64, 64, 16)
    assert spec.device.params["phase_noise_rad"] == 0.01
    assert spec.device.params["detector_noise"] == DEVICE_PARAMS["photonic"]["detector_noise"].default
    assert from_dict(spec.to_dict()) == spec and from_toml_text(spec.to_toml()) == spec


def test_photonic_refuses_array_and_needs_mesh() -> None:
    data = tomllib.loads(PHOTONIC)
    data["array"] = builtin_data("pcm")["array"]
    assert "key 'array': only allowed for technology" in render_of(lambda: from_dict(data))
    data = tomllib.loads(PHOTONIC)
    del data["photonic"]
    assert "key 'photonic': required section is missing" in render_of(lambda: from_dict(data))


def test_ideal_device_takes_no_params() -> None:
    data = builtin_data("pcm")
    data["device"] = {"model": "ideal"}
    assert from_dict(data).device.params == {}
    data["device"]["params"] = {"g_max_us": 25.0}
    assert "key 'device.params.g_max_us': unknown key" in render_of(lambda: from_dict(data))


# ---------------------------------------------------------------------------------------------
# Property: valid geometries round-trip and keep their invariants
# ---------------------------------------------------------------------------------------------


@st.composite
def geometries(draw: st.DrawFn) -> dict[str, Any]:
    encoding = draw(st.sampled_from(["differential", "offset"]))
    weight_bits = draw(st.integers(2, 16))
    bits_per_cell = draw(st.integers(1, 16))
    magnitude = weight_bits - 1 if encoding == "differential" else weight_bits
    slices = -(-magnitude // bits_per_cell)
    cols = draw(st.integers(slices + (encoding == "offset"), 4096))
    mesh_x, mesh_y = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    cells = [[x, y] for y in range(mesh_y) for x in range(mesh_x)]
    dead = draw(st.lists(st.sampled_from(cells), unique_by=tuple, max_size=len(cells) - 1))
    data = builtin_data("pcm")
    data["array"] = {
        "rows": draw(st.integers(1, 65536)),
        "cols": cols,
        "bits_per_cell": bits_per_cell,
        "weight_bits": weight_bits,
        "encoding": encoding,
        "parallel_devices": draw(st.integers(1, 4)),
    }
    data["adc"]["columns_per_adc"] = draw(st.integers(1, cols))
    data["chip"] = {
        "cores": mesh_x * mesh_y - len(dead),
        "mesh_x": mesh_x,
        "mesh_y": mesh_y,
        "arrays_per_core": draw(st.integers(1, 64)),
        "dead_cores": dead,
        "io": draw(st.sampled_from(cells)),
    }
    return data


@settings(max_examples=100, deadline=None)
@given(geometries())
def test_valid_geometries_round_trip(data: dict[str, Any]) -> None:
    spec = from_dict(data)
    assert spec.array is not None
    assert from_dict(spec.to_dict()) == spec
    assert from_toml_text(spec.to_toml()) == spec
    array = spec.array
    assert array.slices * array.bits_per_cell >= array.magnitude_bits
    assert 1 <= array.weight_cols and array.weight_cols + array.reference_cols == array.cols
    assert array.devices_per_weight == array.slices * array.parallel_devices * array.polarities
    assert len(spec.chip.core_positions) == spec.chip.cores
    assert not set(spec.chip.core_positions) & set(spec.chip.dead_cores)


# ---------------------------------------------------------------------------------------------
# Plugins
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str], None]:
    """Register `afmc.targets` entry points backed by a module written to tmp_path."""
    (tmp_path / "toy.toml").write_text(
        load_target("pcm").to_toml().replace('"pcm"', '"toy"', 1), encoding="utf-8"
    )
    (tmp_path / "toy_plugin.py").write_text(
        "from pathlib import Path\n"
        "from afmc.targets import load_target\n"
        f"PATH = {str(tmp_path / 'toy.toml')!r}\n"
        "def as_path():\n    return PATH\n"
        "SPEC = load_target('crossbar')\n"
        "NOT_A_TARGET = 42\n"
        "def broken():\n    raise RuntimeError('boom')\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "toy_plugin", raising=False)
    points: list[metadata.EntryPoint] = []

    def fake_entry_points(*, group: str) -> list[metadata.EntryPoint]:
        return [ep for ep in points if ep.group == group]

    monkeypatch.setattr(registry.metadata, "entry_points", fake_entry_points)

    def add(name: str, value: str) -> None:
        points.append(metadata.EntryPoint(name=name, value=value, group=registry.ENTRY_POINT_GROUP))

    return add


def test_plugin_path_callable_and_spec(plugin: Callable[[str, str], None]) -> None:
    plugin("toy", "toy_plugin:as_path")
    plugin("toy-file", "toy_plugin:PATH")
    plugin("toy-spec", "toy_plugin:SPEC")
    assert {"toy", "toy-file", "toy-spec", "pcm"} <= set(list_targets())
    assert load_target("toy").name == "toy"
    assert load_target("toy-file").name == "toy"
    assert load_target("toy-spec") == load_target("crossbar")


def test_builtin_wins_over_plugin(plugin: Callable[[str, str], None]) -> None:
    plugin("pcm", "toy_plugin:as_path")
    assert load_target("pcm").name == "pcm"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("toy_plugin:NOT_A_TARGET", "gave int"),
        ("toy_plugin:broken", "RuntimeError: boom"),
        ("no_such_mod:x", "cannot load"),
    ],
)
def test_bad_plugin_is_a_target_error(plugin: Callable[[str, str], None], value: str, why: str) -> None:
    plugin("bad", value)
    message = render_of(lambda: load_target("bad"))
    assert "plugin target 'bad'" in message and why in message


# ---------------------------------------------------------------------------------------------
# Docs and CLI
# ---------------------------------------------------------------------------------------------


def test_docs_cover_every_key() -> None:
    docs = DOCS.read_text(encoding="utf-8")
    sections = [
        TargetSpec,
        ArraySpec,
        PhotonicSpec,
        DacSpec,
        AdcSpec,
        ChipSpec,
        DeviceSpec,
        TimingSpec,
        EnergySpec,
    ]
    keys = {f.name for cls in sections for f in fields(cls)}
    keys |= {name for params in DEVICE_PARAMS.values() for name in params}
    missing = sorted(k for k in keys if all(form not in docs for form in (f"`{k}`", f".{k}`", f"`[{k}]`")))
    assert not missing, f"docs/targets.md does not document {missing}"


def test_cli_targets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from afmc.cli import main

    assert main(["targets", "pcm", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == load_target("pcm").to_dict()
    bad = tmp_path / "bad.toml"
    data = builtin_data("pcm")
    data["array"]["rows"] = 0
    bad.write_text(
        from_dict(builtin_data("pcm")).to_toml().replace("rows = 256", "rows = 0"), encoding="utf-8"
    )
    assert main(["targets", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("afmc: error:") and "key 'array.rows'" in err and len(err.splitlines()) == 1
