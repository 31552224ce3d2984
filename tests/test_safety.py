"""Untrusted input and safe output (issue 7, points 2-5).

2. External data: absolute paths, ``..``, links that resolve outside the model's folder, devices
   and FIFOs are refused; missing files and wrong offsets or lengths are errors, not crashes.
3. Size limits before allocation: a declared tensor or intermediate over the limit (4 GiB, or
   ``$AFMC_MAX_TENSOR_BYTES``) is refused with its name and size.
4. Output safety: bundles and reports are staged and renamed; SIGINT/SIGTERM during ``afmc
   compile`` leaves neither output nor staging directory (exit 130/143); an existing output is
   kept unless ``--force``, and with ``--force`` replaced in one step.
5. Determinism: the same compile gives byte-identical bundles (also across hash seeds); the same
   seed gives identical outputs; nothing is ever pickled.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import sample_path
from onnx import TensorProto, helper, numpy_helper

from afmc import bundle
from afmc.cli import main, write_text_atomically
from afmc.diagnostics import Terminated, signals_deferred, terminate_on_sigterm
from afmc.errors import AfmcError
from afmc.fuzz import QUICK_PIPELINE, limit_memory

ROOT = Path(__file__).resolve().parent.parent
F = TensorProto.FLOAT


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(code: int, err: str, needle: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("afmc: error:") and "Traceback" not in err, err
    assert needle in lines[0], lines[0]


def child_env(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}


def child_setup() -> None:
    """In the child: 2 GiB of address space, and SIGINT handled even when the test runner ignores it."""
    limit_memory()
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def afmc_process(args: list[str], **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "afmc", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=child_env(**env), preexec_fn=child_setup, cwd=ROOT,  # noqa: PLW1509  (no threads started here)
    )


# -- 2. external data ----------------------------------------------------------------------------


def external_model(folder: Path, location: str = "weights.bin", offset: str = "64", length: str | None = None,
                   payload: bytes | None = None) -> Path:
    """``folder/model.onnx``: y = x @ W with W (16x8 f32) in an external file at ``location``."""
    folder.mkdir(parents=True, exist_ok=True)
    w = np.arange(128, dtype=np.float32).reshape(16, 8) / 128
    data = w.tobytes() if payload is None else payload
    (folder / "weights.bin").write_bytes(b"\0" * 64 + data)
    tensor = numpy_helper.from_array(w, "W")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entries = [("location", location), ("offset", offset)] + ([("length", length)] if length is not None else [])
    for key, value in entries:
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", F, [1, 16])],
                              [helper.make_tensor_value_info("y", F, [1, 8])], [tensor])
    path = folder / "model.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


def test_valid_external_data_imports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for location in ("weights.bin", "./weights.bin", "sub/../weights.bin"):
        folder = tmp_path / location.replace("/", "_")
        path = external_model(folder, location)
        (folder / "sub").mkdir()
        code, out, err = run_main(["ir", str(path)], capsys)
        assert code == 0 and "nn.matmul" in out, err
    # onnx's checker goes further than "inside the folder": it refuses any link, even one that stays inside
    os.symlink(folder / "weights.bin", folder / "link_in.bin")
    code, _, err = run_main(["ir", str(external_model(folder, "link_in.bin"))], capsys)
    one_error_line(code, err, "but it is a symbolic link")


def hostile(tmp_path: Path, name: str) -> tuple[str, str]:
    """Set up the files one hostile location needs; returns (location, expected message)."""
    folder, outside = tmp_path / "m", tmp_path / "outside.bin"
    outside.write_bytes(b"\0" * 4096)
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    if name == "symlink-out":
        os.symlink(outside, folder / "link.bin")
    elif name == "symlink-dir-out":
        os.symlink(tmp_path, folder / "up")
    elif name == "symlink-device":
        os.symlink("/dev/zero", folder / "zero.bin")
    elif name == "fifo":
        os.mkfifo(folder / "pipe.bin")
    return {
        "absolute": ("/etc/passwd", "'/etc/passwd' is an absolute path"),
        "absolute-inside": (str(folder / "weights.bin"), "is an absolute path"),
        "windows-drive": ("C:\\weights.bin", "is an absolute path"),
        "unc": ("\\\\server\\share\\w.bin", "is an absolute path"),
        "dotdot": ("../outside.bin", "'../outside.bin' points outside the model's folder"),
        "dotdot-nested": ("sub/../../outside.bin", "points outside the model's folder"),
        "symlink-out": ("link.bin", "'link.bin' points outside the model's folder"),
        "symlink-dir-out": ("up/outside.bin", "points outside the model's folder"),
        "symlink-device": ("zero.bin", "points outside the model's folder"),
        "fifo": ("pipe.bin", "external data file 'pipe.bin' is not a regular file"),
        "directory": ("sub", "external data file 'sub' is not a regular file"),
        "missing": ("missing.bin", "external data file 'missing.bin' does not exist"),
        "empty": ("", "has external data without a location"),
        "nul": ("weights.bin\0x", "'weights.bin\\x00x' contains a NUL character"),
        "newline": ("../a\nb", "'../a\\nb' points outside"),
    }[name]


@pytest.mark.parametrize("name", [
    "absolute", "absolute-inside", "windows-drive", "unc", "dotdot", "dotdot-nested", "symlink-out", "symlink-dir-out",
    "symlink-device", "fifo", "directory", "missing", "empty", "nul", "newline",
])
def test_hostile_external_locations_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    location, needle = hostile(tmp_path, name)
    path = external_model(tmp_path / "m", location)
    for args in (["ir", str(path)], ["check", str(path), "--target", "pcm", "--pipeline", QUICK_PIPELINE]):
        code, _, err = run_main(args, capsys)
        one_error_line(code, err, needle)
        assert "tensor 'W'" in err and str(path) in err


@pytest.mark.parametrize(
    ("offset", "length", "payload", "needle"),
    [
        ("100000", None, None, "needs bytes 100000..100512 of 'weights.bin', which has only 576 bytes"),
        ("-1", None, None, "negative external data offset or length"),
        ("64", "-5", None, "negative external data offset or length"),
        ("abc", None, None, "offset/length are not integers"),
        ("0x40", None, None, "offset/length are not integers"),
        (" 64", None, None, "offset/length are not integers"),
        ("9" * 5000, None, None, "offset/length are not integers"),
        ("64", "100", None, "has 100 bytes of data in 'weights.bin'; its type ([16, 8], f32) needs 512"),
        ("64", None, b"\0" * 100, "which has only 164 bytes (truncated?)"),
        ("18446744073709551615", None, None, "which has only 576 bytes"),
    ],
)
def test_wrong_offsets_and_lengths_are_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], offset: str,
                                              length: str | None, payload: bytes | None, needle: str) -> None:
    path = external_model(tmp_path / "m", offset=offset, length=length, payload=payload)
    code, _, err = run_main(["ir", str(path)], capsys)
    one_error_line(code, err, needle)


def test_model_path_that_is_a_device_or_fifo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Reading /dev/zero would never end, a FIFO would block: both are refused unread."""
    fifo = tmp_path / "m.onnx"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(fifo)):
        code, _, err = run_main(["ir", path], capsys)
        one_error_line(code, err, "not a regular file")


# -- 3. size limits ------------------------------------------------------------------------------


def test_tensor_limit_from_the_environment(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = external_model(tmp_path / "m")  # W: 16x8 f32 = 512 bytes; y: 1x8 f32
    monkeypatch.setenv("AFMC_MAX_TENSOR_BYTES", "256")
    code, _, err = run_main(["ir", str(path)], capsys)
    one_error_line(code, err, "tensor 'W' is 512 B ([16, 8]), over the 256 B limit for one tensor")
    monkeypatch.setenv("AFMC_MAX_TENSOR_BYTES", "1K")
    code, _, err = run_main(["ir", str(path)], capsys)
    assert code == 0, err
    monkeypatch.setenv("AFMC_MAX_TENSOR_BYTES", "lots")
    code, _, err = run_main(["ir", str(path)], capsys)
    one_error_line(code, err, "AFMC_MAX_TENSOR_BYTES='lots': expected a byte count such as 1073741824, 512M or 4G")


def test_intermediate_over_the_limit_is_refused_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """x (1x64) @ W (64x1) -> 1x1, then Expand to 4096x4096 (64 MiB): over a 16 MiB limit."""
    shape = numpy_helper.from_array(np.array([4096, 4096], np.int64), "shape")
    w = numpy_helper.from_array(np.ones((64, 1), np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"), helper.make_node("Expand", ["h", "shape"], ["y"], name="grow")],
        "g", [helper.make_tensor_value_info("x", F, [1, 64])], [helper.make_tensor_value_info("y", F, [4096, 4096])],
        [w, shape])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    monkeypatch.setenv("AFMC_MAX_TENSOR_BYTES", "16M")
    code, _, err = run_main(["ir", str(path)], capsys)
    one_error_line(code, err, "node 'grow': output 'y' would be 64.0 MiB (tensor<4096x4096xf32>), over the 16.0 MiB limit")


def test_declared_tensors_far_over_the_limit_in_a_2_gib_process(tmp_path: Path) -> None:
    """An input of 2^44 bytes, a ConstantOfShape of 2^42 bytes, an IR constant of 2^52 bytes: each
    refused at once by name and size, in a process that cannot allocate more than 2 GiB."""
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", F, [1 << 21, 1 << 21])],
                              [helper.make_tensor_value_info("y", F, [1 << 21, 1 << 21])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "input.onnx")
    nodes = [helper.make_node("Constant", [], ["shape"], value_ints=[1 << 20, 1 << 20], name="shape_c"),
             helper.make_node("ConstantOfShape", ["shape"], ["big"], name="cos"),
             helper.make_node("Add", ["big", "x"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [1])],
                              [helper.make_tensor_value_info("y", F, [1 << 20, 1 << 20])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "cos.onnx")
    (tmp_path / "big.mlir").write_text(
        "module @m {\n  const @w : tensor<1099511627776x1024xf32> = elided<\"00\">\n  graph(%x: tensor<1xf32>) {\n"
        "    return %x\n  }\n}\n")
    for name, args, needle in [
        ("input.onnx", ["ir"], "input 'x' would be 16384.0 GiB (tensor<2097152x2097152xf32>), over the 4.0 GiB limit"),
        ("cos.onnx", ["check", "--target", "pcm"], "node 'cos': output 'big' would be 4096.0 GiB"),
        ("big.mlir", ["ir"], "constant @w is 4194304.0 GiB (tensor<1099511627776x1024xf32>), over the 4.0 GiB limit"),
    ]:
        proc = subprocess.run([sys.executable, "-m", "afmc", args[0], str(tmp_path / name), *args[1:]], check=False,
                              capture_output=True, text=True, timeout=60, preexec_fn=limit_memory, cwd=ROOT)
        one_error_line(proc.returncode, proc.stderr, needle)


def npz_with_header(path: Path, name: str, header: dict[str, object], data: bytes = b"") -> None:
    """An .npz whose one member declares ``header`` (shape, dtype) over ``data``."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)  # type: ignore[arg-type]
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}.npy", buffer.getvalue() + data)


def test_bundle_arrays_are_checked_before_they_are_read(tmp_path: Path) -> None:
    path = tmp_path / "a.npz"
    npz_with_header(path, "huge", {"descr": "<f4", "fortran_order": False, "shape": (1 << 30, 1 << 10)})
    with pytest.raises(AfmcError, match=r"array 'huge' is 4096\.0 GiB \[1073741824, 1024\], over the 4\.0 GiB limit"):
        bundle.read_npz(path)
    npz_with_header(path, "objects", {"descr": "|O", "fortran_order": False, "shape": (2,)}, b"\x80\x04N.")
    with pytest.raises(AfmcError, match="array 'objects' holds Python objects; afmc never reads pickles"):
        bundle.read_npz(path)
    path.write_bytes(b"PK\x03\x04 not a zip at all")
    with pytest.raises(AfmcError, match="cannot read"):
        bundle.read_npz(path)
    np.savez(path, a=np.arange(3.0))
    assert bundle.read_npz(path)["a"].tolist() == [0.0, 1.0, 2.0]


def test_sample_inputs_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    """Crash (memory): the bundle's seeded sample inputs were as large as the declared inputs (a
    mutated model declaring a 3 GiB input made compile generate 3 GiB of random numbers)."""
    from afmc.ir import parse_module

    big = parse_module("module @m {\n  graph(%x: tensor<5000x5000xf32>) {\n    return %x\n  }\n}\n")
    assert bundle.bundled_sample_inputs(big, 0) == {}
    assert "the inputs take 95.4 MiB, over the 64.0 MiB a bundle's sample inputs may" in caplog.text
    small = parse_module("module @m {\n  graph(%x: tensor<2x3xf32>) {\n    return %x\n  }\n}\n")
    assert bundle.bundled_sample_inputs(small, 0)["x"].shape == (2, 3)


def batchnorm_model(path: Path, var: list[float], after_relu: bool) -> Path:
    """Conv (+ Relu) + BatchNormalization 'bn1' with the given running variance."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w")]
    inits += [numpy_helper.from_array(np.array(v, np.float32), n)
              for n, v in (("s", [1.0] * 4), ("b", [0.0] * 4), ("m", [0.0] * 4), ("v", var))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv")]
    if after_relu:
        nodes.append(helper.make_node("Relu", ["c"], ["r"], name="relu"))
    nodes.append(helper.make_node("BatchNormalization", [nodes[-1].output[0], "s", "b", "m", "v"], ["y"], name="bn1"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", F, [1, 4, 6, 6])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("after_relu", [False, True], ids=["folded", "digital"])
@pytest.mark.parametrize("var", [[1.0, -2.0, 1.0, 1.0], [1.0, float("nan"), 1.0, 1.0]], ids=["negative", "nan"])
def test_batchnorm_with_a_bad_variance_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  var: list[float], after_relu: bool) -> None:
    """Crash (silent NaN): a negative or NaN running variance gave √(var+ε) = NaN, folded into
    the conv's weights (or computed digitally). Now: exit 2 naming the node, and no bundle."""
    model = str(batchnorm_model(tmp_path / "bn.onnx", var, after_relu))
    for command in (["check", model, "--target", "pcm"], ["compile", model, "--target", "pcm", "-o", str(tmp_path / "b")]):
        code, _, err = run_main(command, capsys)
        one_error_line(code, err, "node 'bn1'")
        assert "variance + epsilon must be finite and > 0: channel 1 has" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bn.onnx"]
    code, _, err = run_main(["check", str(batchnorm_model(tmp_path / "ok.onnx", [1.0, 0.0, 1.0, 2.0], after_relu)),
                             "--target", "pcm"], capsys)
    assert code == 0, err  # a zero variance is fine: epsilon keeps it positive


# -- 4. output safety ----------------------------------------------------------------------------


def tree_digest(path: Path) -> dict[str, str]:
    """Every file under ``path`` and the SHA-256 of its bytes."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    """Staging directories, moved-aside bundles and temporary files: names starting with '.'."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


MLP = ["--input-shape", "input=1x64"]


def test_existing_outputs_are_kept_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = str(sample_path("mlp_digits"))
    out, report, text = tmp_path / "b", tmp_path / "r.json", tmp_path / "m.mlir"
    for path in (out, report, text):
        path.mkdir() if path is out else path.write_text("precious\n")
    (out / "keep.txt").write_text("precious\n")
    (out / "manifest.json").write_text("{}\n")  # a bundle: --force may replace it
    before = {p: tree_digest(p) if p.is_dir() else p.read_bytes() for p in (out, report, text)}
    for args in (["compile", model, *MLP, "--target", "pcm", "-o", str(out)],
                 ["compile", model, *MLP, "--target", "pcm", "-o", str(tmp_path / "new"), "--report", str(report)],
                 ["compile", model, *MLP, "-o", str(text)]):
        code, _, err = run_main(args, capsys)
        one_error_line(code, err, "exists; pass --force to overwrite it")
    assert before == {p: tree_digest(p) if p.is_dir() else p.read_bytes() for p in (out, report, text)}
    assert not (tmp_path / "new").exists() and leftovers(tmp_path) == []
    for args in (["compile", model, *MLP, "--target", "pcm", "-o", str(out), "--report", str(report), "--force"],
                 ["compile", model, *MLP, "-o", str(text), "--force"]):
        code, _, err = run_main(args, capsys)
        assert code == 0, err
    assert sorted(tree_digest(out)) == ["arrays.npz", "constants.npz", "inputs.npz", "ir.mlir", "manifest.json",
                                        "report.json"]  # replaced whole: keep.txt is gone
    assert report.read_text().startswith("{") and text.read_text().startswith("module @")
    assert oct(text.stat().st_mode & 0o777) == oct(0o666 & ~current_umask())  # not mkstemp's 0600
    assert leftovers(tmp_path) == []


def test_force_replaces_only_bundles_and_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``-o DIR --force`` on a directory that is not a bundle (your home, '.') and ``--report
    /dev/null --force`` (as root: the device itself) are refused, untouched."""
    model = str(sample_path("mlp_digits"))
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("precious\n")
    os.symlink(tmp_path / "elsewhere", tmp_path / "link")
    (tmp_path / "fifo").parent.mkdir(exist_ok=True)
    os.mkfifo(tmp_path / "fifo")
    for args, needle in [
        (["-o", str(home)], "is not an afmc bundle (a directory with manifest.json)"),
        (["-o", str(tmp_path / "link")], "is not an afmc bundle"),
        (["-o", str(tmp_path / "new"), "--report", "/dev/null"], "/dev/null is not a regular file"),
        (["-o", str(tmp_path / "new"), "--report", str(tmp_path / "fifo")], "is not a regular file"),
    ]:
        code, _, err = run_main(["compile", model, *MLP, "--target", "pcm", *args, "--force"], capsys)
        one_error_line(code, err, needle)
    assert (home / "thesis.tex").read_text() == "precious\n" and os.path.exists("/dev/null")
    assert not (tmp_path / "new").exists() or (tmp_path / "new" / "manifest.json").is_file()
    assert leftovers(tmp_path) == []


def current_umask() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def test_a_failure_during_the_bundle_write_leaves_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    model = str(sample_path("mlp_digits"))
    out = tmp_path / "b"
    code, _, err = run_main(["compile", model, *MLP, "--target", "pcm", "-o", str(out)], capsys)
    assert code == 0, err
    before = tree_digest(out)
    calls = []
    real = bundle.write_npz

    def failing(path: Path, arrays: dict[str, np.ndarray]) -> None:
        calls.append(path.name)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(path, arrays)

    monkeypatch.setattr(bundle, "write_npz", failing)
    for target in (out, tmp_path / "fresh"):
        calls.clear()
        code, _, err = run_main(["compile", model, *MLP, "--target", "pcm", "-o", str(target), "--force"], capsys)
        assert code == 1 and "No space left on device" in err
    assert tree_digest(out) == before and not (tmp_path / "fresh").exists()
    assert leftovers(tmp_path) == []


def test_a_failed_rename_puts_the_old_bundle_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, staging = tmp_path / "b", tmp_path / ".b.staging"
    old.mkdir()
    (old / "x").write_text("old")
    staging.mkdir()
    (staging / "x").write_text("new")
    real = os.replace

    def refuse_staging(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
        if Path(src) == staging:
            raise OSError(18, "Invalid cross-device link")
        real(src, dst)

    monkeypatch.setattr(os, "replace", refuse_staging)
    with pytest.raises(OSError, match="cross-device"):
        bundle._swap_into_place(staging, old)
    assert (old / "x").read_text() == "old" and leftovers(tmp_path) == [".b.staging"]


def test_the_report_is_committed_with_the_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = str(sample_path("mlp_digits"))
    out, report = tmp_path / "b", tmp_path / "sub" / "r.json"
    code, _, err = run_main(["compile", model, *MLP, "--target", "pcm", "-o", str(out), "--report", str(report)], capsys)
    assert code == 0, err
    assert report.read_bytes() == (out / "report.json").read_bytes()
    assert leftovers(tmp_path) == [] and leftovers(report.parent) == []
    for inside in (out / "r.json", out):
        code, _, err = run_main(["compile", model, *MLP, "--target", "pcm", "-o", str(out), "--force",
                                 "--report", str(inside)], capsys)
        one_error_line(code, err, "is inside the bundle" if inside != out else "is a directory")
    assert report.read_bytes() == (out / "report.json").read_bytes()


@pytest.mark.parametrize("failure", [OSError(5, "Input/output error"), KeyboardInterrupt()], ids=["error", "interrupt"])
@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "replacing"])
def test_a_failed_report_commit_takes_the_bundle_back(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch, failure: BaseException,
                                                      existing: bool) -> None:
    """The report's rename fails (or is interrupted) after the bundle's succeeded: the new bundle
    is taken back and any old bundle and report restored; never one without the other."""
    model = str(sample_path("mlp_digits"))
    out, report = tmp_path / "b", tmp_path / "r.json"
    args = ["compile", model, *MLP, "--target", "pcm", "-o", str(out), "--report", str(report)]
    before = None
    if existing:
        assert run_main([*args, "--seed", "1"], capsys)[0] == 0
        before = (tree_digest(out), report.read_bytes())
        args.append("--force")
    real = os.replace

    def fail_on_report(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
        if Path(dst) == report and Path(src).name.startswith(".r.json."):
            raise failure
        real(src, dst)

    monkeypatch.setattr(os, "replace", fail_on_report)
    code, _, err = run_main(args, capsys)
    assert code == (130 if isinstance(failure, KeyboardInterrupt) else 1), err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("afmc: error:"), err
    if before is None:
        assert not out.exists() and not report.exists()
    else:
        assert (tree_digest(out), report.read_bytes()) == before
    assert leftovers(tmp_path) == []


def test_an_interrupted_text_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "r.json"
    path.write_text("old\n")

    def interrupted(src: str, dst: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_text_atomically(path, "new\n", force=True)
    assert path.read_text() == "old\n" and leftovers(tmp_path) == []


def test_signals_wait_for_the_end_of_a_deferred_block() -> None:
    """The critical steps of a write: a signal in the middle is delivered after, as an exception."""
    steps = []
    handler = signal.getsignal(signal.SIGTERM)
    # A shell starts background jobs with SIGINT ignored; the block must deliver it the usual way.
    interrupt = signal.signal(signal.SIGINT, signal.default_int_handler)
    with terminate_on_sigterm():
        for signum, exc in ((signal.SIGTERM, Terminated), (signal.SIGINT, KeyboardInterrupt)):
            with pytest.raises(exc), signals_deferred():
                os.kill(os.getpid(), signum)
                time.sleep(0.01)  # the handler runs here if it is not held
                steps.append(signum)
            assert steps[-1] == signum
        with pytest.raises(Terminated):  # outside a deferred block it is immediate
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
    signal.signal(signal.SIGINT, interrupt)
    assert signal.getsignal(signal.SIGTERM) == handler


def big_model(path: Path, layers: int = 6, n: int = 384) -> Path:
    """An MLP whose compile and bundle take a moment (6 x 384x384 weights: 18 arrays on pcm)."""
    rng = np.random.default_rng(0)
    inits, nodes, prev = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array((rng.standard_normal((n, n)) * 0.05).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}"], [f"h{i}"], name=f"fc{i}"))
        prev = f"h{i}"
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", F, [1, n])],
                              [helper.make_tensor_value_info(prev, F, [1, n])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"afmc ended before the signal: {proc.communicate()}"
        assert time.monotonic() < deadline, "the interrupt point was never reached"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def model_for_interrupts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return big_model(tmp_path_factory.mktemp("big") / "big.onnx")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("point", ["compiling", "writing", "replacing"])
def test_interrupted_compile_leaves_no_partial_output(tmp_path: Path, model_for_interrupts: Path, signum: int,
                                                      point: str) -> None:
    """SIGINT/SIGTERM while the passes run, while the bundle is written (``AFMC_TEST_WRITE_DELAY``
    stretches each file to 0.4 s), and while an existing bundle is being replaced with --force:
    exit 128 + signal, no new output, no staging directory, an existing bundle untouched."""
    out, report, dumps = tmp_path / "out", tmp_path / "report.json", tmp_path / "dumps"
    args = ["compile", str(model_for_interrupts), "--target", "pcm", "-o", str(out), "--report", str(report)]
    before = None
    if point == "replacing":
        assert main([*args]) == 0
        report.unlink()
        before = tree_digest(out)
        args.append("--force")
    if point == "compiling":  # the quick pipeline: CP-SAT (place) swallows SIGINT while it searches
        proc = afmc_process([*args, "--dump-ir-dir", str(dumps), "--pipeline", QUICK_PIPELINE],
                            AFMC_TEST_WRITE_DELAY="0.4")
        wait_for(lambda: dumps.is_dir() and any(dumps.iterdir()), proc)  # imported: the passes are running
    else:
        proc = afmc_process(args, AFMC_TEST_WRITE_DELAY="0.4")
        wait_for(lambda: any(p.name.startswith(".out.") for p in tmp_path.iterdir()), proc)
        time.sleep(0.5)  # a file or two into the staging directory
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    name = "interrupted" if signum == signal.SIGINT else "terminated"
    assert err.strip().splitlines()[-1] == f"afmc: error: {name}" and "Traceback" not in err, err
    assert leftovers(tmp_path) == [] and not report.exists()
    if before is None:
        assert not out.exists()
    else:
        assert tree_digest(out) == before


# -- 5. determinism --------------------------------------------------------------------------------


def compile_to(tmp_path: Path, name: str, out: str, *extra: str) -> dict[str, str]:
    code = main(["compile", str(sample_path(name)), "--target", "pcm", "-o", str(tmp_path / out),
                 "--input-shape", "input=" + ("1x64" if name == "mlp_digits" else "1x1x8x8"), *extra])
    assert code == 0
    return tree_digest(tmp_path / out)


@pytest.mark.parametrize("name", ["mlp_digits", "cnn_digits"])
def test_compiling_twice_gives_byte_identical_bundles(tmp_path: Path, name: str) -> None:
    first = compile_to(tmp_path, name, "a", "--seed", "7")
    assert first == compile_to(tmp_path, name, "b", "--seed", "7")
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["seed"] == 7


def test_bundles_do_not_depend_on_the_hash_seed(tmp_path: Path) -> None:
    """Set and dict iteration order must not leak into the bundle: two processes, two hash seeds."""
    digests = []
    for hash_seed in ("1", "12345"):
        out = tmp_path / f"b{hash_seed}"
        proc = subprocess.run(
            [sys.executable, "-m", "afmc", "compile", str(sample_path("cnn_digits")), "--target", "pcm", "-o", str(out),
             "--input-shape", "input=1x1x8x8"], check=False, capture_output=True, text=True, timeout=120,
            env=child_env(PYTHONHASHSEED=hash_seed), cwd=ROOT,
        )
        assert proc.returncode == 0, proc.stderr
        digests.append(tree_digest(out))
    assert digests[0] == digests[1]


def test_running_twice_with_one_seed_gives_identical_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from afmc.cli import cli

    if "run" not in cli.commands:  # type: ignore[attr-defined]
        pytest.skip("afmc run is not available")
    compile_to(tmp_path, "mlp_digits", "b")
    outputs = []
    for name in ("a", "b", "c"):
        seed = "5" if name != "c" else "6"
        code, _, err = run_main(["run", str(tmp_path / "b"), "--seed", seed, "--outputs", str(tmp_path / f"{name}.npz")],
                                capsys)
        assert code == 0, err
        with np.load(tmp_path / f"{name}.npz", allow_pickle=False) as data:
            outputs.append({key: data[key] for key in data.files})
    assert outputs[0].keys() == outputs[1].keys()
    assert all(np.array_equal(outputs[0][k], outputs[1][k]) for k in outputs[0])
    assert any(not np.array_equal(outputs[0][k], outputs[2][k]) for k in outputs[0])  # the seed matters


def test_bundle_arrays_load_without_pickles(tmp_path: Path) -> None:
    compile_to(tmp_path, "cnn_digits", "b")
    for npz in sorted((tmp_path / "b").glob("*.npz")):
        with np.load(npz, allow_pickle=False) as data:
            assert data.files and all(data[key].dtype != object for key in data.files), npz.name


def test_string_tensors_are_bundled_without_pickles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Crash: a string constant made compile fail (object arrays cannot be saved without pickles);
    it is stored as fixed-width text and restored by load_bundle."""
    strings = numpy_helper.from_array(np.array(["a", "bc"], dtype=object), "s")
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["t"]), helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", F, [1, 4])],
        [helper.make_tensor_value_info("y", F, [1, 4]), helper.make_tensor_value_info("t", TensorProto.STRING, [2])],
        [strings, w])
    model = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    code, _, err = run_main(["compile", str(model), "--target", "pcm", "-o", str(tmp_path / "b")], capsys)
    assert code == 0, err
    with np.load(tmp_path / "b" / "constants.npz", allow_pickle=False) as data:
        assert data["t"].dtype.kind == "U" and data["t"].tolist() == ["a", "bc"]
    module, _, _ = bundle.load_bundle(tmp_path / "b")
    assert module.constants["t"].data.tolist() == ["a", "bc"]  # type: ignore[union-attr]


#: Modules that (un)pickle; none may be imported anywhere in the repository.
PICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "copyreg"}
#: Calls that read arrays and unpickle object arrays unless told not to.
ARRAY_LOADERS = {"np.load", "numpy.load", "np.lib.format.read_array", "numpy.lib.format.read_array"}


def _dotted(node: ast.expr) -> str:
    """``np.lib.format.read_array`` for the callee expression of that name, '' for others."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else ""


def pickle_uses(source: str) -> list[str]:
    """Where ``source`` imports a pickler, passes allow_pickle=True, calls torch.load, or loads
    arrays without ``allow_pickle=False`` (numpy's default, stated so that it survives a change)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLERS]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLERS:
            found.append(f"line {node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            pickle_kw = [k for k in node.keywords if k.arg == "allow_pickle"]
            if any(not (isinstance(k.value, ast.Constant) and k.value.value is False) for k in pickle_kw):
                found.append(f"line {node.lineno}: {name or 'a call'}(allow_pickle=<not False>)")
            if name in ARRAY_LOADERS and not pickle_kw:
                found.append(f"line {node.lineno}: {name}(...) without allow_pickle=False")
            if name == "torch.load":
                found.append(f"line {node.lineno}: torch.load")
    return found


def test_no_pickles_anywhere() -> None:
    """No file of the repository (afmc, passes, targets, tests, bench, samples) imports a pickler or
    loads arrays that may hold pickles: every np.load says allow_pickle=False."""
    folders = ("afmc", "passes", "targets", "tests", "bench", "samples")
    sources = [p for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))]
    assert len(sources) > 40
    problems = [f"{p.relative_to(ROOT)}: {use}" for p in sources for use in pickle_uses(p.read_text(encoding="utf-8"))]
    assert problems == []


def test_the_pickle_check_finds_pickles() -> None:
    bad = ("import pickle\nfrom joblib import dump\nimport numpy as np\nnp.load('a.npy')\n"
           "numpy.load(f, allow_pickle=True)\nnp.lib.format.read_array(f)\ntorch.load('m.pt')\n")
    assert len(pickle_uses(bad)) == 6
    assert pickle_uses("import numpy as np\nwith np.load(p, allow_pickle=False) as d:\n    pass\n") == []


def test_npz_entries_are_deflated_or_stored_by_what_pays(tmp_path: Path) -> None:
    """Cell levels and conductances deflate (level 1); float weights of over 1 MiB that do not shrink are
    stored; every entry reads back exactly, and the file is the same bytes when written again."""
    import zipfile

    rng = np.random.default_rng(0)
    arrays = {"levels": rng.integers(0, 4, (600, 600)).astype(np.uint8),
              "weights": rng.standard_normal((600, 600)).astype(np.float32),
              "small": rng.standard_normal(10).astype(np.float32)}
    bundle.write_npz(tmp_path / "a.npz", arrays)
    bundle.write_npz(tmp_path / "b.npz", arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.npz") as archive:
        kinds = {info.filename: info.compress_type for info in archive.infolist()}
    assert kinds == {"levels.npy": zipfile.ZIP_DEFLATED, "small.npy": zipfile.ZIP_DEFLATED,
                     "weights.npy": zipfile.ZIP_STORED}
    with np.load(tmp_path / "a.npz", allow_pickle=False) as data:
        for name, array in arrays.items():
            np.testing.assert_array_equal(data[name], array)
