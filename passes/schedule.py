"""``schedule``: estimate latency, throughput and energy per inference on the target.

Runs the cost model and the event-driven schedule of ``afmc.sim.timing`` over the compiled module
(tiled, and placed when ``place`` ran: ``core`` attributes on ``xbar.mvm`` give the network hops;
without them every array sits at ``chip.io``) for a stream of ``stream`` inferences pipelined
across layers. It changes no op; it writes

- ``ctx.report["performance"]``: ``latency_s``, ``latency_cycles`` (at ``timing.clock_hz``),
  ``throughput_inferences_per_s`` (steady state over the stream) and ``throughput_bound_inferences_per_s``
  (1 / the bottleneck's busy time per inference), ``energy_per_inference_j`` and ``_pj``,
  ``energy_breakdown_pj`` = {``dac``, ``array``, ``adc``, ``network``, ``digital``} (sums to the total),
  ``utilization`` (arrays, mean/max array busy fraction, digital unit busy fraction over the stream),
  ``utilization_timeline`` (mean array busy fraction in 20 equal slices of the stream) and its
  ``utilization_timeline_bucket_s``, ``network_byte_hops``, ``bottleneck`` (``resource``: ``array`` |
  ``digital``, ``layer``, ``busy_s_per_inference``), ``critical_layer`` and ``critical_path``
  (layers and their time on the single inference's critical path), ``layers`` (per layer: arrays,
  array time, digital time, energy), ``stream``, ``digital_lanes`` and ``assumptions``;
- the module attribute ``performance = {latency_s, latency_cycles, throughput, energy_j}``
  (throughput in inferences/s), so that the estimate prints with the IR.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from afmc.errors import AfmcError
from afmc.ir.core import Module
from afmc.pipeline import Pass, PassContext, register_pass
from afmc.sim.timing import estimate


@register_pass
@dataclass(frozen=True)
class Schedule(Pass):
    """Estimate latency, throughput and energy per inference from the target's timing constants."""

    name: ClassVar[str] = "schedule"
    stream: int = 16
    digital_lanes: int = 1

    def __post_init__(self) -> None:
        if self.stream < 1:
            raise ValueError(f"stream must be >= 1, got {self.stream}")
        if self.digital_lanes < 1:
            raise ValueError(f"digital-lanes must be >= 1, got {self.digital_lanes}")

    def run(self, module: Module, ctx: PassContext) -> None:
        if ctx.target is None:
            raise AfmcError("schedule needs a target")
        performance = estimate(module, ctx.target, stream=self.stream, digital_lanes=self.digital_lanes)
        ctx.report["performance"] = performance.to_report()
        module.attributes = module.attributes.replace(performance=performance.summary())


__all__ = ["Schedule"]
