"""The ``calibrate`` pass and the calibration ops: IR round trip, determinism, bad data, the simulator's
drift compensation, the exactness of the offline ADC search, and the effect on accuracy.

Calibration here runs on a few rows (``samples=8``) so that the file stays fast; bench/drift.py
measures accuracy over time on the full splits.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from afmc.passes.calibrate import (
    Calibrate,
    _ideal_mvm,
    calibration_chunks,
    check_calibration_data,
    device_drifts,
    fit_columns,
)
from afmc.targets import load_target
from helpers import SAMPLES, sample_path, sample_shapes
from hypothesis import given, settings
from hypothesis import strategies as st

from afmc.bundle import load_bundle
from afmc.cli import main
from afmc.driver import compile_module, load_module
from afmc.errors import UsageError, VerifyError
from afmc.interp import run_module
from afmc.ir import parse_module, print_module, verify
from afmc.pipeline import parse_pipeline
from afmc.sim.run import onnxruntime_outputs, simulate
from afmc.sim.simulator import AnalogSimulator, SimOptions

BEFORE = "canonicalize,fold-constants,fold-batchnorm,canonicalize,partition,tile,place"
DAY = 86400.0


def calibration(name: str, rows: int | None = None) -> dict[str, np.ndarray]:
    with np.load(SAMPLES / f"{name}_calibration.npz", allow_pickle=False) as data:
        return {"input": data["input"][:rows]}


def test_split(name: str, rows: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    with np.load(SAMPLES / f"{name}_test.npz", allow_pickle=False) as data:
        return {"input": data["input"][:rows]}, data["labels"][:rows]


test_split.__test__ = False  # type: ignore[attr-defined]  (a helper, not a test)


def calibrated(name: str, target: str = "pcm", batch: int = 8, spec: str = "calibrate{samples=8}", seed: int = 0,
               data: dict[str, np.ndarray] | None | str = "default"):  # type: ignore[no-untyped-def]
    module = load_module(sample_path(name), sample_shapes(name, batch))
    feeds = calibration(name) if data == "default" else data
    compilation = compile_module(module, load_target(target), f"{BEFORE},{spec}", seed=seed,
                                 calibration_data=feeds)  # type: ignore[arg-type]
    return module, compilation


def ops(module, name: str) -> list:  # type: ignore[no-untyped-def]
    return [op for op in module.ops if op.name == name]


# -- the IR ----------------------------------------------------------------------------------------


def test_calibrated_ir_round_trips_and_carries_everything() -> None:
    module, compilation = calibrated("cnn_digits", spec="calibrate{samples=8 input-range=max}")
    text = print_module(module, constants=True)
    assert print_module(parse_module(text), constants=True) == text
    mvms, accs = ops(module, "xbar.mvm"), ops(module, "xbar.accumulate")
    assert all(isinstance(op.attr("input_scale"), float) and op.attr("input_scale") > 0 for op in mvms)
    assert all(op.attr("adc_range")[0] == -op.attr("adc_range")[1] for op in mvms)
    drifts, cals = ops(module, "xbar.drift_compensate"), ops(module, "xbar.calibrate")
    assert len(drifts) == len(cals) == len(accs)  # one of each per column block
    for acc, drift, cal in zip(accs, drifts, cals):
        assert drift.operands[0] is acc.result and cal.operands[0] is drift.result
        assert [u.name for u in cal.result.uses] == ["xbar.assemble"]
        assert drift.attr("mode") == "global" and drift.attr("reference") > 0
    assert module.attributes["calibration"]["rows"] == 8
    rows = compilation.context.report["calibration"]["layers"]
    assert [r["layer"] for r in rows] == ["/conv1/Conv", "/conv2/Conv", "/conv3/Conv", "/fc/Gemm"]
    assert all(r["rel_error_after"] <= r["rel_error_before"] for r in rows)


def test_pass_options_parse_and_print_back() -> None:
    spec = "calibrate{input-range=std std=3.5 adc=max columns=false drift=column samples=4}"
    assert str(parse_pipeline(spec)) == spec
    (calibrate,) = parse_pipeline(spec).instantiate()
    assert calibrate == Calibrate(input_range="std", std=3.5, adc="max", columns=False, drift="column", samples=4)
    for bad in ("calibrate{input-range=median}", "calibrate{adc=auto}", "calibrate{drift=local}",
                "calibrate{percentile=0}", "calibrate{samples=-1}", "calibrate{min-rows=0}"):
        with pytest.raises(UsageError):
            parse_pipeline(bad).instantiate()


def test_modes_and_options_shape_the_ir() -> None:
    module, _ = calibrated("mlp_digits", spec="calibrate{input-range=max adc=max columns=false drift=column samples=8}")
    assert not ops(module, "xbar.calibrate")
    drifts = ops(module, "xbar.drift_compensate")
    assert drifts and all(d.attr("mode") == "column" and d.attr("reference").shape == d.result.type.shape[1:]
                          for d in drifts)
    scales = {op.attr("layer"): op.attr("input_scale") for op in ops(module, "xbar.mvm")}
    assert scales["/fc1/Gemm"] == pytest.approx(float(np.max(np.abs(calibration("mlp_digits")["input"][:8]))), rel=1e-6)
    module, _ = calibrated("mlp_digits", spec="calibrate{input-range=dynamic adc=target drift=none samples=8}")
    assert not ops(module, "xbar.drift_compensate") and len(ops(module, "xbar.calibrate")) == 3
    assert all(op.attr("input_scale") is None and op.attr("adc_range") is None for op in ops(module, "xbar.mvm"))


@pytest.mark.parametrize("target", ["crossbar", "pcm"])
def test_best_input_range_is_the_best_candidate_after_both_converters(target: str) -> None:
    """``best`` scores max, percentile, std and the per-vector scaling each with its own ADC range: on
    the CNN's first analog layer (whose inputs no earlier choice changes) its
    error is that of the best candidate, which is also what that candidate alone would give."""
    def first_error(mode: str) -> float:
        _, compilation = calibrated("cnn_digits", target=target,
                                    spec=f"calibrate{{samples=8 input-range={mode} columns=false drift=none}}")
        return float(compilation.context.report["calibration"]["layers"][0]["rel_error_before"])

    best = first_error("best")
    singles = {mode: first_error(mode) for mode in ("max", "percentile", "std", "dynamic")}
    # The same choice up to float32 summation order (the scored and the final reads chunk differently).
    assert best <= min(singles.values()) * (1 + 1e-5)
    assert max(singles.values()) > min(singles.values()) * 1.01  # the candidates differ: a wrong pick would show


def test_adc_search_is_held_out_and_may_leave_headroom() -> None:
    """``adc=search`` scores ranges on vectors that did not set them, so it may choose a range above
    everything calibration saw (``max``); scored in-sample it never could (every candidate was at most
    the profiled maximum)."""
    ranges = {}
    for adc in ("max", "search"):
        _, compilation = calibrated("mlp_digits", target="crossbar",
                                    spec=f"calibrate{{samples=32 input-range=max adc={adc} columns=false drift=none}}")
        ranges[adc] = [row["adc_range"] for row in compilation.context.report["calibration"]["layers"]]
    above = [(layer, key) for layer, (peak, chosen) in enumerate(zip(ranges["max"], ranges["search"]))
             for key in chosen if chosen[key][1] > peak[key][1] * (1 + 1e-9)]
    below = [(layer, key) for layer, (peak, chosen) in enumerate(zip(ranges["max"], ranges["search"]))
             for key in chosen if chosen[key][1] < peak[key][1] * (1 - 1e-9)]
    assert above and below  # headroom where new data would clip, finer steps where it would not


def test_without_data_only_the_drift_references() -> None:
    """The data-free part: the reference readout where the device drifts (pcm, flash), nothing on rram."""
    assert device_drifts(load_target("pcm")) and device_drifts(load_target("flash"))
    assert not device_drifts(load_target("crossbar"))
    module, compilation = calibrated("mlp_digits", data=None)
    assert len(ops(module, "xbar.drift_compensate")) == 3 and not ops(module, "xbar.calibrate")
    assert all(op.attr("input_scale") is None and op.attr("adc_range") is None for op in ops(module, "xbar.mvm"))
    assert compilation.context.report["calibration"]["rows"] == 0
    module, _ = calibrated("mlp_digits", target="crossbar", data=None)
    assert not ops(module, "xbar.drift_compensate") and not ops(module, "xbar.calibrate")
    assert module.attributes["calibration"]["drift"] == "none"


def test_calibrating_twice_is_refused() -> None:
    module, _ = calibrated("mlp_digits", data=None)
    with pytest.raises(Exception, match="already calibrated"):
        compile_module(module, load_target("pcm"), "calibrate")


def test_verifier_rejects_bad_calibration_attributes() -> None:
    module, _ = calibrated("mlp_digits", spec="calibrate{samples=8 drift=global}")
    drift, cal = ops(module, "xbar.drift_compensate")[0], ops(module, "xbar.calibrate")[0]
    mvm = ops(module, "xbar.mvm")[0]
    width = cal.result.type.shape[1]
    for op, change in ((drift, {"reference": -1.0}), (drift, {"mode": "row"}), (drift, {"amplitude": 2.0}),
                       (cal, {"gain": np.ones(width + 1)}), (cal, {"offset": np.zeros(width, np.float32)}),
                       (mvm, {"adc_range": (1.0, -1.0)}), (mvm, {"input_scale": 0.0})):
        saved = op.attributes
        op.set_attrs(**change)
        with pytest.raises(VerifyError):
            verify(module)
        op.attributes = saved
    verify(module)


# -- determinism and data ----------------------------------------------------------------------------


def test_calibration_is_deterministic() -> None:
    texts = [print_module(calibrated("cnn_digits", seed=seed)[0], constants=True) for seed in (5, 5, 6)]
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]  # another programming instance, other references and gains


def test_bad_calibration_data_names_the_input() -> None:
    module = load_module(sample_path("mlp_digits"), sample_shapes("mlp_digits", 4))
    good = calibration("mlp_digits")
    cases = [
        ({"x": good["input"]}, "no array for input 'input'"),
        ({"input": good["input"].astype(np.float64)}, "input 'input' is float64"),
        ({"input": good["input"][:, :63]}, "input 'input' has shape [200, 63]"),
        ({"input": good["input"][None]}, "input 'input' has shape [1, 200, 64]"),
        ({"input": good["input"][:0]}, "input 'input' has shape [0, 64]"),
    ]
    for data, needle in cases:
        with pytest.raises(UsageError, match=needle.replace("[", r"\[").replace("]", r"\]")):
            check_calibration_data(module, data)
    arrays = check_calibration_data(module, {**good, "labels": np.zeros(200, np.int64)})
    runs, used = calibration_chunks(module, arrays, 10)
    assert used == 10 and len(runs) == 3 and all(r["input"].shape == (4, 64) for r in runs)
    np.testing.assert_array_equal(runs[2]["input"], good["input"][[8, 9, 0, 1]])  # cycled, never padded


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def test_cli_calibrates_into_the_bundle_and_refuses_bad_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = "mlp_digits"
    data = calibration(name)
    np.savez(tmp_path / "cal.npz", input=data["input"][:12], labels=np.zeros(12, np.int64))
    base = ["compile", str(sample_path(name)), "--target", "pcm", "--input-shape", "input=4x64",
            "--pipeline", f"{BEFORE},calibrate{{samples=8}},schedule"]
    code, err = run_cli([*base, "-o", str(tmp_path / "b"), "--calibration-data", str(tmp_path / "cal.npz")], capsys)
    assert code == 0 and "calibrated on cal.npz" in err, err
    module, manifest, inputs = load_bundle(tmp_path / "b")
    assert manifest["calibration"]["data"] == "cal.npz" and manifest["calibration"]["rows"] == 8
    assert len(manifest["calibration"]["layers"]) == 3
    np.testing.assert_array_equal(inputs["input"], data["input"][:4])  # the first calibration batch
    assert ops(module, "xbar.calibrate") and ops(module, "xbar.drift_compensate")
    assert "xbar.calibrate" in (tmp_path / "b" / "ir.mlir").read_text()
    code, err = run_cli(["run", str(tmp_path / "b"), "--t-inference", "1d", "--format", "json"], capsys)
    assert code == 0, err
    for bad, needle in (({"input": data["input"].astype(np.float64)}, "input 'input' is float64"),
                        ({"images": data["input"]}, "no array for input 'input'"),
                        ({"input": data["input"].reshape(-1, 8, 8)}, "input 'input' has shape")):
        np.savez(tmp_path / "bad.npz", **bad)
        code, err = run_cli([*base, "-o", str(tmp_path / "c"), "--calibration-data", str(tmp_path / "bad.npz")], capsys)
        assert code == 2 and err.startswith("afmc: error:") and needle in err and "\n" not in err.strip(), err
        assert not (tmp_path / "c").exists()
    code, err = run_cli([*base[:2], "--input-shape", "input=4x64", "--calibration-data", str(tmp_path / "cal.npz")],
                        capsys)
    assert code == 2 and "needs --target" in err


def test_cli_uses_a_samples_calibration_split_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["compile", str(sample_path("mlp_digits")), "--target", "flash", "--input-shape", "input=16x64"]
    code, err = run_cli([*args, "-o", str(tmp_path / "a")], capsys)
    assert code == 0 and "calibrated on mlp_digits_calibration.npz" in err
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["calibration"]["rows"] == 32 and manifest["calibration"]["drift"] == "global"
    code, err = run_cli([*args, "-o", str(tmp_path / "b"), "--calibration-data", "none"], capsys)
    assert code == 0 and "calibrated on" not in err
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["calibration"]["rows"] == 0


# -- semantics ---------------------------------------------------------------------------------------


def test_ideal_semantics_of_the_ops() -> None:
    module, _ = calibrated("mlp_digits", spec="calibrate{samples=8 drift=global}")
    inputs, _ = test_split("mlp_digits", 8)
    got = run_module(module, inputs)["logits"]
    for op in ops(module, "xbar.calibrate"):  # the ideal interpreter applies gain and offset …
        op.set_attrs(gain=np.ones_like(op.attr("gain")), offset=np.zeros_like(op.attr("offset")))
    plain = run_module(module, inputs)["logits"]
    assert not np.allclose(got, plain)
    for op in ops(module, "xbar.drift_compensate"):  # … and ideal arrays never drift: α = 1
        op.set_attrs(reference=op.attr("reference") * 3.0)
    np.testing.assert_array_equal(run_module(module, inputs)["logits"], plain)


def test_readout_right_after_programming_repeats_the_stored_reference() -> None:
    """The simulator re-measures r at t0 exactly as the pass did (same instance, same noise keys): α = 1;
    a day later PCM has drifted and α > 1 (the mean drift factor at 1 day is about 0.66)."""
    for name, target, mode in (("cnn_digits", "pcm", "global"), ("mlp_digits", "crossbar", "column")):
        module, _ = calibrated(name, target=target, seed=2, spec=f"calibrate{{samples=4 drift={mode}}}")
        module = parse_module(print_module(module, constants=True))
        sim = AnalogSimulator(module, load_target(target), SimOptions(seed=2))
        for op in ops(module, "xbar.drift_compensate"):
            layer = sim._layer_named[op.attr("layer")]
            level = sim.reference_level(layer, op.attr("amplitude"), None if mode == "global" else op.operands[0].producer)
            np.testing.assert_array_equal(op.attr("reference"), level)
    module, _ = calibrated("cnn_digits", seed=2, spec="calibrate{samples=4}")
    sim = AnalogSimulator(module, load_target("pcm"), SimOptions(seed=2, t_inference=DAY))
    alphas = [op.attr("reference") / sim.reference_level(sim._layer_named[op.attr("layer")], op.attr("amplitude"))
              for op in ops(module, "xbar.drift_compensate")]
    assert all(1.3 < a < 1.8 for a in alphas), alphas
    with pytest.raises(Exception, match="compensates drift itself"):
        AnalogSimulator(module, load_target("pcm"), SimOptions(drift_compensation="global"))


def _without_drift_ops(module):  # type: ignore[no-untyped-def]
    for op in ops(module, "xbar.drift_compensate"):
        module.forward(op.result, op.operands[0])
    module.remove_dead()
    return module


def test_compensation_readouts_leave_pending_column_blocks_alone() -> None:
    """On pcm with 64-column arrays fc1 of the digits MLP (64 inputs, 128 outputs) has two column blocks. At
    t0 on the calibrated instance α = 1, so the outputs equal those of the module without its compensation
    ops, bit for bit: the readout of the first block's compensation (64 one-hot vectors of 64 rows) must not
    overwrite the second block's array results (64 input vectors here), which wait in the layer's
    workspace of that shape for their accumulate."""
    pcm = load_target("pcm")
    target = dataclasses.replace(pcm, array=dataclasses.replace(pcm.array, cols=64))
    module = load_module(sample_path("mlp_digits"), sample_shapes("mlp_digits", 64))
    compile_module(module, target, f"{BEFORE},calibrate{{samples=8 columns=false}}", calibration_data=calibration("mlp_digits"))
    assert len(ops(module, "xbar.drift_compensate")) > len({op.attr("layer") for op in ops(module, "xbar.accumulate")})
    inputs, _ = test_split("mlp_digits", 64)
    got = AnalogSimulator(module, target, SimOptions()).run(inputs)["logits"]
    plain = AnalogSimulator(_without_drift_ops(module), target, SimOptions()).run(inputs)["logits"]
    np.testing.assert_array_equal(got, plain)


def test_switched_off_effects_and_other_instances_measure_their_own_reference() -> None:
    """The stored references describe instance 0 with every effect on. Another seed, or effects switched
    off, read other arrays: those measure their own reference at t0, so α = 1 right after programming
    there too, and with every effect off the non-ideal path is the ideal one again."""
    module, _ = calibrated("mlp_digits", target="pcm", spec="calibrate{samples=8 columns=false}")
    inputs, _ = test_split("mlp_digits", 8)
    target = load_target("pcm")
    plain = _without_drift_ops(parse_module(print_module(module, constants=True)))
    for options in (SimOptions(seed=5), SimOptions().without("out-noise", "read-noise"), SimOptions(samples=2)):
        sim = AnalogSimulator(module, target, options)
        bare = AnalogSimulator(plain, target, options)
        if options.samples > 1:
            sim.program(1), sim.set_time(0.0), bare.program(1), bare.set_time(0.0)
        np.testing.assert_array_equal(sim.run(inputs)["logits"], bare.run(inputs)["logits"])
    everything = SimOptions().without("dac", "adc", "out-noise", "programming-noise", "drift", "read-noise",
                                      "stuck", "ir-drop")
    got = AnalogSimulator(module, target, everything).run(inputs)["logits"]
    ideal = AnalogSimulator(module, target, SimOptions(ideal=True)).run(inputs)["logits"]
    np.testing.assert_allclose(got, ideal, rtol=1e-5, atol=1e-5 * float(np.abs(ideal).max()))


def test_a_layer_of_zero_weights_outputs_its_bias_and_is_not_compensated() -> None:
    """A zero-initialised residual branch (timm's zero_init_last in a randomly initialised ResNet): scale 0,
    so its output is exactly its bias whatever the arrays read, and no drift compensation (its readout
    would be noise alone; without output noise it would be 0 and α = r0 / 0)."""
    module = load_module(sample_path("mlp_digits"), sample_shapes("mlp_digits", 8))
    fc2 = next(op for op in module.ops if op.name == "nn.gemm" and "fc2" in op.loc)
    weight = module.constant_of(fc2.operands[1])
    _, zeros = module.add_constant(np.zeros_like(weight), "fc2.zero", fc2.loc)
    module.ops.insert(module.ops.index(fc2), zeros)
    fc2.set_operand(1, zeros.result)
    module.remove_dead()
    target = load_target("pcm")
    compile_module(module, target, target.pipeline, calibration_data=calibration("mlp_digits"))
    assert not any("fc2" in op.attr("layer") for op in ops(module, "xbar.drift_compensate"))
    assert all(op.attr("column_scales") is not None and not np.any(op.attr("column_scales"))
               for op in ops(module, "xbar.accumulate") if "fc2" in op.attr("layer"))
    inputs, _ = test_split("mlp_digits", 8)
    for options in (SimOptions(), SimOptions().without("out-noise"), SimOptions(t_inference=DAY)):
        logits = AnalogSimulator(module, target, options).run(inputs)["logits"]
        assert np.all(np.isfinite(logits))
        assert np.ptp(logits, axis=0).max() < 1e-6  # fc2 gives its bias alone: every row the same logits


@pytest.mark.parametrize(("target", "tile"), [("pcm", "tile"), ("crossbar", "tile"), ("pcm", "tile{scale=column}")])
def test_offline_adc_search_equals_reading_the_arrays(target: str, tile: str) -> None:
    """The ADC search scores ranges from one ADC-ideal read (A + s·Σ back·δ); that is what the simulator
    computes when it reads the arrays with those ranges, to float32 rounding (which can move a value
    at a rounding boundary by one ADC code). Per-column weight scales (pcm's pipeline) included."""
    module = load_module(sample_path("cnn_digits"), sample_shapes("cnn_digits", 2))
    spec = load_target(target)
    compile_module(module, spec, BEFORE.replace(",tile,", f",{tile},"))
    sim = AnalogSimulator(module, spec, SimOptions(seed=1))
    seen: dict[int, np.ndarray] = {}
    forward = sim.forward
    sim.forward = lambda layer, a: seen.setdefault(layer.index, np.array(a)) is not None and forward(layer, a)  # type: ignore[method-assign]
    sim.run(test_split("cnn_digits", 2)[0])
    sim.forward = forward  # type: ignore[method-assign]
    layer, unfolded = sim.layers[1], seen[1]
    reference = {id(op): _ideal_mvm(op, unfolded, module) for op in layer.ops}
    calls = sim.noise_calls
    predicted, factors = Calibrate()._adc_ranges(sim, layer, unfolded, reference, calls)
    assert all(0 < f < 1 for f in factors.values())  # the target's range is wider than this layer needs
    sim.noise_calls = calls
    for key, value in sim.forward(layer, unfolded).items():
        scale = float(np.max(np.abs(value)))
        close = np.isclose(predicted[key], value, rtol=0, atol=2e-5 * scale)
        assert close.mean() > 0.995 and np.max(np.abs(predicted[key] - value)) < 5e-3 * scale


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_fit_columns_recovers_an_affine_map(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.standard_normal((40, 5))
    gain, offset = rng.uniform(0.5, 2.0, 5), rng.standard_normal(5)
    got_gain, got_offset = fit_columns(y, y * gain + offset)
    np.testing.assert_allclose(got_gain, gain, rtol=1e-9)
    np.testing.assert_allclose(got_offset, offset, rtol=1e-9, atol=1e-9)
    constant = np.ones((40, 2))
    flat_gain, flat_offset = fit_columns(constant, constant * 3.0)
    np.testing.assert_array_equal(flat_gain, [1.0, 1.0])
    np.testing.assert_allclose(flat_offset, [2.0, 2.0])


def test_drift_compensation_holds_accuracy_after_a_day() -> None:
    """The digits CNN on pcm, one programming instance, 100 test images: a day after programming the
    uncompensated model has lost most of its accuracy (REFERENCE.md §4), the calibrated one has not."""
    inputs, labels = test_split("cnn_digits", 100)
    accuracy = {}
    for spec in ("calibrate{samples=16 drift=none columns=false}", "calibrate{samples=16}"):
        module, _ = calibrated("cnn_digits", batch=100, spec=spec, seed=3)
        run = simulate(module, load_target("pcm"), inputs, SimOptions(seed=3), [DAY])
        accuracy[spec] = float(np.mean(run.outputs[0][0]["logits"].argmax(-1) == labels))
    low, high = accuracy.values()
    assert low < 0.8 and high > 0.93, accuracy


def test_fit_columns_pools_the_columns_when_rows_are_few() -> None:
    """Two rows fit any column exactly; with fewer than min_rows the fit is one gain and offset shared
    by every column, the least-squares fit of all values pooled."""
    rng = np.random.default_rng(7)
    y = rng.standard_normal((2, 6))
    reference = 1.5 * y + 0.25 + 0.1 * rng.standard_normal((2, 6))
    gain, offset = fit_columns(y, reference, min_rows=32)
    pooled_gain, pooled_offset = np.polyfit(y.ravel(), reference.ravel(), 1)
    np.testing.assert_allclose(gain, np.full(6, pooled_gain), rtol=1e-9)
    np.testing.assert_allclose(offset, np.full(6, pooled_offset), rtol=1e-9)
    exact_gain, _ = fit_columns(y, reference, min_rows=2)
    assert np.ptp(exact_gain) > 0.1  # per column again once the rows suffice


def test_pcm_pipeline_keeps_the_cnn_near_digital_after_a_day() -> None:
    """With the pcm target's own pipeline (conv1 digital by min-fan-in, per-column weight scales, global
    drift compensation) one programmed instance stays within 2 points of onnxruntime on 100 test images a
    day after programming (issue 6; bench/drift.py measures the mean over instances)."""
    inputs, labels = test_split("cnn_digits", 100)
    target = load_target("pcm")
    module = load_module(sample_path("cnn_digits"), sample_shapes("cnn_digits", 100))
    compile_module(module, target, target.pipeline.replace("calibrate", "calibrate{samples=16}"), seed=3,
                   calibration_data=calibration("cnn_digits"))
    run = simulate(module, target, inputs, SimOptions(seed=3), [DAY])
    analog = float(np.mean(run.outputs[0][0]["logits"].argmax(-1) == labels))
    digital = float(np.mean(onnxruntime_outputs(sample_path("cnn_digits"), inputs)["logits"].argmax(-1) == labels))
    assert analog >= digital - 0.02, (analog, digital)
