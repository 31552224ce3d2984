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
bit slice, side by side — one (B, R, C) weight stack. An inference then costs, per layer and input
phase, one batched ``np.matmul`` (plus two for IR drop) and a few element-wise passes over the
(B, M, C) result; the first ``xbar.mvm`` of a layer computes all of them and the rest read their
slice. Weight stacks are built once per programming instance and time point (`program`,
`set_time`), never per input.

Monte-Carlo. ``SeedSequence(seed).spawn(samples)`` gives one sequence per programming instance;
from it fixed keys derive the programming of each layer (``(0, layer)``), the static read of each
layer at a time t (``(1, t in ns, layer)``) and the per-MVM noise of the inferences run at t
(``(2, t in ns)``). The same seed, samples, times and inputs give bit-identical outputs.

Exactness. With ``SimOptions(ideal=True)`` an array read is ``x @ signed_levels`` in float32 —
the ideal semantics of ``xbar.mvm`` up to float32 rounding. With the device non-idealities and
noise off but the converters on, the arrays hold their exact integer levels and every step is the
fixed-point arithmetic documented in `afmc.sim.periphery` (integer-valued float32 products are
exact while Σ|d·level| < 2^24, else float64 is used).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import AfmcError
from ..interp.interpreter import Interpreter
from ..interp.ops.xbar import UNFOLDERS
from ..ir.core import Module, Op, Value
from .devices import DeviceModel, Effects, full_scale_levels, make_device, target_conductances
from .periphery import (
    IR_DROP_G_RATIO, Adc, Dac, abs_max_scale, gaussian_noise, ir_drop_coefficient, ir_drop_factors,
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
    ``noise_management`` is ``abs_max`` or ``none`` (see `afmc.sim.periphery`).
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

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise AfmcError(f"samples must be >= 1, got {self.samples}")
        if self.t_inference < 0 or not math.isfinite(self.t_inference):
            raise AfmcError(f"t_inference must be a finite time >= 0 s, got {self.t_inference}")
        if self.noise_management not in ("abs_max", "none"):
            raise AfmcError(f"noise_management must be 'abs_max' or 'none', got {self.noise_management!r}")
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
    return int(round(t * 1e9))


def _child(seq: np.random.SeedSequence, *key: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(seq.entropy, spawn_key=tuple(seq.spawn_key) + tuple(int(k) for k in key))


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
        blocks = sorted({(int(op.attr("group")), *op.attr("rows")) for op in ops})
        columns: list[tuple[int, int, int]] = []
        for op in ops:
            key = (*op.attr("cols"), int(op.attr("slice")))
            if key not in columns:
                columns.append(key)
        block_of = {b: i for i, b in enumerate(blocks)}
        seen = {(int(op.attr("group")), *op.attr("rows"), *op.attr("cols"), int(op.attr("slice"))) for op in ops}
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
            b = block_of[(int(op.attr("group")), *op.attr("rows"))]
            c = columns.index((*op.attr("cols"), int(op.attr("slice"))))
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
            self.weight_index, self.ref_index = weight.astype(np.intp), ref
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
        self.ir_stack: np.ndarray | None = None  # [w | f·w] along columns, for IR drop
        self.abs_weights: np.ndarray | None = None  # |w|, or its rank-k sketch below
        self.abs_basis: np.ndarray | None = None
        self.abs_coeffs: np.ndarray | None = None
        self.read_sigma = 0.0  # per-read weight noise, normalised units, per cell

    # -- inputs ------------------------------------------------------------------------------------
    def gather(self, unfolded: np.ndarray) -> np.ndarray:
        """The (B, M, R) stack of block inputs (zero-padded rows) from the (G, M, K) unfolded input."""
        a = np.asarray(unfolded, F32)
        if self.contiguous:
            return a
        out = np.zeros((len(self.blocks), self.vectors, self.rows), F32)
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

    def set_time(self, device: DeviceModel, t: float, seq: np.random.SeedSequence, effects: Effects,
                 ir_drop: bool) -> None:
        """The weight stacks at ``t`` seconds after programming (static read noise included)."""
        g = device.read(self.programmed, t, seq, effects)
        w = g - F32(device.g_min)
        w = w.mean(axis=3, dtype=F32)  # parallel devices sum their currents: the cell is their mean
        if self.polarities == 2:
            w = w[:, :, 0] - w[:, :, 1]
        else:
            w = w[:, :, 0]
        w *= (self.full_scale[:, None, None, :] / device.g_range).astype(F32)
        self.weights = np.ascontiguousarray(w, F32)
        self._set_ir(ir_drop)

    def set_exact(self, ir_drop: bool) -> None:
        """Weight stacks holding the exact integer levels (no device effects)."""
        self.weights = self.physical_levels[:, None]
        self._set_ir(ir_drop)

    def _set_ir(self, ir_drop: bool) -> None:
        """IR drop needs Σ w·a·f and Σ |w||a| besides Σ w·a. The first comes from the stack [w | f·w]
        (one product of twice the columns). The second only sets the small coefficient c(a), so it
        uses |W| ≈ Q·(Qᵀ|W|), a rank-32 range sketch (fixed seed, one power iteration): |W| ≥ 0 is
        dominated by its mean, and the sketch holds Σ|w||a| to ~6 % on random 256×256 weights, i.e.
        the drop itself to ~6 % (tested); arrays with at most 64 rows or columns use |W| itself."""
        self.abs_weights = self.ir_stack = self.abs_basis = self.abs_coeffs = None
        if not ir_drop or self.weights is None:
            return
        f = ir_drop_factors(self.rows_used, self.rows)  # (B, R)
        self.ir_stack = np.concatenate([self.weights, self.weights * f[:, None, :, None]], axis=-1)
        magnitude = np.abs(self.weights)
        if min(self.rows, self.phys_width) <= 2 * IR_SKETCH_RANK:
            self.abs_weights = magnitude
            return
        probe = np.random.default_rng(0).standard_normal((self.phys_width, IR_SKETCH_RANK)).astype(F32)
        basis = np.linalg.qr(magnitude @ probe)[0]
        basis = np.linalg.qr(magnitude @ (np.swapaxes(magnitude, -1, -2) @ basis))[0]
        self.abs_basis = np.ascontiguousarray(basis, F32)  # (B, replicas, R, rank)
        self.abs_coeffs = np.ascontiguousarray(np.swapaxes(basis, -1, -2) @ magnitude, F32)  # (B, replicas, rank, C)

    def abs_current(self, magnitude: np.ndarray, replica: int) -> np.ndarray:
        """Σ_j |w_ij|·|a_j| (level units) for inputs ``magnitude`` = |d| of shape (B, m, R)."""
        if self.abs_weights is not None:
            return np.matmul(magnitude, self.abs_weights[:, replica])
        assert self.abs_basis is not None and self.abs_coeffs is not None
        return np.matmul(np.matmul(magnitude, self.abs_basis[:, replica]), self.abs_coeffs[:, replica])

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

    def __init__(self, module: Module, target: Any, options: SimOptions | None = None) -> None:
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
        if not options.ideal:
            self.program(0)
            self.set_time(options.t_inference)

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
        return [AnalogLayer(i, sources[key], ops, module) for i, (key, ops) in enumerate(by_source.items())]

    @property
    def device_effects(self) -> bool:
        """Whether the arrays hold anything but their exact levels."""
        return self.options.effects.any and self.device.name != "ideal"

    # -- programming instances and time -----------------------------------------------------------
    def program(self, sample: int) -> None:
        """Program every array anew: Monte-Carlo instance ``sample`` (0 ≤ sample < options.samples)."""
        if self.options.ideal:
            return
        if not 0 <= sample < len(self._samples):
            raise AfmcError(f"sample {sample} is outside 0..{len(self._samples) - 1}")
        self.sample, self.time = sample, None
        seq = self._samples[sample]
        for layer in self.layers:
            if self.device_effects:
                layer.program(self.device, _child(seq, 0, layer.index), self.options.effects, self.parallel)
            else:
                layer.programmed = None

    def set_time(self, t: float) -> None:
        """Age the programmed arrays to ``t`` seconds after programming and draw that time's static read
        noise; resets the per-MVM noise stream of the inferences that follow."""
        if self.options.ideal:
            return
        if self.sample is None:
            raise AfmcError("program() must come before set_time()")
        seq = self._samples[self.sample]
        key = time_key(t)
        ir = self.options.ir_drop > 0
        for layer in self.layers:
            if self.device_effects:
                layer.set_time(self.device, t, _child(seq, 1, key, layer.index), self.options.effects, ir)
            else:
                layer.set_exact(ir)
        self.time = t
        self._noise_seq = _child(seq, 2, key)
        self._calls = 0

    # -- interpretation ---------------------------------------------------------------------------
    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._pending.clear()
        try:
            return super().run(inputs)
        finally:
            self._pending.clear()

    def run_op(self, op: Op, args: Sequence[np.ndarray | None]) -> list[np.ndarray]:
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
        if op.name == "xbar.unfold":  # the ideal impl in float32: the same values, without float64 copies
            assert args[0] is not None
            rows = UNFOLDERS[op.attr("kind")](op, np.asarray(args[0], F32))
            return [np.ascontiguousarray(rows, F32)]
        return super().run_op(op, args)

    def forward(self, layer: AnalogLayer, unfolded: np.ndarray) -> dict[int, np.ndarray]:
        """Every array read of ``layer`` for one unfolded input: op id → level-domain result."""
        x = layer.gather(unfolded)
        if self.options.ideal:
            return layer.split(np.matmul(x, layer.signed_levels))
        return layer.split(self._read(layer, x))

    def _read(self, layer: AnalogLayer, x: np.ndarray) -> np.ndarray:
        """The non-ideal reads of one layer: (B, M, R) inputs → (B, M, width) level-domain results.

        Per input phase, one batched product over the whole layer (BLAS uses every core); the
        element-wise converter steps then run over chunks of vectors small enough to stay in cache,
        on a thread pool (numpy releases the GIL). Each chunk draws its noise from its own
        generator, keyed by (call, phase, chunk), so results do not depend on scheduling."""
        options = self.options
        assert layer.weights is not None and self._noise_seq is not None
        s = abs_max_scale(x) if options.noise_management == "abs_max" else np.ones(x.shape[:2] + (1,), F32)
        q = self.dac.normalise(x, s)
        blocks, vectors = x.shape[:2]
        out = np.empty((blocks, vectors, layer.width), F32)
        spans = layer.replica_spans(vectors, vectors)
        ir = layer.ir_stack is not None
        rows = max(8, _CHUNK_ELEMENTS // max(1, blocks * layer.phys_width * (3 if ir else 1)))
        chunks = [(m0, min(m0 + rows, vectors)) for m0 in range(0, vectors, rows)]
        self._calls += 1
        call = self._calls
        factors = self._factors(layer)
        exact64 = not self.device_effects and layer.exact_dtype is not F32  # type: ignore[attr-defined]
        width = layer.phys_width
        last = len(self.dac.phases) - 1
        for p, (phase, k) in enumerate(zip(self.dac.phases, factors)):
            d = self.dac.digit(q, phase)
            weights = layer.ir_stack if ir else layer.weights
            assert weights is not None
            if exact64:
                d, weights = d.astype(np.float64), weights.astype(np.float64)
            prod = np.empty((blocks, vectors, weights.shape[-1]), d.dtype)
            for replica, m0, m1 in spans:
                np.matmul(d[:, m0:m1], weights[:, replica], out=prod[:, m0:m1])
            current = None
            if ir:  # Σ |w||a|, for the IR-drop coefficient
                magnitude = d if d.min() >= 0 else np.abs(d)
                current = np.empty((blocks, vectors, width), F32)
                for replica, m0, m1 in spans:
                    current[:, m0:m1] = layer.abs_current(magnitude[:, m0:m1], replica)
            sigma = self._noise_sigma(layer, d, phase.unit)

            def task(index: int, p: int = p, phase: Any = phase, k: dict[str, np.ndarray] = k,
                     prod: np.ndarray = prod, current: np.ndarray | None = current, sigma: Any = sigma) -> None:
                m0, m1 = chunks[index]
                rows_sigma = sigma[:, m0:m1] if isinstance(sigma, np.ndarray) else sigma
                part = prod[:, m0:m1]
                y = self._convert(layer, part[..., :width], k, rows_sigma, _child(self._noise_seq, call, p, index),
                                  None if current is None else part[..., width:],
                                  None if current is None else current[:, m0:m1])
                target = out[:, m0:m1]
                if p == 0:
                    target[...] = y
                else:
                    target += y
                if p == last:
                    target *= s[:, m0:m1]

            _run_tasks(task, len(chunks))
        return out

    def _convert(self, layer: AnalogLayer, acc: np.ndarray, k: dict[str, np.ndarray], sigma: Any,
                 seq: np.random.SeedSequence, signed: np.ndarray | None, current: np.ndarray | None) -> np.ndarray:
        """One phase of a chunk of reads, from the level-domain products to the recombined results:
        to ADC codes, IR drop, noise, conversion, back to level units, reference column subtracted."""
        if acc.dtype == F32:
            y = np.multiply(acc, k["to_codes"])
        else:  # the float64 product of exact integers, rounded once
            y = (acc * k["to_codes"]).astype(F32)
        if signed is not None and current is not None:  # y −= c(a) · ir_drop · Σ w·a·f, in ADC codes
            c = ir_drop_coefficient(np.multiply(current, k["ir_current"], dtype=F32))
            c *= signed
            c *= k["ir_codes"]
            y -= c
        if sigma is not None:
            rng = np.random.Generator(np.random.PCG64(seq))
            if isinstance(sigma, np.ndarray):  # per-row σ (per-read device noise)
                noise = gaussian_noise(rng, y.shape)
                noise *= sigma
                y += noise
            else:
                y += gaussian_noise(rng, y.shape, sigma)
        if self.options.adc:
            self.adc.convert(y)
        y *= k["back"]
        if layer.weight_index is not None:
            y = y[..., layer.weight_index] - y[..., layer.ref_index]
        return y

    def _factors(self, layer: AnalogLayer) -> list[dict[str, np.ndarray]]:
        """Per phase, the per-column constants of the documented arithmetic (float32, shape (B, 1, C))."""
        cached = getattr(layer, "_phase_factors", None)
        if cached is not None and cached[0] == id(self):
            return cached[1]
        dac, adc, options = self.dac, self.adc, self.options
        full = layer.full_scale[:, None, :]  # L per physical column
        rows = layer.rows_used.astype(np.float64)[:, None, None]
        factors = []
        for phase in dac.phases:
            to_codes = phase.unit / (full * adc.step)  # u / (L · step_out): level units → ADC codes
            factors.append({
                "to_codes": to_codes.astype(F32),
                "back": (phase.weight * dac.step * adc.step * full / phase.unit).astype(F32),
                "ir_current": (rows / options.ir_drop_g_ratio * phase.unit / full).astype(F32),
                "ir_codes": (options.ir_drop * to_codes).astype(F32),
            })
        layer._phase_factors = (id(self), factors)  # type: ignore[attr-defined]
        return factors

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
    parts = [fn(flat[i:i + _CHUNK_ELEMENTS // 8]) for i in range(0, flat.size, _CHUNK_ELEMENTS // 8)]
    return np.concatenate(parts).reshape(np.shape(x))


#: Rank of the sketch of |W| in the IR-drop coefficient (see `AnalogLayer._set_ir`).
IR_SKETCH_RANK = 32
#: Elements of one chunk's (B, rows, C) result: ~1 MB of float32, to stay in cache.
_CHUNK_ELEMENTS = 1 << 18
_POOL: Any = None


def _run_tasks(task: Any, count: int) -> None:
    """Run ``task(i)`` for i < count (on a thread pool when ``AFMC_SIM_THREADS`` > 1: numpy releases
    the GIL, but BLAS threads that spin after each product compete with the pool on small machines)."""
    global _POOL
    threads = int(os.environ.get("AFMC_SIM_THREADS", "1"))
    if count == 1 or threads <= 1:
        for i in range(count):
            task(i)
        return
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="afmc-sim")
    for future in [_POOL.submit(task, i) for i in range(count)]:
        future.result()
