"""``partition``: decide for every op whether it runs on the analog arrays or the digital unit, and why.

Static-weight Conv/ConvTranspose/Gemm/MatMul go analog unless the user pins them digital, they are
too small to pay for the conversions, or they would waste the arrays (a depthwise convolution uses
a handful of cells per array: ``min-utilization`` applies to grouped convolutions, whose groups each
take their own arrays, and by default one under 1 % utilisation stays digital; small dense layers are
``min-macs``'s business), or they sum too few inputs per
output (``min-fan-in``: an output of K inputs adds K devices' signals, so programming noise, read noise
and the spread of drift exponents average down only as 1/sqrt(K); a 3×3 single-channel convolution's 9
devices per output do not hide them). Everything else is digital with the reason recorded. Each op gets
``region`` and ``reason`` attributes (and ``region_id`` when analog); the report lists them all and
counts the analog regions and the analog↔digital crossings. The time steps of a recurrence (one
weight read by products that depend on each other, `afmc.matrix.recurrent_groups`) are classified
like any product and say so in their reason: ``tile`` programs one set of arrays for all of them.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import networkx as nx

from afmc.ir.core import Module, Op
from afmc.matrix import MATRIX_OPS, MatrixView, matrix_view, recurrent_groups
from afmc.pipeline import Pass, PassContext, register_pass


def recurrence_sizes(module: Module) -> dict[int, int]:
    """``id(op) -> n`` for the matrix ops that are one of the ``n`` time steps of a recurrence
    (`afmc.matrix.recurrent_groups`); ``tile`` gives each such group one set of arrays."""
    return {id(op): len(group) for group in recurrent_groups(module) for op in group}


def array_utilization(view: MatrixView, rows: int, usable_cols: int) -> float:
    """Weight cells used over cells of the arrays the layer occupies (one matrix per group)."""
    arrays = view.groups * math.ceil(view.rows / rows) * math.ceil(view.cols / usable_cols)
    return view.weights / (arrays * rows * usable_cols)


def _usable_geometry(target: Any) -> tuple[int, int] | None:
    array = getattr(target, "array", None)
    if array is None:
        return None
    return array.rows, array.cols - (1 if array.encoding == "offset" else 0)


@register_pass
@dataclass(frozen=True)
class Partition(Pass):
    """Split ops into analog and digital regions, recording the reason for each op."""

    name: ClassVar[str] = "partition"
    min_macs: int = 0
    keep_digital: tuple[str, ...] = ()
    #: Assumption: a grouped convolution that would leave its arrays 99 % empty (depthwise: 9 cells
    #: of 65,536 per group on 256×256) costs whole arrays, ADCs and their energy for a few MACs each;
    #: the digital unit does it cheaper. Set 0 to map every group anyway.
    min_utilization: float = 0.01
    min_fan_in: int = 0

    def __post_init__(self) -> None:
        if self.min_macs < 0 or self.min_fan_in < 0:
            raise ValueError(f"min-macs and min-fan-in must be >= 0, got {self.min_macs} and {self.min_fan_in}")
        if not 0.0 <= self.min_utilization <= 1.0:
            raise ValueError(f"min-utilization must be in [0, 1], got {self.min_utilization}")

    def classify(self, module: Module, op: Op, target: Any, chained: Mapping[int, int]) -> tuple[str, str]:
        """(region, reason) for one op; ``chained`` is `recurrence_sizes` of the module."""
        if op.name not in MATRIX_OPS:
            return "digital", "no analog implementation (digital unit)"
        view = matrix_view(module, op)
        if view is None:
            return "digital", "weights are activations"
        pinned = next((g for g in self.keep_digital if fnmatch.fnmatchcase(op.loc, g)), None)
        if pinned is not None:
            return "digital", f"pinned digital by keep-digital={pinned}"
        if view.macs < self.min_macs:
            return "digital", f"too small: {view.macs} MACs < min-macs={self.min_macs}"
        if view.rows < self.min_fan_in:
            return "digital", (
                f"too few inputs per output: {view.rows} < min-fan-in={self.min_fan_in}"
                " (device noise and drift spread do not average out)"
            )
        geometry = _usable_geometry(target)
        if target is not None and geometry is None:
            return "digital", f"unsupported by the target: {target.technology} has no crossbar arrays"
        from .tile import tileable

        problem = tileable(module, op)
        if problem is not None:
            return "digital", f"unsupported by the target: {problem}"
        if geometry is not None and self.min_utilization > 0 and view.groups > 1:
            used = array_utilization(view, *geometry)
            if used < self.min_utilization:
                return "digital", (
                    f"too wasteful: array utilisation {used:.3%} < min-utilization={self.min_utilization:g}"
                )
        steps = chained.get(id(op))
        if steps is not None:
            return "analog", (
                f"static-weight {view.kind}, one of {steps} steps of a recurrence on one weight (they share its arrays)"
            )
        return "analog", f"static-weight {view.kind}"

    def run(self, module: Module, ctx: PassContext) -> None:
        rows: list[dict[str, Any]] = []
        graph = nx.Graph()
        chained = recurrence_sizes(module)
        for op in module.ops:
            if op.name == "nn.constant":
                continue
            region, reason = self.classify(module, op, ctx.target, chained)
            op.set_attrs(region=region, reason=reason, region_id=None)
            if region == "analog":
                graph.add_node(id(op))
        crossings = {"analog_to_digital": 0, "digital_to_analog": 0}
        for op in module.ops:
            for value in op.operands:
                producer = value.producer if value is not None else None
                if producer is None or producer.name == "nn.constant" or op.name == "nn.constant":
                    continue
                a, b = producer.attr("region"), op.attr("region")
                if a == b == "analog":
                    graph.add_edge(id(producer), id(op))
                elif a == "analog" and b == "digital":
                    crossings["analog_to_digital"] += 1
                elif a == "digital" and b == "analog":
                    crossings["digital_to_analog"] += 1
        order = {id(op): index for index, op in enumerate(module.ops)}
        components = sorted((sorted(c, key=order.__getitem__) for c in nx.connected_components(graph)),
                            key=lambda c: order[c[0]])
        region_of = {member: index for index, component in enumerate(components) for member in component}
        for op in module.ops:
            if id(op) in region_of:
                op.set_attrs(region_id=region_of[id(op)])
            if op.name != "nn.constant":
                view = matrix_view(module, op) if op.name in MATRIX_OPS else None
                rows.append({
                    "op": op.loc, "type": op.name, "region": op.attr("region"), "reason": op.attr("reason"),
                    "macs": view.macs if view else 0,
                })
        ctx.report["partition"] = {"ops": rows, "analog_regions": len(components), "crossings": crossings}
