"""Device models: target conductances → programmed conductances → conductances at a time after programming.

One model per ``device.model`` name of a target, registered with ``@register_device`` in ``DEVICE_MODELS``
(``ideal``, ``pcm``, ``rram``, ``flash``). A model works on whole stacked arrays at once: every method takes
and returns float32 arrays of any shape, one element per physical device, in µS. Random numbers come from
one ``numpy.random.Generator`` per effect (programming noise, drift exponents, stuck faults, read noise),
derived from a ``SeedSequence`` by a fixed key (`effect_rng`), so switching one effect off never changes
the draws of another.

Conductance mapping (`target_conductances`)
    A cell level ``l`` of an array whose full-scale level is ``L`` (`full_scale_levels`: the largest
    level any cell of that array holds, at least 1, so the largest weight of the array sits at g_max:
    REFERENCE.md §1, "one scale per tile", s = g_max / max|W|) is programmed to
    ``g_T = g_min + l / L · (g_max − g_min)``. The weight a device represents in *normalised units* is
    ``w = (g − g_min) / (g_max − g_min)``: exactly ``l / L`` when the device is ideal. g_min cancels in
    both encodings (a differential pair subtracts g−, offset encoding subtracts the reference column).

Parallel devices
    ``array.parallel_devices = n`` devices per polarity share the level: *each* is programmed to the full
    ``g_T`` and the column sums their currents, so the unit cell's weight is the mean of the n devices'
    normalised weights (``w_cell = Σ_k w_k / n``; the ADC range is n times the current of one device).
    Independent errors then shrink by √n relative to the signal, which is why HERMES uses 2 per polarity.

Models (parameters: docs/targets.md, defaults in ``targets/spec.py``)

``pcm`` — aihwkit ``PCMLikeNoiseModel``, exactly REFERENCE.md §1 (x = g_T/g_max):
    programming  g_prog = max(0, g_T + σ_prog·N), σ_prog = (c0 + c1·x + c2·x²)·g_max/25
    drift        ν = |μ_ν + σ_ν·N| per device, drawn at programming from g_T (gr = max(x, 1e-7));
                 g_drift = g_prog·(t/t0)^(−ν), t = t_inference + t0
    read noise   Q_s = min(q / max((g_prog/g_max)^e, 1e-3), q_max), σ_n = Q_s·sqrt(ln((t + t_read)/(2 t_read)));
                 g = max(0, g_drift + |g_drift|·σ_n·N), drawn once per (instance, time): static for that time
``rram`` — programming g_prog = max(0, g_T + prog_noise·g_max·N); no drift; read noise of σ = read_noise·g_max
    *per read*: fresh for every MVM, so the simulator applies it as the exactly equivalent output noise
    (`DeviceModel.read_sigma`).
``flash`` — programming as rram; charge loss g(t) = max(0, g_prog − d·g_max·log10((t_inference + t0)/t0))
    (docs/targets.md); per-read noise as rram.
All models: stuck-at faults drawn at programming, ``stuck_off_rate`` devices at g = 0 and ``stuck_on_rate``
at g = g_max (docs/targets.md); stuck devices neither drift nor show static read noise.
``ideal`` — the identity: g = g_T at every time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..errors import AfmcError

__all__ = [
    "DEVICE_MODELS",
    "DeviceModel",
    "Effects",
    "Programmed",
    "effect_rng",
    "full_scale_levels",
    "make_device",
    "register_device",
    "target_conductances",
]

F32 = np.float32

#: Fixed child keys of the per-effect random streams (see `effect_rng`).
PROGRAMMING, DRIFT, STUCK, READ = 0, 1, 2, 3


def effect_rng(seq: np.random.SeedSequence, *key: int) -> np.random.Generator:
    """A generator for one effect: the child of ``seq`` at ``key`` (independent of spawn order)."""
    child = np.random.SeedSequence(seq.entropy, spawn_key=tuple(seq.spawn_key) + tuple(int(k) for k in key))
    return np.random.Generator(np.random.PCG64(child))


@dataclass(frozen=True)
class Effects:
    """Which device non-idealities are applied (the simulator's switches)."""

    programming_noise: bool = True
    drift: bool = True
    read_noise: bool = True
    stuck: bool = True

    @property
    def any(self) -> bool:
        return self.programming_noise or self.drift or self.read_noise or self.stuck


@dataclass
class Programmed:
    """One programming instance of a stack of devices (all arrays µS, same shape as the targets)."""

    g_target: np.ndarray
    g_prog: np.ndarray
    nu: np.ndarray | None = None  # drift exponent per device (models with drift)
    stuck: np.ndarray | None = None  # bool: the device is stuck (its g_prog is its value forever)


# -- the mapping ------------------------------------------------------------------------------------------


def full_scale_levels(levels: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """The level mapped to g_max per array: the largest level over ``axes`` (at least 1)."""
    return np.maximum(np.max(levels, axis=axes), 1)


def target_conductances(levels: np.ndarray, full_scale: np.ndarray | float, g_min: float, g_max: float) -> np.ndarray:
    """g_T = g_min + level / full_scale · (g_max − g_min), in µS (float32); ``full_scale`` broadcasts."""
    x = np.asarray(levels, np.float64) / np.asarray(full_scale, np.float64)
    return (g_min + x * (g_max - g_min)).astype(F32)


# -- the models -------------------------------------------------------------------------------------------


class DeviceModel:
    """Base: the identity device. Subclasses override `program` and `read` for their physics."""

    name: ClassVar[str] = "ideal"

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.params = dict(params)
        self.g_max = float(self.params.get("g_max_us", 1.0))
        self.g_min = float(self.params.get("g_min_us", 0.0))

    @property
    def g_range(self) -> float:
        return self.g_max - self.g_min

    def program(self, g_target: np.ndarray, seq: np.random.SeedSequence, effects: Effects) -> Programmed:
        """Programmed conductances (and per-device drift exponents) for targets ``g_target``."""
        g_target = np.asarray(g_target, F32)
        g_prog = self._programming_noise(g_target, effect_rng(seq, PROGRAMMING)) if effects.programming_noise \
            else g_target.copy()
        stuck = None
        if effects.stuck:
            stuck = self._stuck(g_prog, effect_rng(seq, STUCK))
        nu = self._drift_exponents(g_target, effect_rng(seq, DRIFT)) if effects.drift else None
        return Programmed(g_target, g_prog, nu, stuck)

    def read(self, state: Programmed, t_inference: float, seq: np.random.SeedSequence, effects: Effects) -> np.ndarray:
        """Conductances at ``t_inference`` seconds after programming, with the static read noise
        of that time point (drawn from ``seq``)."""
        return state.g_prog

    def read_sigma(self, effects: Effects) -> float:
        """σ (µS) of the fresh noise each device adds on every read (0 for none)."""
        return 0.0

    # hooks --------------------------------------------------------------------------------------
    def _programming_noise(self, g_target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return g_target.copy()

    def _drift_exponents(self, g_target: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        return None

    def _stuck(self, g_prog: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        """Set stuck devices in ``g_prog`` (in place) and return their mask, or None without faults."""
        off = float(self.params.get("stuck_off_rate", 0.0))
        on = float(self.params.get("stuck_on_rate", 0.0))
        if off <= 0.0 and on <= 0.0:
            return None
        u = rng.random(g_prog.shape, dtype=F32)
        stuck_off = u < off
        stuck_on = (u >= off) & (u < off + on)
        g_prog[stuck_off] = 0.0
        g_prog[stuck_on] = self.g_max
        return stuck_off | stuck_on


DEVICE_MODELS: dict[str, type[DeviceModel]] = {}


def register_device(name: str) -> Callable[[type[DeviceModel]], type[DeviceModel]]:
    """Register a model class under a target's ``device.model`` name."""

    def register(cls: type[DeviceModel]) -> type[DeviceModel]:
        if name in DEVICE_MODELS:
            raise ValueError(f"device model {name!r} is registered twice")
        cls.name = name
        DEVICE_MODELS[name] = cls
        return cls

    return register


def make_device(device_spec: Any) -> DeviceModel:
    """The model for a target's ``device`` section (a `DeviceSpec` or a dict with model and params)."""
    model = device_spec.model if hasattr(device_spec, "model") else device_spec["model"]
    params = device_spec.params if hasattr(device_spec, "params") else device_spec.get("params", {})
    cls = DEVICE_MODELS.get(model)
    if cls is None:
        raise AfmcError(f"the simulator has no device model '{model}'; available: {', '.join(sorted(DEVICE_MODELS))}",
                        key="device.model")
    return cls(params)


register_device("ideal")(DeviceModel)


def _keep_stuck(state: Programmed, g: np.ndarray) -> np.ndarray:
    if state.stuck is not None:
        np.copyto(g, state.g_prog, where=state.stuck)
    return g


@register_device("pcm")
class PcmDevice(DeviceModel):
    """aihwkit's PCMLikeNoiseModel (REFERENCE.md §1)."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        super().__init__(params)
        p = self.params
        self.g_min = 0.0
        self.t_read = float(p.get("t_read_s", 250e-9))
        self.t0 = float(p.get("t0_s", 20.0))
        self.prog_coeffs = tuple(float(c) for c in p.get("prog_noise_coeffs", (0.26348, 1.9650, -1.1731)))
        self.mean_coeffs = tuple(float(c) for c in p.get("drift_mean_coeffs", (-0.0155, 0.0244)))
        self.mean_clip = tuple(float(c) for c in p.get("drift_mean_clip", (0.049, 0.1)))
        self.std_coeffs = tuple(float(c) for c in p.get("drift_std_coeffs", (-0.0125, -0.0059)))
        self.std_clip = tuple(float(c) for c in p.get("drift_std_clip", (0.008, 0.045)))
        self.q = float(p.get("read_noise_q", 0.0088))
        self.q_exp = float(p.get("read_noise_exp", 0.65))
        self.q_max = float(p.get("read_noise_q_max", 0.2))

    # the formulas, as functions of the conductance, so tests can check them one by one -----------
    def prog_sigma(self, g_target: np.ndarray) -> np.ndarray:
        """σ_prog (µS) = (c0 + c1·x + c2·x²)·(g_max/25), x = g_T/g_max."""
        x = np.asarray(g_target, F32) / F32(self.g_max)
        c0, c1, c2 = (F32(c) for c in self.prog_coeffs)
        return (c0 + x * (c1 + x * c2)) * F32(self.g_max / 25.0)

    def drift_stats(self, g_target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(μ_ν, σ_ν) per device from its target conductance."""
        log_gr = np.log(np.maximum(np.asarray(g_target, F32) / F32(self.g_max), F32(1e-7)))
        mu = np.clip(F32(self.mean_coeffs[0]) * log_gr + F32(self.mean_coeffs[1]), self.mean_clip[0], self.mean_clip[1])
        sigma = np.clip(F32(self.std_coeffs[0]) * log_gr + F32(self.std_coeffs[1]), self.std_clip[0], self.std_clip[1])
        return mu.astype(F32), sigma.astype(F32)

    def read_noise_sigma(self, g_prog: np.ndarray, t_inference: float) -> np.ndarray:
        """Relative σ_n of the accumulated 1/f read noise at ``t_inference`` (per device)."""
        t = t_inference + self.t0
        root = math.sqrt(math.log((t + self.t_read) / (2.0 * self.t_read)))
        ratio = np.maximum(np.asarray(g_prog, F32) / F32(self.g_max), F32(0.0))
        q_s = np.minimum(F32(self.q) / np.maximum(ratio ** F32(self.q_exp), F32(1e-3)), F32(self.q_max))
        return (q_s * F32(root)).astype(F32)

    def drift_factor(self, nu: np.ndarray, t_inference: float) -> np.ndarray:
        """(t/t0)^(−ν) with t = t_inference + t0."""
        log_ratio = F32(math.log((t_inference + self.t0) / self.t0))
        return np.exp(-np.asarray(nu, F32) * log_ratio)

    # the hooks -------------------------------------------------------------------------------------
    def _programming_noise(self, g_target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        g = g_target + self.prog_sigma(g_target) * rng.standard_normal(g_target.shape, dtype=F32)
        return np.maximum(g, F32(0.0), out=g)

    def _drift_exponents(self, g_target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        mu, sigma = self.drift_stats(g_target)
        return np.abs(mu + sigma * rng.standard_normal(g_target.shape, dtype=F32))

    def read(self, state: Programmed, t_inference: float, seq: np.random.SeedSequence, effects: Effects) -> np.ndarray:
        g_prog = state.g_prog
        g = g_prog * self.drift_factor(state.nu, t_inference) if effects.drift and state.nu is not None \
            else g_prog.copy()
        if effects.read_noise:
            noise = effect_rng(seq, READ).standard_normal(g.shape, dtype=F32)
            noise *= self.read_noise_sigma(g_prog, t_inference)
            noise *= np.abs(g)
            g += noise
            np.maximum(g, F32(0.0), out=g)
        return _keep_stuck(state, g)


class _GaussianDevice(DeviceModel):
    """Additive Gaussian programming error and per-read noise, both as fractions of g_max."""

    def _programming_noise(self, g_target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        sigma = F32(float(self.params.get("prog_noise", 0.0)) * self.g_max)
        g = g_target + sigma * rng.standard_normal(g_target.shape, dtype=F32)
        return np.maximum(g, F32(0.0), out=g)

    def read_sigma(self, effects: Effects) -> float:
        return float(self.params.get("read_noise", 0.0)) * self.g_max if effects.read_noise else 0.0


@register_device("rram")
class RramDevice(_GaussianDevice):
    """Generic first-order RRAM: programming noise, per-read noise, stuck faults; no drift."""


@register_device("flash")
class FlashDevice(_GaussianDevice):
    """Generic first-order flash: programming noise, per-read noise, charge loss per decade, stuck faults."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        super().__init__(params)
        self.g_min = 0.0
        self.t0 = float(self.params.get("t0_s", 20.0))

    def loss(self, t_inference: float) -> float:
        """Conductance lost by every cell (µS): d·g_max·log10((t_inference + t0)/t0)."""
        return float(self.params.get("drift_per_decade", 0.0)) * self.g_max * math.log10((t_inference + self.t0) / self.t0)

    def read(self, state: Programmed, t_inference: float, seq: np.random.SeedSequence, effects: Effects) -> np.ndarray:
        g = state.g_prog.copy()
        if effects.drift:
            g -= F32(self.loss(t_inference))
            np.maximum(g, F32(0.0), out=g)
        return _keep_stuck(state, g)
