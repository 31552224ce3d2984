"""The command line: exit codes, one-line errors, fit checks with hand-computed tile counts, bundles."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from helpers import SAMPLE_NAMES, sample_path, sample_shapes
from onnx import TensorProto, helper, numpy_helper

from afmc.cli import cli, main

#: Arrays per sample and target, by hand: ceil(K/rows)·ceil(N/usable cols)·slices per layer.
#: pcm: 256×256, 1 slice; flash: 1024×1024, 1 slice; crossbar: 128 rows × 127 usable cols, 4 slices.
#: pcm's pipeline keeps layers of fewer than 16 inputs per output digital (partition{min-fan-in=16}).
HAND_TILES = {
    # mlp: 64×128, 128×64, 64×10
    ("mlp_digits", "pcm"): 1 + 1 + 1,
    ("mlp_digits", "flash"): 1 + 1 + 1,
    ("mlp_digits", "crossbar"): (1 * 2 + 1 * 1 + 1 * 1) * 4,
    # cnn: conv 9×16, conv 144×32, conv 288×32, fc 32×10
    ("cnn_digits", "pcm"): 1 + 2 + 1,  # conv1 (9 inputs per output) digital
    ("cnn_digits", "flash"): 1 + 1 + 1 + 1,
    ("cnn_digits", "crossbar"): (1 + 2 + 3 + 1) * 4,
    # transformer: embed 4×32, 2 × (q, k, v, o 32×32, ff1 32×64, ff2 64×32), head 32×10
    ("transformer_digits", "pcm"): 13,  # embed (4 inputs per output) digital
    ("transformer_digits", "flash"): 14,
    ("transformer_digits", "crossbar"): 14 * 4,
}


def shape_args(name: str) -> list[str]:
    shape = sample_shapes(name, 1)["input"]
    return ["--input-shape", "input=" + "x".join(map(str, shape))]


def invoke(args: list[str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, args, standalone_mode=True)
    return result.exit_code, result.stdout, result.stderr


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("name", "target"), sorted(HAND_TILES))
def test_check_json_fits_with_hand_counted_tiles(name: str, target: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["check", str(sample_path(name)), "--target", target, "--format", "json", *shape_args(name)], capsys)
    report = json.loads(out)
    assert code == 0 and report["status"] == "fits"
    assert report["tiles"]["required"] == HAND_TILES[(name, target)]
    assert report["target"] == target
    assert all(op["reason"] for op in report["ops"])
    assert {layer["layer"] for layer in report["layers"]} <= {op["op"] for op in report["ops"] if op["region"] == "analog"}


def big_mlp(path: Path) -> Path:
    """Three Gemm layers needing 32 + 32 + 16 = 80 of pcm's 64 arrays."""
    rng = np.random.default_rng(0)
    sizes = [(1024, 2048), (2048, 1024), (1024, 1024)]
    inits, nodes, prev = [], [], "x"
    for i, (k, n) in enumerate(sizes):
        inits.append(numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32) * 0.01, f"w{i}"))
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}"], [f"y{i}"], name=f"fc{i}"))
        prev = f"y{i}"
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1024])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 1024])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_too_large_model_exits_3_and_names_layers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = big_mlp(tmp_path / "big.onnx")
    code, out, _ = run_main(["check", str(model), "--target", "pcm", "--format", "json"], capsys)
    report = json.loads(out)
    assert code == 3 and report["status"] == "does_not_fit"
    assert report["tiles"] == {"required": 80, "available": 64, "cores_used": 80, "cores_available": 64}
    assert report["missing"]["tiles"] == 16
    short = {m["layer"]: m["arrays_short"] for m in report["missing"]["layers"]}
    assert short == {"fc2": 16}
    code, out, _ = run_main(["check", str(model), "--target", "pcm", "--format", "junit"], capsys)
    suite = ET.fromstring(out)
    assert code == 3 and suite.get("failures") == "2"
    code, out, err = run_main(["compile", str(model), "--target", "pcm", "-o", str(tmp_path / "b"), "--timing"],
                              capsys)
    assert code == 3 and "afmc: error: does not fit" in err and "fc2 (16 short)" in err
    assert not (tmp_path / "b").exists()
    passes = [line.split()[-1] for line in err.splitlines() if "%)" in line]
    assert passes[-2:] == ["place", "Total"] and "calibrate" not in passes  # refused before calibrating
    code, out, err = run_main(["run", str(model), "--target", "pcm", "--ideal"], capsys)
    assert code == 0 and "big.onnx does not fit pcm (80 of 64 arrays); simulated as if" in err


def test_check_text_and_junit_on_a_fit(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["check", str(sample_path("cnn_digits")), "--target", "crossbar", *shape_args("cnn_digits")]
    code, out, _ = run_main(args, capsys)
    assert code == 0 and "FITS" in out and "/conv2/Conv" in out
    code, out, _ = run_main([*args, "--format", "junit"], capsys)
    assert code == 0 and ET.fromstring(out).get("failures") == "0"


def test_bundle_is_byte_identical_and_not_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = "transformer_digits"
    args = ["compile", str(sample_path(name)), "--target", "crossbar", *shape_args(name)]
    for out in ("a", "b"):
        code, _, err = run_main([*args, "-o", str(tmp_path / out)], capsys)
        assert code == 0, err
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["arrays.npz", "constants.npz", "inputs.npz", "ir.mlir", "manifest.json", "report.json"]
    for file in files:
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    with np.load(tmp_path / "a" / "arrays.npz", allow_pickle=False) as arrays:
        assert sorted(arrays.files) == sorted(t["array"] for t in manifest["tiles"])
        assert all(np.all(arrays[f] >= 0) for f in arrays.files)
    code, _, err = run_main([*args, "-o", str(tmp_path / "a")], capsys)
    assert code == 2 and "--force" in err
    code, _, err = run_main([*args, "-o", str(tmp_path / "a"), "--force"], capsys)
    assert code == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_ir_command_reparses_to_identical_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in SAMPLE_NAMES:
        code, text, err = run_main(["ir", str(sample_path(name)), *shape_args(name)], capsys)
        assert code == 0, err
        dump = tmp_path / f"{name}.mlir"
        dump.write_text(text)
        code, again, _ = run_main(["ir", str(dump)], capsys)
        assert code == 0 and again == text


def test_instruments_print_and_dump(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = "cnn_digits"
    code, _, err = run_main(
        ["compile", str(sample_path(name)), "--target", "pcm", *shape_args(name), "-o", str(tmp_path / "b"),
         "--print-ir-after", "tile", "--print-ir-before", "partition", "--dump-ir-dir", str(tmp_path / "d"), "--timing"],
        capsys,
    )
    assert code == 0
    assert "// -----// IR Dump After tile //----- //" in err and "// -----// IR Dump Before partition //----- //" in err
    assert "Pass execution timing report" in err
    dumps = sorted(p.name for p in (tmp_path / "d").iterdir())
    assert dumps[0] == "000_input.mlir" and any(d.endswith("_tile.mlir") for d in dumps)


@pytest.mark.parametrize(
    ("make", "args", "needle"),
    [
        (lambda d: d / "missing.onnx", [], "no such file"),
        (lambda d: _write(d / "junk.onnx", b"\x00not onnx at all" * 10), [], "not an ONNX model"),
        (lambda d: _write(d / "trunc.onnx", sample_path("cnn_digits").read_bytes()[:500]), [], "not an ONNX model"),
        (lambda d: sample_path("cnn_digits"), [], "dynamic dimensions"),
        (lambda d: sample_path("cnn_digits"), ["--input-shape", "input=1xx8"], "--input-shape"),
        (lambda d: sample_path("cnn_digits"), ["--input-shape", "input=1,,8"], "--input-shape"),
        (lambda d: sample_path("cnn_digits"), ["--input-shape", "input=1,0,8,8"], "--input-shape"),
        (lambda d: sample_path("cnn_digits"), ["--input-shape", "nope=1x1x8x8"], "nope"),
        (lambda d: sample_path("cnn_digits"), ["--target", "nope"], "unknown target 'nope'"),
        (lambda d: sample_path("cnn_digits"), ["--pipeline", "canonicalize,tilee"], "unknown pass 'tilee'"),
        (lambda d: _write(d / "bad.mlir", b"module @m { graph( }"), [], "line 1"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], make, args, needle) -> None:  # type: ignore[no-untyped-def]
    model = make(tmp_path)
    command = "compile" if "--target" in args or "--pipeline" in args else "ir"
    code, _, err = run_main([command, str(model), *args], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert lines[0].startswith("afmc: error:") and needle in lines[0]
    assert "Traceback" not in err
    if "--pipeline" not in args:
        assert len(lines) == 1


def test_input_shape_takes_x_or_commas(capsys: pytest.CaptureFixture[str]) -> None:
    model = str(sample_path("cnn_digits"))
    reports = []
    for spec in ("input=2x1x8x8", "input=2,1,8,8", "input=2X1,8x8"):
        code, out, err = run_main(["check", model, "--target", "pcm", "--format", "json", "--input-shape", spec], capsys)
        assert code == 0, err
        reports.append(json.loads(out))
    assert reports[0] == reports[1] == reports[2]
    assert reports[0]["tiles"]["required"] == HAND_TILES[("cnn_digits", "pcm")]


def test_unsupported_ops_are_listed_in_one_go(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nodes = [helper.make_node("Unique", ["x"], ["u"], name="unique_1"),
             helper.make_node("NonZero", ["x"], ["nz"], name="nz_1"),
             helper.make_node("Unique", ["x"], ["u2"], name="unique_2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("u", TensorProto.FLOAT, [None]),
                               helper.make_tensor_value_info("nz", TensorProto.INT64, [1, None]),
                               helper.make_tensor_value_info("u2", TensorProto.FLOAT, [None])])
    path = tmp_path / "u.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    code, _, err = run_main(["ir", str(path)], capsys)
    assert code == 2 and "Unique" in err and "NonZero" in err and "unique_1" in err and len(err.splitlines()) == 1


def test_targets_passes_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["targets", "--format", "json"], capsys)
    assert code == 0 and {t["name"] for t in json.loads(out)} >= {"crossbar", "pcm", "flash"}
    code, out, _ = run_main(["targets", "pcm", "--format", "json"], capsys)
    assert code == 0 and json.loads(out)["array"]["rows"] == 256
    code, out, _ = run_main(["passes"], capsys)
    assert code == 0 and all(p in out for p in ("canonicalize", "fold-constants", "fold-batchnorm", "partition", "tile"))
    code, out, _ = run_main(["--version"], capsys)
    assert code == 0 and "0.1.0" in out
    for command in ("compile", "check", "ir", "targets", "passes"):
        code, out, _ = invoke([command, "--help"])
        assert code == 0 and "Usage" in out


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_long_layer_names_keep_their_ends_in_the_text_report() -> None:
    """A transformer's q, k and v projections differ only at the end of their paths."""
    from afmc.report import _tail

    names = [f"/m/encoder/layer.0/attention/self/{p}/MatMul" for p in ("query", "key", "value")]
    shown = [_tail(name, 32) for name in names]
    assert len(set(shown)) == 3 and all(len(s) == 32 and s.startswith("...") for s in shown)
    assert shown[1] == "...r.0/attention/self/key/MatMul" and _tail("/fc/Gemm", 32) == "/fc/Gemm"
