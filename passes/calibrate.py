"""``calibrate``: converter ranges, per-column correction and drift compensation learned on the chip.

The pass programs the compiled module into the simulator (`afmc.sim.simulator.AnalogSimulator`,
programming instance 0 of the compile ``seed``, read right after programming, every non-ideality on)
and runs the calibration data through it layer by layer, in program order, so that each layer is
calibrated on the inputs its calibrated predecessors give it. For each analog layer (docs/calibration.md):

1. **Input (DAC) range** (``input-range``): a static scale ``s`` from the layer's unfolded inputs x:
   ``max`` = max|x|, ``percentile`` = the ``percentile``-th percentile of |x| (default 99.9),
   ``std`` = ``std`` · σ(x) (at most max|x|), ``best`` (default) = whichever of those three, or the
   target's per-vector scaling (``dynamic``, when the simulator scales by abs-max), gives outputs
   closest to the digital reference on the chip after both converters, each candidate with the ADC
   range step 2 picks for it (the percentile clips a sparse input's common peak values, max wastes
   levels on outliers, a static range leaves small vectors few DAC levels and little signal over the
   output noise: none wins on every layer), ``search`` = the candidate among max|x|·2^(-k/2),
   k = 0..8, scored the same way (one read of up to `INPUT_SEARCH_VECTORS` vectors per candidate
   tried: cheap on one-phase DACs, slow on bit-serial ones);
   ``dynamic`` keeps the target's per-vector abs-max noise management (no static range). Written as
   ``input_scale`` on every ``xbar.mvm`` of the layer.
2. **Output (ADC) range** per layer and bit slice (``adc``), profiled with the ADC ideal (unlimited
   range and resolution): ``max`` holds the largest value seen; ``search`` (CrossSim-style) keeps, per
   slice, the range among a maximum times 2^(-k/2), k = -2..8, refined by a quarter octave, whose
   outputs are closest (squared error, each column weighted by its significance and weight scale) to
   the digital reference, the ideal ``xbar.mvm`` on the same inputs (`Calibrate._adc_ranges`: scored
   exactly from the one profiling read), held out: the maximum of half the scored vectors, the error
   on the other half; ``target`` keeps the target's range. Written as
   ``adc_range = [lo, hi]`` on each ``xbar.mvm``.
3. **Drift compensation** (``drift``): the reference readout (one-hot inputs through the non-ideal path,
   REFERENCE.md §1; `afmc.ir.xbar_calibration`) right after programming, with the final ranges, stored
   in an ``xbar.drift_compensate`` after each ``xbar.accumulate``: one value per layer (``global``) or
   per column (``column``); ``auto`` (default) is ``global`` when the target's device drifts
   (`device_drifts`: pcm, flash) and ``none`` otherwise (rram, ideal), where a readout would only add
   its noise. At run time the simulator reads the layer again and scales by reference / readout.
4. **Per-column correction** (``columns``): ``xbar.calibrate`` after it, with gain and offset fitted by
   least squares of the layer's analog outputs against the digital reference on the calibration data;
   a layer that sees fewer than ``min-rows`` output vectors (a classifier head calibrated on a few
   images) gets one gain and offset for all its columns, which those few rows can still estimate.

Without calibration data (``PassContext.calibration_data`` is None) only the data-free part runs: the
drift-compensation references (step 3). Converter ranges stay the target's (dynamic DAC scaling, the
target's ADC range) and no ``xbar.calibrate`` is inserted. Data are the model's inputs by name (extra
arrays such as ``labels`` are ignored) with the model's dtypes and shapes except for the number of rows;
the first ``samples`` rows are used (0: all), run in runs of the compiled batch (the last one completed
by cycling through the rows). A calibrated module describes the programmed instance it was calibrated
on: simulate it with the same seed. The same module, data, options and seed give the same result, bit
for bit. The module attribute ``calibration`` and ``ctx.report["calibration"]`` (per layer: ranges,
drift reference, relative error of the outputs before and after the column correction) record it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from afmc.errors import AfmcError, UsageError
from afmc.interp.interpreter import last_uses
from afmc.ir import dtypes
from afmc.ir.core import Module, Op
from afmc.ir.xbar import signed_levels
from afmc.pipeline import Pass, PassContext, register_pass

INPUT_RANGE_MODES = ("best", "search", "max", "percentile", "std", "dynamic")
ADC_MODES = ("search", "max", "target")
DRIFT_MODES = ("auto", "global", "column", "none")
#: ADC range candidates of ``adc=search``: the profiled maximum times 2^(-k/2), k = 0..SEARCH_STEPS (then refined).
SEARCH_STEPS = 8
#: ... and above it, 2^(k/2) for k = 1..HEADROOM_STEPS: new data may exceed what calibration saw.
HEADROOM_STEPS = 2
#: The ADC range search scores candidates on at most this many input vectors of a layer (evenly
#: spaced), the input range search, which reads the arrays once per candidate, on fewer.
SEARCH_VECTORS = 1024
INPUT_SEARCH_VECTORS = 128
#: The ADC range search records at most this many ADC inputs of a layer (phases × blocks × vectors × columns).
RECORD_ELEMENTS = 1 << 24
#: The one-hot readout drives at most this fraction of the layer's smallest ADC bound (and at most full scale).
READOUT_HEADROOM = 0.5
CALIBRATION_OPS = ("xbar.drift_compensate", "xbar.calibrate")


# -- calibration data --------------------------------------------------------------------------------


def check_calibration_data(module: Module, data: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of ``data`` for the module's inputs, checked: every input present, with its dtype,
    rank and shape except the leading (row) dimension, and the same number of rows for all of them.
    Raises `UsageError` naming the input otherwise."""
    arrays: dict[str, np.ndarray] = {}
    rows: set[int] = set()
    for value in module.inputs:
        name, want = value.name, value.type
        if name not in data:
            held = ", ".join(sorted(data)) or "nothing"
            raise UsageError(f"calibration data: no array for input '{name}' {want} (the data hold {held})")
        array = np.asarray(data[name])
        dtype = dtypes.to_numpy(want.dtype)
        if array.dtype != dtype:
            raise UsageError(f"calibration data: input '{name}' is {array.dtype}, the model expects {want.dtype} ({want})")
        if want.rank == 0 or array.ndim != want.rank or tuple(array.shape[1:]) != want.shape[1:] or array.shape[0] < 1:
            expected = "x".join(["N", *map(str, want.shape[1:])]) if want.rank else "()"
            raise UsageError(f"calibration data: input '{name}' has shape {list(array.shape)}, the model expects "
                             f"{expected} ({want}, any number N >= 1 of rows)")
        arrays[name] = array
        rows.add(int(array.shape[0]))
    if len(rows) > 1:
        raise UsageError(f"calibration data: the inputs have different numbers of rows ({sorted(rows)})")
    return arrays


def calibration_chunks(module: Module, arrays: Mapping[str, np.ndarray], samples: int) -> tuple[list[dict[str, np.ndarray]], int]:
    """The first ``samples`` rows (0 = all) in runs of the compiled batch; the last run is completed by
    cycling through the rows (so every run has the compiled shapes). Returns (runs, rows used)."""
    if not module.inputs:
        return [{}], 0
    available = int(next(iter(arrays.values())).shape[0])
    used = available if samples <= 0 else min(samples, available)
    batches = {v.type.shape[0] for v in module.inputs}
    if len(batches) != 1:
        raise UsageError("calibration data: the model's inputs have different leading dimensions; "
                         "calibration runs rows in batches of one size")
    batch = batches.pop()
    count = max(1, math.ceil(used / batch))
    index = np.arange(count * batch) % used
    runs = [{name: a[index[i * batch:(i + 1) * batch]] for name, a in arrays.items()} for i in range(count)]
    return runs, used


# -- the per-layer work ------------------------------------------------------------------------------


@dataclass
class LayerCalibration:
    """What the pass learned about one analog layer (becomes attributes, ops and a report row)."""

    name: str
    input_scale: float | None = None
    adc_scale: dict[int, float] = dataclasses.field(default_factory=dict)  # slice -> factor on the target's range
    reference: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)  # accumulate op id -> per-column r0
    global_reference: float | None = None
    amplitude: float = 1.0
    gain: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)  # accumulate op id -> per column
    offset: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)
    pooled: bool = False  # too few rows for a per-column fit: one gain and offset for the layer
    error_before: float = 0.0  # squared error of the outputs vs the reference before/after the correction
    error_after: float = 0.0
    reference_power: float = 0.0


def _ideal_mvm(op: Op, unfolded: np.ndarray, module: Module) -> np.ndarray:
    """The ideal level-domain result of one ``xbar.mvm`` on an unfolded (G, M, K) input (float64)."""
    r0, r1 = op.attr("rows")
    levels = module.constants[op.attr("array").name].data
    assert levels is not None
    return np.asarray(unfolded[op.attr("group"), :, r0:r1], np.float64) @ signed_levels(levels, op.attr("encoding"))


def _accumulate(op: Op, parts: list[np.ndarray]) -> np.ndarray:
    """``xbar.accumulate`` on parts of any number of rows (float64)."""
    total = sum(scale * np.asarray(part, np.float64) for scale, part in zip(op.attr("scales"), parts))
    column_scales = op.attr("column_scales")
    if column_scales is not None:
        total = total * np.asarray(column_scales, np.float64)
    return np.asarray(total, np.float64)


def device_drifts(target: Any) -> bool:
    """Whether the target's device model changes its conductances over time (drift, charge loss):
    a probe of conductances over the whole range, programmed exactly, read with only that effect on,
    right after programming and a year later."""
    from afmc.sim.devices import Effects, make_device

    device = make_device(target.device)
    probe = np.linspace(device.g_min, device.g_max, 65, dtype=np.float32)
    only_drift = Effects(programming_noise=False, drift=True, read_noise=False, stuck=False)
    seq = np.random.SeedSequence(0)
    state = device.program(probe, seq, only_drift)
    now, later = device.read(state, 0.0, seq, only_drift), device.read(state, 365 * 86400.0, seq, only_drift)
    return bool(np.max(np.abs(np.asarray(later, np.float64) - now)) > 1e-6 * max(device.g_range, 1e-30))


def _column_weights(layer: Any) -> dict[int, np.ndarray]:
    """Per mvm op id, the weight of each of its output columns in the layer's output: its scale in its
    accumulate times the accumulate's column scales."""
    out: dict[int, np.ndarray] = {}
    for acc in layer.accumulates:
        c0, c1 = acc.attr("cols")
        columns = acc.attr("column_scales")
        col = np.asarray(columns, np.float64) if columns is not None else np.ones(c1 - c0)
        for scale, value in zip(acc.attr("scales"), acc.operands):
            out[id(value.producer)] = float(scale) * col
    return out


def _weighted_errors(layer: Any, outputs: Mapping[int, np.ndarray], reference: Mapping[int, np.ndarray],
                     weights: Mapping[int, np.ndarray]) -> dict[int, float]:
    """Per slice, Σ over its arrays of the squared difference of their outputs from the reference,
    each column weighted like the layer's output."""
    errors: dict[int, float] = {}
    for key, y in outputs.items():
        diff = (np.asarray(y, np.float64) - reference[key]) * weights.get(key, 1.0)
        slice_ = int(layer.reads[key].op.attr("slice"))
        errors[slice_] = errors.get(slice_, 0.0) + float(np.einsum("mc,mc->", diff, diff))
    return errors


def _peaks_per_slice(layer: Any, high: np.ndarray, low: np.ndarray, lo: float, hi: float) -> dict[int, float]:
    """Per bit slice, the factor on the target's ADC range that just holds the (B, C) extremes."""
    peaks: dict[int, float] = {}
    for read in layer.reads.values():
        columns = (read.block, read.physical)
        need = max(float(high[columns].max()) / hi if hi > 0 else 0.0,
                   float(low[columns].min()) / lo if lo < 0 else 0.0)
        key = int(read.op.attr("slice"))
        peaks[key] = max(peaks.get(key, 0.0), need)
    return {key: (value if value > 0 else 1.0) for key, value in peaks.items()}


def _recorded_peaks(layer: Any, codes: list[np.ndarray], lo: float, hi: float) -> dict[int, float]:
    """`_peaks_per_slice` of recorded ADC inputs (per phase, (B, M, C))."""
    high = np.max([np.max(y, axis=1, initial=0.0) for y in codes], axis=0)
    low = np.min([np.min(y, axis=1, initial=0.0) for y in codes], axis=0)
    return _peaks_per_slice(layer, high, low, lo, hi)


def _vector_scales(sim: Any, layer: Any, unfolded: np.ndarray) -> np.ndarray:
    """(B, M): the DAC's scale s of every input vector of every block (as the simulator divides)."""
    blocks, vectors = len(layer.blocks), unfolded.shape[1]
    if layer.input_scale is not None:
        return np.repeat(np.asarray(layer.input_scale, np.float64)[:, None], vectors, axis=1)
    if sim.options.noise_management != "abs_max":
        return np.ones((blocks, vectors))
    scales = np.ones((blocks, vectors))
    for b, (g, r0, r1) in enumerate(layer.blocks):
        peak = np.max(np.abs(np.asarray(unfolded[g, :, r0:r1], np.float32)), axis=-1)
        scales[b] = np.where(peak > 0, peak, 1.0)
    return scales


def _even_subset(count: int, limit: int) -> np.ndarray:
    """At most ``limit`` evenly spaced indices of ``count`` items."""
    return np.unique(np.linspace(0, count - 1, min(count, limit)).round().astype(np.intp))


@contextlib.contextmanager
def _ideal_adc(sim: Any, probe: Any) -> Iterator[None]:
    """Reads with the ADC ideal (no rounding, no clipping) and ``probe`` watching its inputs."""
    options, previous = sim.options, sim.adc_probe
    sim.options, sim.adc_probe = dataclasses.replace(options, adc=False), probe
    try:
        yield
    finally:
        sim.options, sim.adc_probe = options, previous


def fit_columns(y: np.ndarray, reference: np.ndarray, min_rows: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per column, (gain, offset) minimising Σ (gain·y + offset − reference)² (float64). A column whose
    outputs do not vary keeps gain 1 and gets the mean difference as its offset.

    With fewer than ``min_rows`` rows a per-column fit would follow the noise of those few rows (two
    rows fit any column exactly), so one gain and offset are fitted to all columns pooled instead.
    """
    y = np.asarray(y, np.float64)
    reference = np.asarray(reference, np.float64)
    if 0 < y.shape[0] < min_rows:
        gain, offset = fit_columns(y.reshape(-1, 1), reference.reshape(-1, 1))
        return np.broadcast_to(gain, y.shape[1:]).copy(), np.broadcast_to(offset, y.shape[1:]).copy()
    my, mr = y.mean(axis=0), reference.mean(axis=0)
    dy = y - my
    var = np.einsum("mc,mc->c", dy, dy)
    cov = np.einsum("mc,mc->c", dy, reference - mr)
    scale = np.maximum(np.einsum("mc,mc->c", y, y), 1e-300)
    ok = var > 1e-12 * scale
    gain = np.where(ok, cov / np.where(ok, var, 1.0), 1.0)
    offset = mr - gain * my
    return gain, offset


@register_pass
@dataclass(frozen=True)
class Calibrate(Pass):
    """Learn converter ranges, per-column gain/offset and drift-compensation references on the simulated chip."""

    name: ClassVar[str] = "calibrate"
    input_range: str = "best"
    percentile: float = 99.9
    std: float = 4.0
    adc: str = "search"
    columns: bool = True
    min_rows: int = 32
    drift: str = "auto"
    samples: int = 32

    def __post_init__(self) -> None:
        if self.input_range not in INPUT_RANGE_MODES:
            raise ValueError(f"input-range must be one of {', '.join(INPUT_RANGE_MODES)}, got {self.input_range!r}")
        if self.adc not in ADC_MODES:
            raise ValueError(f"adc must be one of {', '.join(ADC_MODES)}, got {self.adc!r}")
        if self.drift not in DRIFT_MODES:
            raise ValueError(f"drift must be one of {', '.join(DRIFT_MODES)}, got {self.drift!r}")
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {self.percentile}")
        if not (self.std > 0 and math.isfinite(self.std)):
            raise ValueError(f"std must be a positive number, got {self.std}")
        if self.min_rows < 1:
            raise ValueError(f"min-rows must be >= 1, got {self.min_rows}")
        if self.samples < 0:
            raise ValueError(f"samples must be >= 0 (0: all rows), got {self.samples}")

    # -- the pass ----------------------------------------------------------------------------------
    def run(self, module: Module, ctx: PassContext) -> None:
        target = ctx.target
        if target is None:
            raise AfmcError("calibrate needs a target")
        if any(op.name in CALIBRATION_OPS or op.attr("input_scale") is not None or op.attr("adc_range") is not None
               for op in module.ops):
            raise AfmcError("calibrate: the module is already calibrated")
        if not any(op.name == "xbar.mvm" for op in module.ops) or getattr(target, "array", None) is None:
            return
        if self.drift == "auto":
            dataclasses.replace(self, drift="global" if device_drifts(target) else "none").run(module, ctx)
            return
        from afmc.sim.simulator import AnalogSimulator, SimOptions

        data = ctx.calibration_data
        # Without data only the drift references read the arrays: program one layer at a time (the
        # same devices: each layer draws from its own stream), so the memory is one layer's devices.
        sim = AnalogSimulator(module, target, SimOptions(seed=ctx.seed), program=data is not None)
        results: dict[int, LayerCalibration] = {}
        rows = 0
        if data is not None:
            arrays = check_calibration_data(module, data)
            runs, rows = calibration_chunks(module, arrays, self.samples)
            results = self._calibrate_with_data(module, sim, runs)
        for layer in sim.layers:
            state = results.setdefault(layer.index, LayerCalibration(layer.name))
            if self.drift != "none" and state.global_reference is None:
                if data is None:
                    sim.program(0, [layer])
                    sim.set_time(sim.options.t_inference, [layer])
                self._measure_reference(sim, layer, state)
                if data is None:
                    sim.release(layer)
        self._rewrite(module, sim, results, with_data=data is not None)
        summary = {"rows": rows, "seed": ctx.seed, "input_range": self._input_mode(data is not None),
                   "adc": self.adc if data is not None else "target", "columns": self.columns and data is not None,
                   "drift": self.drift}
        module.attributes = module.attributes.replace(calibration=summary)
        ctx.report["calibration"] = {**summary, "layers": [self._report_row(results[layer.index], sim, layer)
                                                           for layer in sim.layers]}

    def _input_mode(self, with_data: bool) -> str:
        if not with_data or self.input_range == "dynamic":
            return "dynamic"
        if self.input_range == "percentile":
            return f"percentile={self.percentile:g}"
        if self.input_range == "std":
            return f"std={self.std:g}"
        if self.input_range == "best":
            return f"best of max, percentile={self.percentile:g}, std={self.std:g}, dynamic"
        return self.input_range

    # -- walking the data through the chip ---------------------------------------------------------
    def _calibrate_with_data(self, module: Module, sim: Any, runs: list[dict[str, np.ndarray]]) -> dict[int, LayerCalibration]:
        """Run every op on every run of inputs in lockstep; at each analog layer, calibrate it on all runs
        at once, then continue with its calibrated outputs."""
        envs: list[dict[int, np.ndarray]] = []
        for run in runs:
            env: dict[int, np.ndarray] = {}
            for value in module.inputs:
                env[id(value)] = np.asarray(run[value.name])
            envs.append(env)
        last = last_uses(module)
        results: dict[int, LayerCalibration] = {}
        analog: dict[int, dict[int, np.ndarray]] = {}  # layer index -> mvm op id -> analog result (all rows)
        ideal: dict[int, dict[int, np.ndarray]] = {}
        counts: dict[int, list[int]] = {}  # layer index -> vectors of each run
        for index, op in enumerate(module.ops):
            if op.name == "xbar.mvm":
                layer = sim.layer_for(op)
                if layer.index not in analog:
                    unfolded = [env[id(layer.source)] for env in envs]
                    counts[layer.index] = [u.shape[1] for u in unfolded]
                    state = LayerCalibration(layer.name)
                    analog[layer.index], ideal[layer.index] = self._calibrate_layer(
                        module, sim, layer, np.concatenate(unfolded, axis=1), state)
                    results[layer.index] = state
            elif op.name == "xbar.accumulate" and op.operands and op.operands[0] is not None \
                    and op.operands[0].producer is not None and op.operands[0].producer.name == "xbar.mvm":
                layer = sim.layer_for(op.operands[0].producer)
                state = results[layer.index]
                producers = [id(v.producer) for v in op.operands if v is not None]
                y = _accumulate(op, [analog[layer.index][key] for key in producers])
                reference = _accumulate(op, [ideal[layer.index][key] for key in producers])
                state.reference_power += float(np.sum(reference**2))
                state.error_before += float(np.sum((y - reference) ** 2))
                if self.columns:
                    gain, offset = fit_columns(y, reference, self.min_rows)
                    state.pooled = y.shape[0] < self.min_rows
                    state.gain[id(op)], state.offset[id(op)] = gain, offset
                    y = y * gain + offset
                state.error_after += float(np.sum((y - reference) ** 2))
                y32 = y.astype(np.float32)
                start = 0
                for env, count in zip(envs, counts[layer.index]):
                    env[id(op.result)] = y32[start:start + count]
                    start += count
            else:
                for env in envs:
                    args = [None if v is None else env[id(v)] for v in op.operands]
                    for result, array in zip(op.results, sim.run_op(op, args)):
                        env[id(result)] = array
            for value_id in last.get(index, ()):
                for env in envs:
                    env.pop(value_id, None)
        return results

    def _calibrate_layer(self, module: Module, sim: Any, layer: Any, unfolded: np.ndarray,
                         state: LayerCalibration) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
        """Ranges for one layer on its (G, M, K) inputs; returns its analog and ideal mvm results."""
        reference = {id(op): _ideal_mvm(op, unfolded, module) for op in layer.ops}
        calls = sim.noise_calls
        if self.input_range in ("search", "best"):
            subset = _even_subset(unfolded.shape[1], INPUT_SEARCH_VECTORS)
            part = np.ascontiguousarray(unfolded[:, subset])
            part_reference = {k: v[subset] for k, v in reference.items()}
            scorer = _InputScaleScorer(
                sim, layer, part_reference, lambda: self._converted(sim, layer, part, part_reference, calls))
            if self.input_range == "search":
                peak = float(np.max(np.abs(unfolded))) if unfolded.size else 0.0
                state.input_scale = _search_octaves(scorer, peak)
            else:
                candidates: list[float | None] = list(self._input_scales(unfolded).values())
                if sim.options.noise_management == "abs_max":
                    candidates.append(None)  # the target's own per-vector scaling, when it wins
                state.input_scale = scorer.best(candidates)
        elif self.input_range != "dynamic":
            state.input_scale = self._input_scales(unfolded)[self.input_range]
        sim.set_input_scale(layer, state.input_scale)
        outputs, state.adc_scale = self._converted(sim, layer, unfolded, reference, calls)
        sim.noise_calls = calls + 1
        if self.drift != "none":
            self._measure_reference(sim, layer, state)
        return outputs, reference

    def _converted(self, sim: Any, layer: Any, unfolded: np.ndarray, reference: dict[int, np.ndarray],
                   calls: int) -> tuple[dict[int, np.ndarray], dict[int, float]]:
        """The layer's outputs through both converters with the current input scale, its ADC ranges
        chosen first (``adc``; `_adc_ranges`): (outputs per mvm op id, ADC factors per slice)."""
        if self.adc == "target":
            sim.noise_calls = calls
            return {key: np.array(value, np.float64) for key, value in sim.forward(layer, unfolded).items()}, {}
        return self._adc_ranges(sim, layer, unfolded, reference, calls)

    def _input_scales(self, unfolded: np.ndarray) -> dict[str, float]:
        """The static scale of each data-driven mode (``max``, ``percentile``, ``std``) from one pass
        over |x|; all 1.0 when the inputs are all zero or not finite."""
        x64 = np.asarray(unfolded, np.float64).reshape(-1)
        x = np.abs(x64)
        peak = float(x.max()) if x.size else 0.0
        if peak <= 0 or not math.isfinite(peak):
            return dict.fromkeys(("max", "percentile", "std"), 1.0)
        scales = {"max": peak, "percentile": float(np.percentile(x, self.percentile)),
                  "std": min(peak, self.std * float(np.std(x64)))}
        return {mode: scale if scale > 0 else peak for mode, scale in scales.items()}

    def _adc_ranges(self, sim: Any, layer: Any, unfolded: np.ndarray, reference: dict[int, np.ndarray],
                    calls: int) -> tuple[dict[int, np.ndarray], dict[int, float]]:
        """ADC ranges per slice and the layer's outputs with them: (outputs per mvm op id, factors).

        One read with the ADC ideal (unlimited range and resolution) records every ADC input y (codes
        of the target's step, noise included) and the outputs A. ``max``: per slice, the factor on the
        target's range that just holds every y. ``search`` (CrossSim-style): that maximum times
        2^(-k/2), k = 0..8, then a quarter octave either side of the best, per slice the candidate whose
        outputs are closest to the reference (squared error, each column weighted like the layer's
        output). A range f × the target's gives exactly A + s·Σ_p back_p·δ_p with
        δ_p = f·clip(rint(y_p / f)) − y_p (the recombination of `afmc.sim.periphery`), so every candidate
        is scored on the same read without reading the arrays again; so are the final outputs when
        every vector was recorded (at most `RECORD_ELEMENTS` values; else candidates are scored on
        `SEARCH_VECTORS` evenly spaced vectors and the layer is read once more)."""
        vectors, phases = unfolded.shape[1], sim.dac.phases
        shape = (len(layer.blocks), layer.phys_width)
        record_all = len(phases) * shape[0] * vectors * shape[1] <= RECORD_ELEMENTS
        subset = np.arange(vectors) if record_all else _even_subset(vectors, SEARCH_VECTORS)
        keep = np.zeros(vectors, bool)
        keep[subset] = True
        records: list[list[np.ndarray]] = [[] for _ in phases]
        seen = [0] * len(phases)
        high, low = np.zeros(shape), np.zeros(shape)

        def probe(source: Any, codes: np.ndarray, phase: int) -> None:
            if source is not layer:
                return
            m0 = seen[phase]
            seen[phase] = m1 = m0 + codes.shape[1]
            np.maximum(high, codes.max(axis=1), out=high)
            np.minimum(low, codes.min(axis=1), out=low)
            rows = keep[m0:m1]
            if rows.any():
                records[phase].append(np.array(codes[:, rows], np.float32))

        with _ideal_adc(sim, probe):
            sim.noise_calls = calls
            ideal_adc = {key: np.array(value[subset], np.float64) for key, value in sim.forward(layer, unfolded).items()}
        if seen != [vectors] * len(phases):
            raise AfmcError(f"calibrate: layer {layer.name}: the simulator converted {seen} vectors per phase, "
                            f"expected {vectors}")
        lo, hi = sim.adc.code_lo, sim.adc.code_hi
        peaks = _peaks_per_slice(layer, high, low, lo, hi)
        inputs = [np.concatenate(chunks, axis=1) for chunks in records]  # per phase (B, M, C)
        scales = _vector_scales(sim, layer, unfolded[:, subset])[..., None]  # (B, M, 1)
        scored = _even_subset(len(subset), SEARCH_VECTORS)  # the candidates are compared on these
        backs = [phase.weight * sim.dac.step * sim.adc.step / phase.unit * layer.full_scale[:, None, :]
                 for phase in phases]
        column_slice = np.zeros(shape, np.int64)
        for read in layer.reads.values():
            column_slice[read.block, read.physical] = int(read.op.attr("slice"))
        slices = sorted(peaks)
        weights = _column_weights(layer)

        def outputs_with(factors: dict[int, float], rows: Any = slice(None)) -> dict[int, np.ndarray]:
            f = np.asarray([factors[key] for key in slices])[np.searchsorted(slices, column_slice)][:, None, :]
            delta = np.zeros(inputs[0][:, rows].shape)
            for y, back in zip(inputs, backs):
                part = y[:, rows]
                delta += (f * np.clip(np.rint(part / f), lo, hi) - part) * back
            delta *= scales[:, rows]
            if layer.weight_index is not None:
                delta = delta[..., layer.weight_index] - delta[..., layer.ref_index]
            return {key: value[rows] + delta[layer.reads[key].block, :, layer.reads[key].logical]
                    for key, value in ideal_adc.items()}

        chosen = dict(peaks)
        if self.adc == "search":
            best: dict[int, tuple[float, float]] = {}
            # Held out: the candidates scale the peaks of half the scored vectors and are scored on
            # the other half, so that a range which clips values the fitted half never showed pays
            # for it, as it will on new data (scored on the same vectors, the narrowest range that
            # holds them always looks best). Too few vectors to split: fitted and scored on all.
            fit, held = (scored[0::2], scored[1::2]) if len(scored) >= 4 else (scored, scored)
            fitted = _recorded_peaks(layer, [y[:, fit] for y in inputs], lo, hi)
            held_targets = {key: value[subset][held] for key, value in reference.items()}

            def trial(factors: dict[int, float]) -> None:
                errors = _weighted_errors(layer, outputs_with(factors, held), held_targets, weights)
                for key, error in errors.items():
                    if key not in best or error < best[key][0]:
                        best[key] = (error, factors[key])

            for k in range(-HEADROOM_STEPS, SEARCH_STEPS + 1):
                trial({key: peak * 2.0 ** (-k / 2) for key, peak in fitted.items()})
            middle = {key: value for key, (_, value) in best.items()}
            for sign in (1, -1):
                trial({key: value * 2.0 ** (sign / 4) for key, value in middle.items()})
            chosen = {key: value for key, (_, value) in best.items()}
        sim.set_adc_scale(layer, {key: chosen[int(read.op.attr("slice"))] for key, read in layer.reads.items()})
        if record_all:
            return outputs_with(chosen), chosen
        sim.noise_calls = calls
        return {key: np.array(value, np.float64) for key, value in sim.forward(layer, unfolded).items()}, chosen

    def _measure_reference(self, sim: Any, layer: Any, state: LayerCalibration) -> None:
        """The reference readout right after programming, with the layer's final ranges. A layer whose
        weights are all zero (a zero-initialised residual branch) reads only noise: it gets reference 0,
        so no compensation, which would divide that noise by the noise read later."""
        smallest = min(sim.adc_bound(layer, op) for op in layer.ops)
        state.amplitude = float(min(1.0, READOUT_HEADROOM * smallest))
        if not np.any(layer.signed_levels):
            state.global_reference = 0.0
            return
        state.global_reference = float(sim.reference_level(layer, state.amplitude))
        state.reference = {id(acc): np.asarray(sim.reference_level(layer, state.amplitude, acc), np.float64)
                           for acc in layer.accumulates}

    # -- writing the results into the IR -----------------------------------------------------------
    def _rewrite(self, module: Module, sim: Any, results: dict[int, LayerCalibration], with_data: bool) -> None:
        inserted: dict[int, list[Op]] = {}
        for layer in sim.layers:
            state = results[layer.index]
            for op in layer.ops:
                changes: dict[str, Any] = {}
                if state.input_scale is not None:
                    changes["input_scale"] = float(state.input_scale)
                if state.adc_scale:
                    lo, hi = sim.adc.lo, sim.adc.hi
                    factor = state.adc_scale[int(op.attr("slice"))]
                    changes["adc_range"] = (float(lo * factor), float(hi * factor))
                op.set_attrs(**changes)
            for acc in layer.accumulates:
                value = acc.result
                users = list(value.uses)
                new_ops: list[Op] = []
                common = {"layer": acc.attr("layer"), "group": acc.attr("group"), "cols": acc.attr("cols")}
                if self.drift != "none" and state.global_reference is not None and state.global_reference > 0:
                    reference: Any = state.global_reference if self.drift == "global" else \
                        np.maximum(state.reference[id(acc)], _tiny(state.global_reference))
                    drift = module.create_op(
                        "xbar.drift_compensate", [value], [value.type],
                        {**common, "mode": self.drift, "reference": reference, "amplitude": state.amplitude},
                        acc.loc, [f"{value.name}.drift"])
                    new_ops.append(drift)
                    value = drift.result
                if with_data and self.columns and id(acc) in state.gain:
                    calibrate = module.create_op(
                        "xbar.calibrate", [value], [value.type],
                        {**common, "gain": state.gain[id(acc)], "offset": state.offset[id(acc)]},
                        acc.loc, [f"{acc.result.name}.cal"])
                    new_ops.append(calibrate)
                    value = calibrate.result
                if not new_ops:
                    continue
                for user in users:
                    for position, operand in enumerate(user.operands):
                        if operand is acc.result:
                            user.set_operand(position, value)
                module.outputs = [value if v is acc.result else v for v in module.outputs]
                inserted[id(acc)] = new_ops
        if inserted:
            module.ops = [new for op in module.ops for new in [op, *inserted.get(id(op), [])]]

    def _report_row(self, state: LayerCalibration, sim: Any, layer: Any) -> dict[str, Any]:
        row: dict[str, Any] = {"layer": state.name}
        row["input_scale"] = state.input_scale if state.input_scale is not None else "dynamic"
        if state.adc_scale:
            row["adc_range"] = {str(k): [sim.adc.lo * v, sim.adc.hi * v] for k, v in sorted(state.adc_scale.items())}
        if self.drift != "none" and state.global_reference is not None:
            row["drift_reference"] = state.global_reference
            row["readout_amplitude"] = state.amplitude
        if state.gain:
            row["column_fit"] = "pooled" if state.pooled else "per-column"
        if state.reference_power > 0:
            row["rel_error_before"] = math.sqrt(state.error_before / state.reference_power)
            row["rel_error_after"] = math.sqrt(state.error_after / state.reference_power)
        return row


class _InputScaleScorer:
    """Scores input (DAC) scales of one layer, None being the target's per-vector scaling: the error
    of its outputs against the reference after both converters, the ADC range chosen for that scale
    (``convert``: `Calibrate._converted`), so that a scale is judged with the ADC it will get; every
    candidate sees the same noise draws."""

    def __init__(self, sim: Any, layer: Any, reference: dict[int, np.ndarray],
                 convert: Callable[[], tuple[dict[int, np.ndarray], dict[int, float]]]) -> None:
        """``convert`` reads the scored vectors (whose ideal results are ``reference``) with the layer's
        current input scale."""
        self.sim, self.layer, self.reference, self.convert = sim, layer, reference, convert
        self.weights = _column_weights(layer)
        self.errors: dict[float | None, float] = {}

    def error(self, scale: float | None) -> float:
        if scale not in self.errors:
            self.sim.set_input_scale(self.layer, scale)
            outputs, _ = self.convert()
            self.errors[scale] = sum(_weighted_errors(self.layer, outputs, self.reference, self.weights).values())
        return self.errors[scale]

    def best(self, scales: list[Any]) -> Any:
        """The scale with the smallest error (ties: the first given)."""
        return min(scales, key=self.error)


def _search_octaves(scorer: _InputScaleScorer, peak: float) -> float:
    """Among ``peak`` = max|x| times 2^(-k/2), k = 0..8: whole octaves first, then the half octaves
    beside the best."""
    if not peak > 0 or not math.isfinite(peak):
        return 1.0
    octaves = [peak * 2.0 ** (-k / 2) for k in range(SEARCH_STEPS + 1)]
    best = octaves.index(scorer.best(octaves[::2]))
    return scorer.best([octaves[k] for k in (best - 1, best, best + 1) if 0 <= k <= SEARCH_STEPS])


def _tiny(reference: float) -> float:
    """A floor for per-column references (a column of zeros reads ~0): 1e-6 of the layer's."""
    return max(reference * 1e-6, 1e-300)


__all__ = ["Calibrate", "LayerCalibration", "calibration_chunks", "check_calibration_data", "fit_columns"]

