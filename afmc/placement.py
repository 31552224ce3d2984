"""Tile placement on a chip's core mesh: the pure problem, a provable lower bound, and the solvers.

The ``place`` pass (``passes/place.py``) turns the tiled IR into a `PlacementProblem` and writes the
answer back; everything here is plain numpy and OR-Tools, so the benchmark (``bench/placement.py``)
and the tests drive the same code on generated instances of up to 10^5 tiles.

Problem
-------
``n`` tiles go to the ``slots`` array slots of the usable cores (``cores``, positions on a
``mesh_x × mesh_y`` mesh; dead cores are simply absent). An assignment is an int array: tile →
global slot ``core_index * slots + j``. Minimise Σ traffic × Manhattan hops over

- sparse edges ``(u, v, w)``: tile to tile, or tile to the IO node (index ``IO = -1``) pinned at the
  target's ``io`` position (the digital unit);
- dense groups ``(src, s, dst, b)``: all-to-all traffic Σ_{u∈src, v∈dst} s_u·b_v·hops(u, v), kept
  in factored form. Manhattan distance is separable, so a group's cost from one point is the sum of
  two 1-D "potentials" (Σ_v b_v·|x − x_v| and the same in y), each computed from a histogram in
  O(mesh) time. Objective evaluation and every annealing move are exact and O(1) per group
  membership, so a 1,000 × 1,000 tile all-to-all never becomes 10^6 edges.

Traffic model (what `problem_from_layers` builds; ``1 byte`` per activation element, 8-bit)
----------------------------------------------------------------------------------------------
- Each tile of a layer reads its rows' share of the layer's unfolded input: vectors × rows bytes
  (divided among ``replicas`` copies, which split the vectors in time).
- Row splits and bit slices of one column block send their partial sums (vectors × block columns
  bytes) to the block's accumulation point, chosen to be the block's *first* tile (row split 0,
  slice 0, same copy): it does the digital shift-add and then holds the block's output.
- A layer whose input comes from another analog layer through single-input digital ops (ReLU,
  pooling, reshape, ...: done in transit by the cores' digital periphery) receives it from that
  layer's accumulation points: a dense group in which every consuming tile v needs its b_v bytes,
  split over the producing blocks in proportion to their output share s_u (Σ s_u = 1). The factored
  form is exact for this proportional model; how a block's columns map onto the next layer's
  unfolded rows is not modelled.
- A layer whose input comes from a graph input or from a digital op that combines several
  activations (attention matmul, residual add, concat, ...) reads it from IO; a layer whose output
  reaches a graph output or such an op sends each block's output to IO.

Lower bound (`lower_bound`; every part bounds a disjoint part of the objective, so they add up)
-----------------------------------------------------------------------------------------------
- IO edges: tiles talking to IO occupy distinct slots, so pairing their IO weights (descending)
  with the slot distances to IO (ascending) bounds the IO traffic (rearrangement inequality).
- Tile-to-tile sparse edges: the larger of (a) the per-tile bound halved — a tile's neighbours sit
  in distinct slots, at most ``slots − 1`` on its own core and at most ``slots·N(d)`` within d hops,
  N(d) = min(C, 2d(d+1)+1, box) — and (b) the cut bound: tiles on different cores are at least one
  hop apart and a core holds at most ``slots`` tiles, so on any set of vertex-disjoint paths of the
  graph the cost is at least the cheapest set of path edges that cuts every path into pieces of at
  most ``slots`` tiles (a sliding-window dynamic programme, exact for a chain: its optimum is
  ``ceil(n / slots) − 1`` hops on a serpentine).
- Dense groups: each source tile's partners occupy distinct slots, so the group costs at least
  Σ_u s_u·Σ_i b_(i)·prof(i) (b sorted descending, prof(i) the ring distance of the i-th nearest
  slot); likewise from the destination side; the larger of the two.
- When CP-SAT ran on the exact model, its proven bound (after undoing the integer scaling) counts too.

Solvers
-------
- `constructive`: tiles in layer order fill the slots along a core curve (serpentine, generalised
  Hilbert, or a Hamiltonian ring through the IO corner sized to the tiles), in each of the mesh's
  eight symmetries; the cheapest of these is kept.
- `cpsat`: integer (x, y) per tile, linked to a core index whose domain is the live cores,
  AllDifferent over core·slots + slot, two inequalities per distance variable, the lower bound and
  path-window cuts (k+1 consecutive path tiles cannot share a core) as constraints, and a complete
  hint. Dense groups are expanded into pairs when small, else replaced by a free hub point per
  group (an upper bound by the triangle inequality; CP-SAT's bound is then not used).
- `anneal`: simulated annealing in vectorised batches of independent moves (swap with a random
  slot within a radius, VPR-style range limiting); moves in one batch never touch tiles adjacent
  through sparse edges, so their deltas are exact except for the second-order interplay through
  dense potentials; the best exactly evaluated assignment is kept.
- `hierarchical`: layers are clusters laid out compactly along the curve (constructive), then
  refined in windows by annealing with a small move radius.

Determinism: all randomness comes from ``numpy.random.default_rng(seed)``; CP-SAT runs with one
worker, ``random_seed`` and a deterministic time limit; annealing budgets are deterministic work
units (``WORK_PER_SECOND`` ≈ one second on the reference machine). `solve` also has a hard
wall-clock budget (`wall_budget`: ``3 × time_limit + 2`` s by default) for the whole call; it
only stops a run that is far slower than expected, and says so (``Placement.wall_capped``).

Scale: everything before the searches costs O(tiles + mesh side) or one vectorised pass over the
cores, never a Python loop per core: the curves are built only as far as the tiles need (a
million-core chip with a few thousand tiles builds a few thousand cells of each curve), and
the annealer's per-move bookkeeping is O(batch).
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

IO = -1
SOLVERS = ("auto", "constructive", "cpsat", "anneal", "hierarchical")
CURVES = ("serpentine", "hilbert", "ring")

#: ``auto`` uses CP-SAT (after annealing) up to this many tiles, global annealing up to
#: `AUTO_ANNEAL_MAX`, and the hierarchical scheme beyond.
AUTO_CPSAT_MAX = 2000
AUTO_ANNEAL_MAX = 20000
#: Dense groups are expanded into pairs for CP-SAT while the total stays below this.
CPSAT_EXPAND_LIMIT = 20000
#: ``auto`` adds CP-SAT only when its model has at most this many distance pairs: on dense
#: layer-to-layer traffic CP-SAT barely improves an annealed placement and its model grows
#: quadratically, so there annealing alone is used.
CPSAT_MAX_PAIRS = 5000
#: Annealing work units (gathered entries) per deterministic second.
WORK_PER_SECOND = 1.2e7
#: Annealing stops after this many proposals per tile even when time is left.
MOVES_PER_TILE = 1000
#: ``auto`` skips annealing when the constructive placement is already this close to the bound
#: (annealing could gain at most that much): CP-SAT alone tries to close the gap on small problems.
NEAR_OPTIMAL_GAP = 0.01
#: ``auto`` gives CP-SAT at most CPSAT_BASE + CPSAT_PER_TILE·n deterministic seconds.
CPSAT_BASE = 0.2
CPSAT_PER_TILE = 0.005
#: Fixed work units per annealing batch (the numpy call overhead, ~0.25 ms).
BATCH_OVERHEAD = 3000.0
#: The wall-clock budget of a search given ``t`` deterministic seconds is WALL_FACTOR·t + WALL_SLACK:
#: room for a loaded machine several times slower than the reference one (CP-SAT's deterministic
#: time runs about 3× behind the wall clock on two shared cores), yet a hard end on any chip.
WALL_FACTOR = 3.0
WALL_SLACK = 2.0


def wall_budget(time_limit: float) -> float:
    """Wall seconds a search with ``time_limit`` deterministic seconds may take at most."""
    return WALL_FACTOR * time_limit + WALL_SLACK


# -- the problem -------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class DenseGroup:
    """All-to-all traffic Σ_{u∈src, v∈dst} src_w[u]·dst_w[v]·hops(u, v); src and dst disjoint."""

    src: np.ndarray
    src_w: np.ndarray
    dst: np.ndarray
    dst_w: np.ndarray

    @property
    def pairs(self) -> int:
        return int(self.src.size) * int(self.dst.size)

    @property
    def total(self) -> float:
        return float(self.src_w.sum() * self.dst_w.sum())


@dataclass(eq=False)
class PlacementProblem:
    """Tiles, traffic and the chip's mesh; see the module docstring."""

    n_tiles: int
    mesh: tuple[int, int]
    cores: np.ndarray  # (C, 2) int64 usable core positions (x, y)
    slots: int
    io: tuple[int, int]
    edges: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))  # (E, 2), IO = -1
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (E,) bytes per inference
    dense: tuple[DenseGroup, ...] = ()
    cluster: np.ndarray | None = None  # (n,) layer index per tile, in topological order
    cluster_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.cores = np.asarray(self.cores, np.int64).reshape(-1, 2)
        self.edges = np.asarray(self.edges, np.int64).reshape(-1, 2)
        self.weights = np.asarray(self.weights, np.float64).reshape(-1)
        self.mesh = (int(self.mesh[0]), int(self.mesh[1]))
        self.io = (int(self.io[0]), int(self.io[1]))
        if self.cluster is None:
            self.cluster = np.zeros(self.n_tiles, np.int64)
        self.cluster = np.asarray(self.cluster, np.int64)
        n, (w, h) = self.n_tiles, self.mesh
        if self.edges.shape[0] != self.weights.shape[0]:
            raise ValueError("edges and weights differ in length")
        if self.edges.size and (self.edges.min() < IO or self.edges.max() >= n):
            raise ValueError("edge endpoint outside the tiles")
        if np.any(self.weights < 0) or not np.all(np.isfinite(self.weights)):
            raise ValueError("weights must be finite and >= 0")
        if self.cores.size and (self.cores.min() < 0 or self.cores[:, 0].max() >= w or self.cores[:, 1].max() >= h):
            raise ValueError("core outside the mesh")
        if self.slots < 1 or self.cluster.shape != (n,):
            raise ValueError("slots must be >= 1 and cluster must have one entry per tile")
        for g in self.dense:
            if np.intersect1d(g.src, g.dst).size:
                raise ValueError("a dense group's source and destination tiles must be disjoint")

    @property
    def capacity(self) -> int:
        return int(self.cores.shape[0]) * self.slots

    @property
    def diameter(self) -> int:
        return self.mesh[0] + self.mesh[1] - 2

    def core_grid(self) -> np.ndarray:
        """(mesh_x, mesh_y) array of core indices, −1 where no usable core sits."""
        grid = np.full(self.mesh, -1, np.int64)
        grid[self.cores[:, 0], self.cores[:, 1]] = np.arange(self.cores.shape[0])
        return grid

    def edges_io_last(self) -> np.ndarray:
        """Edges with IO renumbered to ``n_tiles`` (an index into ``tile_xy`` arrays with IO appended)."""
        e = self.edges.copy()
        e[e == IO] = self.n_tiles
        return e


@dataclass(frozen=True)
class LayerTraffic:
    """One layer's tiles for `problem_from_layers` (see the traffic model in the module docstring).

    ``block``: tiles with equal ids accumulate together; the block's first tile is the
    accumulation point. ``sources``: producer layer indices (earlier in the list) or ``IO``.
    """

    name: str
    in_bytes: np.ndarray
    out_bytes: np.ndarray
    block: np.ndarray
    sources: tuple[int, ...] = (IO,)
    to_io: bool = False


def problem_from_layers(
    layers: Sequence[LayerTraffic],
    mesh: tuple[int, int],
    cores: np.ndarray,
    slots: int,
    io: tuple[int, int],
) -> PlacementProblem:
    """The placement problem of ``layers`` (tiles numbered layer by layer, in the given order)."""
    starts = np.cumsum([0] + [len(layer.in_bytes) for layer in layers])
    n = int(starts[-1])
    src_e: list[np.ndarray] = []
    dst_e: list[np.ndarray] = []
    w_e: list[np.ndarray] = []
    heads: list[tuple[np.ndarray, np.ndarray]] = []
    for index, layer in enumerate(layers):
        ids = np.arange(starts[index], starts[index + 1])
        block = np.asarray(layer.block)
        _, first = np.unique(block, return_index=True)
        first = np.sort(first)
        head_of_block = dict(zip(block[first].tolist(), ids[first].tolist()))
        head = np.array([head_of_block[b] for b in block.tolist()], np.int64)
        partial = head != ids
        src_e.append(ids[partial])
        dst_e.append(head[partial])
        w_e.append(np.asarray(layer.out_bytes, np.float64)[partial])
        head_ids = ids[first]
        head_out = np.asarray(layer.out_bytes, np.float64)[first]
        heads.append((head_ids, head_out))
        if layer.to_io:
            src_e.append(head_ids)
            dst_e.append(np.full(head_ids.size, IO))
            w_e.append(head_out)
    dense: list[DenseGroup] = []
    for index, layer in enumerate(layers):
        ids = np.arange(starts[index], starts[index + 1])
        need = np.asarray(layer.in_bytes, np.float64) / max(len(layer.sources), 1)
        for source in layer.sources:
            if source == IO:
                src_e.append(np.full(ids.size, IO))
                dst_e.append(ids)
                w_e.append(need)
                continue
            if not 0 <= source < index:
                raise ValueError(f"layer {layer.name}: source {source} is not an earlier layer")
            head_ids, head_out = heads[source]
            total = head_out.sum()
            share = head_out / total if total > 0 else np.full(head_ids.size, 1.0 / head_ids.size)
            dense.append(DenseGroup(head_ids, share, ids, need))
    edges = np.stack([np.concatenate(src_e), np.concatenate(dst_e)], axis=1) if src_e else np.zeros((0, 2))
    weights = np.concatenate(w_e) if w_e else np.zeros(0)
    keep = weights > 0
    cluster = np.repeat(np.arange(len(layers)), np.diff(starts))
    return PlacementProblem(
        n, mesh, cores, slots, io, edges[keep], weights[keep], tuple(dense), cluster,
        tuple(layer.name for layer in layers),
    )


# -- assignments and the objective ---------------------------------------------------------------


def tile_xy(problem: PlacementProblem, assignment: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Core coordinates of every tile, with the IO position appended as entry ``n_tiles``."""
    core = np.asarray(assignment, np.int64) // problem.slots
    x = np.append(problem.cores[core, 0], problem.io[0])
    y = np.append(problem.cores[core, 1], problem.io[1])
    return x, y


def check_assignment(problem: PlacementProblem, assignment: np.ndarray) -> None:
    """Raise ValueError unless every tile has its own valid slot."""
    a = np.asarray(assignment)
    if a.shape != (problem.n_tiles,) or (a.size and (a.min() < 0 or a.max() >= problem.capacity)):
        raise ValueError("assignment must give every tile a slot index in range")
    if np.unique(a).size != a.size:
        raise ValueError("two tiles share a slot")


def _potential(hist: np.ndarray) -> np.ndarray:
    """P[..., x] = Σ_x' hist[..., x']·|x − x'| for each row, in O(width) by prefix sums."""
    xs = np.arange(hist.shape[-1], dtype=np.float64)
    a = np.cumsum(hist, axis=-1)
    b = np.cumsum(hist * xs, axis=-1)
    a_tot, b_tot = a[..., -1:], b[..., -1:]
    return xs * a - b + (b_tot - b) - xs * (a_tot - a)


def dense_cost(problem: PlacementProblem, group: DenseGroup, x: np.ndarray, y: np.ndarray) -> float:
    """Exact all-to-all cost of one dense group in O(|group| + mesh)."""
    w, h = problem.mesh
    px = _potential(np.bincount(x[group.dst], group.dst_w, minlength=w))
    py = _potential(np.bincount(y[group.dst], group.dst_w, minlength=h))
    return float(np.dot(group.src_w, px[x[group.src]] + py[y[group.src]]))


def objective(problem: PlacementProblem, assignment: np.ndarray) -> float:
    """Σ traffic × Manhattan hops of ``assignment`` (exact, dense groups included)."""
    x, y = tile_xy(problem, assignment)
    e = problem.edges_io_last()
    total = float(np.dot(problem.weights, np.abs(x[e[:, 0]] - x[e[:, 1]]) + np.abs(y[e[:, 0]] - y[e[:, 1]])))
    for group in problem.dense:
        total += dense_cost(problem, group, x, y)
    return total


# -- lower bound ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LowerBound:
    io: float
    sparse: float
    dense: float

    @property
    def total(self) -> float:
        return self.io + self.sparse + self.dense


def _partner_profile(problem: PlacementProblem, length: int) -> np.ndarray:
    """prof[i]: a lower bound on the hop distance of a tile's (i+1)-th nearest distinct partner."""
    if length <= 0:
        return np.zeros(0)
    w, h = problem.mesh
    c, k = problem.cores.shape[0], problem.slots
    d = np.arange(0, w + h + 1)
    reach = np.minimum.reduce([np.full(d.size, c), 2 * d * (d + 1) + 1, np.minimum(w, 2 * d + 1) * np.minimum(h, 2 * d + 1)])
    partners = k * reach - 1  # distinct other tiles that fit within distance d
    return np.searchsorted(partners, np.arange(length), side="right").astype(np.float64)


def _merged_tile_edges(problem: PlacementProblem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tile-to-tile sparse edges with parallel edges merged (u < v), self loops dropped."""
    e, w = problem.edges, problem.weights
    keep = (e[:, 0] != IO) & (e[:, 1] != IO) & (e[:, 0] != e[:, 1])
    u = np.minimum(e[keep, 0], e[keep, 1])
    v = np.maximum(e[keep, 0], e[keep, 1])
    key, inverse = np.unique(u * problem.n_tiles + v, return_inverse=True)
    merged = np.bincount(inverse, w[keep], minlength=key.size)
    return key // max(problem.n_tiles, 1), key % max(problem.n_tiles, 1), merged


def io_weights(problem: PlacementProblem) -> np.ndarray:
    """Per-tile total weight of edges to IO."""
    e, w = problem.edges, problem.weights
    to_io = (e[:, 0] == IO) ^ (e[:, 1] == IO)
    tiles = np.where(e[to_io, 0] == IO, e[to_io, 1], e[to_io, 0])
    return np.bincount(tiles, w[to_io], minlength=problem.n_tiles)


def slot_distances_to_io(problem: PlacementProblem, count: int | None = None) -> np.ndarray:
    """Hop distance from IO of the ``count`` nearest slots (all when None), ascending; selected
    in O(cores) before sorting, so a huge chip costs little when few tiles talk to IO."""
    d = np.abs(problem.cores[:, 0] - problem.io[0]) + np.abs(problem.cores[:, 1] - problem.io[1])
    c = int(d.size)
    if count is not None:
        cores_needed = min(c, -(-max(count, 0) // problem.slots))
        if 0 < cores_needed < c:
            d = np.partition(d, cores_needed - 1)[:cores_needed]
        elif cores_needed == 0:
            d = d[:0]
    out = np.sort(np.repeat(d, problem.slots))
    return out if count is None else out[:count]


def path_cover(n: int, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> list[tuple[list[int], list[float]]]:
    """Vertex-disjoint paths picked greedily by weight: [(nodes, weights of consecutive edges)]."""
    degree = np.zeros(n, np.int64)
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    nbrs: dict[int, list[tuple[int, float]]] = {}
    for i in np.lexsort((np.arange(w.size), -w)).tolist():
        a, b = int(u[i]), int(v[i])
        if degree[a] >= 2 or degree[b] >= 2:
            continue
        ra, rb = find(a), find(b)
        if ra == rb:
            continue
        parent[ra] = rb
        degree[a] += 1
        degree[b] += 1
        nbrs.setdefault(a, []).append((b, float(w[i])))
        nbrs.setdefault(b, []).append((a, float(w[i])))
    paths = []
    seen: set[int] = set()
    for start in sorted(nbrs):
        if start in seen or len(nbrs[start]) != 1:
            continue
        nodes, weights, prev, cur = [start], [], -1, start
        seen.add(start)
        while True:
            step = [(b, wt) for b, wt in nbrs[cur] if b != prev]
            if not step:
                break
            prev, (cur, wt) = cur, step[0]
            nodes.append(cur)
            weights.append(wt)
            seen.add(cur)
        paths.append((nodes, weights))
    return paths


def path_cut_bound(weights: Sequence[float], k: int) -> float:
    """Cheapest set of edges cutting a path of len(weights)+1 nodes into pieces of <= k nodes."""
    m = len(weights) + 1
    if m <= k:
        return 0.0
    f = [0.0] * (m + 1)
    window: deque[int] = deque([0])
    for i in range(1, m + 1):
        while window and window[0] < i - k:
            window.popleft()
        f[i] = f[window[0]] + (weights[i - 1] if i < m else 0.0)
        while window and f[window[-1]] >= f[i]:
            window.pop()
        window.append(i)
    return f[m]


def lower_bound(problem: PlacementProblem) -> LowerBound:
    """A provable lower bound on the objective of every feasible assignment (module docstring)."""
    n, k = problem.n_tiles, problem.slots
    wio = io_weights(problem)
    wio = np.sort(wio[wio > 0])[::-1]
    io_part = float(np.dot(wio, slot_distances_to_io(problem, wio.size)))

    u, v, w = _merged_tile_edges(problem)
    sparse = 0.0
    if w.size:
        tiles = np.concatenate([u, v])
        ww = np.concatenate([w, w])
        order = np.lexsort((-ww, tiles))
        tiles, ww = tiles[order], ww[order]
        starts = np.searchsorted(tiles, tiles, side="left")
        rank = np.arange(tiles.size) - starts
        prof = _partner_profile(problem, int(rank.max()) + 1)
        node = float(np.dot(ww, prof[rank])) / 2.0
        cut = sum(path_cut_bound(pw, k) for _, pw in path_cover(n, u, v, w))
        sparse = max(node, cut)

    dense = 0.0
    for g in problem.dense:
        prof = _partner_profile(problem, max(g.src.size, g.dst.size))
        pb = float(np.dot(np.sort(g.dst_w)[::-1], prof[: g.dst.size]))
        ps = float(np.dot(np.sort(g.src_w)[::-1], prof[: g.src.size]))
        dense += max(float(g.src_w.sum()) * pb, float(g.dst_w.sum()) * ps)
    return LowerBound(io_part, sparse, dense)


# -- constructive placement ----------------------------------------------------------------------


def serpentine(w: int, h: int, limit: int | None = None) -> np.ndarray:
    """Boustrophedon order of a w × h grid: rows bottom-up, alternating direction; only the first
    ``limit`` cells when given (a huge chip's curve is never built whole for a few tiles)."""
    rows = h if limit is None else min(h, -(-max(limit, 0) // max(w, 1)))
    xs = np.tile(np.arange(w), rows).reshape(rows, w)
    xs[1::2] = xs[1::2, ::-1]
    out = np.stack([xs.reshape(-1), np.repeat(np.arange(rows), w)], axis=1)
    return out if limit is None else out[:limit]


def hilbert(w: int, h: int, limit: int | None = None) -> np.ndarray:
    """Generalised Hilbert ("gilbert", after J. Červený) order of any w × h grid: neighbours in the
    order are adjacent (one diagonal step at most, on odd sizes), and every prefix is compact.
    With ``limit``, only the first ``limit`` cells: the recursion stops once they are out, so the
    cost follows the tiles, not the chip."""
    out: list[tuple[int, int]] = []
    stop = w * h if limit is None else max(limit, 0)

    def sgn(a: int) -> int:
        return (a > 0) - (a < 0)

    def rec(x: int, y: int, ax: int, ay: int, bx: int, by: int) -> None:
        if len(out) >= stop:
            return
        width, height = abs(ax + ay), abs(bx + by)
        dax, day, dbx, dby = sgn(ax), sgn(ay), sgn(bx), sgn(by)
        if height == 1:
            out.extend((x + i * dax, y + i * day) for i in range(width))
            return
        if width == 1:
            out.extend((x + i * dbx, y + i * dby) for i in range(height))
            return
        ax2, ay2, bx2, by2 = ax // 2, ay // 2, bx // 2, by // 2
        w2, h2 = abs(ax2 + ay2), abs(bx2 + by2)
        if 2 * width > 3 * height:
            if w2 % 2 and width > 2:
                ax2, ay2 = ax2 + dax, ay2 + day
            rec(x, y, ax2, ay2, bx, by)
            rec(x + ax2, y + ay2, ax - ax2, ay - ay2, bx, by)
        else:
            if h2 % 2 and height > 2:
                bx2, by2 = bx2 + dbx, by2 + dby
            rec(x, y, bx2, by2, ax2, ay2)
            rec(x + bx2, y + by2, ax, ay, bx - bx2, by - by2)
            rec(x + (ax - dax) + (bx2 - dbx), y + (ay - day) + (by2 - dby), -bx2, -by2, -(ax - ax2), -(ay - ay2))

    if w >= h:
        rec(0, 0, w, 0, 0, h)
    else:
        rec(0, 0, 0, h, w, 0)
    return np.array(out[:stop], np.int64).reshape(-1, 2)


def ring(w: int, h: int, cells: int, limit: int | None = None) -> np.ndarray:
    """A Hamiltonian cycle through (0, 0) over at least ``cells`` cells of a w × h grid (when the
    grid allows; even sizes only), followed by the remaining cells in serpentine order; only the
    first ``limit`` cells when given.

    The cycle climbs column 0, snakes down/up columns 1..c over rows 1..h−1 (c odd), optionally
    adds a U-turn of height t in columns c+1, c+2, and returns along row 0: h·(c+1) cells, or
    h·(c+1) + 2t + 2 with the U-turn. A chain laid along it ends next to where it started. The
    smallest such cycle of at least ``cells`` cells (else the largest) is found in O(w), one
    closed-form U-turn height per c.
    """
    if w < 2 or h < 2:
        return serpentine(w, h, limit)
    best: tuple[int, int, int] | None = None  # (size, c, t)
    largest: tuple[int, int, int] | None = None
    for c in range(1, w, 2):
        plain = h * (c + 1)
        turns = c + 3 <= w
        big = (plain + 2 * (h - 1) + 2, c, h - 1) if turns and h > 1 else (plain, c, 0)
        if largest is None or big[0] > largest[0]:
            largest = big
        option: tuple[int, int, int] | None = None
        if plain >= cells:
            option = (plain, c, 0)
        elif turns:
            t = max(1, -(-(cells - plain - 2) // 2))
            if t <= h - 1:
                option = (plain + 2 * t + 2, c, t)
        if option is not None and (best is None or option[0] < best[0]):
            best = option
    _, c, t = best or largest  # type: ignore[misc]
    seq = [(0, y) for y in range(h)]
    for col in range(1, c + 1):
        rows = range(h - 1, 0, -1) if col % 2 else range(1, h)
        seq += [(col, y) for y in rows]
    last = c
    if t:
        seq += [(c + 1, y) for y in range(1, t + 1)] + [(c + 2, y) for y in range(t, 0, -1)]
        last = c + 2
    seq += [(x, 0) for x in range(last, 0, -1)]
    cycle = np.array(seq, np.int64)
    if limit is not None and limit <= cycle.shape[0]:
        return cycle[:limit]
    # the serpentine prefix holds at most len(cycle) cycle cells, so it leaves enough others
    rest = serpentine(w, h, None if limit is None else limit + cycle.shape[0])
    used = np.zeros((w, h), bool)
    used[cycle[:, 0], cycle[:, 1]] = True
    rest = rest[~used[rest[:, 0], rest[:, 1]]]
    out = np.concatenate([cycle, rest])
    return out if limit is None else out[:limit]


def _symmetries(problem: PlacementProblem, curve: str, cells: int) -> list[tuple[str, np.ndarray]]:
    """The curve in the mesh's eight symmetries (transpose × flip x × flip y), each cut to the
    shortest prefix sure to pass ``cells`` usable cores (``cells`` plus every dead position), so
    that a chip of a million cores costs no more than the cores the tiles need."""
    w, h = problem.mesh
    limit = min(w * h, cells + w * h - int(problem.cores.shape[0]))

    def make(a: int, b: int) -> np.ndarray:
        if curve == "serpentine":
            return serpentine(a, b, limit)
        if curve == "hilbert":
            return hilbert(a, b, limit)
        return ring(a, b, cells, limit)

    out = []
    for transpose in (False, True):
        base = make(h, w)[:, ::-1] if transpose else make(w, h)
        for fx in (False, True):
            for fy in (False, True):
                xy = base.copy()
                if fx:
                    xy[:, 0] = w - 1 - xy[:, 0]
                if fy:
                    xy[:, 1] = h - 1 - xy[:, 1]
                out.append((f"{curve}{'/t' if transpose else ''}{'/fx' if fx else ''}{'/fy' if fy else ''}", xy))
    return out


def tile_order(problem: PlacementProblem) -> np.ndarray:
    """Tiles sorted by cluster (layer, topological), then index."""
    assert problem.cluster is not None
    return np.lexsort((np.arange(problem.n_tiles), problem.cluster))


def fill_along(problem: PlacementProblem, core_order: np.ndarray) -> np.ndarray:
    """Assignment putting the tiles, in `tile_order`, into consecutive slots of cores in ``core_order``."""
    k = problem.slots
    order = tile_order(problem)
    i = np.arange(problem.n_tiles)
    assignment = np.empty(problem.n_tiles, np.int64)
    assignment[order] = core_order[i // k] * k + i % k
    return assignment


def constructive(problem: PlacementProblem, curves: Sequence[str] = CURVES) -> tuple[np.ndarray, str]:
    """The cheapest layer-order fill along a core curve: (assignment, curve name)."""
    _require_fit(problem)
    grid = problem.core_grid()
    cells_needed = -(-problem.n_tiles // problem.slots)
    best: tuple[float, str, np.ndarray] | None = None
    for curve in curves:
        for name, xy in _symmetries(problem, curve, cells_needed):
            core_order = grid[xy[:, 0], xy[:, 1]]
            core_order = core_order[core_order >= 0]
            assignment = fill_along(problem, core_order)
            value = objective(problem, assignment)
            if best is None or value < best[0] - 1e-9 * max(1.0, abs(value)):
                best = (value, name, assignment)
    assert best is not None
    return best[2], best[1]


def _require_fit(problem: PlacementProblem) -> None:
    if problem.n_tiles > problem.capacity:
        from .errors import DoesNotFit

        raise DoesNotFit(
            f"place: {problem.n_tiles} tiles do not fit {problem.cores.shape[0]} usable cores × "
            f"{problem.slots} arrays = {problem.capacity} slots"
        )


# -- simulated annealing ---------------------------------------------------------------------------


@dataclass
class _Incidence:
    """CSR incidence of the sparse edges (IO = node n) and padded dense-group memberships."""

    start: np.ndarray
    nbr: np.ndarray
    w: np.ndarray
    mem_other: np.ndarray  # (n, M) potential row of the other side (dummy row when padding)
    mem_self: np.ndarray  # (n, M) potential row of the tile's own side
    mem_w: np.ndarray  # (n, M)
    rows: int

    @classmethod
    def build(cls, problem: PlacementProblem) -> _Incidence:
        n = problem.n_tiles
        e, w = problem.edges_io_last(), problem.weights
        keep = e[:, 0] != e[:, 1]
        e, w = e[keep], w[keep]
        a = np.concatenate([e[:, 0], e[:, 1]])
        b = np.concatenate([e[:, 1], e[:, 0]])
        ww = np.concatenate([w, w])
        tile_side = a < n
        a, b, ww = a[tile_side], b[tile_side], ww[tile_side]
        order = np.lexsort((b, a))
        a, b, ww = a[order], b[order], ww[order]
        start = np.searchsorted(a, np.arange(n + 1))
        groups = problem.dense
        rows = 2 * len(groups)
        t_list, o_list, s_list, w_list = [], [], [], []
        for gi, g in enumerate(groups):
            t_list += [g.src, g.dst]
            o_list += [np.full(g.src.size, 2 * gi + 1), np.full(g.dst.size, 2 * gi)]
            s_list += [np.full(g.src.size, 2 * gi), np.full(g.dst.size, 2 * gi + 1)]
            w_list += [g.src_w, g.dst_w]
        if t_list:
            t = np.concatenate(t_list)
            order = np.argsort(t, kind="stable")
            t = t[order]
            other, own, mw = (np.concatenate(x)[order] for x in (o_list, s_list, w_list))
            count = np.bincount(t, minlength=n)
            m = max(int(count.max()), 1)
            rank = np.arange(t.size) - np.searchsorted(t, t)
        else:
            m, t, rank = 1, np.zeros(0, np.int64), np.zeros(0, np.int64)
            other = own = np.zeros(0, np.int64)
            mw = np.zeros(0)
        mem_other = np.full((n, m), rows, np.int64)
        mem_self = np.full((n, m), rows, np.int64)
        mem_w = np.zeros((n, m))
        mem_other[t, rank] = other
        mem_self[t, rank] = own
        mem_w[t, rank] = mw
        return cls(start, b, ww, mem_other, mem_self, mem_w, rows)


@dataclass
class AnnealStats:
    batches: int = 0
    proposals: int = 0
    accepted: int = 0
    work: float = 0.0
    wall_capped: bool = False

    @property
    def seconds(self) -> float:
        return self.work / WORK_PER_SECOND


def anneal(
    problem: PlacementProblem,
    start: np.ndarray,
    *,
    budget: float = 5.0,
    seed: int = 0,
    radius: int | None = None,
    initial_temperature: float | None = None,
    wall_cap: float | None = None,
    batch_divisor: int = 12,
    t0_factor: float = 1.0,
) -> tuple[np.ndarray, AnnealStats]:
    """Simulated annealing from ``start`` for ``budget`` deterministic seconds; the best
    exactly-evaluated assignment is returned (never worse than ``start``)."""
    n, k = problem.n_tiles, problem.slots
    stats = AnnealStats()
    if n < 2 or budget <= 0:
        return np.asarray(start, np.int64).copy(), stats
    wall_start = time.perf_counter()
    rng = np.random.default_rng(seed)
    inc = _Incidence.build(problem)
    w_mesh, h_mesh = problem.mesh
    grid = problem.core_grid()
    cx, cy = problem.cores[:, 0], problem.cores[:, 1]
    slot = np.asarray(start, np.int64).copy()
    tile_at = np.full(problem.capacity, -1, np.int64)
    tile_at[slot] = np.arange(n)
    x = np.append(cx[slot // k], problem.io[0]).astype(np.int64)
    y = np.append(cy[slot // k], problem.io[1]).astype(np.int64)

    hx = np.zeros((inc.rows + 1, w_mesh))
    hy = np.zeros((inc.rows + 1, h_mesh))
    sel = inc.mem_self < inc.rows
    tiles = np.broadcast_to(np.arange(n)[:, None], inc.mem_self.shape)
    np.add.at(hx, (inc.mem_self[sel], x[tiles[sel]]), inc.mem_w[sel])
    np.add.at(hy, (inc.mem_self[sel], y[tiles[sel]]), inc.mem_w[sel])
    px, py = _potential(hx), _potential(hy)

    best_slot, best_value = slot.copy(), objective(problem, slot)
    max_radius = max(w_mesh, h_mesh) - 1 if radius is None else max(1, min(radius, max(w_mesh, h_mesh) - 1))
    r = float(max_radius)
    batch = int(min(max(8, n // batch_divisor), 4096))
    degree = np.diff(inc.start)
    per_batch = BATCH_OVERHEAD + batch * (4 + 2 * float(degree.mean() if n else 0) + 4 * inc.mem_w.shape[1] + inc.mem_w.shape[1] ** 2)
    per_batch += 2 * batch * inc.mem_w.shape[1] * 2 + min(inc.rows, 2 * batch * inc.mem_w.shape[1]) * (w_mesh + h_mesh)
    total_batches = max(1, int(min(budget * WORK_PER_SECOND / per_batch, MOVES_PER_TILE * n / batch)))
    check_every = max(1, total_batches // 40)
    temperature = initial_temperature
    cooling = 1e-3 ** (1.0 / total_batches)
    wall_cap = wall_cap if wall_cap is not None else wall_budget(budget)

    for it in range(total_batches):
        if time.perf_counter() - wall_start > wall_cap:  # a safety net: the work budget ends runs first
            stats.wall_capped = True
            value = objective(problem, slot)
            if value < best_value:
                best_value, best_slot = value, slot.copy()
            break
        # -- propose ---------------------------------------------------------------------------
        u = rng.integers(0, n, batch)
        ri = max(1, round(r))
        dx = rng.integers(-ri, ri + 1, batch)
        dy = rng.integers(-ri, ri + 1, batch)
        j = rng.integers(0, k, batch)
        p_slot = slot[u]
        qx, qy = x[u] + dx, y[u] + dy
        ok = (qx >= 0) & (qx < w_mesh) & (qy >= 0) & (qy < h_mesh)
        qc = np.where(ok, grid[np.clip(qx, 0, w_mesh - 1), np.clip(qy, 0, h_mesh - 1)], -1)
        ok &= (qc >= 0) & (qc != p_slot // k)
        u, p_slot, qc, j = u[ok], p_slot[ok], qc[ok], j[ok]
        q_slot = qc * k + j
        v = tile_at[q_slot]
        # one proposal per tile and per target slot
        involved = np.concatenate([u, v[v >= 0]])
        count = np.bincount(involved, minlength=n)
        _, slot_index, slot_count = np.unique(q_slot, return_inverse=True, return_counts=True)  # O(batch), not O(chip)
        ok = (count[u] == 1) & ((v < 0) | (count[np.maximum(v, 0)] == 1)) & (slot_count[slot_index] == 1)
        u, v, p_slot, q_slot = u[ok], v[ok], p_slot[ok], q_slot[ok]
        b = u.size
        stats.batches += 1
        if b == 0:
            continue
        # no two proposals may touch sparse neighbours: keep the lower-numbered one
        owner = np.full(n + 1, b, np.int64)
        owner[u] = np.arange(b)
        has_v = v >= 0
        owner[v[has_v]] = np.arange(b)[has_v]
        movers = np.concatenate([u, v[has_v]])
        mover_prop = np.concatenate([np.arange(b), np.arange(b)[has_v]])
        partner = np.concatenate([np.where(has_v, v, -2), u[has_v]])
        deg = degree[movers]
        idx = np.repeat(inc.start[movers] - np.cumsum(np.concatenate([[0], deg[:-1]])), deg) + np.arange(deg.sum())
        entry_prop = np.repeat(mover_prop, deg)
        entry_nbr = inc.nbr[idx]
        nbr_owner = owner[entry_nbr]
        conflict = (nbr_owner < entry_prop) & (nbr_owner != entry_prop)
        bad = np.zeros(b, bool)
        bad[entry_prop[conflict]] = True
        # -- deltas ------------------------------------------------------------------------------
        fx = np.concatenate([x[u], x[v[has_v]]])
        fy = np.concatenate([y[u], y[v[has_v]]])
        tx = np.concatenate([cx[q_slot // k], cx[p_slot[has_v] // k]])
        ty = np.concatenate([cy[q_slot // k], cy[p_slot[has_v] // k]])
        entry_from_x, entry_from_y = np.repeat(fx, deg), np.repeat(fy, deg)
        entry_to_x, entry_to_y = np.repeat(tx, deg), np.repeat(ty, deg)
        ox, oy = x[entry_nbr], y[entry_nbr]
        change = (np.abs(entry_to_x - ox) + np.abs(entry_to_y - oy)) - (np.abs(entry_from_x - ox) + np.abs(entry_from_y - oy))
        change = np.where(entry_nbr == np.repeat(partner, deg), 0.0, change) * inc.w[idx]
        delta = np.bincount(entry_prop, change, minlength=b).astype(np.float64)
        other = inc.mem_other[movers]
        mw = inc.mem_w[movers]
        dense_change = mw * (px[other, tx[:, None]] - px[other, fx[:, None]] + py[other, ty[:, None]] - py[other, fy[:, None]])
        delta += np.bincount(mover_prop, dense_change.sum(axis=1), minlength=b)
        if has_v.any():
            uu, vv = u[has_v], v[has_v]
            same = (inc.mem_other[uu][:, :, None] == inc.mem_self[vv][:, None, :]) & (inc.mem_other[uu][:, :, None] < inc.rows)
            pair_w = (inc.mem_w[uu][:, :, None] * inc.mem_w[vv][:, None, :] * same).sum(axis=(1, 2))
            hop = np.abs(cx[q_slot[has_v] // k] - x[uu]) + np.abs(cy[q_slot[has_v] // k] - y[uu])
            delta[has_v] += 2.0 * pair_w * hop
        stats.work += per_batch
        # -- temperature -------------------------------------------------------------------------
        if temperature is None:
            positive = delta[delta > 0]
            temperature = t0_factor * (float(np.mean(positive)) if positive.size else 1.0)
            temperature = max(temperature, 1e-12)
        accept = ~bad & ((delta <= 0) | (rng.random(b) < np.exp(-np.maximum(delta, 0) / max(temperature, 1e-300))))
        temperature *= cooling
        stats.proposals += b
        a = np.flatnonzero(accept)
        acc_rate = a.size / b
        r = min(max_radius, max(1.0, r * (1.0 - 0.44 + acc_rate)))
        if a.size == 0:
            continue
        stats.accepted += a.size
        # -- apply -------------------------------------------------------------------------------
        au, av, ap, aq = u[a], v[a], p_slot[a], q_slot[a]
        moved = np.concatenate([au, av[av >= 0]])
        new_slot = np.concatenate([aq, ap[av >= 0]])
        old_x, old_y = x[moved].copy(), y[moved].copy()
        tile_at[ap] = av
        tile_at[aq] = au
        slot[moved] = new_slot
        x[moved] = cx[new_slot // k]
        y[moved] = cy[new_slot // k]
        if inc.rows:
            rows_m = inc.mem_self[moved]
            wm = inc.mem_w[moved]
            live = rows_m < inc.rows
            if live.any():
                rr, ww = rows_m[live], wm[live]
                rep = np.broadcast_to(np.arange(moved.size)[:, None], rows_m.shape)[live]
                np.add.at(hx, (rr, x[moved][rep]), ww)
                np.add.at(hx, (rr, old_x[rep]), -ww)
                np.add.at(hy, (rr, y[moved][rep]), ww)
                np.add.at(hy, (rr, old_y[rep]), -ww)
                touched = np.unique(rr)
                px[touched] = _potential(hx[touched])
                py[touched] = _potential(hy[touched])
        if (it + 1) % check_every == 0 or it == total_batches - 1:
            value = objective(problem, slot)
            if value < best_value:
                best_value, best_slot = value, slot.copy()
    return best_slot, stats


# -- CP-SAT ----------------------------------------------------------------------------------------


@dataclass
class CpsatResult:
    assignment: np.ndarray
    status: str
    bound: float | None
    seconds: float
    exact: bool
    wall_capped: bool = False


def cpsat(
    problem: PlacementProblem,
    hint: np.ndarray,
    *,
    time_limit: float = 10.0,
    workers: int = 1,
    seed: int = 0,
    bound: float | None = None,
    expand_limit: int = CPSAT_EXPAND_LIMIT,
    wall_cap: float | None = None,
) -> CpsatResult:
    """CP-SAT on the placement model (module docstring), hinted with the complete ``hint``.

    ``time_limit`` is deterministic time (the result does not depend on the machine's speed);
    ``wall_cap`` (default `wall_budget`) bounds the wall clock, model building included."""
    from ortools.sat.python import cp_model

    wall_start = time.perf_counter()

    n, k = problem.n_tiles, problem.slots
    w_mesh, h_mesh = problem.mesh
    hint = np.asarray(hint, np.int64)
    hx_all, hy_all = tile_xy(problem, hint)
    model = cp_model.CpModel()
    live = np.sort(problem.cores[:, 1] * w_mesh + problem.cores[:, 0])
    breaks = np.flatnonzero(np.diff(live) != 1)  # runs of consecutive cells: a million cores, few intervals
    lows, highs = live[np.concatenate([[0], breaks + 1])], live[np.concatenate([breaks, [live.size - 1]])]
    domain = cp_model.Domain.from_intervals(np.stack([lows, highs], axis=1).tolist())
    xs, ys, cells = [], [], []
    for t in range(n):
        x = model.new_int_var(0, w_mesh - 1, f"x{t}")
        y = model.new_int_var(0, h_mesh - 1, f"y{t}")
        c = model.new_int_var_from_domain(domain, f"c{t}")
        model.add(c == w_mesh * y + x)
        model.add_hint(x, int(hx_all[t]))
        model.add_hint(y, int(hy_all[t]))
        model.add_hint(c, int(hy_all[t] * w_mesh + hx_all[t]))
        if k > 1:
            j = model.new_int_var(0, k - 1, f"j{t}")
            model.add_hint(j, int(hint[t] % k))
            cells.append(c * k + j)
        else:
            cells.append(c)
        xs.append(x)
        ys.append(y)
    if n > 1:
        model.add_all_different(cells)

    # pairs (merged) and dense groups
    u, v, w = _merged_tile_edges(problem)
    pair_w: dict[tuple[int, int], float] = {(int(a), int(b)): float(c) for a, b, c in zip(u, v, w)}
    hubs: list[DenseGroup] = []
    expanded = 0
    for g in problem.dense:
        if expanded + g.pairs <= expand_limit:
            expanded += g.pairs
            outer = np.outer(g.src_w, g.dst_w)
            for i, a in enumerate(g.src.tolist()):
                for jj, b in enumerate(g.dst.tolist()):
                    key = (a, b) if a < b else (b, a)
                    pair_w[key] = pair_w.get(key, 0.0) + float(outer[i, jj])
        else:
            hubs.append(g)
    exact = not hubs
    wio = io_weights(problem)
    terms: list[tuple[float, Any, int]] = []  # (weight, distance expression var, hint value)

    def dist(a_x: Any, a_y: Any, b_x: Any, b_y: Any, hint_d: tuple[int, int], name: str, wt: float) -> tuple[Any, Any]:
        dx = model.new_int_var(0, w_mesh - 1, f"dx{name}")
        dy = model.new_int_var(0, h_mesh - 1, f"dy{name}")
        model.add(dx >= a_x - b_x)
        model.add(dx >= b_x - a_x)
        model.add(dy >= a_y - b_y)
        model.add(dy >= b_y - a_y)
        model.add_hint(dx, hint_d[0])
        model.add_hint(dy, hint_d[1])
        terms.append((wt, dx, hint_d[0]))
        terms.append((wt, dy, hint_d[1]))
        return dx, dy

    pair_vars: dict[tuple[int, int], tuple[Any, Any]] = {}
    for (a, b), wt in sorted(pair_w.items()):
        hd = (int(abs(hx_all[a] - hx_all[b])), int(abs(hy_all[a] - hy_all[b])))
        pair_vars[(a, b)] = dist(xs[a], ys[a], xs[b], ys[b], hd, f"{a}_{b}", wt)
    io_vars = []
    for t in np.flatnonzero(wio > 0).tolist():
        hd = (int(abs(hx_all[t] - problem.io[0])), int(abs(hy_all[t] - problem.io[1])))
        io_vars.append(dist(xs[t], ys[t], problem.io[0], problem.io[1], hd, f"io{t}", float(wio[t])))
    for gi, g in enumerate(hubs):
        pts_x = np.concatenate([hx_all[g.src], hx_all[g.dst]])
        pts_y = np.concatenate([hy_all[g.src], hy_all[g.dst]])
        wts = np.concatenate([g.src_w * g.dst_w.sum(), g.dst_w])
        hub_x = model.new_int_var(0, w_mesh - 1, f"hx{gi}")
        hub_y = model.new_int_var(0, h_mesh - 1, f"hy{gi}")
        mx, my = _weighted_median(pts_x, wts), _weighted_median(pts_y, wts)
        model.add_hint(hub_x, mx)
        model.add_hint(hub_y, my)
        for t, wt in zip(np.concatenate([g.src, g.dst]).tolist(), wts.tolist()):
            hd = (int(abs(hx_all[t] - mx)), int(abs(hy_all[t] - my)))
            dist(xs[t], ys[t], hub_x, hub_y, hd, f"h{gi}_{t}", wt)

    # integer weights: exact when all weights are integers, else scaled by 2^24 / max
    weights = np.array([t[0] for t in terms]) if terms else np.zeros(0)
    integral = weights.size == 0 or (np.all(np.abs(weights - np.round(weights)) < 1e-9) and weights.max() < 2**40)
    scale = 1.0 if integral else float(2**24 / max(weights.max(), 1e-300))
    coeffs = np.round(weights * scale).astype(np.int64)
    slack = float(np.abs(coeffs - weights * scale).sum()) * max(w_mesh, h_mesh)
    obj = cp_model.LinearExpr.weighted_sum([t[1] for t in terms], coeffs.tolist()) if terms else 0
    model.minimize(obj)

    # cuts: the lower bound, path windows, distinct IO slots
    if bound is not None and exact and terms:
        cut = math.ceil(bound * scale - slack - 1e-6)
        if cut > 0:
            model.add(obj >= cut)
    for nodes, _ in path_cover(n, u, v, w):
        if len(nodes) <= k:
            continue
        steps = []
        for a, b in itertools.pairwise(nodes):
            dx, dy = pair_vars[(a, b) if a < b else (b, a)]
            steps.append(dx + dy)
        for i in range(len(steps) - k + 1):
            model.add(sum(steps[i : i + k]) >= 1)
    if io_vars:
        need = int(slot_distances_to_io(problem, len(io_vars)).sum())
        if need > 0:
            model.add(sum(dx + dy for dx, dy in io_vars) >= need)

    solver = cp_model.CpSolver()
    solver.parameters.num_workers = max(1, workers)
    solver.parameters.random_seed = seed
    solver.parameters.catch_sigint_signal = False  # Ctrl-C must reach afmc so staging output is cleaned up
    det_limit = max(time_limit, 0.01)
    solver.parameters.max_deterministic_time = det_limit
    cap = wall_cap if wall_cap is not None else wall_budget(time_limit)
    solver.parameters.max_time_in_seconds = max(cap - (time.perf_counter() - wall_start), 0.01)
    status = solver.solve(model)
    det = float(solver.response_proto.deterministic_time)
    # stopped neither by a proof nor by the deterministic limit: the wall clock ran out first
    capped = status not in (cp_model.OPTIMAL, cp_model.INFEASIBLE) and det < 0.999 * det_limit
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return CpsatResult(hint.copy(), "unknown", None, det, exact, capped)
    grid = problem.core_grid()
    assignment = np.empty(n, np.int64)
    for t in range(n):
        core = grid[solver.value(xs[t]), solver.value(ys[t])]
        assignment[t] = core * k + (solver.value(cells[t]) % k if k > 1 else 0)
    proven = None
    if exact and terms:
        proven = (float(solver.best_objective_bound) - slack) / scale
    elif exact:
        proven = 0.0
    name = "optimal" if status == cp_model.OPTIMAL and exact and integral else "feasible"
    return CpsatResult(assignment, name, proven, det, exact, capped)


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> int:
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    return int(values[order][np.searchsorted(cum, cum[-1] / 2.0)])


# -- hierarchical ----------------------------------------------------------------------------------


def hierarchical(
    problem: PlacementProblem, start: np.ndarray, *, budget: float = 10.0, seed: int = 0, window: int = 3,
    wall_cap: float | None = None,
) -> tuple[np.ndarray, AnnealStats]:
    """Refine a cluster-by-layer placement (``start``, from `constructive`) in windows: annealing
    whose moves stay within ``window`` hops, starting cool so the layout of the clusters is kept."""
    a, stats = anneal(problem, start, budget=budget, seed=seed, radius=window, wall_cap=wall_cap)
    return a, stats


# -- the driver --------------------------------------------------------------------------------------


@dataclass
class Placement:
    """A solved placement and its quality."""

    assignment: np.ndarray
    objective: float
    lower_bound: float
    solver: str
    status: str
    seconds: float  # deterministic time (CP-SAT's + annealing work units)
    wall_seconds: float
    baseline: float  # objective of the constructive placement
    curve: str = ""
    wall_capped: bool = False  # the wall-clock budget, not the deterministic one, ended a search

    @property
    def gap(self) -> float:
        """(objective − lower bound) / objective; 0 when the objective is 0."""
        return 0.0 if self.objective <= 0 else max(0.0, (self.objective - self.lower_bound) / self.objective)

    @property
    def ratio(self) -> float:
        return 1.0 if self.objective <= 0 else (self.objective / self.lower_bound if self.lower_bound > 0 else math.inf)


def solve(
    problem: PlacementProblem,
    solver: str = "auto",
    *,
    time_limit: float = 10.0,
    workers: int = 1,
    seed: int = 0,
    wall_limit: float | None = None,
) -> Placement:
    """Place ``problem`` with ``solver`` (``auto`` picks by size; see the module docstring).

    ``time_limit`` is deterministic seconds; ``wall_limit`` (default `wall_budget`) is a hard
    wall-clock budget for the whole call: the searches get what the constructive placement and
    the lower bound left of it, and stop (with ``wall_capped`` set) when it runs out."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r} (choose from {', '.join(SOLVERS)})")
    wall = time.perf_counter()
    deadline = wall + (wall_limit if wall_limit is not None else wall_budget(time_limit))

    def left() -> float:
        return max(deadline - time.perf_counter(), 0.0)

    capped = False
    _require_fit(problem)
    base, curve = constructive(problem)
    baseline = objective(problem, base)
    bound = lower_bound(problem).total
    n = problem.n_tiles
    chosen = solver
    if solver == "auto":
        small = n <= AUTO_CPSAT_MAX and _cpsat_pairs(problem) <= CPSAT_MAX_PAIRS
        if n <= 1 or baseline <= bound * (1 + 1e-12):
            chosen = "constructive"
        elif baseline - bound <= NEAR_OPTIMAL_GAP * baseline:
            chosen = "cpsat" if small else "constructive"
        elif small:
            chosen = "anneal+cpsat"
        elif n <= AUTO_ANNEAL_MAX:
            chosen = "anneal"
        else:
            chosen = "hierarchical"
    assignment, det, status = base, 0.0, "feasible"
    if chosen in ("anneal", "anneal+cpsat"):
        share = time_limit / 2 if chosen == "anneal+cpsat" else time_limit
        assignment, stats = anneal(problem, base, budget=share, seed=seed, wall_cap=left())
        det += stats.seconds
        capped |= stats.wall_capped
    elif chosen == "hierarchical":
        assignment, stats = hierarchical(problem, base, budget=time_limit, seed=seed, wall_cap=left())
        det += stats.seconds
        capped |= stats.wall_capped
    if chosen in ("cpsat", "anneal+cpsat") and not capped:
        remaining = max(time_limit - det, 0.1)
        if solver == "auto":
            remaining = min(remaining, CPSAT_BASE + CPSAT_PER_TILE * n)
        result = cpsat(problem, assignment, time_limit=remaining, workers=workers, seed=seed, bound=bound,
                       wall_cap=left())
        det += result.seconds
        capped |= result.wall_capped
        if objective(problem, result.assignment) <= objective(problem, assignment):
            assignment = result.assignment
        if result.bound is not None:
            bound = max(bound, result.bound)
    value = objective(problem, assignment)
    if value > baseline:
        assignment, value = base, baseline
    bound = min(bound, value)
    if value <= bound * (1 + 1e-9) + 1e-12:
        status = "optimal"
    check_assignment(problem, assignment)
    return Placement(assignment, value, bound, chosen, status, det, time.perf_counter() - wall, baseline, curve,
                     capped)


def _cpsat_pairs(problem: PlacementProblem) -> int:
    pairs = int(problem.edges.shape[0])
    expanded = 0
    for g in problem.dense:
        if expanded + g.pairs <= CPSAT_EXPAND_LIMIT:
            expanded += g.pairs
        else:
            pairs += int(g.src.size + g.dst.size)
    return pairs + expanded


__all__ = [
    "IO", "SOLVERS", "DenseGroup", "LayerTraffic", "LowerBound", "Placement", "PlacementProblem", "anneal",
    "check_assignment", "constructive", "cpsat", "hierarchical", "lower_bound", "objective",
    "problem_from_layers", "solve", "tile_xy", "wall_budget",
]
