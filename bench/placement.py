"""Placement benchmark: objective / lower bound, gain over the constructive baseline, time, memory.

    python bench/placement.py [--only NAME[,NAME...]] [--seed N]

Instances (each solved in a fresh process, so the peak memory column is that instance's own):

- ``chain-1k`` / ``chain-10k``: a chain of equal-traffic tiles from IO back to IO, on a 16×16 mesh
  with 4 arrays per core (1,024 slots) and a 32×32 mesh with 10 (10,240 slots).
- ``layered-256`` / ``layered-1k``: 8 layers of 32 and 16 layers of 64 tiles, all-to-all traffic
  between consecutive layers, the first fed from IO and the last read by IO, one array per core on
  a 16×16 and a 32×32 mesh; ``layered-1k`` runs with the issue's 10 s limit on 2 workers.
- every sample on every built-in target, after ``partition,tile`` (the ``place`` pass's problem).
- ``transformer-10k`` / ``transformer-100k``: generated decoder stacks (d_model 2048 / 4096,
  d_ff = 4·d_model, 128 tokens, 256×256 arrays: Q, K, V, O and FF1 read from IO, FF2 from FF1,
  everything but FF1 written to IO) of 10,816 and 101,632 tiles on 32×32 × 16 and 64×64 × 32 slots.

Columns: the solver ``auto`` picked, objective and proven lower bound (bytes × hops per inference),
their ratio, the gain over the constructive baseline (layer order along the best core curve),
deterministic seconds (the limit the solvers obey), wall seconds, peak RSS, and a digest of the
assignment. ``repeat`` re-solves the instance in another process and compares the assignments.
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from afmc.placement import IO, LayerTraffic, PlacementProblem, problem_from_layers, solve

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = {"mlp_digits": (1, 64), "cnn_digits": (1, 1, 8, 8), "transformer_digits": (1, 1, 8, 8)}
TARGETS = ("pcm", "crossbar", "flash")


def full_mesh(w: int, h: int) -> np.ndarray:
    return np.array([(x, y) for y in range(h) for x in range(w)], np.int64)


def chain(n: int, w: int, h: int, slots: int) -> PlacementProblem:
    edges = np.stack([np.arange(n - 1), np.arange(1, n)], axis=1)
    edges = np.concatenate([edges, [[IO, 0], [n - 1, IO]]])
    return PlacementProblem(n, (w, h), full_mesh(w, h), slots, (0, 0), edges, np.full(len(edges), 256.0))


def layered(layers: int, width: int, w: int, h: int, slots: int) -> PlacementProblem:
    spec = [
        LayerTraffic(f"l{i}", np.full(width, 256.0), np.full(width, 256.0), np.arange(width),
                     (IO,) if i == 0 else (i - 1,), i == layers - 1)
        for i in range(layers)
    ]
    return problem_from_layers(spec, (w, h), full_mesh(w, h), slots, (0, 0))


def transformer_layers(d_model: int, d_ff: int, blocks: int, tokens: int = 128, array: int = 256) -> list[LayerTraffic]:
    """A decoder stack's analog layers with the traffic model of the ``place`` pass."""
    layers: list[LayerTraffic] = []

    def add(name: str, k: int, n: int, source: int, to_io: bool) -> int:
        rows, cols = -(-k // array), -(-n // array)
        block = np.repeat(np.arange(cols), rows)
        layers.append(LayerTraffic(name, tokens * np.full(rows * cols, k / rows), tokens * np.full(rows * cols, n / cols),
                                   block, (source,), to_io))
        return len(layers) - 1

    add("embed", d_model, d_model, IO, True)
    for b in range(blocks):
        for proj in ("q", "k", "v", "o"):
            add(f"block{b}.{proj}", d_model, d_model, IO, True)
        ff1 = add(f"block{b}.ff1", d_model, d_ff, IO, False)
        add(f"block{b}.ff2", d_ff, d_model, ff1, True)
    return layers


def transformer(d_model: int, blocks: int, w: int, h: int, slots: int) -> PlacementProblem:
    return problem_from_layers(transformer_layers(d_model, 4 * d_model, blocks), (w, h), full_mesh(w, h), slots, (0, 0))


def sample(name: str, target_name: str) -> PlacementProblem:
    from afmc.passes.place import build_problem

    from afmc.driver import compile_module, load_module, load_target

    module = load_module(ROOT / "samples" / f"{name}.onnx", {"input": SAMPLES[name]})
    target = load_target(target_name)
    compile_module(module, target, pipeline="canonicalize,fold-constants,fold-batchnorm,canonicalize,partition,tile")
    problem, _ = build_problem(module, target)
    return problem


@dataclass(frozen=True)
class Instance:
    name: str
    build: str  # expression evaluated in this module
    time_limit: float = 10.0
    workers: int = 1
    repeat: bool = False


INSTANCES = [
    Instance("chain-1k", "chain(1024, 16, 16, 4)", repeat=True),
    Instance("chain-10k", "chain(10000, 32, 32, 10)"),
    Instance("layered-256", "layered(8, 32, 16, 16, 1)", repeat=True),
    Instance("layered-1k", "layered(16, 64, 32, 32, 1)", workers=2),
    *[Instance(f"{s}@{t}", f"sample({s!r}, {t!r})", repeat=True) for s in SAMPLES for t in TARGETS],
    Instance("transformer-10k", "transformer(2048, 14, 32, 32, 16)"),
    Instance("transformer-100k", "transformer(4096, 33, 64, 64, 32)", time_limit=30.0),
]


def run(instance: Instance, seed: int) -> dict[str, Any]:
    """Solve one instance (in a worker process) and measure it."""
    wall = time.perf_counter()
    problem = eval(instance.build)
    build = time.perf_counter() - wall
    result = solve(problem, time_limit=instance.time_limit, workers=instance.workers, seed=seed)
    wall = time.perf_counter() - wall
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "tiles": problem.n_tiles, "mesh": f"{problem.mesh[0]}x{problem.mesh[1]}x{problem.slots}",
        "solver": result.solver, "status": result.status, "objective": result.objective,
        "bound": result.lower_bound, "ratio": result.ratio, "baseline": result.baseline,
        "gain": 1 - result.objective / result.baseline if result.baseline > 0 else 0.0,
        "det": result.seconds, "wall": wall, "build": build, "peak_mb": peak,
        "digest": hashlib.sha256(result.assignment.astype("<i8").tobytes()).hexdigest()[:12],
    }


def in_fresh_process(instance: Instance, seed: int) -> dict[str, Any]:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(run, instance, seed).result()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated instance names (prefixes)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    chosen = [i for i in INSTANCES if not args.only or any(i.name.startswith(p) for p in args.only.split(","))]
    head = (f"{'instance':<30} {'tiles':>7} {'mesh':>10} {'limit':>9} {'solver':>13} {'objective':>14} "
            f"{'lower bound':>14} {'obj/LB':>7} {'vs base':>8} {'det s':>6} {'wall s':>7} {'peak MB':>8} "
            f"{'digest':>12} repeat")
    print(head)
    print("-" * len(head))
    for instance in chosen:
        r = in_fresh_process(instance, args.seed)
        repeat = ""
        if instance.repeat:
            repeat = "same" if in_fresh_process(instance, args.seed)["digest"] == r["digest"] else "DIFFERENT"
        ratio = f"{r['ratio']:.4f}" if np.isfinite(r["ratio"]) else "inf"
        print(f"{instance.name:<30} {r['tiles']:>7} {r['mesh']:>10} {f'{instance.time_limit:g}s/{instance.workers}w':>9} "
              f"{r['solver']:>13} {r['objective']:>14.6g} {r['bound']:>14.6g} {ratio:>7} {-r['gain']:>+8.1%} "
              f"{r['det']:>6.2f} {r['wall']:>7.2f} {r['peak_mb']:>8.0f} {r['digest']:>12} {repeat}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
