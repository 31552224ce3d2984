"""Accuracy against time after programming, with and without calibration (issue 6, docs/calibration.md).

For every digits sample on a target (``pcm`` by default) and for ``--instances`` programming instances
(Monte-Carlo: instance i is compiled and calibrated with ``--seed i`` and simulated with the same seed,
so each instance is a chip programmed and calibrated once), the test split's accuracy at 1 s, 1 min,
1 h, 1 day, 1 month and 1 year after programming, in four modes of the target's own pipeline, whose
``calibrate`` entry is replaced by:

- ``none``: calibrated converter ranges, no drift compensation, no column correction;
- ``global``: the same plus global drift compensation (one reference readout per layer);
- ``column``: plus the per-column gain/offset correction (``xbar.calibrate``) and global compensation;
- ``column-drift``: per-column correction and per-column drift compensation;

next to the digital reference (onnxruntime on the same inputs). A second table compares converter
ranges right after programming (t = 1 s), without drift compensation or column correction: the
target's defaults (no calibration data: abs-max DAC scaling, the target's ADC range), ``max``
(``input-range=max adc=max``), the default calibration (``input-range=best`` DAC, ``adc=search``) and
``input-range=search``, with the paired difference calibrated − max per instance (the same programming
draws in both). ``--variants`` adds, for every sample, the mappings the target's pipeline improves on
(``pcm`` maps with ``partition{min-fan-in=16}`` and ``tile{scale=column}``): every matrix layer analog with
per-layer weight scales (plain ``partition``, ``tile``), and every layer analog with per-column scales.

Writes ``drift_<target>.md`` (tables), ``drift_<target>.json`` (every accuracy) and ``drift_<target>.png``
(needs matplotlib, an optional dependency: ``pip install matplotlib``) into ``--out``; ``--ranges-only``
runs the converter-range table alone (``ranges_<target>.md``/``.json``: cheap on bit-serial targets). Deterministic for
the same arguments. Run: ``python bench/drift.py [--target pcm] [--instances 10] [--jobs 2]``.
Never run as a test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")  # one BLAS thread per worker process

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
SAMPLE_NAMES = ("mlp_digits", "cnn_digits", "transformer_digits")
TIMES = {"1s": 1.0, "1min": 60.0, "1h": 3600.0, "1d": 86400.0, "1month": 30 * 86400.0, "1y": 365 * 86400.0}
#: Calibration rows per compile (the digits splits have 200) and the batch the models are compiled for.
ROWS = 100
BATCH = 100
MODES = {
    "none": f"calibrate{{samples={ROWS} drift=none columns=false}}",
    "global": f"calibrate{{samples={ROWS} drift=global columns=false}}",
    "column": f"calibrate{{samples={ROWS} drift=global columns=true}}",
    "column-drift": f"calibrate{{samples={ROWS} drift=column columns=true}}",
}
RANGES = {
    "target": "calibrate{drift=none columns=false}",  # compiled without data: the target's converter settings
    "max": f"calibrate{{samples={ROWS} input-range=max adc=max drift=none columns=false}}",
    "calibrated": f"calibrate{{samples={ROWS} drift=none columns=false}}",
    "search": f"calibrate{{samples={ROWS} input-range=search drift=none columns=false}}",
}
VARIANTS = {
    "all analog, layer scale": {"tile": "tile", "partition": "partition"},
    "all analog, column scale": {"tile": "tile{scale=column}", "partition": "partition"},
}


def split(name: str, which: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    with np.load(SAMPLES / f"{name}_{which}.npz", allow_pickle=False) as data:
        return {"input": data["input"]}, data["labels"]


def pipeline(target: Any, calibrate: str, replace: dict[str, str] | None = None) -> str:
    """The target's pipeline with its calibrate entry (and any entry named in ``replace``) swapped."""
    from afmc.pipeline import parse_pipeline

    swaps = {"calibrate": calibrate, **(replace or {})}
    return ",".join(swaps.get(spec.name, str(spec)) for spec in parse_pipeline(target.pipeline))


def accuracy_run(task: tuple[str, str, str, int, tuple[float, ...], bool]) -> list[float]:
    """Compile ``sample`` with ``spec`` for ``target`` as instance ``seed`` and return the test accuracy
    at each time after programming."""
    from afmc.targets import load_target

    from afmc.driver import compile_module, load_module
    from afmc.sim.run import simulate
    from afmc.sim.simulator import SimOptions

    sample, target_name, spec, seed, times, with_data = task
    target = load_target(target_name)
    calibration, _ = split(sample, "calibration")
    inputs, labels = split(sample, "test")
    module = load_module(SAMPLES / f"{sample}.onnx", {"input": (BATCH, *inputs["input"].shape[1:])})
    compile_module(module, target, spec, seed=seed, calibration_data=calibration if with_data else None)
    run = simulate(module, target, inputs, SimOptions(seed=seed), list(times))
    return [float(np.mean(o[0]["logits"].argmax(-1) == labels)) for o in run.outputs]


def reference_accuracy(sample: str) -> float:
    from afmc.sim.run import onnxruntime_outputs

    inputs, labels = split(sample, "test")
    logits = onnxruntime_outputs(SAMPLES / f"{sample}.onnx", inputs)["logits"]
    return float(np.mean(logits.argmax(-1) == labels))


def run_grid(tasks: dict[tuple[Any, ...], tuple[str, str, str, int, tuple[float, ...], bool]],
             jobs: int) -> dict[tuple[Any, ...], list[float]]:
    keys = list(tasks)
    if jobs <= 1:
        return {key: accuracy_run(tasks[key]) for key in keys}
    with ProcessPoolExecutor(jobs) as pool:
        return dict(zip(keys, pool.map(accuracy_run, [tasks[key] for key in keys], chunksize=1)))


def cell(values: list[float]) -> str:
    a = 100 * np.asarray(values)
    return f"{a.mean():.2f} ± {a.std():.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="pcm")
    parser.add_argument("--samples", default=",".join(SAMPLE_NAMES))
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    parser.add_argument("--variants", action="store_true", help="also every sample mapped all analog (per-layer, per-column scales)")
    parser.add_argument("--ranges-only", action="store_true",
                        help="only the converter-range table (cheap on targets with bit-serial inputs): ranges_<target>.md/.json")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    from afmc.targets import load_target

    target = load_target(args.target)
    samples = [s for s in args.samples.split(",") if s]
    times = tuple(TIMES.values())
    seeds = range(args.instances)
    start = time.perf_counter()
    tasks: dict[tuple[Any, ...], tuple[str, str, str, int, tuple[float, ...], bool]] = {}
    for sample in samples:
        for mode, spec in ({} if args.ranges_only else MODES).items():
            for seed in seeds:
                tasks[("drift", sample, mode, seed)] = (sample, args.target, pipeline(target, spec), seed, times, True)
        for mode, spec in RANGES.items():
            for seed in seeds:
                tasks[("ranges", sample, mode, seed)] = (sample, args.target, pipeline(target, spec), seed, (1.0,),
                                                         mode != "target")
    if args.variants and not args.ranges_only:
        for sample in samples:
            for variant, replace in VARIANTS.items():
                for mode in ("none", "global", "column"):
                    for seed in seeds:
                        tasks[("variant", f"{sample}|{variant}", mode, seed)] = (
                            sample, args.target, pipeline(target, MODES[mode], replace), seed, times, True)
    results = run_grid(tasks, args.jobs)
    reference = {sample: reference_accuracy(sample) for sample in samples}
    elapsed = time.perf_counter() - start

    def series(kind: str, key: str, mode: str) -> list[list[float]]:
        return [results[(kind, key, mode, seed)] for seed in seeds]

    command = f"python bench/drift.py --target {args.target}" + (" --variants" if args.variants else "") + (
        " --ranges-only" if args.ranges_only else "")
    intro = (f"Test split (300 images) accuracy in %, mean ± std over {args.instances} programming instances "
             f"(seeds 0..{args.instances - 1}; each compiled and calibrated on {ROWS} rows of the calibration "
             f"split as that instance). Generated by `{command}`.")
    lines = [f"# Accuracy after programming on `{args.target}`", "", intro, ""]
    header = "| mode | " + " | ".join(TIMES) + " |"
    rule = "|" + " --- |" * (len(TIMES) + 1)
    for sample in ([] if args.ranges_only else samples):
        lines += [f"## {sample}", "", header, rule,
                  "| digital (onnxruntime) | " + " | ".join(f"{100 * reference[sample]:.2f}" for _ in TIMES) + " |"]
        for mode in MODES:
            per_time = np.asarray(series("drift", sample, mode)).T
            lines.append(f"| {mode} | " + " | ".join(cell(list(v)) for v in per_time) + " |")
        lines.append("")
    lines += ["## Converter ranges right after programming (t = 1 s, no drift compensation, no column correction)",
              "", "| sample | digital | " + " | ".join(RANGES) + " | calibrated − max (paired) |",
              "|" + " --- |" * (len(RANGES) + 3)]
    for sample in samples:
        values = {mode: [v[0] for v in series("ranges", sample, mode)] for mode in RANGES}
        gain = np.asarray(values["calibrated"]) - np.asarray(values["max"])
        lines.append(f"| {sample} | {100 * reference[sample]:.2f} | " + " | ".join(cell(values[m]) for m in RANGES)
                     + f" | {100 * gain.mean():+.2f} ± {100 * gain.std():.2f} |")
    lines.append("")
    if args.variants:
        lines += ["## Mapping variants (the target's pipeline with another `partition` and `tile`)", "",
                  "| sample | variant | mode | " + " | ".join(TIMES) + " |", "|" + " --- |" * (len(TIMES) + 3)]
        for sample in samples:
            for variant in VARIANTS:
                for mode in ("none", "global", "column"):
                    per_time = np.asarray(series("variant", f"{sample}|{variant}", mode)).T
                    lines.append(f"| {sample} | {variant} | {mode} | "
                                 + " | ".join(cell(list(v)) for v in per_time) + " |")
        lines.append("")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{'ranges' if args.ranges_only else 'drift'}_{args.target}"
    (stem.with_suffix(".md")).write_text("\n".join(lines) + "\n")
    raw = {"target": args.target, "instances": args.instances, "times_s": list(times), "reference": reference,
           "results": [{"kind": k[0], "name": k[1], "mode": k[2], "seed": k[3], "accuracy": v}
                       for k, v in sorted(results.items(), key=lambda kv: tuple(map(str, kv[0])))]}
    (stem.with_suffix(".json")).write_text(json.dumps(raw, indent=1) + "\n")
    if not args.ranges_only:
        plot(stem.with_suffix(".png"), samples, reference, lambda s, m: series("drift", s, m), args.target,
             args.instances)
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stderr.write(f"bench/drift.py: {len(tasks)} compiles and simulations in {elapsed:.0f} s\n")
    return 0


def plot(path: Path, samples: list[str], reference: dict[str, float], series: Any, target: str,
         instances: int) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.stderr.write("bench/drift.py: matplotlib is not installed; no plot (pip install matplotlib)\n")
        return
    matplotlib.rcParams["svg.hashsalt"] = "afmc"
    times = np.asarray(list(TIMES.values()))
    fig, axes = plt.subplots(2, len(samples), figsize=(4.4 * len(samples), 6.4), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [3, 2]})
    for column, sample in enumerate(samples):
        top, bottom = axes[0][column], axes[1][column]
        top.axhline(100 * reference[sample], color="black", linestyle="--", linewidth=1, label="digital")
        bottom.axhline(0, color="black", linestyle="--", linewidth=1)
        for mode in MODES:
            values = 100 * np.asarray(series(sample, mode))
            for ax, shown in ((top, values), (bottom, values - 100 * reference[sample])):
                mean, std = shown.mean(axis=0), shown.std(axis=0)
                (line,) = ax.plot(times, mean, marker="o", markersize=3, label=mode)
                ax.fill_between(times, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
        top.set_title(sample)
        top.set_ylim(0, 100)
        bottom.set_ylim(-10, 1)
        bottom.set_xscale("log")
        bottom.set_xticks(times, list(TIMES))
        bottom.set_xlabel("time after programming")
        for ax in (top, bottom):
            ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[1][0].set_ylabel("vs digital (points)")
    axes[0][-1].legend(loc="lower left", fontsize=8)
    fig.suptitle(f"{target}: accuracy after programming (mean ± std over {instances} instances)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
