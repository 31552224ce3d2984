"""``place``: put every array tile (each copy of each ``xbar.mvm``) in a slot of a working core.

The pass reads the tiled IR into a `afmc.placement.PlacementProblem` (traffic model: the module
docstring of ``afmc.placement``), solves it, and writes the answer as printed attributes:

- every ``xbar.mvm`` gets ``core = [x, y]`` and ``slot = j`` (the array slot in that core); with
  ``replicas > 1``, one entry per copy: ``core = [[x, y], ...]``, ``slot = [j, ...]``;
- the module gets ``placement = {objective, lower_bound, gap, solver, status, seconds}`` where the
  objective is bytes × hops per inference, ``gap = (objective − lower_bound) / objective`` and
  ``seconds`` is the solver's deterministic time (CP-SAT's deterministic time plus annealing work
  units, about wall seconds on the reference machine): wall-clock time would make bundles differ
  run to run; ``afmc compile --timing`` shows that;
- ``ctx.report["placement"]`` holds the same plus the constructive baseline, the mesh, and for
  models of at most `REPORT_CORES_MAX` tiles the cores of each layer.

A model with more tiles than the chip has slots is left unplaced (``ctx.report["placement"]``
says ``does_not_fit``): the fit report names the layers that do not fit and the driver raises
`DoesNotFit` from it. `afmc.placement.solve` itself raises `DoesNotFit` on such a problem.

Options: ``solver`` (auto | constructive | cpsat | anneal | hierarchical), ``time-limit``
(deterministic seconds, default `TIME_LIMIT`; the pass also stops at the wall-clock budget
`afmc.placement.wall_budget` of it, on any chip, and then warns), ``workers`` (CP-SAT threads;
1 keeps results byte-identical), ``seed`` (added to the compile seed). The same inputs give the same placement, byte for byte.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from afmc.errors import AfmcError
from afmc.ir.core import Module, Op, Value
from afmc.pipeline import Pass, PassContext, register_pass
from afmc.placement import (
    IO,
    SOLVERS,
    LayerTraffic,
    PlacementProblem,
    problem_from_layers,
    solve,
    wall_budget,
)

logger = logging.getLogger("afmc.place")

REPORT_CORES_MAX = 256
#: Default deterministic seconds for the searches: enough for the samples (they use under 0.8),
#: and with `afmc.placement.wall_budget` the pass ends within 3·1 + 2 = 5 wall seconds on any
#: chip, so a compile stays inside 10 s; ``place{time-limit=...}`` buys more search.
TIME_LIMIT = 1.0
#: Bytes per activation element on the network (8-bit activations and ADC outputs).
BYTES_PER_ELEMENT = 1


@dataclass
class _Tile:
    op: Op
    copy: int


@dataclass
class _LayerTiles:
    """One placed layer's tiles as `build_problem` collects them, shared arrays once."""

    in_bytes: list[float] = field(default_factory=list)
    out_bytes: list[float] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    tiles: list[_Tile] = field(default_factory=list)
    tile_of: dict[tuple[str, int], int] = field(default_factory=dict)  # (array symbol, copy) -> index
    heads: dict[tuple[int, int], int] = field(default_factory=dict)
    sources: list[int] = field(default_factory=list)
    to_io: bool = False


def _activation_operands(op: Op) -> list[Value]:
    """Operands that are activations (not constants)."""
    return [v for v in op.operands if v is not None and (v.producer is None or v.producer.name != "nn.constant")]


def _passes_through(op: Op) -> bool:
    """Digital ops with one activation operand are done in transit; others run on the digital unit."""
    return op.attr("region") != "analog" and not op.name.startswith("xbar.") and len(_activation_operands(op)) == 1


def _source_layer(value: Value, assembles: dict[int, int]) -> int:
    """The analog layer whose output reaches ``value`` through pass-through ops, else ``IO``."""
    while True:
        producer = value.producer
        if producer is None:
            return IO
        if id(producer) in assembles:
            return assembles[id(producer)]
        if not _passes_through(producer):
            return IO
        value = _activation_operands(producer)[0]


def _reaches_io(value: Value, outputs: set[int]) -> bool:
    """Does ``value`` reach a graph output or a multi-activation digital op via pass-through ops?"""
    stack, seen = [value], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if id(current) in outputs:
            return True
        for user in current.uses:
            if user.name == "xbar.unfold":
                continue
            if not _passes_through(user):
                return True
            stack.extend(user.results)
    return False


def build_problem(module: Module, target: Any) -> tuple[PlacementProblem, list[_Tile]]:
    """The placement problem of a tiled module on ``target``, and the tile each index stands for.

    A layer that reads arrays another layer programmed (a later step of a recurrence: its
    ``xbar.mvm`` ops name the same ``array`` symbols) has no tiles of its own: its traffic is added
    to those arrays' tiles, and `Place` gives its ops the same ``core`` and ``slot``."""
    chip = target.chip
    layers: list[str] = []
    mvms: dict[str, list[Op]] = {}
    for op in module.ops:
        if op.name == "xbar.mvm":
            layer = str(op.attr("layer"))
            if layer not in mvms:
                layers.append(layer)
                mvms[layer] = []
            mvms[layer].append(op)
    home: dict[str, str] = {}  # layer -> the layer whose tiles hold its arrays
    array_home: dict[str, str] = {}
    for layer in layers:
        home[layer] = array_home.get(mvms[layer][0].attr("array").name, layer)
        for op in mvms[layer]:
            array_home.setdefault(op.attr("array").name, home[layer])
    placed = [layer for layer in layers if home[layer] == layer]
    position = {layer: index for index, layer in enumerate(placed)}
    assembles: dict[int, int] = {}
    assemble_of: dict[str, Op] = {}
    for op in module.ops:
        if op.name == "xbar.assemble" and op.attr("layer") in mvms:
            assembles[id(op)] = position[home[op.attr("layer")]]
            assemble_of[op.attr("layer")] = op
    outputs = {id(v) for v in module.outputs}
    head_of: dict[int, Op] = {}
    for op in module.ops:
        if op.name == "xbar.accumulate":
            first = op.operands[0]
            assert first is not None and first.producer is not None
            for value in op.operands:
                if value is not None and value.producer is not None:
                    head_of[id(value.producer)] = first.producer

    acc = {layer: _LayerTiles() for layer in placed}
    for layer in layers:
        ops = mvms[layer]
        into = acc[home[layer]]
        for op in ops:
            replicas = int(op.attr("replicas", 1))
            vectors = op.result.type.shape[0]
            r0, r1 = op.attr("rows")
            c0, c1 = op.attr("cols")
            head = head_of.get(id(op), op)
            for copy in range(replicas):
                key = (op.attr("array").name, copy)
                at = into.tile_of.get(key)
                if at is None:
                    at = into.tile_of[key] = len(into.tiles)
                    into.blocks.append(into.heads.setdefault((id(head), copy), len(into.heads)))
                    into.in_bytes.append(0.0)
                    into.out_bytes.append(0.0)
                    into.tiles.append(_Tile(op, copy))
                into.in_bytes[at] += vectors * (r1 - r0) * BYTES_PER_ELEMENT / replicas
                into.out_bytes[at] += vectors * (c1 - c0) * BYTES_PER_ELEMENT / replicas
        source = ops[0].operands[0]
        assert source is not None and source.producer is not None
        unfold_input = source.producer.operands[0]
        assert unfold_input is not None
        src = _source_layer(unfold_input, assembles)
        if src != IO and src >= position[home[layer]]:  # a step fed by its own arrays: no traffic modelled
            src = IO
        if src not in into.sources:
            into.sources.append(src)
        assemble = assemble_of.get(layer)
        into.to_io = into.to_io or assemble is None or _reaches_io(assemble.result, outputs)
    traffic = [
        LayerTraffic(
            layer, np.array(acc[layer].in_bytes, np.float64), np.array(acc[layer].out_bytes, np.float64),
            np.array(acc[layer].blocks, np.int64), tuple(acc[layer].sources), acc[layer].to_io,
        )
        for layer in placed
    ]
    tiles = [tile for layer in placed for tile in acc[layer].tiles]
    cores = core_array(chip)
    problem = problem_from_layers(traffic, (chip.mesh_x, chip.mesh_y), cores, chip.arrays_per_core, chip.io)
    return problem, tiles


def core_array(chip: Any) -> np.ndarray:
    """(cores, 2) positions of the working cores in ``chip.core_positions`` order (row by row),
    built with numpy: a million-core chip takes milliseconds, not a Python loop per core."""
    w, h = chip.mesh_x, chip.mesh_y
    alive = np.ones(w * h, bool)
    dead = np.array(chip.dead_cores, np.int64).reshape(-1, 2)
    alive[dead[:, 1] * w + dead[:, 0]] = False
    cell = np.flatnonzero(alive)
    return np.stack([cell % w, cell // w], axis=1).astype(np.int64)


@register_pass
@dataclass(frozen=True)
class Place(Pass):
    """Place array tiles on the chip's cores, minimising traffic × hops, with a proven lower bound."""

    name: ClassVar[str] = "place"
    solver: str = "auto"
    time_limit: float = TIME_LIMIT
    workers: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        if not 0 < self.time_limit < math.inf:
            raise ValueError(f"time-limit must be a positive number of seconds, got {self.time_limit}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")

    def run(self, module: Module, ctx: PassContext) -> None:
        target = ctx.target
        if target is None or getattr(target, "chip", None) is None:
            raise AfmcError("place needs a target with a chip")
        problem, tiles = build_problem(module, target)
        if problem.n_tiles > problem.capacity:
            # The fit report (built after the pipeline) names the layers that do not fit and the
            # driver raises DoesNotFit from it; raising here would hide that report from `check`.
            ctx.report["placement"] = {"status": "does_not_fit", "tiles": problem.n_tiles, "slots": problem.capacity}
            return
        result = solve(problem, self.solver, time_limit=self.time_limit, workers=self.workers,
                       seed=ctx.seed + self.seed)
        if result.wall_capped:
            logger.warning(
                "place: the search hit its wall-clock budget (%.1f s for time-limit=%g) before its "
                "deterministic one; this placement may differ from run to run", wall_budget(self.time_limit),
                self.time_limit,
            )
        k = problem.slots
        core = result.assignment // k
        xs = problem.cores[core, 0].tolist()
        ys = problem.cores[core, 1].tolist()
        slots = (result.assignment % k).tolist()
        copies: dict[int, list[tuple[tuple[int, int], int]]] = {}
        for index, tile in enumerate(tiles):
            copies.setdefault(id(tile.op), []).append(((xs[index], ys[index]), slots[index]))
        by_array: dict[str, dict[str, Any]] = {}
        for tile in tiles:
            if tile.copy:
                continue
            placed = copies[id(tile.op)]
            if len(placed) == 1:
                where: dict[str, Any] = {"core": placed[0][0], "slot": placed[0][1]}
            else:
                where = {"core": tuple(c for c, _ in placed), "slot": tuple(j for _, j in placed)}
            tile.op.set_attrs(**where)
            by_array[tile.op.attr("array").name] = where
        for op in module.ops:  # the later steps of a recurrence read the arrays their first step placed
            if op.name == "xbar.mvm" and op.attr("core") is None:
                op.set_attrs(**by_array[op.attr("array").name])
        summary = {
            "objective": _num(result.objective),
            "lower_bound": _num(result.lower_bound),
            "gap": _num(result.gap),
            "solver": result.solver,
            "status": result.status,
            "seconds": round(result.seconds, 3),
        }
        module.attributes = module.attributes.replace(placement=summary)
        report: dict[str, Any] = {
            **summary, "baseline": _num(result.baseline), "curve": result.curve, "tiles": problem.n_tiles,
            "mesh": [problem.mesh[0], problem.mesh[1]], "io": list(problem.io),
        }
        if 0 < problem.n_tiles <= REPORT_CORES_MAX:
            layers: dict[str, list[list[int]]] = {}
            for index, tile in enumerate(tiles):
                layers.setdefault(str(tile.op.attr("layer")), []).append([xs[index], ys[index]])
            report["layers"] = layers
        ctx.report["placement"] = report


def _num(value: float) -> float:
    """A float rounded to 6 significant digits beyond the integer part (stable text in IR and JSON)."""
    return float(round(value, 6))


__all__ = ["Place", "build_problem", "core_array"]
