"""The functional simulator (``afmc.sim``): exactness of the mapping, the device physics, determinism, CLI.

1. Exactness: with ``ideal`` the simulator equals the digital reference interpreter on the compiled IR
   (norm-wise relative error ≤ 1e-5) for every sample and target; with the converters on and every
   noise off it equals, bit for bit, `FixedPoint` below — an independent per-array numpy
   implementation of the fixed-point arithmetic documented in ``afmc.sim.periphery`` (integer
   products in int64, no stacking, no batching).
2. Physics: over ≥ 10^5 devices the programming-error σ, the mean drift factor at 1 h, 1 d and 1 y and
   the read-noise spread are within 3 % of REFERENCE.md §1; RRAM/flash noise, faults and charge loss,
   the IR-drop formula of §2, the parallel-device averaging and the per-read output noise likewise.
3. Monte-Carlo determinism, every non-ideality switch, accuracy over time, the CLI and the Python API.

Modules are compiled with the target's pipeline up to ``tile`` (placement and scheduling only add
attributes the functional simulator does not read; one test runs a target's full default pipeline).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from afmc.targets import load_target
from afmc.targets.spec import TargetSpec, from_dict
from helpers import TARGETS, sample_inputs, sample_path, sample_shapes

from afmc.cli import main
from afmc.driver import compile_module, load_module
from afmc.interp import Interpreter, run_module
from afmc.ir.core import Module
from afmc.sim.devices import Effects, Programmed, make_device
from afmc.sim.periphery import Adc, Dac, ir_drop_coefficient, ir_drop_factors
from afmc.sim.run import compare, parse_duration, run_bundle, run_model, simulate
from afmc.sim.simulator import NON_IDEALITIES, AnalogSimulator, SimOptions

PIPELINE = "canonicalize,fold-constants,fold-batchnorm,canonicalize,partition,tile"
BATCH = 16
HOUR, DAY, YEAR = 3600.0, 86400.0, 365 * 86400.0
DEVICES = 200_000


@functools.cache
def compiled(sample: str, target: str | TargetSpec, pipeline: str = PIPELINE, batch: int = BATCH) -> Module:
    module = load_module(sample_path(sample), sample_shapes(sample, batch))
    compile_module(module, load_target(target) if isinstance(target, str) else target, pipeline)
    return module


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    want64 = np.asarray(want, np.float64)
    return float(np.linalg.norm(np.asarray(got, np.float64) - want64) / np.linalg.norm(want64))


def with_params(target: str, **changes: object) -> TargetSpec:
    """A built-in target with some device parameters (or other dotted keys) changed."""
    data = load_target(target).to_dict()
    for key, value in changes.items():
        section, _, name = key.rpartition("__")
        table = data
        for part in section.split("__") if section else []:
            table = table.setdefault(part, {})
        table[name] = value
    return from_dict(data)


# -- 1. exactness -------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_ideal_equals_the_digital_reference(sample: str, target: str) -> None:
    module = compiled(sample, target)
    inputs = sample_inputs(sample, BATCH)
    want = run_module(module, inputs)
    got = AnalogSimulator(module, load_target(target), SimOptions(ideal=True)).run(inputs)
    for name, value in want.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape
        assert rel_err(got[name], value) <= 1e-5


@pytest.mark.parametrize("target", ["pcm", "crossbar"])
def test_ideal_ignores_the_calibration_fitted_to_the_non_ideal_chip(target: str) -> None:
    """``--ideal`` checks the mapping: per-column corrections and drift compensation learned on the
    noisy chip are left out, so a calibrated module gives exactly what the uncalibrated one gives."""
    module = load_module(sample_path("cnn_digits"), sample_shapes("cnn_digits", BATCH))
    with np.load(sample_path("cnn_digits").with_name("cnn_digits_calibration.npz"), allow_pickle=False) as data:
        calibration = {"input": data["input"][:32]}
    compile_module(module, load_target(target), PIPELINE + ",calibrate", calibration_data=calibration)
    assert any(op.name == "xbar.calibrate" for op in module.ops)
    inputs = sample_inputs("cnn_digits", BATCH)
    got = AnalogSimulator(module, load_target(target), SimOptions(ideal=True)).run(inputs)
    want = AnalogSimulator(compiled("cnn_digits", target), load_target(target), SimOptions(ideal=True)).run(inputs)
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value)


@pytest.mark.parametrize("target", TARGETS)
def test_every_switch_off_is_the_ideal_limit(target: str) -> None:
    """Turning each non-ideality off one by one reaches the ideal result: the switches cover everything."""
    module = compiled("cnn_digits", target)
    inputs = sample_inputs("cnn_digits", BATCH)
    want = run_module(module, inputs)["logits"]
    options = SimOptions(t_inference=DAY).without(*NON_IDEALITIES)
    got = AnalogSimulator(module, load_target(target), options).run(inputs)["logits"]
    assert rel_err(got, want) <= 1e-5


@pytest.mark.parametrize("tile", ["tile{replicate=2}", "tile{scale=column}"])
def test_ideal_is_exact_with_replicas_and_column_scales(tile: str) -> None:
    module = compiled("cnn_digits", "crossbar", PIPELINE.replace("tile", tile))
    inputs = sample_inputs("cnn_digits", BATCH)
    got = AnalogSimulator(module, load_target("crossbar"), SimOptions(ideal=True)).run(inputs)["logits"]
    assert rel_err(got, run_module(module, inputs)["logits"]) <= 1e-5


def test_the_full_default_pipeline_runs() -> None:
    """Placement and scheduling attributes do not disturb the simulator."""
    module = compiled("mlp_digits", "pcm", load_target("pcm").pipeline)
    inputs = sample_inputs("mlp_digits", BATCH)
    got = AnalogSimulator(module, load_target("pcm"), SimOptions(ideal=True)).run(inputs)["logits"]
    assert rel_err(got, run_module(module, inputs)["logits"]) <= 1e-5


class FixedPoint(Interpreter):
    """An independent reference for the converters-only path: one array at a time, integers in int64.

    Per array (afmc.sim.periphery's documented arithmetic, float32 unless stated):
    s = max|x| per vector (1 if 0); q = clip(rint(x * (f32(1/step_in) / s)), q_lo, q_hi);
    per phase p (one, or the bits of q's two's complement for a bit-serial 1-bit DAC):
    acc = d @ levels (int64), code = clip(rint(f32(acc) * f32(u / (L * step_out))), code_lo, code_hi),
    part = code * f32(c * step_in * step_out * L / u), minus the reference column's part for offset
    arrays; result = (Σ_p part_p in phase order) * s.
    """

    def __init__(self, module: Module, target: object) -> None:
        super().__init__(module)
        dac, adc = target.dac, target.adc  # type: ignore[attr-defined]
        self.bits = dac.input_bits
        lo, hi = dac.input_range
        self.step_in = (hi - lo) / (2**self.bits - 2)
        self.q_max = round(hi / self.step_in)
        self.q_min = -self.q_max if lo < 0 else 0
        self.bit_serial = dac.bit_serial
        assert not dac.bit_serial or dac.bits == 1, "this reference knows 1-bit bit-serial DACs only"
        self.hi = hi
        olo, ohi = adc.output_range
        self.step_out = (ohi - olo) / (2**adc.bits - 2)
        self.code_lo, self.code_hi = math.ceil(olo / self.step_out - 1e-9), math.floor(ohi / self.step_out + 1e-9)

    def phases(self, q: np.ndarray) -> list[tuple[np.ndarray, float, float]]:
        """(digits as int64, c, u) per phase."""
        if not self.bit_serial:
            return [(q.astype(np.int64), 1.0, self.step_in)]
        pattern = q.astype(np.int64) % (1 << self.bits)
        out = []
        for p in range(self.bits):
            bit = (pattern >> p) & 1
            weight = -(2.0 ** (self.bits - 1)) if p == self.bits - 1 and self.q_min < 0 else 2.0**p
            out.append((bit, weight, self.hi))
        return out

    def run_op(self, op, args):  # type: ignore[no-untyped-def]
        if op.name != "xbar.mvm":
            return super().run_op(op, args)
        source, levels = args
        r0, r1 = op.attr("rows")
        x = np.asarray(source[op.attr("group"), :, r0:r1], np.float32)
        s = np.max(np.abs(x), axis=1, keepdims=True)
        s[s == 0] = 1
        q = x * (np.float32(1.0 / self.step_in) / s)
        q = np.clip(np.rint(q), self.q_min, self.q_max)
        cells = np.asarray(levels).astype(np.int64)
        offset = op.attr("encoding") == "offset"
        matrix = cells if offset else cells[0] - cells[1]
        full = max(int(cells.max()), 1)
        total = None
        for digits, c, u in self.phases(q):
            acc = digits @ matrix
            code = np.rint(acc.astype(np.float32) * np.float32(u / (full * self.step_out)))
            code = np.clip(code, self.code_lo, self.code_hi)
            part = code * np.float32(c * self.step_in * self.step_out * full / u)
            if offset:
                part = part[:, :-1] - part[:, -1:]
            total = part if total is None else total + part
        return [(total * s).astype(np.float32)]


@pytest.mark.parametrize("target", TARGETS)
def test_converters_only_equal_the_fixed_point_reference_bit_for_bit(sample: str, target: str) -> None:
    module = compiled(sample, target)
    inputs = sample_inputs(sample, BATCH)
    spec = load_target(target)
    got = AnalogSimulator(module, spec, SimOptions.quantization_only(t_inference=YEAR)).run(inputs)
    want = FixedPoint(module, spec).run(inputs)
    ideal = run_module(module, inputs)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
        assert not np.array_equal(got[name], ideal[name])  # the converters did something


def test_converters_only_is_close_to_ideal_on_pcm() -> None:
    """8-bit converters on a 256-row PCM array: a few per cent, not a broken mapping."""
    module = compiled("mlp_digits", "pcm")
    inputs = sample_inputs("mlp_digits", BATCH)
    got = AnalogSimulator(module, load_target("pcm"), SimOptions.quantization_only()).run(inputs)["logits"]
    assert rel_err(got, run_module(module, inputs)["logits"]) < 0.1


# -- 2. converters ------------------------------------------------------------------------------------


def test_dac_grid_and_bit_serial_recombination() -> None:
    pcm, crossbar = load_target("pcm").dac, load_target("crossbar").dac
    dac = Dac.from_target(pcm)
    assert (dac.q_lo, dac.q_hi, len(dac.phases)) == (-127, 127, 1) and dac.step == pytest.approx(1 / 127)
    serial = Dac.from_target(crossbar)
    assert len(serial.phases) == crossbar.phases == 8
    q = np.arange(serial.q_lo, serial.q_hi + 1, dtype=np.float32)
    rebuilt = sum(p.weight * serial.digit(q, p) for p in serial.phases)
    np.testing.assert_array_equal(rebuilt, q)
    assert all(set(np.unique(serial.digit(q, p))) <= {0.0, 1.0} for p in serial.phases)
    two_bit = Dac.from_target(dataclasses.replace(crossbar, bits=2))
    rebuilt = sum(p.weight * two_bit.digit(q, p) for p in two_bit.phases)
    np.testing.assert_array_equal(rebuilt, q)


def test_dac_clips_and_normalises_per_vector() -> None:
    dac = Dac.from_target(load_target("pcm").dac)
    x = np.array([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0]], np.float32)
    s = np.array([[1.0], [1.0]], np.float32)
    np.testing.assert_array_equal(dac.normalise(x, s), [[64, -127, 32], [0, 0, 0]])
    np.testing.assert_array_equal(dac.normalise(x * 3, s), [[127, -127, 95], [0, 0, 0]])


def test_adc_quantises_and_saturates() -> None:
    adc = Adc.from_target(load_target("pcm").adc)
    assert (adc.code_lo, adc.code_hi) == (-127, 127) and adc.step == pytest.approx(20 / 254)
    codes = np.array([0.4, 0.6, -126.6, 500.0, -1e9], np.float32)
    np.testing.assert_array_equal(adc.convert(codes), [0, 1, -127, 127, -127])
    unsigned = Adc.from_target(load_target("crossbar").adc)
    assert (unsigned.code_lo, unsigned.code_hi) == (0, 254)


def test_output_saturation_in_the_simulator() -> None:
    """Outputs beyond the ADC range saturate at it."""
    target = with_params("pcm", adc__output_range=[-0.05, 0.05])
    module = compiled("mlp_digits", "pcm")
    inputs = sample_inputs("mlp_digits", BATCH)
    sim = AnalogSimulator(module, target, SimOptions.quantization_only())
    layer = sim.layers[0]
    x = layer.gather(np.asarray(inputs["input"], np.float32)[None])
    result = sim._read(layer, x)
    s = np.max(np.abs(x), axis=-1, keepdims=True)
    bound = 0.05 * layer.full_scale.max() * s  # the saturated level-domain value per vector
    assert np.all(np.abs(result) <= bound * (1 + 1e-5)) and np.any(np.isclose(np.abs(result), bound, rtol=1e-5))


def test_ir_drop_matches_the_reference_formula() -> None:
    """aihwkit's first-order IR drop (REFERENCE.md §2), element by element against the vectorised helpers."""
    rng = np.random.default_rng(3)
    n, cols, g_ratio = 40, 5, 2e3
    w = rng.uniform(-1, 1, (n, cols)).astype(np.float32)
    x = rng.uniform(-1, 1, n).astype(np.float32)
    expected = np.empty(cols)
    for i in range(cols):
        a = n / g_ratio * sum(abs(w[j, i]) * abs(x[j]) for j in range(n))
        c = a * (a * (0.05 * a - 0.2) + 0.5)
        y = sum(w[j, i] * x[j] for j in range(n))
        expected[i] = y - c * sum(w[j, i] * x[j] * (1 - (1 - j / n) ** 2) for j in range(n))
    f = ir_drop_factors(np.array([n]), n)[0]
    c = ir_drop_coefficient(n / g_ratio * (np.abs(x) @ np.abs(w)))
    got = x @ w - c * ((x * f) @ w)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert f[0] == 0 and np.all(np.diff(f) > 0)  # row 0 (at the driver) loses nothing, far rows most


def gemm_model(path: Path, rows: int, cols: int, seed: int = 0) -> Path:
    """A one-Gemm ONNX model with a random rows x cols weight."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = (np.random.default_rng(seed).standard_normal((rows, cols)) / math.sqrt(rows)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"])], "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", cols])], [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_ir_drop_sketch_of_the_current_term(tmp_path: Path) -> None:
    """Σ_j |w_ij||a_j| from the rank-32 sketch of |W| on a 256 x 256 PCM array (random Gaussian weights,
    the hardest case: no structure beyond the mean) is within 10 % of the exact sum (6 % measured), and
    the IR drop it gives is the exact model's to within 10 % of the drop itself (a drop of ~0.06 %)."""
    module = load_module(gemm_model(tmp_path / "gemm.onnx", 256, 256), {"x": (64, 256)})
    compile_module(module, load_target("pcm"), PIPELINE)
    x = np.maximum(np.random.default_rng(1).standard_normal((1, 64, 256)), 0).astype(np.float32)
    base = SimOptions(t_inference=DAY, out_noise=0.0, adc=False, ir_drop=1.0)
    sim = AnalogSimulator(module, load_target("pcm"), base)
    layer = sim.layers[0]
    assert layer.abs_basis is not None
    magnitude = np.abs(layer.weights) * (layer.current_scale if layer.codes_folded else 1)
    exact = np.matmul(x, magnitude[:, 0])
    assert rel_err(layer.abs_current(x, 0), exact) < 0.1
    sketched = sim._read(layer, x).copy()
    layer.abs_weights = magnitude  # the exact term
    exact_drop = sim._read(layer, x).copy()
    layer.ir_stack = layer.abs_weights = None  # no IR drop
    no_drop = sim._read(layer, x)
    assert rel_err(sketched - no_drop, exact_drop - no_drop) < 0.1
    assert rel_err(exact_drop, no_drop) > 1e-4  # the drop is visible


def test_chunked_digital_ops_are_the_reference() -> None:
    module = compiled("transformer_digits", "pcm", batch=300)
    inputs = sample_inputs("transformer_digits", 300)
    got = AnalogSimulator(module, load_target("pcm"), SimOptions(ideal=True)).run(inputs)["logits"]
    assert rel_err(got, run_module(module, inputs)["logits"]) <= 1e-5


def test_ir_drop_lowers_outputs_in_the_simulator() -> None:
    module = compiled("mlp_digits", "pcm")
    inputs = sample_inputs("mlp_digits", BATCH)
    target = load_target("pcm")
    base = SimOptions.quantization_only().without("adc")
    clean = AnalogSimulator(module, target, base)
    dropped = AnalogSimulator(module, target, dataclasses.replace(base, ir_drop=1.0, ir_drop_g_ratio=2e3))
    x = clean.layers[0].gather(np.asarray(inputs["input"], np.float32)[None])
    y0, y1 = clean._read(clean.layers[0], x).copy(), dropped._read(dropped.layers[0], x).copy()
    assert 0 < np.mean(np.abs(y1)) < np.mean(np.abs(y0))


# -- 3. device physics (REFERENCE.md §1) ------------------------------------------------------------------


def pcm() -> object:
    return make_device(load_target("pcm").device)


def seq(n: int = 0) -> np.random.SeedSequence:
    return np.random.SeedSequence(1234 + n)


@pytest.mark.parametrize("x", [0.1, 0.25, 0.5, 1.0])
def test_pcm_programming_noise_sigma(x: float) -> None:
    device = pcm()
    g_t = np.full(DEVICES, x * 25.0, np.float32)
    state = device.program(g_t, seq(), Effects(True, False, False, False))
    sigma = (0.26348 + 1.9650 * x - 1.1731 * x * x) * 25.0 / 25.0
    error = state.g_prog.astype(np.float64) - g_t
    assert abs(error.std() / sigma - 1) < 0.03
    assert abs(error.mean()) < 3 * sigma / math.sqrt(DEVICES)
    assert {0.5: 0.0381, 1.0: 0.0422}.get(x, sigma / 25) == pytest.approx(sigma / 25, abs=5e-5)


def test_pcm_programming_noise_is_clamped_at_zero() -> None:
    state = pcm().program(np.zeros(DEVICES, np.float32), seq(), Effects(True, False, False, False))
    assert state.g_prog.min() == 0.0
    assert abs(np.mean(state.g_prog == 0) - 0.5) < 0.01  # half the draws fall below 0
    positive = state.g_prog[state.g_prog > 0].astype(np.float64)  # a half-normal of σ = 0.26348 µS
    assert abs(math.sqrt(np.mean(positive**2)) / 0.26348 - 1) < 0.03


@pytest.mark.parametrize(("t", "figure"), [(HOUR, 0.775), (DAY, 0.664), (YEAR, 0.497)])
def test_pcm_mean_drift_factor(t: float, figure: float) -> None:
    """At g_T = g_max, μ_ν = 0.049 and σ_ν = 0.008: the mean factor is REFERENCE.md's figure (3 %),
    and matches E[(t/t0)^−|ν|] for ν ~ N(μ_ν, σ_ν) computed by quadrature (1 %)."""
    device = pcm()
    g_t = np.full(DEVICES, 25.0, np.float32)
    effects = Effects(False, True, False, False)
    state = device.program(g_t, seq(), effects)
    factor = device.read(state, t, seq(1), effects).astype(np.float64) / 25.0
    assert abs(factor.mean() / figure - 1) < 0.03
    nu = np.linspace(0.049 - 8 * 0.008, 0.049 + 8 * 0.008, 4001)
    pdf = np.exp(-0.5 * ((nu - 0.049) / 0.008) ** 2)
    exact = np.sum(pdf * ((t + 20.0) / 20.0) ** -np.abs(nu)) / np.sum(pdf)
    assert abs(factor.mean() / exact - 1) < 0.01


def test_pcm_drift_exponent_statistics_follow_the_target_conductance() -> None:
    """ν = |μ_ν + σ_ν·N| with μ_ν, σ_ν clipped functions of ln(g_T/g_max): a folded normal's moments."""
    device = pcm()
    for x in (1.0, 0.3, 0.01):
        mu = min(max(-0.0155 * math.log(x) + 0.0244, 0.049), 0.1)
        sigma = min(max(-0.0125 * math.log(x) - 0.0059, 0.008), 0.045)
        folded_mean = sigma * math.sqrt(2 / math.pi) * math.exp(-mu * mu / (2 * sigma * sigma)) + mu * math.erf(
            mu / (sigma * math.sqrt(2)))
        folded_std = math.sqrt(mu * mu + sigma * sigma - folded_mean**2)
        state = device.program(np.full(DEVICES, x * 25.0, np.float32), seq(), Effects(False, True, False, False))
        assert state.nu is not None and np.all(state.nu >= 0)
        assert abs(state.nu.mean() / folded_mean - 1) < 0.03 and abs(state.nu.std() / folded_std - 1) < 0.03


@pytest.mark.parametrize("t", [0.0, HOUR, DAY, YEAR])
@pytest.mark.parametrize("x", [1.0, 0.3])
def test_pcm_read_noise_spread(t: float, x: float) -> None:
    device = pcm()
    g_prog = np.full(DEVICES, x * 25.0, np.float32)
    state = Programmed(g_target=g_prog, g_prog=g_prog)
    g = device.read(state, t, seq(2), Effects(False, False, True, False)).astype(np.float64)
    q_s = min(0.0088 / max(x**0.65, 1e-3), 0.2)
    expected = q_s * math.sqrt(math.log((t + 20.0 + 250e-9) / (2 * 250e-9)))
    assert abs((g / g_prog).std() / expected - 1) < 0.03
    figures = {0.0: 4.18, HOUR: 4.77, DAY: 5.09, YEAR: 5.64}  # REFERENCE.md's sqrt(ln(...)) values
    assert expected / q_s == pytest.approx(figures[t], abs=0.01)


def test_pcm_read_noise_is_static_for_one_time_and_fresh_for_another() -> None:
    device, effects = pcm(), Effects(False, False, True, False)
    g = np.full(1000, 20.0, np.float32)
    state = Programmed(g, g)
    a, b = device.read(state, HOUR, seq(5), effects), device.read(state, HOUR, seq(5), effects)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, device.read(state, HOUR, seq(6), effects))


def test_rram_programming_noise_stuck_faults_and_no_drift() -> None:
    target = with_params("crossbar", device__params__stuck_off_rate=0.02, device__params__stuck_on_rate=0.05)
    device = make_device(target.device)
    g_t = np.full(DEVICES, 50.0, np.float32)
    state = device.program(g_t, seq(), Effects(True, True, True, True))
    assert state.stuck is not None
    off, on = state.g_prog == 0.0, state.g_prog == 100.0
    assert abs(off.mean() / 0.02 - 1) < 0.05 and abs(on.mean() / 0.05 - 1) < 0.05
    free = state.g_prog[~state.stuck].astype(np.float64)
    assert abs(free.std() / (0.02 * 100.0) - 1) < 0.03
    later = device.read(state, YEAR, seq(1), Effects(True, True, True, True))
    np.testing.assert_array_equal(later, state.g_prog)  # RRAM: no drift, read noise is per read
    assert device.read_sigma(Effects()) == pytest.approx(0.005 * 100.0)


def test_flash_charge_loss() -> None:
    device = make_device(load_target("flash").device)
    g_t = np.full(1000, 0.5, np.float32)
    state = device.program(g_t, seq(), Effects(False, True, False, False))
    g = device.read(state, YEAR, seq(1), Effects(False, True, False, False))
    loss = 0.001 * 1.0 * math.log10((YEAR + 20.0) / 20.0)
    np.testing.assert_allclose(g, 0.5 - loss, rtol=1e-6)


def test_parallel_devices_average_their_errors() -> None:
    """Two devices per polarity (each programmed to g_T, currents summed) cut the weight error by √2."""
    errors = {}
    for parallel in (1, 2):
        target = with_params("pcm", array__parallel_devices=parallel)
        module = compiled("mlp_digits", "pcm")
        sim = AnalogSimulator(module, target, SimOptions(drift=False, read_noise=False))
        layer = sim.layers[1]  # 128 x 64: 8192 weights, 4 devices each at most
        to_codes = sim.dac.phases[0].unit / (layer.full_scale * sim.adc.step) if layer.codes_folded else 1.0
        errors[parallel] = (layer.weights[:, 0] / to_codes[:, None, :] - layer.physical_levels).std()
    assert abs(errors[1] / errors[2] / math.sqrt(2) - 1) < 0.05


def test_per_read_noise_is_the_equivalent_output_noise() -> None:
    """RRAM read noise (fresh on every read) appears as output noise of σ_w·sqrt(Σ a²) per column."""
    target = with_params("crossbar", dac__bit_serial=False, dac__bits=8, dac__input_bits=8,
                         adc__output_range=[-200.0, 200.0])
    module = compiled("mlp_digits", target)
    options = SimOptions(out_noise=0.0, programming_noise=False, drift=False, stuck=False, ir_drop=0.0,
                         dac=False, adc=False)
    sim = AnalogSimulator(module, target, options)
    layer = sim.layers[0]
    x = np.random.default_rng(0).uniform(0, 1, (1, 4, 64)).astype(np.float32)
    xs = layer.gather(x)
    draws = np.stack([sim._read(layer, xs).copy() for _ in range(3000)])
    s = np.abs(xs).max(axis=-1, keepdims=True)
    a = xs / s
    sigma_w = 0.005 * 100.0 / 99.0  # per device, normalised to g_max - g_min; one device per cell
    # the level-domain result is the normalised one times L·s; weight and reference columns are independent
    full_scale = layer.full_scale[:, None, layer.weight_index]
    expected = sigma_w * np.sqrt((a**2).sum(-1, keepdims=True)) * math.sqrt(2) * full_scale * s
    assert np.allclose(draws.std(axis=0) / expected, 1, atol=0.1)
    assert abs(np.mean(draws.std(axis=0) / expected) - 1) < 0.02


# -- 4. Monte-Carlo, switches, time ----------------------------------------------------------------------


def test_an_all_zero_weight_column_reads_no_more_noise_than_the_others(tmp_path: Path) -> None:
    """A tied LM head (the embedding's zero padding row) has an all-zero column; with per-column weight
    scales it once got scale 1, and the output noise it reads, times 1, swamped every logit."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = (0.02 * rng.standard_normal((64, 32))).astype(np.float32)
    w[:, 5] = 0.0
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 32])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "head.onnx"
    path.write_bytes(model.SerializeToString())
    module = load_module(path, None)
    compile_module(module, load_target("pcm"), "canonicalize,partition,tile{scale=column}")
    x = rng.standard_normal((8, 64)).astype(np.float32)
    y = AnalogSimulator(module, load_target("pcm"), SimOptions()).run({"x": x})["y"]
    error = np.abs(y - x @ w)
    assert error[:, 5].max() <= 3 * np.delete(error, 5, axis=1).max()


def test_programming_one_layer_at_a_time_gives_the_same_devices() -> None:
    """calibrate without data programs, reads out and releases one layer at a time (the memory of one
    layer's devices): each layer draws from its own streams, so its readout is the same as with all
    layers programmed at once."""
    module = compiled("cnn_digits", "pcm")
    target = load_target("pcm")
    whole = AnalogSimulator(module, target, SimOptions(seed=3))
    lazy = AnalogSimulator(module, target, SimOptions(seed=3), program=False)
    for layer, mine in zip(whole.layers, lazy.layers):
        assert mine.weights is None
        lazy.program(0, [mine])
        lazy.set_time(0.0, [mine])
        for key, matrix in whole.readout(layer, 0.5).items():
            np.testing.assert_array_equal(lazy.readout(mine, 0.5)[key], matrix)
        lazy.release(mine)
        assert mine.weights is None and mine.programmed is None


def test_same_seed_same_outputs_other_seed_other_outputs() -> None:
    module = compiled("cnn_digits", "pcm")
    inputs = sample_inputs("cnn_digits", BATCH)
    target = load_target("pcm")
    runs = [simulate(module, target, inputs, SimOptions(seed=s, samples=2), [HOUR, DAY]) for s in (7, 7, 8)]
    for t in range(2):
        for k in range(2):
            np.testing.assert_array_equal(runs[0].outputs[t][k]["logits"], runs[1].outputs[t][k]["logits"])
            assert not np.array_equal(runs[0].outputs[t][k]["logits"], runs[2].outputs[t][k]["logits"])
    assert not np.array_equal(runs[0].outputs[0][0]["logits"], runs[0].outputs[0][1]["logits"])
    # an instance does not depend on the times asked with it
    alone = simulate(module, target, inputs, SimOptions(seed=7, samples=2), [DAY])
    np.testing.assert_array_equal(alone.outputs[0][1]["logits"], runs[0].outputs[1][1]["logits"])


@pytest.mark.parametrize("name", NON_IDEALITIES)
def test_each_switch_changes_the_result(name: str) -> None:
    target = with_params("crossbar", device__params__stuck_off_rate=0.01, device__params__stuck_on_rate=0.01,
                         dac__bit_serial=False, dac__bits=8, dac__input_bits=8, adc__output_range=[-30.0, 60.0])
    if name == "drift":
        target = load_target("pcm")
    module = compiled("mlp_digits", target)
    inputs = sample_inputs("mlp_digits", BATCH)
    full = SimOptions(t_inference=DAY, ir_drop_g_ratio=1e3)
    a = AnalogSimulator(module, target, full).run(inputs)["logits"]
    b = AnalogSimulator(module, target, full.without(name)).run(inputs)["logits"]
    assert not np.array_equal(a, b)


def test_pcm_degrades_over_time_without_compensation() -> None:
    module = compiled("mlp_digits", "pcm", batch=300)
    inputs = sample_inputs("mlp_digits", 300)
    reference = run_module(module, inputs)
    result = simulate(module, load_target("pcm"), inputs, SimOptions(samples=2), [1.0, YEAR])
    cosine = [np.mean([compare(o, reference, None)["logits"]["cosine"] for o in per_t]) for per_t in result.outputs]
    assert cosine[0] > 0.9 and cosine[1] < cosine[0]


def test_global_drift_compensation_restores_accuracy() -> None:
    """REFERENCE.md §1: rescaling each array by its read-out at t0 undoes most of the drift (the CNN loses
    most of its accuracy within a day without it); at t0 itself it changes nothing."""
    module = compiled("cnn_digits", "pcm", batch=300)
    data = np.load(Path(sample_path("cnn_digits")).with_name("cnn_digits_test.npz"), allow_pickle=False)
    inputs, labels = {"input": data["input"]}, data["labels"]
    target = load_target("pcm")

    def accuracy(compensation: str, t: float) -> float:
        options = SimOptions(samples=2, seed=5, drift_compensation=compensation)
        result = simulate(module, target, inputs, options, [t])
        return float(np.mean([(o["logits"].argmax(-1) == labels).mean() for o in result.outputs[0]]))

    assert accuracy("global", DAY) > accuracy("none", DAY) + 0.2
    start = [simulate(module, target, inputs, SimOptions(seed=5, drift_compensation=c), [0.0]).outputs[0][0]
             for c in ("none", "global")]
    np.testing.assert_allclose(start[0]["logits"], start[1]["logits"], rtol=1e-6, atol=1e-6)


def test_simulator_needs_arrays() -> None:
    module = compiled("mlp_digits", "pcm")
    sim = AnalogSimulator(module, load_target("pcm"), SimOptions(ideal=True))
    assert sim.layers and all(layer.reads for layer in sim.layers)


# -- 5. API and CLI ---------------------------------------------------------------------------------------


def test_parse_duration() -> None:
    assert [parse_duration(t) for t in ("1s", "1h", "1d", "1y", "250ms", "20min", "3")] == [
        1.0, HOUR, DAY, YEAR, 0.25, 1200.0, 3.0]


def test_run_model_reports_reference_metrics() -> None:
    data = np.load(Path(sample_path("mlp_digits")).with_name("mlp_digits_test.npz"), allow_pickle=False)
    inputs, labels = {"input": data["input"][:64]}, data["labels"][:64]
    result = run_model(sample_path("mlp_digits"), "pcm", inputs, options=SimOptions(ideal=True), reference=True,
                       labels=labels, pipeline=PIPELINE)
    metrics = result.metrics[0]["logits"]
    assert metrics["cosine"]["mean"] > 0.999 and metrics["top1_agreement"]["mean"] >= 0.98
    assert metrics["accuracy"]["mean"] == pytest.approx(result.reference_metrics["logits"]["accuracy"], abs=0.02)


def test_run_model_in_chunks_equals_one_batch() -> None:
    inputs = sample_inputs("cnn_digits", 40)
    parts = run_model(sample_path("cnn_digits"), "pcm", inputs, options=SimOptions(ideal=True),
                      pipeline=PIPELINE, batch=16)
    whole = run_model(sample_path("cnn_digits"), "pcm", inputs, options=SimOptions(ideal=True), pipeline=PIPELINE)
    assert parts.outputs()["logits"].shape == (40, 10) == whole.outputs()["logits"].shape
    assert rel_err(parts.outputs()["logits"], whole.outputs()["logits"]) <= 1e-5


def test_ideal_run_model_skips_calibrate_with_the_same_outputs() -> None:
    """Ideal arrays neither drift nor take corrections, so an ideal run of a MODEL leaves calibrate out
    (it programmed every device for nothing: 30 of 34 s for a 32 M-weight CNN); the outputs are those of
    the full pipeline's module run ideally."""
    inputs = sample_inputs("cnn_digits", BATCH)
    target = load_target("pcm")
    quick = run_model(sample_path("cnn_digits"), target, inputs, options=SimOptions(ideal=True))
    full = load_module(sample_path("cnn_digits"), sample_shapes("cnn_digits", BATCH))
    compile_module(full, target, None)
    assert any(op.name == "xbar.drift_compensate" for op in full.ops)
    ideal = simulate(full, target, inputs, SimOptions(ideal=True)).outputs[0][0]["logits"]
    np.testing.assert_array_equal(quick.outputs()["logits"], ideal)


def test_cli_run_model_with_input_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A MODEL with dynamic dimensions runs on seeded sample inputs of the --input-shape shapes."""
    out = tmp_path / "out.npz"
    args = ["run", str(sample_path("cnn_digits")), "--target", "pcm", "--pipeline", PIPELINE, "--ideal",
            "--reference", "--format", "json", "--input-shape", "input=3,1,8,8"]
    code = main([*args, "--outputs", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    doc = json.loads(captured.out)
    assert doc["inputs"] == 3 and doc["results"][0]["metrics"]["logits"]["cosine"]["mean"] > 0.999
    with np.load(out, allow_pickle=False) as saved:
        assert saved["logits"].shape == (3, 10)
    code = main([*args, "--inputs", str(Path(sample_path("cnn_digits")).with_name("cnn_digits_test.npz"))])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("afmc: error: --input-shape") and len(err.splitlines()) == 1
    code = main(["run", str(sample_path("cnn_digits")), "--target", "pcm"])
    err = capsys.readouterr().err
    assert code == 2 and "dynamic dimensions" in err and "--input-shape input=" in err


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sim") / "cnn.afmc"
    code = main(["compile", str(sample_path("cnn_digits")), "--target", "pcm", "--input-shape", "input=8x1x8x8",
                 "--pipeline", PIPELINE, "-o", str(path)])
    assert code == 0
    return path


def test_run_bundle_default_inputs_and_reference(bundle: Path) -> None:
    result = run_bundle(bundle, options=SimOptions(ideal=True), reference=True, model=sample_path("cnn_digits"))
    assert result.inputs == 8 and result.metrics[0]["logits"]["cosine"]["mean"] > 0.999


def test_cli_run_json(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    test_npz = Path(sample_path("cnn_digits")).with_name("cnn_digits_test.npz")
    out = tmp_path / "out.npz"
    code = main(["run", str(bundle), "--inputs", str(test_npz), "--labels", str(test_npz), "--reference",
                 "--model", str(sample_path("cnn_digits")), "--samples", "2", "--t-inference", "1s",
                 "--t-inference", "1d", "--format", "json", "--outputs", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    doc = json.loads(captured.out)
    assert doc["status"] == "ok" and doc["target"] == "pcm" and doc["inputs"] == 300 and doc["samples"] == 2
    assert [r["t_inference"] for r in doc["results"]] == ["1s", "1d"]
    logits = doc["results"][0]["metrics"]["logits"]
    assert set(logits) == {"cosine", "rel_l2", "top1_agreement", "accuracy"}
    assert len(logits["accuracy"]["values"]) == 2 and 0.5 < logits["accuracy"]["mean"] <= 1.0
    assert doc["reference"]["metrics"]["logits"]["accuracy"] > 0.95
    saved = np.load(out, allow_pickle=False)
    assert saved["logits"].shape == (2, 2, 300, 10) and list(saved["t_inference_s"]) == [1.0, DAY]


def test_cli_run_text_model(capsys: pytest.CaptureFixture[str]) -> None:
    test_npz = Path(sample_path("mlp_digits")).with_name("mlp_digits_test.npz")
    code = main(["run", str(sample_path("mlp_digits")), "--target", "pcm", "--inputs", str(test_npz),
                 "--labels", str(test_npz), "--pipeline", PIPELINE, "--t-inference", "1h", "--disable", "ir-drop"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "accuracy %" in out and "1h" in out and "off: ir-drop" in out


@pytest.mark.parametrize(("args", "message"), [
    (["run", "missing.afmc"], "no such bundle or model"),
    (["run", "{model}"], "--target is required"),
    (["run", "{model}", "--target", "pcm", "--t-inference", "soon"], "bad duration"),
    (["run", "{model}", "--target", "nope"], "unknown target"),
    (["run", "{bundle}", "--inputs", "{bundle}/manifest.json"], "cannot read"),
    (["run", "{bundle}", "--target", "flash"], "compiled for 'pcm'"),
])
def test_cli_run_errors_are_one_line(args: list[str], message: str, bundle: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    args = [a.format(model=sample_path("mlp_digits"), bundle=bundle) for a in args]
    code = main(args)
    _, err = capsys.readouterr()
    assert code == 2
    assert err.startswith("afmc: error:") and message in err and len(err.strip().splitlines()) == 1


def test_cli_run_json_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "missing.afmc", "--format", "json"])
    out, _ = capsys.readouterr()
    assert code == 2 and json.loads(out)["status"] == "error"
