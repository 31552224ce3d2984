"""The analog periphery: input conversion (DAC), output conversion (ADC) and IR drop on the array wires.

Units. The simulator works in *normalised MVM units* (aihwkit's convention, REFERENCE.md §2): an input
element is ``a ∈ dac.input_range`` and a cell's weight is ``w ∈ [−1, 1]`` (``[0, 1]`` for an offset-encoded
column), so a column reads ``y = Σ_j a_j·w_j`` and the ADC clips ``y`` to ``adc.output_range``
(aihwkit's ``out_bound``). ``w`` is the device's normalised conductance (`afmc.sim.devices`): the
largest level of an array is w = 1.

DAC (`Dac`)
    1. Noise management: each input vector of an array (its rows ``r0:r1`` of one unfolded row) is divided by
       its scale ``s``: ``s = max_j |x_j|`` ("abs max", the default; 1 for an all-zero vector) or ``s = 1``
       ("none": the inputs must already lie in the input range).
    2. Quantisation with B = ``dac.input_bits`` bits over [lo, hi] = ``dac.input_range``:
       ``step = (hi − lo)/(2^B − 2)`` (aihwkit's inp_res = 2^B − 2 steps: a symmetric range gets the odd
       number 2^B − 1 of levels, zero included), ``q = clip(rint(x · r), q_lo, q_hi)`` with the per-vector
       factor ``r = f32(1/step) / s``, ``q_lo = ceil(lo/step)`` and ``q_hi = floor(hi/step)`` (±127 for 8 bits
       over [−1, 1]); all in float32.
    3. Phases: a DAC that is not bit-serial drives ``a = q·step`` in one array read. A bit-serial DAC of
       ``dac.bits`` = b bits drives P = ceil(B/b) digits of q, least significant first: for a signed range
       the digits of the B-bit two's complement of q, so ``q = Σ_p c_p·d_p`` with ``c_p = 2^(p·b)``, except
       that a top digit which holds only the sign bit is driven as 0/1 with ``c = −2^(B−1)`` (and a wider
       top digit is driven as a signed digit). Digit p is driven as ``a = d·u_p`` with ``u_p = hi / d_max``
       (its largest digit at the top of the range).

ADC (`Adc`)
    ``step = (hi − lo)/(2^bits − 2)`` over [lo, hi] = ``adc.output_range``; a column's value y (normalised
    units), with the output noise ``out_noise·N(0, 1)`` of every MVM added, becomes the code
    ``clip(rint(y / step), code_lo, code_hi)`` (saturation at the range) and is read back as ``code·step``.

Recombination (exact in the ideal limit): an array's level-domain result (`afmc.ir.xbar`: x @ levels) is
``s · Σ_p code_p · (c_p · step_in · step_out · L / u_p)`` with L the array's full-scale level, since
``y_p = a_p @ (levels / L)``. Offset-encoded arrays convert their reference column like any other and
subtract it digitally, per phase.

Output noise (`gaussian_noise`): the per-MVM noise is drawn by inverse-transform sampling from a table of
the 2^16 midpoint quantiles Φ⁻¹((i + ½)/2^16) of the standard normal (rescaled to unit variance),
indexed by 16 random bits of SFC64 (one generator per read and phase) — 5-6× faster than numpy's float32
ziggurat, and within 1/2^17 of the normal CDF everywhere (tails cut at ±4.3σ), far below what any draw of this size could detect.
Device noise (programming, drift exponents, read noise: drawn once per instance and time, not per
inference) uses numpy's exact ``standard_normal``.

IR drop (`ir_drop_factors`, `ir_drop_coefficient`): aihwkit's first-order model as REFERENCE.md §2 states it.
For an array read with n used rows, row j = 0..n−1 counted away from the column's driver end
(row 0 loses nothing),
``a_i = (n / G_ratio)·Σ_j |w_ij|·|a_j|``, ``c_i = a_i·(a_i·(0.05·a_i − 0.2) + 0.5)``,
``y_i −= c_i · ir_drop · Σ_j w_ij·a_j·(1 − (1 − j/n)²)``, with G_ratio the wire conductance between two
cells over g_max (aihwkit's default 1/(0.35 Ω · 5 µS) ≈ 5.7·10^5). It acts on each read (each phase)
before the output noise and the ADC.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import AfmcError

__all__ = [
    "IR_DROP_G_RATIO", "Adc", "Dac", "abs_max_scale", "gaussian_noise", "ir_drop_coefficient", "ir_drop_factors",
    "normal_quantiles",
]

F32 = np.float32
#: aihwkit's IOParameters.ir_drop_g_ratio: 1 / (0.35 Ω wire resistance · 5 µS maximal conductance).
IR_DROP_G_RATIO = 1.0 / 0.35 / 5e-6
_EPS = 1e-9


_QUANTILES: np.ndarray | None = None


def normal_quantiles() -> np.ndarray:
    """The 2^16 midpoint quantiles of N(0, 1), rescaled to unit variance (float32, read-only)."""
    global _QUANTILES
    if _QUANTILES is None:
        from statistics import NormalDist

        n = 1 << 16
        inverse = NormalDist().inv_cdf
        table = np.array([inverse((i + 0.5) / n) for i in range(n)], np.float64)
        table = (table / np.sqrt(np.mean(table**2))).astype(F32)
        table.flags.writeable = False
        _QUANTILES = table
    return _QUANTILES


def gaussian_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float = 1.0, *,
                   table: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """float32 N(0, σ²) samples of ``shape`` from the quantile table (see the module doc); ``table`` may
    be a pre-scaled copy (σ·quantiles), ``out`` a float32 array of ``shape`` to fill."""
    if table is None:
        table = normal_quantiles() if sigma == 1.0 else normal_quantiles() * F32(sigma)
    size = math.prod(shape)
    words = rng.bit_generator.random_raw(-(-size // 4))
    index = np.asarray(words, np.uint64).view(np.uint16)[:size].reshape(shape)
    return np.take(table, index, out=out, mode="clip")  # in range by construction; "clip" skips the checks


def _grid(lo: float, hi: float, bits: int) -> tuple[float, int, int]:
    """(step, lowest code, highest code) of a converter with 2^bits − 2 steps over [lo, hi]."""
    steps = (1 << bits) - 2
    steps = max(steps, 1)  # a 1-bit converter: one step over the range
    step = (hi - lo) / steps
    return step, math.ceil(lo / step - _EPS), math.floor(hi / step + _EPS)


def abs_max_scale(x: np.ndarray) -> np.ndarray:
    """Per-vector noise-management scale along the last axis: max|x| (1 where a vector is all zero)."""
    s = np.maximum(np.max(x, axis=-1, keepdims=True), -np.min(x, axis=-1, keepdims=True))  # no |x| copy
    s[s == 0] = 1
    return s.astype(F32, copy=False)


@dataclass(frozen=True)
class Phase:
    """One array read of a (possibly bit-serial) input: digit weight c and drive per digit unit u."""

    weight: float  # c_p: the digit's weight in q (a signed power of two)
    unit: float  # u_p: normalised input per digit unit
    shift: int  # bit position of the digit in q's B-bit pattern
    bits: int  # width of the digit
    signed: bool  # the digit is driven as a signed (two's complement) value


@dataclass(frozen=True)
class Dac:
    """Input conversion for one target: quantisation grid and bit-serial phases (see the module doc)."""

    input_bits: int
    lo: float
    hi: float
    step: float
    q_lo: int
    q_hi: int
    phases: tuple[Phase, ...]
    quantize: bool = True  # False: unlimited precision (one analog phase, no rounding or clipping)
    _k: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def from_target(cls, dac: Any, quantize: bool = True) -> Dac:
        lo, hi = (float(v) for v in dac.input_range)
        bits, digit = int(dac.input_bits), int(dac.bits)
        step, q_lo, q_hi = _grid(lo, hi, bits)
        signed = lo < 0
        if signed:  # the B-bit two's complement must hold q
            q_lo, q_hi = max(q_lo, -(1 << (bits - 1))), min(q_hi, (1 << (bits - 1)) - 1)
        count = -(-bits // digit) if dac.bit_serial else 1
        if count == 1 or not quantize:
            phases: tuple[Phase, ...] = (Phase(1.0, step, 0, bits, signed),)
        else:
            items = []
            for p in range(count):
                shift = p * digit
                width = min(digit, bits - shift)
                top = p == count - 1
                if top and signed and width == 1:  # the sign bit alone: drive 0/1, weigh −2^(B−1)
                    items.append(Phase(-float(1 << (bits - 1)), hi, shift, 1, False))
                elif top and signed:
                    items.append(Phase(float(1 << shift), hi / (1 << (width - 1)), shift, width, True))
                else:
                    items.append(Phase(float(1 << shift), hi / ((1 << width) - 1), shift, width, False))
            phases = tuple(items)
        return cls(bits, lo, hi, step, q_lo, q_hi, phases, quantize, F32(1.0 / step))

    @property
    def bit_serial(self) -> bool:
        return len(self.phases) > 1

    def normalise(self, x: np.ndarray, s: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """q = clip(rint(x · (f32(1/step) / s)), q_lo, q_hi) (float32); without quantisation x·(1/step)/s."""
        q = np.multiply(x, self._k / np.asarray(s, F32), dtype=F32, out=out)
        if self.quantize:
            np.rint(q, out=q)
            np.clip(q, self.q_lo, self.q_hi, out=q)
        return q

    def digit(self, q: np.ndarray, phase: Phase) -> np.ndarray:
        """The digit of every element of ``q`` (integers as float32) that ``phase`` drives."""
        if len(self.phases) == 1:
            return q
        pattern = q.astype(np.int32)
        if self.lo < 0:
            pattern &= (1 << self.input_bits) - 1  # two's complement bit pattern
        d = (pattern >> phase.shift) & ((1 << phase.bits) - 1)
        if phase.signed:
            d -= (d >> (phase.bits - 1)) << phase.bits
        return d.astype(F32)


@dataclass(frozen=True)
class Adc:
    """Output conversion for one target (see the module doc)."""

    bits: int
    lo: float
    hi: float
    step: float
    code_lo: int
    code_hi: int

    @classmethod
    def from_target(cls, adc: Any) -> Adc:
        lo, hi = (float(v) for v in adc.output_range)
        step, code_lo, code_hi = _grid(lo, hi, int(adc.bits))
        if code_lo > code_hi:
            raise AfmcError(f"adc.output_range {[lo, hi]} holds no code of {adc.bits} bits", key="adc.output_range")
        return cls(int(adc.bits), lo, hi, step, code_lo, code_hi)

    def convert(self, codes: np.ndarray) -> np.ndarray:
        """Round values given in code units to the ADC's codes, saturating at its range (in place)."""
        np.rint(codes, out=codes)
        np.clip(codes, self.code_lo, self.code_hi, out=codes)
        return codes


def ir_drop_factors(rows_used: np.ndarray, rows: int) -> np.ndarray:
    """f_j = 1 − (1 − j/n)² per row j < n of each array (0 beyond n): shape (arrays, rows), float32."""
    n = np.asarray(rows_used, np.float64)[:, None]
    j = np.arange(rows, dtype=np.float64)[None, :]
    f = 1.0 - (1.0 - j / n) ** 2
    return np.where(j < n, f, 0.0).astype(F32)


def ir_drop_coefficient(a: np.ndarray) -> np.ndarray:
    """c = a·(a·(0.05·a − 0.2) + 0.5) for a = (n / G_ratio)·Σ_j |w_ij||a_j| (a new array)."""
    c = a * F32(0.05)
    c -= F32(0.2)
    c *= a
    c += F32(0.5)
    c *= a
    return c
