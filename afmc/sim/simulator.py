"""The functional simulator: an `Interpreter` over the final IR whose analog arrays are non-ideal.

`AnalogSimulator(module, target, options)` runs digital ops (``nn.*``, ``xbar.accumulate``,
``xbar.assemble``) through the reference interpreter and replaces every ``xbar.mvm`` by the model of
one physical array: input conversion (`afmc.sim.periphery.Dac`), the programmed and aged conductances
of the target's device model (`afmc.sim.devices`), IR drop, output noise and conversion
(`afmc.sim.periphery.Adc`), and the digital recombination of input phases into the level-domain
result that ``xbar.mvm`` is defined to return (`afmc.ir.xbar`). Slices and row-split partial sums are
then added by ``xbar.accumulate`` exactly as in the ideal interpreter.

Vectorisation. The arrays of one layer share one unfolded input (``xbar.unfold``). They are grouped
into *blocks*, one per (group, row split): the B blocks' inputs form one (B, M, R) stack (R = the
largest row split, shorter ones zero-padded), and the arrays of a block — every column split and
bit slice, side by side, C physical columns — one (B, R, C) weight stack. An inference then costs,
per layer and input phase, batched ``np.matmul`` products and a dozen element-wise passes over the
(B, M, C) result, all run chunk after chunk of ~128 or more vectors so that the chunk's product and
its element-wise passes stay in cache (with IR drop: the inputs stacked [d; k·f·d], twice the vectors,
plus a rank-32 product; the DAC quantisation likewise runs in chunks); the first ``xbar.mvm`` of a layer computes all of its arrays and
the others read their slice. Weight stacks are built once per programming instance and time point
(`program`, `set_time`), never per input; with noisy weights the ADC's per-column scale is folded
into them. Large intermediate arrays live in per-layer workspaces reused between inferences.
The ideal path reads row blocks in place (strided BLAS operands) and does one product per block.
Replicas (``replicas`` > 1) are programmed independently; copy k serves the k-th contiguous share
of the M vectors.

Monte-Carlo. ``SeedSequence(seed).spawn(samples)`` gives one sequence per programming instance;
from it fixed keys derive the programming of each layer (``(0, layer)``), the static read of each
layer at a time t (``(1, t in ns, layer)``) and the per-MVM noise of the inferences run at t
(``(2, t in ns)``). The same seed, samples, times and inputs give bit-identical outputs.

Exactness. With ``SimOptions(ideal=True)`` an array read is ``x @ signed_levels`` in float32 —
the ideal semantics of ``xbar.mvm`` up to float32 rounding. With the device non-idealities and
noise off but the converters on, the arrays hold their exact integer levels and every step is the
fixed-point arithmetic documented in `afmc.sim.periphery` (integer-valued float32 products are
exact while Σ|d·level| < 2^24, else float64 is used).

Calibration (`afmc.ir.xbar_calibration`, written by the ``calibrate`` pass). An ``xbar.mvm`` with
``input_scale`` s drives x / s (static range, clipped by the DAC) instead of dividing each vector by its
max|x|; one with ``adc_range`` = f × the target's ``adc.output_range`` converts with f times the
target's step (same codes; the output noise stays in normalised units). ``xbar.drift_compensate`` scales
its input by reference / r_t, where r_t is the layer's readout at the current time (`reference_level`):
every row driven alone through the non-ideal path (`readout`, its own noise stream keyed by
``(3, t in ns, layer)``, so that the readout at t0 repeats the one the pass stored, bit for bit).
``xbar.calibrate`` is digital (its reference implementation).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import AfmcError
from ..interp.interpreter import Interpreter
from ..ir.core import Module, Op, Value
from .devices import DeviceModel, Effects, full_scale_levels, make_device, target_conductances
from .periphery import (
    IR_DROP_G_RATIO,
    Adc,
    Dac,
    abs_max_scale,
    gaussian_noise,
    ir_drop_factors,
    normal_quantiles,
)

__all__ = ["NON_IDEALITIES", "AnalogLayer", "AnalogSimulator", "SimOptions"]

F32 = np.float32

#: The switches of `SimOptions.without` and of ``afmc run --disable``.
NON_IDEALITIES = ("dac", "adc", "out-noise", "programming-noise", "drift", "read-noise", "stuck", "ir-drop")


@dataclass(frozen=True)
class SimOptions:
    """What the simulator models. The defaults turn every non-ideality on.

    ``ideal`` overrides everything: exact arrays, no converters, no noise. ``out_noise`` is the σ of
    the output noise per MVM in normalised units (REFERENCE.md §2: 0.04 in the standard hardware-aware
    preset that the built-in targets' ADC ranges follow); ``ir_drop`` scales the IR-drop model (0 = off);
    ``noise_management`` is ``abs_max`` or ``none`` (see `afmc.sim.periphery`). ``drift_compensation``
    ``global`` (REFERENCE.md §1) scales each array's outputs by α = r0 / r_t, where r is the mean |w| of
    the array's cells read at t = 0 (the first read, at t0) and at the time of the inference — what
    reading the array with one-hot inputs gives before the converters; ``none`` leaves drift alone.
    """

    ideal: bool = False
    t_inference: float = 0.0
    seed: int = 0
    samples: int = 1
    dac: bool = True
    adc: bool = True
    out_noise: float = 0.04
    programming_noise: bool = True
    drift: bool = True
    read_noise: bool = True
    stuck: bool = True
    ir_drop: float = 1.0
    ir_drop_g_ratio: float = IR_DROP_G_RATIO
    noise_management: str = "abs_max"
    drift_compensation: str = "none"

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise AfmcError(f"samples must be >= 1, got {self.samples}")
        if self.t_inference < 0 or not math.isfinite(self.t_inference):
            raise AfmcError(f"t_inference must be a finite time >= 0 s, got {self.t_inference}")
        if self.noise_management not in ("abs_max", "none"):
            raise AfmcError(f"noise_management must be 'abs_max' or 'none', got {self.noise_management!r}")
        if self.drift_compensation not in ("none", "global"):
            raise AfmcError(f"drift_compensation must be 'none' or 'global', got {self.drift_compensation!r}")
        if self.out_noise < 0 or self.ir_drop < 0 or self.ir_drop_g_ratio <= 0:
            raise AfmcError("out_noise and ir_drop must be >= 0 and ir_drop_g_ratio > 0")

    @property
    def effects(self) -> Effects:
        """The device effects that are on."""
        if self.ideal:
            return Effects(False, False, False, False)
        return Effects(self.programming_noise, self.drift, self.read_noise, self.stuck)

    def without(self, *names: str) -> SimOptions:
        """A copy with the named non-idealities (`NON_IDEALITIES`) switched off."""
        changes: dict[str, Any] = {}
        for name in names:
            key = name.replace("-", "_")
            if name not in NON_IDEALITIES:
                raise AfmcError(f"unknown non-ideality '{name}'; known: {', '.join(NON_IDEALITIES)}")
            changes[key] = 0.0 if key in ("out_noise", "ir_drop") else False
        return dataclasses.replace(self, **changes)

    @classmethod
    def quantization_only(cls, **kw: Any) -> SimOptions:
        """Converters on, every noise and device effect off: the fixed-point limit."""
        return cls(**kw).without("out-noise", "programming-noise", "drift", "read-noise", "stuck", "ir-drop")

    def describe(self) -> dict[str, Any]:
        """The options as a JSON-ready dict."""
        return dataclasses.asdict(self)


def time_key(t: float) -> int:
    """A time in whole nanoseconds, for seeding."""
    return round(t * 1e9)


def _child(seq: np.random.SeedSequence, *key: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(seq.entropy, spawn_key=tuple(seq.spawn_key) + tuple(int(k) for k in key))


def _block_key(op: Op) -> tuple[int, int, int]:
    """(group, r0, r1) of an ``xbar.mvm``: the arrays that read the same input rows."""
    r0, r1 = op.attr("rows")
    return int(op.attr("group")), int(r0), int(r1)


def _column_key(op: Op) -> tuple[int, int, int]:
    """(c0, c1, slice) of an ``xbar.mvm``: its place among a block's arrays."""
    c0, c1 = op.attr("cols")
    return int(c0), int(c1), int(op.attr("slice"))


@dataclass
class _Read:
    """Where one ``xbar.mvm`` sits in its layer's stacks."""

    op: Op
    block: int
    logical: slice  # its columns in the layer's result stack
    physical: slice  # its columns in the weight stack (with the reference column for offset)


class AnalogLayer:
    """All arrays that read one unfolded input, stacked per block (see the module doc)."""

    def __init__(self, index: int, source: Value, ops: list[Op], module: Module) -> None:
        self.index = index
        self.device_index = index  # whose seeds program these arrays (`AnalogSimulator._layers`)
        self.source = source
        self.ops = ops
        first = ops[0]
        self.name = str(first.attr("layer"))
        self.encoding = str(first.attr("encoding"))
        self.replicas = int(first.attr("replicas"))
        self.input_slices = int(first.attr("input_slices"))
        for op in ops:
            if (op.attr("encoding"), op.attr("replicas"), op.attr("input_slices")) != (
                self.encoding, self.replicas, self.input_slices):
                raise AfmcError("arrays of one layer differ in encoding, replicas or input slices", node=op.loc or None)
        groups, self.vectors, self.depth = source.type.shape
        blocks = sorted({_block_key(op) for op in ops})
        columns: list[tuple[int, int, int]] = []
        for op in ops:
            if _column_key(op) not in columns:
                columns.append(_column_key(op))
        block_of = {b: i for i, b in enumerate(blocks)}
        seen = {(_block_key(op), _column_key(op)) for op in ops}
        if len(seen) != len(ops) or len(seen) != len(blocks) * len(columns):
            raise AfmcError(f"layer {self.name}: its arrays do not tile (group, rows) x (cols, slice) evenly")
        self.blocks = blocks
        self.rows_used = np.array([r1 - r0 for _, r0, r1 in blocks], np.int64)
        self.rows = int(self.rows_used.max())
        offset = self.encoding == "offset"
        widths = [c1 - c0 for c0, c1, _ in columns]
        phys_widths = [w + 1 if offset else w for w in widths]
        log_starts = np.concatenate([[0], np.cumsum(widths)]).astype(int)
        phys_starts = np.concatenate([[0], np.cumsum(phys_widths)]).astype(int)
        self.width = int(log_starts[-1])
        self.phys_width = int(phys_starts[-1])
        polarities = 1 if offset else 2
        nb = len(blocks)
        levels = np.zeros((nb, polarities, self.rows, self.phys_width), np.uint16)
        full_scale = np.ones((nb, self.phys_width), np.float64)
        self.reads: dict[int, _Read] = {}
        for op in ops:
            b = block_of[_block_key(op)]
            c = columns.index(_column_key(op))
            data = module.constants[op.attr("array").name].data
            if data is None:
                raise AfmcError(f"levels @{op.attr('array').name} were elided; the module cannot run")
            cells = np.asarray(data).reshape((1, *data.shape) if offset else data.shape)
            n = cells.shape[1]
            p0, p1 = int(phys_starts[c]), int(phys_starts[c + 1])
            levels[b, :, :n, p0:p1] = cells
            full_scale[b, p0:p1] = float(full_scale_levels(cells, (0, 1, 2)))
            self.reads[id(op)] = _Read(op, b, slice(int(log_starts[c]), int(log_starts[c + 1])), slice(p0, p1))
        self.levels = levels
        self.full_scale = full_scale  # L per physical column: the array's level at g_max
        # The exact weights: signed levels per logical column, and per physical column what the ADC sees.
        if offset:
            ref = np.concatenate([[phys_starts[c + 1] - 1] * w for c, w in enumerate(widths)]).astype(np.intp)
            weight = np.concatenate([np.arange(phys_starts[c], phys_starts[c + 1] - 1) for c in range(len(widths))])
            self.weight_index: np.ndarray | None = weight.astype(np.intp)
            self.ref_index: np.ndarray | None = ref
            self.physical_levels = levels[:, 0].astype(F32)
            self.signed_levels = (levels[:, 0][..., self.weight_index].astype(np.int64)
                                  - levels[:, 0][..., self.ref_index]).astype(F32)
        else:
            self.weight_index = self.ref_index = None
            self.physical_levels = (levels[:, 0].astype(np.int64) - levels[:, 1]).astype(F32)
            self.signed_levels = self.physical_levels
        self.polarities = polarities
        self.contiguous = nb == groups and all(r0 == 0 and r1 == self.depth for _, r0, r1 in blocks)
        # Non-ideal state (set by `program` / `set_time`).
        self.programmed: Any = None
        self.weights: np.ndarray | None = None  # (B, replicas, R, C) in level units (w · L)
        self.ir_stack: np.ndarray | None = None  # (B, 1, R) k·f per row: inputs [d; k·f·d], for IR drop
        self.abs_weights: np.ndarray | None = None  # |w|, or its rank-k sketch below
        self.abs_basis: np.ndarray | None = None
        self.abs_coeffs: np.ndarray | None = None
        self.read_sigma = 0.0  # per-read weight noise, normalised units, per cell
        self.codes_folded = False  # weights scaled to give ADC codes (see fold_codes)
        self.current_scale: np.ndarray | None = None
        self.reference_read: np.ndarray | None = None  # global drift compensation: mean |w| per column at t0
        self.alpha: np.ndarray | None = None  # and the correction at the current time
        # Calibration (see the module doc): the accumulates reading the arrays, static DAC scale per
        # block, ADC range factor per physical column (and its inverse, applied to the codes).
        self.accumulates: list[Op] = []
        self.input_scale: np.ndarray | None = None  # (B,) or None: abs-max per vector
        self.adc_scale: np.ndarray | None = None  # (B, C) or None: the target's range
        self.adc_gain: np.ndarray | None = None  # (B, 1, C) float32, 1 / adc_scale
        scales: dict[int, set[float | None]] = {}
        for op in ops:
            value = op.attr("input_scale")
            scales.setdefault(block_of[_block_key(op)], set()).add(None if value is None else float(value))
        if any(s != {None} for s in scales.values()):
            if any(len(s) != 1 or None in s for s in scales.values()):
                raise AfmcError(f"layer {self.name}: the arrays of one block need one input_scale, all or none")
            self.input_scale = np.array([next(iter(scales[b])) for b in range(nb)], np.float64)

    # -- inputs ------------------------------------------------------------------------------------
    def gather(self, unfolded: np.ndarray) -> np.ndarray:
        """The (B, M, R) stack of block inputs (zero-padded rows) from the (G, M, K) unfolded input."""
        a = np.asarray(unfolded, F32)
        if self.contiguous:
            return a
        out = np.zeros((len(self.blocks), a.shape[1], self.rows), F32)
        for b, (g, r0, r1) in enumerate(self.blocks):
            out[b, :, : r1 - r0] = a[g, :, r0:r1]
        return out

    def split(self, stack: np.ndarray) -> dict[int, np.ndarray]:
        """Each array's result (M × its columns) from the (B, M, width) result stack."""
        return {key: stack[r.block, :, r.logical] for key, r in self.reads.items()}

    # -- programming -------------------------------------------------------------------------------
    def program(self, device: DeviceModel, seq: np.random.SeedSequence, effects: Effects, parallel: int) -> None:
        """Program every device of the layer: (B, replicas, polarity, parallel, R, C) targets."""
        g_t = target_conductances(self.levels, self.full_scale[:, None, None, :], device.g_min, device.g_max)
        shape = (g_t.shape[0], self.replicas, self.polarities, parallel, *g_t.shape[2:])
        g_t = np.ascontiguousarray(np.broadcast_to(g_t[:, None, :, None], shape))
        self.programmed = device.program(g_t, seq, effects)
        self.programmed.g_target = None  # not needed after programming; frees memory
        self.read_sigma = device.read_sigma(effects) / device.g_range * math.sqrt(self.polarities / parallel)

    def set_time(self, device: DeviceModel, t: float, seq: np.random.SeedSequence, effects: Effects) -> None:
        """The weight stacks at ``t`` seconds after programming (static read noise included), in level
        units (w·L); `set_ir` then prepares the IR-drop stacks."""
        g = device.read(self.programmed, t, seq, effects)
        w = g - F32(device.g_min)
        w = w.mean(axis=3, dtype=F32)  # parallel devices sum their currents: the cell is their mean
        if self.polarities == 2:
            w = w[:, :, 0] - w[:, :, 1]
        else:
            w = w[:, :, 0]
        w *= (self.full_scale[:, None, None, :] / device.g_range).astype(F32)
        self.weights = np.ascontiguousarray(w, F32)
        self.codes_folded = False

    def set_exact(self, ir_drop: float) -> None:
        """Weight stacks holding the exact integer levels (no device effects); ``ir_drop`` as `set_ir`."""
        self.weights = self.physical_levels[:, None]
        self.codes_folded = False
        self.set_ir(ir_drop)

    def mean_abs_weight(self) -> np.ndarray:
        """Per physical column (B, C), the mean |w| over the cells of the column's array (used rows only,
        every replica): the global drift compensation's read-out."""
        assert self.weights is not None
        used = (np.arange(self.rows)[None, :] < self.rows_used[:, None])[:, None, :, None]  # (B, 1, R, 1)
        per_column = (np.abs(self.weights) * used).sum(axis=(1, 2)) / (self.rows_used[:, None] * self.weights.shape[1])
        out = np.empty_like(per_column)
        for read in {(r.block, r.physical.start, r.physical.stop) for r in self.reads.values()}:
            b, c0, c1 = read
            out[b, c0:c1] = per_column[b, c0:c1].mean()
        return out

    def fold_codes(self, unit: float, step_out: float, g_ratio: float) -> None:
        """Scale the weights per column by u / (L·step_out), so that products are in ADC codes, and the
        IR-drop current term by (n / G_ratio)·step_out, so that it is the coefficient's argument a.
        Only for noisy weights: the exact path keeps the documented fixed-point steps."""
        assert self.weights is not None
        self.weights = self.weights * (unit / (self.full_scale * step_out)).astype(F32)[:, None, None, :]
        self.current_scale = (self.rows_used / g_ratio * step_out).astype(F32)[:, None, None, None]
        self.codes_folded = True

    def set_ir(self, ir_drop: float) -> None:
        """IR drop (scaled by ``ir_drop``, 0 = off) needs Σ w·a·f and Σ |w||a| besides Σ w·a. The first
        comes from the input side: f depends on the row only, so the inputs stacked as [d; k·f·d] give
        Σ w·a and k·Σ w·a·f in one product of twice the vectors (k = 0.05·ir_drop, the leading constant
        of ir_drop·c(a), which `_convert` then evaluates as a·((a − 4)·a + 10)); both results come out
        contiguous, which the element-wise passes read ~2× faster than the halves of a doubled-column
        product.
        The second only sets the small coefficient c(a), so it
        uses |W| ≈ Q·(Qᵀ|W|), a rank-32 range sketch (fixed seed, one power iteration): |W| ≥ 0 is
        dominated by its mean, and the sketch holds Σ|w||a| to ~6 % on random 256×256 weights, i.e.
        the drop itself to ~6 % (tested); arrays with at most 64 rows or columns use |W| itself."""
        self.abs_weights = self.ir_stack = self.abs_basis = self.abs_coeffs = None
        if not ir_drop or self.weights is None:
            return
        f = ir_drop_factors(self.rows_used, self.rows)  # (B, R)
        self.ir_stack = np.ascontiguousarray((F32(0.05 * ir_drop) * f)[:, None, :], F32)
        magnitude = np.abs(self.weights)
        if self.codes_folded:
            magnitude *= self.current_scale
        if min(self.rows, self.phys_width) <= 2 * IR_SKETCH_RANK:
            self.abs_weights = magnitude
            return
        probe = np.random.default_rng(0).standard_normal((self.phys_width, IR_SKETCH_RANK)).astype(F32)
        basis = np.linalg.qr(magnitude @ probe)[0]
        basis = np.linalg.qr(magnitude @ (np.swapaxes(magnitude, -1, -2) @ basis))[0]
        self.abs_basis = np.ascontiguousarray(basis, F32)  # (B, replicas, R, rank)
        self.abs_coeffs = np.ascontiguousarray(np.swapaxes(basis, -1, -2) @ magnitude, F32)  # (B, replicas, rank, C)

    def workspace(self, name: str, shape: tuple[int, ...], dtype: Any, zero: bool = False) -> np.ndarray:
        """A scratch array kept between calls (fresh large arrays cost a page fault per page);
        ``zero``: created zero-filled (callers then only ever write the same region of it)."""
        cache = self.__dict__.setdefault("_workspace", {})
        array = cache.get(name)
        if array is None or array.shape != shape or array.dtype != dtype:
            array = cache[name] = (np.zeros if zero else np.empty)(shape, dtype)
        return array

    def abs_current(self, magnitude: np.ndarray, replica: int, out: np.ndarray | None = None) -> np.ndarray:
        """Σ_j |w_ij|·|a_j| for inputs ``magnitude`` = |d| of shape (B, m, R) (level units, or the
        coefficient's argument a once `fold_codes` ran)."""
        if self.abs_weights is not None:
            return np.matmul(magnitude, self.abs_weights[:, replica], out=out)
        assert self.abs_basis is not None and self.abs_coeffs is not None
        return np.matmul(np.matmul(magnitude, self.abs_basis[:, replica]), self.abs_coeffs[:, replica], out=out)

    def replica_spans(self, m: int, chunk: int) -> list[tuple[int, int, int]]:
        """(replica, start, stop) row ranges of at most ``chunk`` rows: replica k serves the k-th
        contiguous share of the M vectors (ceil(M / replicas) each)."""
        k = 1 if self.weights is None else self.weights.shape[1]
        share = -(-m // k)
        spans = []
        for replica in range(k):
            lo, hi = replica * share, min((replica + 1) * share, m)
            spans += [(replica, a, min(a + chunk, hi)) for a in range(lo, hi, chunk)]
        return spans


class AnalogSimulator(Interpreter):
    """Run a compiled module with non-ideal analog arrays (see the module doc)."""

    def __init__(self, module: Module, target: Any, options: SimOptions | None = None, *, program: bool = True) -> None:
        """``program`` False leaves the arrays unprogrammed: `program` and `set_time` then take the
        layers to program (one at a time keeps the memory of one layer's devices)."""
        super().__init__(module)
        self.target = target
        self.options = options = options or SimOptions()
        if getattr(target, "array", None) is None:
            raise AfmcError(f"target '{getattr(target, 'name', '?')}' has no crossbar arrays to simulate")
        self.device = make_device(target.device)
        self.dac = Dac.from_target(target.dac, quantize=options.dac)
        self.adc = Adc.from_target(target.adc)
        self.parallel = int(target.array.parallel_devices)
        self.layers = self._layers(module)
        self._layer_of = {key: layer for layer in self.layers for key in layer.reads}
        self._layer_named = {layer.name: layer for layer in self.layers}
        #: Calibration hook: called as probe(layer, values, phase) with the ADC inputs of every conversion
        #: (a (B, m, C) chunk of vectors, chunks in order within each input phase), in codes of the
        #: target's step, before the range of the array and the conversion apply.
        self.adc_probe: Any = None
        self._phase_index = 0
        self._readouts: dict[tuple[int, float], dict[int, np.ndarray]] = {}
        for layer in self.layers:
            for op in layer.ops:
                for user in op.result.uses:
                    if user.name == "xbar.accumulate" and all(user is not a for a in layer.accumulates):
                        layer.accumulates.append(user)
            self._configure_adc(layer)
        if options.drift_compensation != "none" and any(op.name == "xbar.drift_compensate" for op in module.ops):
            raise AfmcError("the module compensates drift itself (xbar.drift_compensate, from calibrate); "
                            "simulate it without the simulator's drift_compensation option")
        self._pending: dict[int, np.ndarray] = {}
        self._samples = np.random.SeedSequence(options.seed).spawn(options.samples)
        self.sample: int | None = None
        self.time: float | None = None
        self._noise_seq: np.random.SeedSequence | None = None
        self._calls = 0
        for layer in self.layers:
            if layer.input_slices != len(self.dac.phases) and options.dac and not options.ideal:
                raise AfmcError(f"layer {layer.name}: {layer.input_slices} input slices, but the target's DAC has "
                                f"{len(self.dac.phases)} phases")
            bound = np.abs(layer.physical_levels).sum(axis=1).max() * max(abs(self.dac.q_lo), abs(self.dac.q_hi))
            layer.exact_dtype = F32 if bound < 2**24 else np.float64  # type: ignore[attr-defined]
        self._compensates = any(op.name == "xbar.drift_compensate" for op in module.ops)
        self._own_reference = self._needs_own_reference(module, options)
        self._t0_levels: dict[int, Any] = {}
        self._t0_sample: int | None = None
        if not options.ideal and program:
            self.program(0)
            self.set_time(options.t_inference)

    @staticmethod
    def _needs_own_reference(module: Module, options: SimOptions) -> bool:
        """Whether the ``xbar.drift_compensate`` references stored by ``calibrate`` describe other arrays
        than the ones simulated: they were read on programming instance 0 of the compile seed with every
        non-ideality at its default; another seed or a non-ideality switched off or changed reads
        different arrays, which measure their own reference right after programming (as a chip does)."""
        calibration = module.attributes.get("calibration")
        if calibration is None or options.ideal or not any(op.name == "xbar.drift_compensate" for op in module.ops):
            return False
        default = SimOptions()
        fields = ("dac", "adc", "out_noise", "programming_noise", "drift", "read_noise", "stuck", "ir_drop",
                  "ir_drop_g_ratio", "noise_management")
        return (options.seed != calibration.get("seed")
                or any(getattr(options, f) != getattr(default, f) for f in fields))

    @staticmethod
    def _layers(module: Module) -> list[AnalogLayer]:
        by_source: dict[int, list[Op]] = {}
        sources: dict[int, Value] = {}
        for op in module.ops:
            if op.name == "xbar.mvm":
                source = op.operands[0]
                assert source is not None
                by_source.setdefault(id(source), []).append(op)
                sources[id(source)] = source
        layers = [AnalogLayer(i, sources[key], ops, module) for i, (key, ops) in enumerate(by_source.items())]
        # The steps of a recurrence read one set of arrays (the same level symbols, `passes.tile`):
        # they draw their programming, drift and static read noise from the first step's seeds, so
        # every step sees the same programmed devices.
        first: dict[tuple[str, ...], int] = {}
        for layer in layers:
            layer.device_index = first.setdefault(tuple(op.attr("array").name for op in layer.ops), layer.index)
        return layers

    @property
    def device_effects(self) -> bool:
        """Whether the arrays hold anything but their exact levels."""
        return self.options.effects.any and self.device.name != "ideal"

    # -- programming instances and time -----------------------------------------------------------
    def program(self, sample: int, layers: Sequence[AnalogLayer] | None = None) -> None:
        """Program every array (of ``layers``, default all) anew: Monte-Carlo instance ``sample``
        (0 ≤ sample < options.samples). A layer's devices draw from their own stream (sample, layer), so
        programming layers one at a time gives the same devices."""
        if self.options.ideal:
            return
        if not 0 <= sample < len(self._samples):
            raise AfmcError(f"sample {sample} is outside 0..{len(self._samples) - 1}")
        self.sample, self.time = sample, None
        self._readouts.clear()
        self._t0_levels, self._t0_sample = {}, None
        seq = self._samples[sample]
        for layer in self.layers if layers is None else layers:
            if self.device_effects:
                layer.program(self.device, _child(seq, 0, layer.device_index), self.options.effects, self.parallel)
                if self.options.drift_compensation == "global":  # the reference read, at t0
                    layer.set_time(self.device, 0.0, _child(seq, 1, 0, layer.device_index), self.options.effects)
                    layer.reference_read = layer.mean_abs_weight()
            else:
                layer.programmed = None

    def set_time(self, t: float, layers: Sequence[AnalogLayer] | None = None) -> None:
        """Age the programmed arrays (of ``layers``, default all) to ``t`` seconds after programming and
        draw that time's static read noise; resets the per-MVM noise stream of the inferences that follow."""
        if self.options.ideal:
            return
        if self.sample is None:
            raise AfmcError("program() must come before set_time()")
        if self._compensates and (self._own_reference or self.sample != 0) and self._t0_sample != self.sample:
            self._measure_t0_references()  # leaves the arrays at t0
            if t == 0.0:
                return
        self._age(t, layers)
        if self._compensates:
            # The readouts of time t, before any inference: a readout reads the layer's arrays into the
            # layer's workspaces, which hold its pending array results during an inference (another
            # column block's accumulate has not read them yet when the first compensation runs).
            for layer, amplitude in self._compensated_reads():
                self.readout(layer, amplitude)

    def _compensated_reads(self) -> list[tuple[AnalogLayer, float]]:
        """(layer, readout amplitude) of every ``xbar.drift_compensate``, once each."""
        pairs: dict[tuple[int, float], tuple[AnalogLayer, float]] = {}
        for op in self.module.ops:
            layer = self._layer_named.get(str(op.attr("layer"))) if op.name == "xbar.drift_compensate" else None
            if layer is not None:
                pairs.setdefault((layer.index, float(op.attr("amplitude"))), (layer, float(op.attr("amplitude"))))
        return list(pairs.values())

    def _measure_t0_references(self) -> None:
        """The drift-compensation readouts of this programming instance right after programming (t0),
        for the instances and options whose arrays the stored references do not describe."""
        self._age(0.0)
        levels: dict[int, Any] = {}
        for op in self.module.ops:
            if op.name != "xbar.drift_compensate":
                continue
            layer = self._layer_named.get(str(op.attr("layer")))
            source = op.operands[0]
            acc = source.producer if source is not None else None
            if layer is None or acc is None:
                continue
            amplitude = float(op.attr("amplitude"))
            levels[id(op)] = (self.reference_level(layer, amplitude) if op.attr("mode") == "global"
                              else np.asarray(self.reference_level(layer, amplitude, acc), np.float64))
        self._t0_levels, self._t0_sample = levels, self.sample

    def _age(self, t: float, layers: Sequence[AnalogLayer] | None = None) -> None:
        """`set_time`'s work: age ``layers`` (default all) to ``t``, reset the readouts and the per-MVM
        noise stream."""
        assert self.sample is not None
        seq = self._samples[self.sample]
        key = time_key(t)
        ir = self.options.ir_drop
        units = {phase.unit for phase in self.dac.phases}
        for layer in self.layers if layers is None else layers:
            if self.device_effects:
                layer.set_time(self.device, t, _child(seq, 1, key, layer.device_index), self.options.effects)
                layer.alpha = None
                if self.options.drift_compensation == "global":
                    layer.alpha = (layer.reference_read / np.maximum(layer.mean_abs_weight(), 1e-30)).astype(F32)
                layer.__dict__.pop("_phase_factors", None)
                if len(units) == 1:  # fold the ADC scaling into the weights: products come out in codes
                    layer.fold_codes(next(iter(units)), self.adc.step, self.options.ir_drop_g_ratio)
                layer.set_ir(ir)
            else:
                layer.set_exact(ir)
        self.time = t
        self._readouts.clear()
        self._noise_seq = _child(seq, 2, key)
        self._calls = 0

    def release(self, layer: AnalogLayer) -> None:
        """Drop ``layer``'s programmed devices, weight stacks and readouts (it reads again only after
        `program` and `set_time`)."""
        layer.programmed = layer.weights = None
        layer.ir_stack = layer.abs_weights = layer.abs_basis = layer.abs_coeffs = None
        layer.__dict__.pop("_phase_factors", None)
        for key in [k for k in self._readouts if k[0] == layer.index]:
            del self._readouts[key]

    # -- interpretation ---------------------------------------------------------------------------
    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._pending.clear()
        try:
            return super().run(inputs)
        finally:
            self._pending.clear()

    def run_op(self, op: Op, args: Sequence[np.ndarray | None]) -> list[np.ndarray]:
        if op.name == "xbar.drift_compensate" and not self.options.ideal:
            assert args[0] is not None
            return [self._compensate(op, args[0])]
        if op.name == "xbar.calibrate" and self.options.ideal:
            # The correction was fitted to the non-ideal chip; on exact arrays it would add the error back.
            assert args[0] is not None
            return [args[0]]
        if op.name == "xbar.mvm":
            result = self._pending.pop(id(op), None)
            if result is None:
                layer = self._layer_of[id(op)]
                assert args[0] is not None
                self._pending.update(self.forward(layer, args[0]))
                result = self._pending.pop(id(op))
            return [result]
        if op.name in CHUNKED_ELEMENTWISE and args[0] is not None and np.size(args[0]) > _CHUNK_ELEMENTS:
            return [_chunked(lambda part: super(AnalogSimulator, self).run_op(op, [part])[0], args[0])]
        return super().run_op(op, args)

    def forward(self, layer: AnalogLayer, unfolded: np.ndarray) -> dict[int, np.ndarray]:
        """Every array read of ``layer`` for one unfolded input: op id → level-domain result."""
        a = np.asarray(unfolded, F32)
        if not self.options.ideal:
            return layer.split(self._read_quantised(layer, *self._quantise(layer, a)))
        if layer.contiguous:
            return layer.split(np.matmul(a, layer.signed_levels))
        y = np.empty((len(layer.blocks), a.shape[1], layer.width), F32)
        for b, (g, r0, r1) in enumerate(layer.blocks):  # strided views: BLAS reads the rows in place
            np.matmul(a[g, :, r0:r1], layer.signed_levels[b, : r1 - r0], out=y[b])
        return layer.split(y)

    # -- calibration ------------------------------------------------------------------------------
    def layer_for(self, op: Op) -> AnalogLayer:
        """The layer an ``xbar.mvm`` belongs to."""
        return self._layer_of[id(op)]

    @property
    def noise_calls(self) -> int:
        """Reads done since `set_time`: the key of the next read's output noise (settable, so that a
        caller can repeat a read with the same noise draws)."""
        return self._calls

    @noise_calls.setter
    def noise_calls(self, value: int) -> None:
        self._calls = int(value)

    def set_input_scale(self, layer: AnalogLayer, scale: float | None) -> None:
        """A static input (DAC) scale for every block of ``layer`` (None: abs-max per vector)."""
        layer.input_scale = None if scale is None else np.full(len(layer.blocks), float(scale))

    def set_adc_scale(self, layer: AnalogLayer, factors: Mapping[int, float] | None) -> None:
        """ADC ranges per array (mvm op id → factor on the target's range; missing arrays keep it)."""
        if not factors:
            layer.adc_scale = layer.adc_gain = None
        else:
            scale = np.ones((len(layer.blocks), layer.phys_width))
            for key, factor in factors.items():
                read = layer.reads[key]
                scale[read.block, read.physical] = float(factor)
            layer.adc_scale = scale
            layer.adc_gain = (1.0 / scale).astype(F32)[:, None, :]
        layer.__dict__.pop("_phase_factors", None)
        self._readouts.clear()

    def _configure_adc(self, layer: AnalogLayer) -> None:
        """ADC ranges from the ``adc_range`` attributes (each the target's range times one factor)."""
        factors: dict[int, float] = {}
        for key, read in layer.reads.items():
            bounds = read.op.attr("adc_range")
            if bounds is None:
                continue
            lo, hi = float(bounds[0]), float(bounds[1])
            factor = (hi - lo) / (self.adc.hi - self.adc.lo)
            if not (factor > 0 and math.isclose(lo, self.adc.lo * factor, rel_tol=1e-9, abs_tol=1e-12)
                    and math.isclose(hi, self.adc.hi * factor, rel_tol=1e-9, abs_tol=1e-12)):
                raise AfmcError(f"adc_range {[lo, hi]} is not the target's adc.output_range "
                                f"{[self.adc.lo, self.adc.hi]} times a positive factor", node=read.op.loc or None)
            factors[key] = factor
        self.set_adc_scale(layer, factors)

    def adc_bound(self, layer: AnalogLayer, op: Op) -> float:
        """The largest |value| the ADC of an array converts (normalised units)."""
        read = layer.reads[id(op)]
        factor = 1.0 if layer.adc_scale is None else float(layer.adc_scale[read.block, read.physical].max())
        return max(abs(self.adc.lo), abs(self.adc.hi)) * factor

    def readout(self, layer: AnalogLayer, amplitude: float) -> dict[int, np.ndarray]:
        """The one-hot readout (REFERENCE.md §1): each row of every array driven alone at ``amplitude``
        (normalised input, rounded to a DAC code) through the non-ideal path, the reads combined like
        the layer's outputs. Per ``xbar.accumulate`` of the layer (op id): the measured (K × c) weights."""
        key = (layer.index, float(amplitude))
        cached = self._readouts.get(key)
        if cached is not None:
            return cached
        blocks, rows = len(layer.blocks), layer.rows
        if self.options.ideal:
            out = layer.signed_levels.astype(np.float64)
        else:
            if self.sample is None or self.time is None:
                raise AfmcError("program() and set_time() must come before a readout")
            code = float(amplitude) / self.dac.step
            if self.dac.quantize:
                code = float(np.clip(np.rint(code), 1, self.dac.q_hi))
            q = np.zeros((blocks, rows, rows), F32)
            for b, n in enumerate(layer.rows_used):
                q[b, np.arange(n), np.arange(n)] = code
            s = np.full((blocks, rows, 1), 1.0 / (code * self.dac.step), F32)
            saved = self._noise_seq, self._calls
            self._noise_seq = _child(self._samples[self.sample], 3, time_key(self.time), layer.index)
            self._calls = 0
            try:
                out = np.array(self._read_quantised(layer, q, s), np.float64)
            finally:
                self._noise_seq, self._calls = saved
        result: dict[int, np.ndarray] = {}
        for acc in layer.accumulates:
            c0, c1 = acc.attr("cols")
            matrix = np.zeros((layer.depth, c1 - c0))
            for scale, value in zip(acc.attr("scales"), acc.operands):
                read = layer.reads.get(id(value.producer)) if value is not None and value.producer is not None else None
                if read is None:
                    raise AfmcError(f"layer {layer.name}: an xbar.accumulate reads values of other layers", node=acc.loc or None)
                r0, r1 = read.op.attr("rows")
                matrix[r0:r1] += scale * out[read.block, : r1 - r0, read.logical]
            if acc.attr("column_scales") is not None:
                matrix *= np.asarray(acc.attr("column_scales"), np.float64)
            result[id(acc)] = matrix
        self._readouts[key] = result
        return result

    def reference_level(self, layer: AnalogLayer, amplitude: float, acc: Op | None = None) -> np.ndarray | float:
        """r of the drift compensation: mean |readout| over the whole layer (``acc`` None: global mode),
        or per column of one accumulate's block (column mode)."""
        readout = self.readout(layer, amplitude)
        if acc is None:
            return float(np.mean(np.concatenate([np.abs(m).reshape(-1) for m in readout.values()])))
        return np.abs(readout[id(acc)]).mean(axis=0)

    def _compensate(self, op: Op, y: np.ndarray) -> np.ndarray:
        """``xbar.drift_compensate``: y · reference / r_t."""
        layer = self._layer_named.get(str(op.attr("layer")))
        source = op.operands[0]
        acc = source.producer if source is not None else None
        if layer is None or acc is None or all(acc is not a for a in layer.accumulates):
            raise AfmcError("xbar.drift_compensate must read an xbar.accumulate of its layer", node=op.loc or None)
        amplitude = float(op.attr("amplitude"))
        stored = self._t0_levels.get(id(op))
        reference = op.attr("reference") if stored is None else stored
        # A readout of 0 (every one-hot read below the ADC's first step) measures nothing: that layer
        # (or column) is left as it is rather than multiplied by reference / 0.
        if op.attr("mode") == "global":
            level = float(self.reference_level(layer, amplitude))
            alpha: Any = float(reference) / level if level > 0 and float(reference) > 0 else 1.0
        else:
            level_c = np.asarray(self.reference_level(layer, amplitude, acc), np.float64)
            r0 = np.asarray(reference, np.float64)
            alpha = np.where((level_c > 0) & (r0 > 0), r0 / np.where(level_c > 0, level_c, 1.0), 1.0)
        return (np.asarray(y, np.float64) * alpha).astype(F32)

    def _quantise(self, layer: AnalogLayer, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per block: the noise-management scales s (B, M, 1) and the DAC's q (B, M, R), zero-padded.

        Run over chunks of vectors that stay in cache (gather, max|x|, scale, round, clip: the same
        float32 operations as `abs_max_scale` and `Dac.normalise` on the whole stack, so the same bits);
        both results are workspaces of the layer, valid until it is read again."""
        abs_max = self.options.noise_management == "abs_max"
        static = layer.input_scale
        blocks, vectors = len(layer.blocks), a.shape[1]
        if static is not None:  # calibrated static ranges
            s = np.repeat(static.astype(F32)[:, None, None], vectors, axis=1)
        elif not abs_max:
            s = np.ones((blocks, vectors, 1), F32)
        else:
            s = layer.workspace("s", (blocks, vectors, 1), F32)
        # The zero padding of short blocks changes neither max|x| nor the quantised values.
        q = layer.workspace("q", (blocks, vectors, layer.rows), F32, zero=not layer.contiguous)
        step = max(16, _CHUNK_ELEMENTS // max(1, layer.rows))
        magnitude = np.empty((min(step, vectors), layer.rows), F32) if static is None and abs_max else None
        for m0 in range(0, vectors, step):
            m1 = min(m0 + step, vectors)
            for b, (g, r0, r1) in enumerate(layer.blocks):
                x = a[g, m0:m1, r0:r1]
                scale = s[b, m0:m1]
                if magnitude is not None:  # max|x| (= max(max x, −min x), in one reduction)
                    mag = np.abs(x, out=magnitude[: m1 - m0, : r1 - r0])
                    np.max(mag, axis=-1, keepdims=True, out=scale)
                    scale[scale == 0] = 1
                self.dac.normalise(x, scale, out=q[b, m0:m1, : r1 - r0])
        return q, s

    def _read(self, layer: AnalogLayer, x: np.ndarray) -> np.ndarray:
        """`_read_quantised` of a gathered (B, M, R) input stack (the result is the layer's workspace:
        valid until the layer is read again)."""
        s = abs_max_scale(x) if self.options.noise_management == "abs_max" else np.ones(x.shape[:2] + (1,), F32)
        return self._read_quantised(layer, self.dac.normalise(x, s), s)

    def _read_quantised(self, layer: AnalogLayer, q: np.ndarray, s: np.ndarray) -> np.ndarray:
        """The non-ideal reads of one layer: (B, M, R) inputs → (B, M, width) level-domain results.

        Per input phase, one batched product over the whole layer into a workspace kept between
        calls; the IR-drop current term and the element-wise converter steps then run over chunks
        of vectors small enough to stay in cache. The output noise of a (call, phase) comes from its
        own generator, keyed by (call, phase), drawn chunk after chunk in order."""
        assert layer.weights is not None and self._noise_seq is not None
        blocks, vectors = q.shape[:2]
        # The results live in a workspace too: each array's result is read (by xbar.accumulate)
        # before the layer runs again, and large fresh arrays cost a page fault per 4 KiB.
        out = layer.workspace("out", (blocks, vectors, layer.width), F32)
        ir_factor = layer.ir_stack
        ir = ir_factor is not None
        width = layer.phys_width
        weights = layer.weights
        # Vectors per chunk: the chunk's product (both halves with IR drop) and the element-wise passes
        # over it stay in the L2 cache; BLAS keeps its pace down to ~128 rows.
        rows = max(_MIN_CHUNK_ROWS, _READ_CHUNK // max(1, blocks * width * (2 if ir else 1)))
        chunks = layer.replica_spans(vectors, rows)
        rows = max(m1 - m0 for _, m0, m1 in chunks)
        self._calls += 1
        call = self._calls
        factors = self._factors(layer)
        exact64 = not self.device_effects and layer.exact_dtype is not F32  # type: ignore[attr-defined]
        if exact64:
            weights = weights.astype(np.float64)
        last = len(self.dac.phases) - 1
        for p, (phase, k) in enumerate(zip(self.dac.phases, factors)):
            self._phase_index = p  # for adc_probe
            d = self.dac.digit(q, phase)
            if exact64:
                d = d.astype(np.float64)
            sigma = self._noise_sigma(layer, d, phase.unit)
            table = self._noise_table(sigma) if sigma is not None and not isinstance(sigma, np.ndarray) else None
            rng = np.random.Generator(np.random.SFC64(_child(self._noise_seq, call, p))) if sigma is not None else None
            prod = layer.workspace("prod", (blocks, 2 * rows if ir else rows, width), d.dtype)
            stacked = layer.workspace("stacked", (blocks, 2 * rows, d.shape[-1]), d.dtype) if ir else None
            scratch = layer.workspace("scratch", (blocks, rows, width), F32)
            current = layer.workspace("current", (blocks, rows, width), F32) if ir else None
            magnitude = layer.workspace("magnitude", (blocks, rows, d.shape[-1]), F32) if ir else None
            for replica, m0, m1 in chunks:
                size = m1 - m0
                here = signed = None
                if stacked is not None and ir_factor is not None:  # [d; k·f·d] @ w: Σ w·a and k·Σ w·a·f
                    stacked[:, :size] = d[:, m0:m1]
                    np.multiply(d[:, m0:m1], ir_factor, out=stacked[:, size:2 * size])
                    both = np.matmul(stacked[:, :2 * size], weights[:, replica], out=prod[:, :2 * size])
                    part, signed = both[:, :size], both[:, size:]
                else:
                    part = np.matmul(d[:, m0:m1], weights[:, replica], out=prod[:, :size])
                if magnitude is not None and current is not None:  # Σ |w||a| (level units)
                    np.abs(d[:, m0:m1], out=magnitude[:, :size])
                    here = layer.abs_current(magnitude[:, :size], replica, out=current[:, :size])
                y = self._convert(
                    layer, part, k, sigma[:, m0:m1] if isinstance(sigma, np.ndarray) else sigma, table,
                    rng, signed, here, scratch[:, :size])
                target = out[:, m0:m1]
                if p == 0 and p == last:
                    np.multiply(y, s[:, m0:m1], out=target)
                elif p == 0:
                    target[...] = y
                else:
                    target += y
                    if p == last:
                        target *= s[:, m0:m1]
        return out

    def _factors(self, layer: AnalogLayer) -> list[dict[str, np.ndarray]]:
        """Per phase, the per-column constants of the documented arithmetic (float32, shape (B, 1, C))."""
        cached = layer.__dict__.get("_phase_factors")
        if cached is not None and cached[0] == layer.codes_folded:
            return cached[1]
        dac, adc, options = self.dac, self.adc, self.options
        full = layer.full_scale[:, None, :]  # L per physical column
        rows = layer.rows_used.astype(np.float64)[:, None, None]
        alpha = 1.0 if layer.alpha is None else layer.alpha[:, None, :].astype(np.float64)
        ranges = 1.0 if layer.adc_scale is None else layer.adc_scale[:, None, :]
        factors = []
        for phase in dac.phases:
            factors.append({
                "to_codes": (phase.unit / (full * adc.step)).astype(F32),  # u / (L·step_out): level units → codes
                "back": (phase.weight * dac.step * adc.step * full / phase.unit * alpha * ranges).astype(F32),
                "ir_current": (rows / options.ir_drop_g_ratio * phase.unit / full).astype(F32),  # → a
            })
            if layer.codes_folded:  # already in the weights
                del factors[-1]["to_codes"], factors[-1]["ir_current"]
        layer._phase_factors = (layer.codes_folded, factors)  # type: ignore[attr-defined]
        return factors

    def _noise_table(self, sigma: float) -> np.ndarray:
        """The normal quantile table scaled by σ (cached: σ is fixed for a simulator)."""
        cached = getattr(self, "_table", None)
        if cached is None or cached[0] != sigma:
            cached = (sigma, normal_quantiles() * F32(sigma))
            self._table = cached
        return cached[1]

    def _convert(self, layer: AnalogLayer, acc: np.ndarray, k: dict[str, np.ndarray], sigma: Any,
                 table: np.ndarray | None, rng: np.random.Generator | None, signed: np.ndarray | None,
                 current: np.ndarray | None, scratch: np.ndarray) -> np.ndarray:
        """One phase of a chunk of reads, from the level-domain products to the recombined results:
        IR drop, to ADC codes, noise, conversion, back to level units, reference column subtracted.
        ``acc`` (a view into the workspace) and ``current`` are overwritten."""
        if signed is not None and current is not None:  # acc −= ir_drop · c(a) · Σ w·a·f
            a = np.multiply(current, k["ir_current"], out=current) if "ir_current" in k else current
            c = np.subtract(a, F32(4.0), out=scratch)  # c(a) = 0.05·a·((a − 4)·a + 10); 0.05·ir_drop is in `signed`
            c *= a
            c += F32(10.0)
            c *= a
            c *= signed
            acc -= c
        if "to_codes" not in k:  # folded into the weights
            y = acc
        elif acc.dtype == F32:
            y = np.multiply(acc, k["to_codes"], out=acc)
        else:  # the float64 product of exact integers, rounded once
            y = (acc * k["to_codes"]).astype(F32)
        if sigma is not None:
            assert rng is not None
            if table is not None:
                y += gaussian_noise(rng, y.shape, table=table, out=scratch)
            else:  # per-row σ (per-read device noise)
                noise = gaussian_noise(rng, y.shape, out=scratch)
                noise *= sigma
                y += noise
        if self.adc_probe is not None:
            self.adc_probe(layer, y, self._phase_index)
        if layer.adc_gain is not None:
            y *= layer.adc_gain
        if self.options.adc:
            self.adc.convert(y)
        y *= k["back"]
        if layer.weight_index is not None:
            y = y[..., layer.weight_index] - y[..., layer.ref_index]
        return y

    def _noise_sigma(self, layer: AnalogLayer, d: np.ndarray, unit: float) -> np.ndarray | float | None:
        """σ of the noise of each read in ADC code units: output noise, plus per-read device noise
        σ_w·sqrt(Σ_j a_j²) (the exact distribution of fresh weight noise on every read)."""
        out = self.options.out_noise
        if layer.read_sigma <= 0:
            return out / self.adc.step if out > 0 else None
        power = np.einsum("bmr,bmr->bm", d, d, dtype=F32)[..., None] * F32(unit * unit * layer.read_sigma**2)
        power += F32(out * out)
        np.sqrt(power, out=power)
        power *= F32(1.0 / self.adc.step)
        return power


#: Element-wise digital ops whose reference implementations work through float64 temporaries: the
#: simulator runs them (the reference implementation itself) on cache-sized pieces, with identical results.
CHUNKED_ELEMENTWISE = frozenset({"nn.erf", "nn.sigmoid"})


def _chunked(fn: Any, x: np.ndarray) -> np.ndarray:
    flat = np.ascontiguousarray(x).reshape(-1)
    step = _CHUNK_ELEMENTS // 2
    parts = [fn(flat[i:i + step]) for i in range(0, flat.size, step)]
    return np.concatenate(parts).reshape(np.shape(x))


#: Rank of the sketch of |W| in the IR-drop coefficient (see `AnalogLayer.set_ir`).
IR_SKETCH_RANK = 32
#: Elements of one chunk's (B, rows, C) result: 256 KB of float32, so a few stay in a core's L2 cache.
_CHUNK_ELEMENTS = 1 << 16
#: Fewest vectors of one chunk of an analog read (smaller products lose BLAS speed).
_MIN_CHUNK_ROWS = 128
#: Elements of one chunk's product in an analog read (B × vectors × columns, both halves with IR drop).
_READ_CHUNK = 1 << 16
