"""LSTM, GRU and RNN (``afmc.frontend.recurrent``): lowered at import, equal to onnxruntime to fp32
rounding for every direction, layout, bias and initial-state combination and the optional features
exporters emit (each imported module verifies and round-trips through its text form); the input
projection goes analog and the T steps of the recurrence share one set of arrays, and the analog
simulator runs them exactly (``--ideal``) and with one programmed state.

onnxruntime refuses ``layout=1``; its reference for such a node is the same node at ``layout=0`` on
transposed inputs, outputs transposed back.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from afmc.targets import load_target
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from afmc.cli import main
from afmc.driver import compile_module
from afmc.frontend import import_model
from afmc.interp import run_module
from afmc.ir.parser import parse_module
from afmc.ir.printer import print_module
from afmc.ir.verify import verify
from afmc.sim.simulator import AnalogSimulator, SimOptions

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
PIPELINE = "canonicalize,fold-constants,fold-batchnorm,canonicalize,partition,tile"


def build(
    kind: str,
    direction: str = "forward",
    layout: int = 0,
    steps: int = 5,
    batch: int = 3,
    features: int = 4,
    hidden: int = 6,
    *,
    bias: bool = True,
    initial: bool = True,
    peepholes: bool = False,
    lengths: np.ndarray | None = None,
    runtime: tuple[str, ...] = (),
    seed: int = 0,
    **attrs: Any,
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """One recurrent node with random weights; the names in ``runtime`` become graph inputs."""
    rng = np.random.default_rng(seed)
    gates, dirs = GATES[kind], 2 if direction == "bidirectional" else 1
    x_shape = [batch, steps, features] if layout else [steps, batch, features]
    state = [batch, dirs, hidden] if layout else [dirs, batch, hidden]
    values: dict[str, np.ndarray] = {
        "X": rng.standard_normal(x_shape).astype(np.float32),
        "W": (rng.standard_normal([dirs, gates * hidden, features]) * 0.5).astype(np.float32),
        "R": (rng.standard_normal([dirs, gates * hidden, hidden]) * 0.5).astype(np.float32),
    }
    names = ["X", "W", "R", "", "", "", "", ""]
    if bias:
        values["B"], names[3] = rng.standard_normal([dirs, 2 * gates * hidden]).astype(np.float32), "B"
    if lengths is not None:
        values["L"], names[4] = np.asarray(lengths, np.int32), "L"
    if initial:
        values["H0"], names[5] = rng.standard_normal(state).astype(np.float32), "H0"
        if kind == "LSTM":
            values["C0"], names[6] = rng.standard_normal(state).astype(np.float32), "C0"
    if peepholes:
        values["P"], names[7] = rng.standard_normal([dirs, 3 * hidden]).astype(np.float32), "P"
    names = names[: 8 if kind == "LSTM" else 6]
    while not names[-1]:
        names.pop()
    feeds = {k: v for k, v in values.items() if k in ("X", "H0", "C0") or k in runtime}
    inits = [nh.from_array(v, k) for k, v in values.items() if k not in feeds]
    inputs = [oh.make_tensor_value_info(k, oh.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in feeds.items()]
    outs = ["Y", "Y_h", "Y_c"][: 3 if kind == "LSTM" else 2]
    node = oh.make_node(kind, names, outs, name="rnn", hidden_size=hidden, direction=direction, layout=layout, **attrs)
    y_shape = [batch, steps, dirs, hidden] if layout else [steps, dirs, batch, hidden]
    outputs = [oh.make_tensor_value_info("Y", TensorProto.FLOAT, y_shape)]
    outputs += [oh.make_tensor_value_info(o, TensorProto.FLOAT, state) for o in outs[1:]]
    model = oh.make_model(oh.make_graph([node], "g", inputs, outputs, inits), opset_imports=[oh.make_opsetid("", 21)])
    model.ir_version = 10
    return model, feeds


def reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    node = model.graph.node[0]
    if not any(a.name == "layout" and a.i for a in node.attribute):
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    flat = onnx.ModelProto()
    flat.CopyFrom(model)
    for attr in flat.graph.node[0].attribute:
        if attr.name == "layout":
            attr.i = 0
    swapped = ("X", "H0", "C0")
    for info in flat.graph.input:
        if info.name in swapped:
            dims = info.type.tensor_type.shape.dim
            dims[0].dim_value, dims[1].dim_value = dims[1].dim_value, dims[0].dim_value
    del flat.graph.output[:]
    flat.graph.output.extend(oh.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in node.output)
    feeds = {k: (v.transpose(1, 0, 2) if k in swapped else v) for k, v in feeds.items()}
    got = ort.InferenceSession(flat.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    return [got[0].transpose(2, 0, 1, 3), *(v.transpose(1, 0, 2) for v in got[1:])]


def assert_matches_onnxruntime(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    want = reference(model, feeds)
    module = import_model(model)
    verify(module)
    text = print_module(module, constants=True)
    assert print_module(parse_module(text), constants=True) == text
    got = run_module(module, feeds)
    assert list(got) == [o.name for o in model.graph.output]
    for value, expected in zip(got.values(), want):
        assert value.shape == expected.shape and value.dtype == expected.dtype
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)


CASES = [
    (kind, direction, layout, with_state)
    for kind, direction, layout, with_state in itertools.product(
        GATES, ("forward", "reverse", "bidirectional"), (0, 1), (False, True)
    )
]


@pytest.mark.parametrize(("kind", "direction", "layout", "with_state"), CASES)
def test_matches_onnxruntime(kind: str, direction: str, layout: int, with_state: bool) -> None:
    """Y, Y_h (and Y_c) for every direction and layout, with biases and initial states or without."""
    model, feeds = build(kind, direction, layout, bias=with_state, initial=with_state)
    assert_matches_onnxruntime(model, feeds)


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("GRU", {"linear_before_reset": 1}),
        ("GRU", {"linear_before_reset": 1, "bias": False}),
        ("GRU", {"linear_before_reset": 1, "initial": False}),
        ("LSTM", {"peepholes": True}),
        ("LSTM", {"peepholes": True, "initial": False}),
        ("LSTM", {"input_forget": 1}),
        ("LSTM", {"clip": 0.5}),
        ("GRU", {"clip": 0.3}),
        ("RNN", {"clip": 0.3}),
        ("LSTM", {"runtime": ("W", "R", "B", "P"), "peepholes": True}),
        ("GRU", {"runtime": ("W", "R", "B")}),
        ("LSTM", {"steps": 1, "batch": 1}),
        ("GRU", {"steps": 1, "batch": 4}),
        ("RNN", {"steps": 7, "batch": 1}),
        ("RNN", {"activations": ["Relu", "LeakyRelu"], "activation_alpha": [0.3]}),
        ("GRU", {"activations": ["HardSigmoid", "LeakyRelu", "Sigmoid", "Softsign"],
                 "activation_alpha": [0.3, 0.2], "activation_beta": [0.4]}),
        ("LSTM", {"activations": ["HardSigmoid", "Elu", "Softplus", "Sigmoid", "ScaledTanh", "Affine"],
                  "activation_alpha": [0.3, 0.7, 0.9, 0.6], "activation_beta": [0.4, 0.8, 0.2]}),
        ("RNN", {"activations": ["ThresholdedRelu", "Tanh"], "activation_alpha": [0.2]}),
    ],
)
def test_options_match_onnxruntime(kind: str, options: dict[str, Any]) -> None:
    """Peepholes, coupled gates, clipping, run-time weights, a single step, other activations (the
    alphas and betas consumed in order by the functions that take them, as onnxruntime does)."""
    model, feeds = build(kind, "bidirectional", **options)
    assert_matches_onnxruntime(model, feeds)


@pytest.mark.parametrize(("kind", "direction", "runtime"),
                         list(itertools.product(GATES, ("forward", "reverse", "bidirectional"), (False, True))))
def test_sequence_lens(kind: str, direction: str, runtime: bool) -> None:
    """Shorter sequences, constant or given at run time: a step past the end keeps the state and
    outputs zeros; in reverse, each sequence starts at its own last step."""
    model, feeds = build(kind, direction, lengths=np.array([5, 2, 3]), runtime=("L",) if runtime else ())
    assert_matches_onnxruntime(model, feeds)


def test_full_constant_sequence_lens_adds_nothing() -> None:
    full = import_model(build("LSTM", lengths=np.array([5, 5, 5]))[0])
    absent = import_model(build("LSTM")[0])
    assert [op.name for op in full.ops if op.name != "nn.constant"] == [
        op.name for op in absent.ops if op.name != "nn.constant"
    ]


def test_zero_initial_state_has_no_first_product() -> None:
    """Without initial_h the first step's h·Rᵀ is a product with zeros: it is left out."""
    for initial, products in ((True, 1 + 5), (False, 1 + 4)):
        module = import_model(build("LSTM", initial=initial)[0])
        assert sum(op.name == "nn.matmul" for op in module.ops) == products


def _partitioned(model: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    module = import_model(model)
    compile_module(module, load_target("pcm"), "canonicalize,fold-constants,canonicalize,partition")
    return {op.loc: (op.attr("region"), op.attr("reason")) for op in module.ops if op.name == "nn.matmul"}


def test_recurrence_steps_share_one_set_of_arrays() -> None:
    """The projection MatMul of all steps and the T chained products of Rᵀ go analog; the T steps
    are tiled onto ONE set of arrays (the same level symbols), placed once (same core and slot),
    counted once, and the report says which layer's arrays a step reads."""
    model = build("LSTM", steps=4, features=32, hidden=300)[0]
    regions = _partitioned(model)
    assert regions.pop("rnn/input_projection") == ("analog", "static-weight matmul")
    assert sorted(regions) == [f"rnn/recurrence_r_t{t}" for t in range(4)]
    for region, reason in regions.values():
        assert region == "analog" and "one of 4 steps of a recurrence" in reason
    module = import_model(model)
    target = load_target("pcm")
    report = compile_module(module, target, target.pipeline.replace(",calibrate", "")).context.report
    steps = [f"rnn/recurrence_r_t{t}" for t in range(4)]
    arrays: dict[str, list[tuple[str, Any, Any]]] = {}
    for op in module.ops:
        if op.name == "xbar.mvm":
            arrays.setdefault(op.attr("layer"), []).append((op.attr("array").name, op.attr("core"), op.attr("slot")))
    assert len(arrays[steps[0]]) == 5 * 2  # 300 rows over 256-row arrays, 1200 columns over 256
    assert all(arrays[step] == arrays[steps[0]] for step in steps)
    assert not {a for a, _, _ in arrays[steps[0]]} & {a for a, _, _ in arrays["rnn/input_projection"]}
    rows = {row["layer"]: row for row in report["tiles"]}
    assert rows[steps[0]]["arrays"] == 10 and "shares_arrays_of" not in rows[steps[0]]
    assert all(rows[step]["arrays"] == 0 and rows[step]["shares_arrays_of"] == steps[0] for step in steps[1:])
    assert module.attributes["tiles_required"] == 10 + len(arrays["rnn/input_projection"])
    assert report["placement"]["tiles"] == module.attributes["tiles_required"]


def test_shared_arrays_have_one_programmed_state() -> None:
    """On the non-ideal chip every step of the recurrence reads the same programmed devices."""
    model, feeds = build("RNN", steps=3, features=32, hidden=24)
    module = import_model(model)
    compile_module(module, load_target("pcm"), PIPELINE)
    sim = AnalogSimulator(module, load_target("pcm"), SimOptions(seed=3, t_inference=3600.0))
    steps = [layer for layer in sim.layers if "/recurrence_" in layer.name]
    assert len(steps) == 3 and all(step.device_index == steps[0].index for step in steps)
    assert steps[0].weights is not None
    for step in steps[1:]:
        np.testing.assert_array_equal(step.weights, steps[0].weights)
    projection = next(layer for layer in sim.layers if layer.name.endswith("input_projection"))
    assert projection.device_index == projection.index
    sim.run(feeds)


def test_a_single_step_recurrence_goes_analog() -> None:
    """T = 1 (a streaming model carrying its state): one recurrent product, analog like a dense layer."""
    regions = _partitioned(build("GRU", "bidirectional", steps=1, features=32, hidden=32, linear_before_reset=1)[0])
    assert set(regions.values()) == {("analog", "static-weight matmul")} and len(regions) == 4


def test_independent_products_of_one_weight_keep_their_own_arrays() -> None:
    """One weight applied to two branches that do not depend on each other is not a recurrence:
    each product keeps its own arrays, and the two work in parallel."""
    weight = nh.from_array(np.random.default_rng(0).standard_normal((32, 32)).astype(np.float32), "Wt")
    nodes = [oh.make_node("MatMul", ["a", "Wt"], ["ya"], name="left"),
             oh.make_node("MatMul", ["b", "Wt"], ["yb"], name="right")]
    info = [oh.make_tensor_value_info(n, TensorProto.FLOAT, [4, 32]) for n in ("a", "b", "ya", "yb")]
    model = oh.make_model(oh.make_graph(nodes, "g", info[:2], info[2:], [weight]), opset_imports=[oh.make_opsetid("", 21)])
    assert set(_partitioned(model).values()) == {("analog", "static-weight matmul")}
    module = import_model(model)
    compile_module(module, load_target("pcm"), PIPELINE)
    assert len({op.attr("array").name for op in module.ops if op.name == "xbar.mvm"}) == 2


@pytest.mark.parametrize(("kind", "steps"), [("LSTM", 1), ("GRU", 3), ("RNN", 2)])
def test_ideal_simulation_equals_the_digital_reference(kind: str, steps: int) -> None:
    """The tiled module (projection analog, and the single recurrent product when T = 1) simulated
    with ideal arrays equals the interpreter on the same compiled module."""
    model, feeds = build(kind, "bidirectional", steps=steps, features=32, hidden=24)
    module = import_model(model)
    compile_module(module, load_target("pcm"), PIPELINE)
    assert any(op.name == "xbar.mvm" for op in module.ops)
    want = run_module(module, feeds)
    got = AnalogSimulator(module, load_target("pcm"), SimOptions(ideal=True)).run(feeds)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-5 * float(np.abs(value).max()))


def test_cli_check_and_unsupported_activation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "lstm.onnx"
    onnx.save(build("LSTM", features=32, hidden=32)[0], path)
    assert main(["check", str(path), "--target", "pcm"]) == 0
    capsys.readouterr()
    bad = tmp_path / "bad.onnx"
    onnx.save(build("RNN", activations=["Mish"])[0], bad)
    assert main(["check", str(bad), "--target", "pcm"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("afmc: error:") and "node 'rnn'" in err and "activation 'Mish'" in err
    assert len(err.splitlines()) == 1


def test_too_long_a_sequence_is_refused_before_unrolling(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unrolled step is ~15 ops: a 10^5-step sequence would take minutes and gigabytes to import."""
    from afmc.frontend.recurrent import MAX_UNROLLED_STEPS

    path = tmp_path / "long.onnx"
    onnx.save(build("GRU", "bidirectional", steps=MAX_UNROLLED_STEPS // 2 + 1, batch=1, features=2, hidden=2,
                    initial=False)[0], path)
    assert main(["check", str(path), "--target", "pcm"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("afmc: error:") and f"more than {MAX_UNROLLED_STEPS} steps" in err
    assert len(err.splitlines()) == 1


def test_omitted_middle_output_gets_a_usable_name() -> None:
    """An omitted output between used ones (Y omitted, Y_h used; Split's middle part) gets a fresh
    name that the importer can claim (it used to be reserved twice: an internal error)."""
    x = oh.make_tensor_value_info("x", TensorProto.FLOAT, [3, 2])
    parts = [oh.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2]) for n in ("a", "c")]
    split = oh.make_node("Split", ["x"], ["a", "", "c"], axis=0, num_outputs=3)
    model = oh.make_model(oh.make_graph([split], "g", [x], parts), opset_imports=[oh.make_opsetid("", 21)])
    data = np.arange(6, dtype=np.float32).reshape(3, 2)
    got = run_module(import_model(model), {"x": data})
    np.testing.assert_array_equal(got["c"], data[2:])
    lstm, feeds = build("LSTM")
    lstm.graph.node[0].output[0] = ""
    del lstm.graph.output[0]
    got = run_module(import_model(lstm), feeds)
    np.testing.assert_allclose(got["Y_h"], reference(*build("LSTM"))[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("kind", "opset"), [("LSTM", 7), ("GRU", 9), ("RNN", 13)])
def test_older_opsets_convert(kind: str, opset: int) -> None:
    """Before opset 14 the ops had no ``layout``; the version converter brings them to 21."""
    model, feeds = build(kind, "bidirectional")
    node = model.graph.node[0]
    kept = [a for a in node.attribute if a.name != "layout"]
    del node.attribute[:]
    node.attribute.extend(kept)
    model.opset_import[0].version = opset
    model.ir_version = 7
    assert_matches_onnxruntime(model, feeds)
