"""Hostile input never crashes, hangs or exhausts memory: the fuzz harness (``afmc.fuzz``) in CI,
and one regression test per crash it found.

The contract (DESIGN.md, issue 7): every run of ``afmc`` on a mutated model, target file or IR
text ends in exit 0 or 2 (3: check's "does not fit") with at most one ``afmc: error:`` line, no
traceback, within 10 s and 2 GiB; ``afmc compile`` leaves a whole bundle or nothing. CI runs 1000
cases in-process through ``afmc.cli.main`` (the hypothesis tests, derandomized so that CI is
reproducible; ~40 s), 60 in a worker process under ``RLIMIT_AS`` = 2 GiB, and a few through
``python -m afmc`` with that limit and a 10 s timeout; ``bench/fuzz.py`` runs as many fresh ones
as asked. ``check`` and ``compile`` run the quick pipeline here (up to ``tile``;
``afmc.fuzz.QUICK_PIPELINE``): the placement search costs seconds per case, and the bench covers it.

A failing case prints ``family:kind:seed``; ``python bench/fuzz.py --replay family:kind:seed``
reproduces it.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from afmc.cli import main
from afmc.errors import VerifyError
from afmc.fuzz import (
    CASE_MEMORY,
    CASE_SECONDS,
    MUTATORS,
    QUICK_PIPELINE,
    SAMPLES,
    Case,
    Outcome,
    Workspace,
    judge,
    kinds,
    limit_memory,
    run_case,
    write_case,
)
from afmc.ir import parse_module, verify

ROOT = Path(__file__).resolve().parent.parent
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def assert_case_keeps_the_contract(case: Case, root: Path) -> None:
    result = run_case(case, root, quick=True)
    assert not result.problems, f"{case} (replay: python bench/fuzz.py --quick --replay {case}):\n" + "\n".join(
        result.problems
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    assert peak < CASE_MEMORY, f"{case}: this process peaked at {peak >> 20} MiB"


# -- the fuzz run: 1000 cases in-process ---------------------------------------------------------


@settings(FUZZ, max_examples=500)
@given(kind=st.sampled_from(kinds("model")), seed=st.integers(0, 2**40))
def test_mutated_models(workdir: Path, kind: str, seed: int) -> None:
    assert_case_keeps_the_contract(Case("model", kind, seed), workdir)


@settings(FUZZ, max_examples=250)
@given(kind=st.sampled_from(kinds("toml")), seed=st.integers(0, 2**40))
def test_mutated_target_files(workdir: Path, kind: str, seed: int) -> None:
    assert_case_keeps_the_contract(Case("toml", kind, seed), workdir)


@settings(FUZZ, max_examples=250)
@given(kind=st.sampled_from(kinds("ir")), seed=st.integers(0, 2**40))
def test_mutated_ir_text(workdir: Path, kind: str, seed: int) -> None:
    assert_case_keeps_the_contract(Case("ir", kind, seed), workdir)


def test_every_mutation_kind_is_registered() -> None:
    """The kinds issue 7 asks for, each a registered mutator."""
    assert set(kinds("model")) >= {
        "truncate", "bit-flip", "proto-field", "dims", "dtype", "cycle", "dangling", "duplicate",
        "missing-initializer", "opset", "domain", "attribute", "external-data",
    }
    assert set(kinds("toml")) >= {"truncate", "bit-flip", "lines", "value", "range", "keys", "deep", "big-chip"}
    assert set(kinds("ir")) >= {"truncate", "tokens", "types", "numbers", "names"}


@pytest.mark.parametrize("family", sorted(MUTATORS))
def test_mutations_are_reproducible(tmp_path: Path, family: str) -> None:
    """A case name is enough to rebuild its input byte for byte (bench/fuzz.py --replay)."""
    for kind in kinds(family):
        case = Case(family, kind, 12345)
        first = write_case(case, Workspace(tmp_path / "a")).read_bytes()
        again = write_case(case, Workspace(tmp_path / "b")).read_bytes()
        assert first == again, case


def test_judge_catches_what_breaks_the_contract() -> None:
    def outcome(code: int | None, err: str, seconds: float = 0.1, command: str = "ir") -> Outcome:
        return Outcome([command, "x"], code, "", err, seconds)

    assert judge(outcome(0, "")) is None
    assert judge(outcome(2, "afmc: error: x.onnx: bad\n")) is None
    assert judge(outcome(3, "", command="check")) is None
    assert "exit code 1" in str(judge(outcome(1, "afmc: error: internal error: KeyError: 'x'\n")))
    assert "traceback" in str(judge(outcome(2, "Traceback (most recent call last):\nafmc: error: x\n")))
    assert "exactly one" in str(judge(outcome(2, "afmc: error: a\nafmc: error: b\n")))
    assert "exactly one" in str(judge(outcome(2, "")))
    assert "stray" in str(judge(outcome(0, "x.py:3: RuntimeWarning: overflow\n")))
    caret = "afmc: error: t.toml: unknown pass 'a-b'\n  canonicalize,a-b\n               ^\n"
    assert judge(outcome(2, caret, command="check")) is None  # the pipeline diagram DESIGN.md asks for
    assert "stray output after" in str(judge(outcome(2, "afmc: error: x\nmore\n")))
    assert "took" in str(judge(outcome(0, "", seconds=CASE_SECONDS + 1)))
    assert "exit code 3" in str(judge(outcome(3, "afmc: error: x\n", command="ir")))


# -- the same contract through real processes: tracebacks, memory, time ------------------------


def run_afmc(args: list[str], env: dict[str, str] | None = None, timeout: float = CASE_SECONDS) -> tuple[int, str, float]:
    """``python -m afmc ARGS`` under RLIMIT_AS = 2 GiB and a 10 s timeout: (exit code, stderr, seconds)."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "afmc", *args], check=False, capture_output=True, text=True, timeout=timeout,
        preexec_fn=limit_memory, env={**os.environ, **(env or {})}, cwd=ROOT,
    )
    return proc.returncode, proc.stderr, time.monotonic() - start


def assert_one_error_line(code: int, err: str, needle: str = "") -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("afmc: error:"), err
    assert needle in lines[0], err


SUBPROCESS_CASES = [Case("model", "dims", 3), Case("model", "external-data", 11), Case("toml", "deep", 2),
                    Case("ir", "types", 7)]


@pytest.mark.parametrize("case", SUBPROCESS_CASES, ids=str)
def test_mutated_inputs_in_a_real_process(tmp_path: Path, case: Case) -> None:
    path = write_case(case, Workspace(tmp_path))
    from afmc.fuzz import commands

    for argv in commands(case, path, quick=True):
        code, err, seconds = run_afmc(argv)
        problem = judge(Outcome(argv, code, "", err, seconds))
        assert problem is None, f"{case}: {' '.join(argv)}: {problem}"


def test_fuzz_worker_under_the_memory_limit(tmp_path: Path) -> None:
    """``bench/fuzz.py``'s worker: 60 cases in one process capped at 2 GiB of address space."""
    cases = [Case(family, kind, seed) for seed in range(4) for family in ("model", "toml", "ir")
             for kind in kinds(family)][:60]
    proc = subprocess.run(
        [sys.executable, "-m", "afmc.fuzz", "worker", str(tmp_path), "--quick"], check=False,
        input="".join(f"{c}\n" for c in cases), capture_output=True, text=True, timeout=120,
        preexec_fn=limit_memory, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    import json

    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["case"] for r in results] == [str(c) for c in cases]
    problems = [f"{r['case']}: {p}" for r in results for p in r["problems"]]
    assert not problems, "\n".join(problems)


# -- regressions: one test per crash the fuzzer found -------------------------------------------


def mlir(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.mlir"
    path.write_text(text)
    return path


GOOD_IR = """module @m {
  const @w : tensor<2x2xf32> = dense<[1.0, 2.0, 3.0, 4.0]>
  graph(%x: tensor<1x2xf32>) {
    %w = nn.constant() {value = @w} : tensor<2x2xf32> loc("w")
    %y = nn.gemm(%x, %w) {alpha = 1.0, beta = 1.0, transA = 0, transB = 0} : tensor<1x2xf32> loc("fc")
    return %y
  }
}
"""


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        # crash: JSONDecodeError (a raw control character inside a quoted string)
        ('loc("fc")', 'loc("f\x01c")', "malformed string"),
        ('"w"', '"w\x02"', "malformed string"),
        # crash: binascii.Error (malformed base64 constant data)
        ('dense<[1.0, 2.0, 3.0, 4.0]>', 'base64<"AAA">', "malformed base64"),
        ('dense<[1.0, 2.0, 3.0, 4.0]>', 'base64<"QUJD*">', "malformed base64"),
        # crash: ValueError (an integer literal past Python's 4300-digit limit)
        ("transA = 0", "transA = " + "9" * 5000, "malformed number"),
        # crash: RecursionError (attribute arrays nested thousands deep)
        ("transA = 0", "transA = " + "[" * 5000 + "]" * 5000, "nested more than"),
        # a declared tensor over the size limit: refused by name and size
        ("%x: tensor<1x2xf32>", "%x: tensor<1099511627776x1024xf32>", "input %x is 4194304.0 GiB"),
        # crashes in passes (IndexError, ValueError: NaN to integer, OverflowError): nn ops against their schema
        ("transA = 0", "transA = nan", "attribute 'transA' must be an integer"),
        ("beta = 1.0", "beta = " + "1" * 400, "attribute 'beta' must be a number"),
        ("nn.gemm(%x, %w)", "nn.gemm()", "takes 2 to 3 operands, has 0"),
        ('%w = nn.constant() {value = @w}', '%w = nn.add() {value = @w}', "takes 2 operands, has 0"),
        ("graph(%x: tensor<1x2xf32>)", "graph(%x: tensor<1x2xi64>)", "operand 1 ('B') is f32, but T is i64"),
        # crash in partition (IndexError): a result type that its operands cannot give
        (': tensor<1x2xf32> loc("fc")', ': tensor<f32> loc("fc")', "result %y is tensor<f32>; its operands give shape [1, 2]"),
        ("transA = 0", "transA = 99999999999999999999", "attribute 'transA' must be an integer"),
    ],
)
def test_malformed_ir_text_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str,
                                              new: str, needle: str) -> None:
    assert old in GOOD_IR
    path = mlir(tmp_path, GOOD_IR.replace(old, new, 1))
    for args in (["ir", str(path)], ["check", str(path), "--target", "pcm", "--pipeline", QUICK_PIPELINE]):
        code = main(args)
        _, err = capsys.readouterr()
        assert_one_error_line(code, err, needle)


def test_good_ir_still_parses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ir", str(mlir(tmp_path, GOOD_IR))]) == 0
    assert capsys.readouterr().out == GOOD_IR


def test_nn_ops_are_verified_against_their_onnx_schema() -> None:
    module = parse_module(GOOD_IR)
    verify(module)
    gemm = module.ops[1]
    bad: list[tuple[dict[str, Any], str]] = [
        ({"transB": 1.5}, "attribute 'transB' must be an integer"),
        ({"alpha": "x"}, "attribute 'alpha' must be a number"),
    ]
    for changes, needle in bad:
        saved = gemm.attributes
        gemm.set_attrs(**changes)
        with pytest.raises(VerifyError, match=needle):
            verify(module)
        gemm.attributes = saved
    gemm.set_attrs(transA=None, region="analog", reason="a pass's own")  # optional; not the schema's: fine
    verify(module)
    cast = GOOD_IR.replace("nn.gemm(%x, %w) {alpha = 1.0, beta = 1.0, transA = 0, transB = 0}", "nn.cast(%x)")
    with pytest.raises(VerifyError, match="nn.cast: needs attribute 'to'"):
        parse_module(cast)
    with pytest.raises(VerifyError, match=r"nn.gemm: result %y is tensor<1x3xf32>; its operands give shape \[1, 2\]"):
        parse_module(GOOD_IR.replace(": tensor<1x2xf32> loc(\"fc\")", ': tensor<1x3xf32> loc("fc")'))
    with pytest.raises(VerifyError, match="ONNX type inference rejects it"):
        parse_module(GOOD_IR.replace("transA = 0", "transA = 1").replace("%x: tensor<1x2xf32>", "%x: tensor<3x5xf32>"))


def test_verify_is_linear_in_uses() -> None:
    """Crash (a hang): verify counted each operand's use list once per user, quadratic when one
    value feeds thousands of tiles (a 1x1-array target made 17,000 tile ops: 10 s per verify)."""
    text = ["module @m {", "  graph(%x: tensor<1x2xf32>) {"]
    text += [f"    %r{i} = nn.relu(%x) : tensor<1x2xf32>" for i in range(20000)]
    text += ["    return %r0", "  }", "}"]
    module = parse_module("\n".join(text))
    verify(module)  # quadratic, this took minutes; no timing assertion on a shared machine
    assert len(module.inputs[0].uses) == 20000


def test_ir_files_that_never_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Crash (memory, in driver.load_module): ``x.mlir`` linked to /dev/zero was read until memory
    ran out. ``load_module`` reads through ``parse_file``: regular files only, up to the tensor size
    limit, in chunks (``read(limit + 1)`` reserved 4 GiB up front: a MemoryError under 2 GiB)."""
    from afmc.driver import load_module
    from afmc.errors import ParseError
    from afmc.ir.parser import parse_file

    os.symlink("/dev/zero", tmp_path / "zero.mlir")
    os.mkfifo(tmp_path / "fifo.mlir")
    for name in ("zero.mlir", "fifo.mlir"):
        for load in (parse_file, load_module):
            with pytest.raises(ParseError, match="not a regular file"):
                load(tmp_path / name)
    (tmp_path / "bad.mlir").write_bytes(b"module @m \xff")
    with pytest.raises(ParseError, match="not UTF-8 text"):
        load_module(tmp_path / "bad.mlir")
    assert parse_file(mlir(tmp_path, GOOD_IR)).ops[1].name == "nn.gemm"
    assert load_module(mlir(tmp_path, GOOD_IR)).ops[1].name == "nn.gemm"
    monkeypatch.setenv("AFMC_MAX_TENSOR_BYTES", "64")
    with pytest.raises(ParseError, match="IR file larger than the 64 B limit"):
        load_module(mlir(tmp_path, GOOD_IR))


def toml_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "t.toml"
    path.write_text(text)
    return path


PCM = (ROOT / "targets" / "pcm.toml").read_text()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        # crash: RecursionError inside tomllib (arrays or inline tables nested thousands deep)
        (PCM + "\nx = " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
        (PCM + "\nx = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n", "nested too deeply"),
        # crash: ValueError inside tomllib (an integer of more than 4300 digits)
        (PCM.replace("rows = 256", "rows = " + "9" * 5000, 1), "invalid TOML"),
        # crash: ValueError from repr() in the message (a hex integer of 5000 decimal digits)
        (PCM.replace("rows = 256", "rows = 0x" + "f" * 4200, 1), "key 'array.rows': must be in 1..65536, got (integer too large to show)"),
        # crash: OverflowError (an integer beyond any float for a float key)
        (PCM.replace("mvm_ns = 521.0", "mvm_ns = " + "9" * 400, 1), "key 'timing.mvm_ns': must be finite"),
    ],
    ids=["deep-array", "deep-table", "digits", "hex-digits", "float-overflow"],
)
def test_malformed_target_files_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                                                    needle: str) -> None:
    path = toml_file(tmp_path, text)
    code = main(["targets", str(path)])
    assert_one_error_line(code, capsys.readouterr().err, needle)


def test_chips_too_big_to_handle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Crash (memory): 4096x4096 cores x 2^20 arrays per core passed the schema, and placement
    allocated 32 TiB; a chip has at most 2^20 arrays now. Crash (a hang): a hundred thousand dead
    cores were checked for repeats pairwise."""
    big = PCM.replace("cores = 64", "cores = 1048576").replace("mesh_x = 8", "mesh_x = 1024")
    big = big.replace("mesh_y = 8", "mesh_y = 1024").replace("arrays_per_core = 1", "arrays_per_core = 2")
    code = main(["targets", str(toml_file(tmp_path, big))])
    assert_one_error_line(code, capsys.readouterr().err, "cores x arrays_per_core = 1048576 x 2 = 2097152 arrays, "
                                                         "over the 1048576 (2^20) one chip may have")
    dead = ",".join(f"[{i % 1000},{i // 1000}]" for i in range(100000))
    many = PCM.replace("dead_cores = []", f"dead_cores = [{dead}]").replace("mesh_x = 8", "mesh_x = 1000")
    many = many.replace("mesh_y = 8", "mesh_y = 1000").replace("cores = 64", "cores = 900000")
    # No timing assertion (the machine is shared): the pairwise check took hours, a linear one finishes.
    assert main(["targets", str(toml_file(tmp_path, many)), "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["chip"]["dead_cores"]) == 100000


def test_target_path_that_never_ends_or_blocks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Crash (memory): ``--target /dev/zero`` read until memory ran out; a FIFO blocked forever."""
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    big = toml_file(tmp_path, PCM + "\n# " + "x" * (2 << 20) + "\n")
    for path, needle in [("/dev/zero", "not a regular file"), (str(fifo), "not a regular file"),
                         (str(big), "not a target file"), (str(tmp_path), "cannot read target file")]:
        code = main(["targets", path])
        assert_one_error_line(code, capsys.readouterr().err, needle)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"name = '\xff\xfe'\n")
    code = main(["targets", str(binary)])
    assert_one_error_line(code, capsys.readouterr().err, "not UTF-8 text")


def model_bytes(node_name: str = "relu", op_type: str = "Relu") -> bytes:
    graph = helper.make_graph([helper.make_node(op_type, ["x"], ["y"], name=node_name)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_control_characters_in_model_names_stay_on_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Crash (contract): an op type "\\n" made the unsupported-op error two lines."""
    path = tmp_path / "m.onnx"
    path.write_bytes(model_bytes(op_type="Re\nlu\x1b[31m"))
    code = main(["ir", str(path)])
    assert_one_error_line(code, capsys.readouterr().err, "unsupported ops: Re\\nlu\\x1b[31m (node 'relu')")


@pytest.mark.parametrize("constant", [True, False])
def test_transpose_perm_that_is_not_a_permutation(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  constant: bool) -> None:
    """Crash (InternalError, found by bench/fuzz.py): a bit flip made a weight's Transpose perm [0];
    onnx's inference said rank 1, the folded result was rank 2."""
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["w" if constant else "x"], ["t"], perm=[0], name="tr"),
         helper.make_node("Identity", ["t"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3])], [w])
    path = tmp_path / "m.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    code = main(["ir", str(path)])
    assert_one_error_line(code, capsys.readouterr().err,
                          "node 'tr': Transpose perm [0] is not a permutation of the 2 axes of tensor<4x3xf32>")


def conv_model(w_shape: tuple[int, ...], b_shape: tuple[int, ...] | None = None, **attrs: Any) -> bytes:
    inits = [numpy_helper.from_array(np.ones(w_shape, np.float32), "w")]
    if b_shape is not None:
        inits.append(numpy_helper.from_array(np.ones(b_shape, np.float32), "b"))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"] + (["b"] if b_shape else []), ["y"], name="conv", **attrs)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.parametrize(
    ("w_shape", "b_shape", "attrs", "needle"),
    [
        # crash in partition (ZeroDivisionError): group = 0
        ((4, 4, 1, 1), None, {"group": 0}, "attribute 'group' must be >= 1, got 0"),
        ((4, 4, 1, 1), (3,), {}, "bias tensor<3xf32> must hold one value per output channel (4)"),
    ],
)
def test_conv_that_onnx_lets_through(tmp_path: Path, capsys: pytest.CaptureFixture[str], w_shape: tuple[int, ...],
                                     b_shape: tuple[int, ...] | None, attrs: dict[str, Any], needle: str) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(conv_model(w_shape, b_shape, **attrs))
    for args in (["ir", str(path)], ["check", str(path), "--target", "pcm", "--pipeline", QUICK_PIPELINE]):
        code = main(args)
        assert_one_error_line(code, capsys.readouterr().err, needle)


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        # crash in fold-batchnorm (ValueError: operands could not be broadcast): Conv weight and bias
        # swapped; onnx's inference gives up quietly there and the declared output type stood in
        ("model:proto-field:11001126", "nn.conv: data tensor<1x16x8x8xf32> and weight tensor<32xf32> must have the same rank"),
        # crash in partition (ValueError: not enough values to unpack): the weight input removed
        ("model:proto-field:11007051", "nn.conv: data tensor<1x1x8x8xf32> and weight tensor<16xf32> must have the same rank"),
        # crash in partition (ZeroDivisionError): group = 0
        ("model:proto-field:11006166", "nn.conv: attribute 'group' must be >= 1, got 0"),
        # crash in the importer (InternalError): Transpose perm [0] on a matrix
        ("model:bit-flip:3006881", "Transpose perm [0] is not a permutation of the 2 axes"),
    ],
)
def test_cases_the_fuzzer_found(tmp_path: Path, case: str, needle: str) -> None:
    """The exact inputs ``bench/fuzz.py`` found (a case name rebuilds its input byte for byte)."""
    result = run_case(Case.parse(case), tmp_path, quick=True)
    assert not result.problems, result.problems
    assert all(needle in o.stderr for o in result.outcomes), [o.stderr for o in result.outcomes]


def test_external_data_location_with_a_nul_character(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Crash: ValueError (embedded null byte) from os.path.realpath, an internal error."""
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "w.bin\x00.txt"), ("offset", "0"), ("length", "64")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    path = tmp_path / "m.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    code = main(["ir", str(path)])
    assert_one_error_line(code, capsys.readouterr().err, "external data location 'w.bin\\x00.txt' contains a NUL")


def test_python_warnings_are_one_log_line(tmp_path: Path) -> None:
    """Contract: numpy's RuntimeWarning on a model's odd constants (an infinite BatchNormalization
    scale times a zero mean: 0·inf in fold-batchnorm) printed two raw lines; it is one ``afmc:
    WARNING:`` line. (A negative variance, the first example, is now an error: test_safety.)"""
    model = onnx.load(str(SAMPLES / "cnn_digits.onnx"))
    odd = {"bn1.weight": np.full(16, np.inf, np.float32), "bn1.running_mean": np.zeros(16, np.float32)}
    for tensor in model.graph.initializer:
        if tensor.name in odd:
            tensor.CopyFrom(numpy_helper.from_array(odd[tensor.name], tensor.name))
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    code, err, _ = run_afmc(["check", str(path), "--target", "pcm", "--input-shape", "input=1x1x8x8",
                             "--pipeline", QUICK_PIPELINE])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 0 and lines, err
    assert all(line.startswith("afmc: WARNING: RuntimeWarning: ") for line in lines), err
