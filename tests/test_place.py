"""The ``place`` pass and the placement solvers: validity, bounds, optimality on chains, determinism."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from typing import Any

import numpy as np
import pytest
from afmc.targets.spec import from_dict
from helpers import SAMPLE_NAMES, TARGETS, sample_path, sample_shapes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from afmc.driver import compile_module, load_module, load_target
from afmc.errors import AfmcError, DoesNotFit
from afmc.ir import parse_module, print_module, verify
from afmc.pipeline import parse_pipeline
from afmc.placement import (
    IO,
    DenseGroup,
    LayerTraffic,
    PlacementProblem,
    anneal,
    check_assignment,
    constructive,
    cpsat,
    hierarchical,
    hilbert,
    lower_bound,
    objective,
    path_cut_bound,
    problem_from_layers,
    ring,
    serpentine,
    solve,
    tile_xy,
)

PREFIX = "canonicalize,fold-constants,fold-batchnorm,canonicalize,partition"


def compiled(name: str, target_name: str, place: str = "place{time-limit=1}", tile: str = "tile") -> Any:
    module = load_module(sample_path(name), sample_shapes(name, 1))
    target = load_target(target_name)
    comp = compile_module(module, target, pipeline=f"{PREFIX},{tile},{place}")
    return comp, target


def placements(module: Any) -> list[tuple[tuple[int, int], int]]:
    """(core, slot) of every physical array (every copy of every xbar.mvm)."""
    out = []
    for op in module.ops:
        if op.name != "xbar.mvm":
            continue
        core, slot = op.attr("core"), op.attr("slot")
        if op.attr("replicas") == 1:
            out.append((tuple(core), slot))
        else:
            assert len(core) == len(slot) == op.attr("replicas")
            out += [(tuple(c), s) for c, s in zip(core, slot)]
    return out


def target_with_chip(base: str, **chip: Any) -> Any:
    data = load_target(base).to_dict()
    data["chip"].update(chip)
    return from_dict(data, f"{base}+test")


def full_mesh(w: int, h: int) -> np.ndarray:
    return np.array([(x, y) for y in range(h) for x in range(w)], np.int64)


def chain_problem(n: int, w: int, h: int, k: int, io: bool = False) -> PlacementProblem:
    edges = np.stack([np.arange(n - 1), np.arange(1, n)], axis=1)
    if io:
        edges = np.concatenate([edges, [[IO, 0], [n - 1, IO]]])
    return PlacementProblem(n, (w, h), full_mesh(w, h), k, (0, 0), edges, np.ones(len(edges)))


def random_problem(seed: int, n: int, w: int, h: int, k: int, dead: int = 0) -> PlacementProblem:
    rng = np.random.default_rng(seed)
    cores = full_mesh(w, h)
    if dead:
        cores = cores[np.sort(rng.choice(len(cores), len(cores) - dead, replace=False))]
    e = rng.integers(-1, n, (2 * n, 2))
    e = e[(e[:, 0] != e[:, 1]) & ~((e[:, 0] == IO) & (e[:, 1] == IO))]
    groups = []
    if n >= 4:
        perm = rng.permutation(n)
        a, b = perm[: n // 3], perm[n // 3 : 2 * n // 3]
        groups.append(DenseGroup(a, rng.random(a.size), b, rng.integers(1, 9, b.size).astype(float)))
    return PlacementProblem(n, (w, h), cores, k, (int(rng.integers(w)), int(rng.integers(h))), e,
                            rng.integers(1, 20, len(e)).astype(float), tuple(groups), rng.integers(0, 3, n))


def brute_force_optimum(problem: PlacementProblem) -> float:
    best = math.inf
    for slots in itertools.permutations(range(problem.capacity), problem.n_tiles):
        best = min(best, objective(problem, np.array(slots)))
    return best


# -- the pass on the samples --------------------------------------------------------------------


@pytest.mark.parametrize("target_name", TARGETS)
@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_pass_places_every_tile_on_a_live_core(name: str, target_name: str) -> None:
    comp, target = compiled(name, target_name)
    module, chip = comp.module, target.chip
    placed = placements(module)
    assert len(placed) == module.attributes["tiles_required"]
    live = set(chip.core_positions)
    assert all(core in live for core, _ in placed)
    assert not {core for core, _ in placed} & set(chip.dead_cores)
    assert all(0 <= slot < chip.arrays_per_core for _, slot in placed)
    assert len(set(placed)) == len(placed)  # one array per slot
    assert max(Counter(core for core, _ in placed).values()) <= chip.arrays_per_core
    summary = module.attributes["placement"]
    assert set(summary) == {"objective", "lower_bound", "gap", "solver", "status", "seconds"}
    assert summary["objective"] >= summary["lower_bound"] - 1e-6
    assert 0.0 <= summary["gap"] <= 1.0
    report = comp.context.report["placement"]
    assert report["objective"] == summary["objective"] and report["baseline"] >= summary["objective"]
    text = print_module(module)
    assert "core = [" in text and "placement = {" in text
    again = parse_module(text)
    verify(again)
    assert print_module(again) == text


def test_pass_is_deterministic() -> None:
    first = print_module(compiled("transformer_digits", "flash")[0].module)
    second = print_module(compiled("transformer_digits", "flash")[0].module)
    assert first == second


def test_replicated_tiles_get_one_core_per_copy() -> None:
    comp, _ = compiled("cnn_digits", "pcm", tile="tile{replicate=3}")
    mvms = [op for op in comp.module.ops if op.name == "xbar.mvm"]
    assert all(len(op.attr("core")) == 3 and len(op.attr("slot")) == 3 for op in mvms)
    placed = placements(comp.module)
    assert len(placed) == 3 * len(mvms) == len(set(placed))


def test_pipeline_options_round_trip_and_reject_bad_values() -> None:
    spec = "place{solver=anneal time-limit=2.5 workers=2 seed=3}"
    assert str(parse_pipeline(spec)) == spec
    (pass_,) = parse_pipeline(spec).instantiate()
    assert (pass_.solver, pass_.time_limit, pass_.workers, pass_.seed) == ("anneal", 2.5, 2, 3)
    with pytest.raises(AfmcError):
        parse_pipeline("place{solver=magic}").instantiate()
    with pytest.raises(AfmcError):
        parse_pipeline("place{workers=0}").instantiate()


def test_builtin_pipelines_place_after_tile() -> None:
    for name in TARGETS:
        names = [s.name for s in parse_pipeline(load_target(name).pipeline)]
        assert names.index("place") == names.index("tile") + 1


def test_more_tiles_than_slots_does_not_fit() -> None:
    with pytest.raises(DoesNotFit, match="do not fit"):
        solve(chain_problem(10, 2, 2, 2))
    small = target_with_chip("crossbar", mesh_x=2, mesh_y=1, cores=2, arrays_per_core=4, io=[0, 0])
    module = load_module(sample_path("cnn_digits"), sample_shapes("cnn_digits", 1))
    comp = compile_module(module, small, pipeline=f"{PREFIX},tile,place")
    assert comp.context.report["placement"]["status"] == "does_not_fit"
    assert not any("core" in op.attributes for op in comp.module.ops)


# -- the traffic model ------------------------------------------------------------------------------


def test_problem_from_layers_models_partial_sums_io_and_layer_traffic() -> None:
    first = LayerTraffic("a", np.full(4, 10.0), np.full(4, 3.0), np.array([0, 0, 1, 1]), (IO,), False)
    second = LayerTraffic("b", np.full(2, 6.0), np.full(2, 5.0), np.array([0, 1]), (0,), True)
    p = problem_from_layers([first, second], (4, 4), full_mesh(4, 4), 1, (0, 0))
    edges = {(int(u), int(v)): float(w) for (u, v), w in zip(p.edges, p.weights)}
    assert edges[(1, 0)] == 3.0 and edges[(3, 2)] == 3.0  # partial sums to the block's first tile
    assert all(edges[(IO, t)] == 10.0 for t in range(4))  # layer a reads from IO
    assert edges[(4, IO)] == 5.0 and edges[(5, IO)] == 5.0  # layer b's blocks write to IO
    (group,) = p.dense
    assert group.src.tolist() == [0, 2] and group.dst.tolist() == [4, 5]
    assert np.allclose(group.src_w, [0.5, 0.5]) and np.allclose(group.dst_w, [6.0, 6.0])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10_000), st.integers(2, 12))
def test_objective_matches_explicit_pair_sum(seed: int, n: int) -> None:
    p = random_problem(seed, n, 5, 4, 2)
    a = np.random.default_rng(seed).permutation(p.capacity)[:n]
    x, y = tile_xy(p, a)
    expected = 0.0
    for (u, v), w in zip(p.edges_io_last(), p.weights):
        expected += w * (abs(x[u] - x[v]) + abs(y[u] - y[v]))
    for g in p.dense:
        for s, sw in zip(g.src, g.src_w):
            for d, dw in zip(g.dst, g.dst_w):
                expected += sw * dw * (abs(x[s] - x[d]) + abs(y[s] - y[d]))
    assert objective(p, a) == pytest.approx(expected, rel=1e-9)


# -- lower bound and solvers -------------------------------------------------------------------------


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10_000), st.integers(2, 5), st.integers(1, 2))
def test_lower_bound_never_exceeds_the_brute_force_optimum(seed: int, n: int, k: int) -> None:
    p = random_problem(seed, n, 3, 2, k, dead=1)
    if p.n_tiles > p.capacity:
        return
    assert lower_bound(p).total <= brute_force_optimum(p) + 1e-9


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10_000))
def test_cpsat_finds_the_brute_force_optimum_of_small_instances(seed: int) -> None:
    p = random_problem(seed, 5, 3, 2, 1)
    hint, _ = constructive(p)
    result = cpsat(p, hint, time_limit=5.0, bound=lower_bound(p).total)
    assert objective(p, result.assignment) == pytest.approx(brute_force_optimum(p))


@pytest.mark.parametrize("seed", range(2))
def test_every_solver_gives_a_valid_assignment_above_the_bound(seed: int) -> None:
    p = random_problem(seed, 40, 6, 5, 2, dead=3)
    bound = lower_bound(p).total
    base, _ = constructive(p)
    results = {
        "constructive": base,
        "anneal": anneal(p, base, budget=0.3, seed=seed)[0],
        "hierarchical": hierarchical(p, base, budget=0.3, seed=seed)[0],
        "cpsat": cpsat(p, base, time_limit=0.5, bound=bound).assignment,
    }
    for name, assignment in results.items():
        check_assignment(p, assignment)
        assert objective(p, assignment) >= bound - 1e-6, name
        assert objective(p, assignment) <= objective(p, base) + 1e-6, name
    for solver in ("auto", "constructive", "cpsat", "anneal", "hierarchical"):
        placed = solve(p, solver, time_limit=0.3, seed=seed)
        check_assignment(p, placed.assignment)
        assert placed.lower_bound <= placed.objective <= placed.baseline


def test_cpsat_improves_or_keeps_its_hint() -> None:
    p = random_problem(7, 60, 8, 8, 1)
    hint, _ = constructive(p)
    result = cpsat(p, hint, time_limit=1.0, bound=lower_bound(p).total)
    assert objective(p, result.assignment) <= objective(p, hint)


@pytest.mark.parametrize(("n", "w", "h", "k"), [(12, 3, 2, 2), (30, 4, 4, 2), (64, 4, 4, 4), (100, 5, 5, 4), (7, 2, 2, 2)])
def test_chain_is_placed_optimally(n: int, w: int, h: int, k: int) -> None:
    """A chain's optimum is ceil(n/k) − 1 hops (k consecutive tiles per core along a serpentine)."""
    p = chain_problem(n, w, h, k)
    assert lower_bound(p).total == math.ceil(n / k) - 1
    placed = solve(p, time_limit=1.0)
    assert placed.objective == math.ceil(n / k) - 1
    assert placed.status == "optimal" and placed.gap == 0.0


def test_chain_optimum_agrees_with_brute_force() -> None:
    p = chain_problem(5, 3, 2, 1, io=True)
    assert solve(p, time_limit=2.0).objective == brute_force_optimum(p)


def test_chain_through_io_is_within_two_percent_of_its_bound() -> None:
    p = chain_problem(1024, 16, 16, 4, io=True)
    placed = solve(p, "constructive")
    assert placed.objective <= 1.02 * placed.lower_bound


def test_path_cut_bound() -> None:
    assert path_cut_bound([1.0] * 9, 3) == 3.0  # 10 nodes, pieces of <= 3: 4 pieces
    assert path_cut_bound([5.0, 1.0, 5.0, 5.0, 1.0], 3) == 2.0  # cut the two cheap edges
    assert path_cut_bound([2.0, 2.0], 1) == 4.0


@pytest.mark.parametrize(("w", "h"), [(1, 1), (1, 5), (4, 4), (5, 3), (8, 7), (16, 3)])
def test_curves_visit_every_cell_once(w: int, h: int) -> None:
    cells = hilbert(w, h)
    assert len({tuple(c) for c in cells}) == w * h == len(cells)
    assert np.abs(np.diff(cells, axis=0)).max(initial=0) <= 1
    for m in (2, w * h // 2, w * h):
        order = ring(w, h, m)
        assert len({tuple(c) for c in order}) == w * h


@pytest.mark.parametrize(("w", "h", "m"), [(4, 4, 16), (6, 5, 12), (8, 6, 30), (32, 32, 1000)])
def test_ring_is_a_closed_cycle(w: int, h: int, m: int) -> None:
    order = ring(w, h, m)
    size = next(i for i in range(2, len(order) + 1) if i == len(order) or np.abs(order[i] - order[i - 1]).sum() != 1)
    assert size >= m
    assert np.abs(order[size - 1] - order[0]).sum() == 1


@pytest.mark.parametrize(("w", "h"), [(1, 7), (5, 3), (8, 8), (13, 6), (6, 13)])
def test_curve_prefixes_are_prefixes_of_the_whole_curve(w: int, h: int) -> None:
    """A huge chip builds only the first cells of each curve; they must be the curve's own."""
    for limit in range(w * h + 2):
        assert np.array_equal(serpentine(w, h, limit), serpentine(w, h)[:limit])
        assert np.array_equal(hilbert(w, h, limit), hilbert(w, h)[:limit])
        for m in (1, w * h // 3, w * h):
            assert np.array_equal(ring(w, h, m, limit), ring(w, h, m)[:limit])


def test_a_few_tiles_on_a_million_core_chip_are_placed_near_io() -> None:
    """1024 × 1024 cores, 5,000 of them dead: the curves, the bound and the searches work on the
    cores the tiles need (a whole curve over the chip took seconds), and the result is valid."""
    w = h = 1024
    cells = np.arange(w * h)
    dead = np.random.default_rng(0).choice(cells, 5000, replace=False)
    cell = np.setdiff1d(cells, dead)
    cores = np.stack([cell % w, cell // w], axis=1)
    p = random_problem(5, 60, 4, 4, 1)
    big = PlacementProblem(p.n_tiles, (w, h), cores, 1, (0, 0), p.edges, p.weights, p.dense, p.cluster)
    for solver in ("constructive", "anneal", "cpsat"):
        placed = solve(big, solver, time_limit=0.3)
        check_assignment(big, placed.assignment)
        x, y = tile_xy(big, placed.assignment)
        assert max(x.max(), y.max()) < 64  # along a compact curve from the IO corner
        assert placed.lower_bound <= placed.objective <= placed.baseline


def test_the_wall_clock_budget_ends_the_search_with_a_valid_placement() -> None:
    p = random_problem(4, 200, 16, 16, 1)
    placed = solve(p, "anneal", time_limit=5.0, wall_limit=0.0)
    assert placed.wall_capped
    check_assignment(p, placed.assignment)
    assert placed.objective <= placed.baseline
    assert not solve(p, "anneal", time_limit=0.05).wall_capped


def test_the_pass_on_a_million_core_chip_with_tiny_arrays() -> None:
    """The fuzz's big chips (a 1024 × 1024 mesh, tiny arrays: many tiles) once spent seconds
    building whole curves; now every tile lands on its own live core, the dead ones avoided."""
    data = load_target("pcm").to_dict()
    data["chip"].update(mesh_x=1024, mesh_y=1024, cores=1024 * 1024 - 2, arrays_per_core=1, dead_cores=[[1, 0], [0, 1]])
    data["array"].update(rows=4, cols=64)
    data["adc"]["columns_per_adc"] = 1
    target = from_dict(data, "pcm+huge")
    module = load_module(sample_path("mlp_digits"), sample_shapes("mlp_digits", 1))
    comp = compile_module(module, target, pipeline=f"{PREFIX},tile,place{{time-limit=0.2}}")
    cores = [core for core, _ in placements(comp.module)]
    assert len(cores) == len(set(cores)) == comp.context.report["placement"]["tiles"]
    assert not {(1, 0), (0, 1)} & set(cores)


# -- determinism ------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["auto", "anneal", "hierarchical", "cpsat"])
def test_solvers_are_deterministic(solver: str) -> None:
    p = random_problem(3, 50, 6, 6, 2)
    first = solve(p, solver, time_limit=0.5, seed=11)
    second = solve(p, solver, time_limit=0.5, seed=11)
    assert np.array_equal(first.assignment, second.assignment)
    assert (first.objective, first.lower_bound, first.seconds) == (second.objective, second.lower_bound, second.seconds)
