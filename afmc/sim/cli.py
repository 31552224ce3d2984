"""``afmc run``: simulate a bundle (or a model compiled on the fly) and report how close it is to onnxruntime.

Picked up by ``afmc.cli`` as the command ``run``. Errors are `AfmcError`s (one ``afmc: error:`` line,
exit code 2); ``--format json`` prints one JSON document on stdout (``status`` ``ok``, or ``error``
with the message).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click
import numpy as np

from ..errors import AfmcError, UsageError
from .run import RunResult, format_duration, load_inputs, load_labels, model_input_names, parse_duration
from .simulator import NON_IDEALITIES, SimOptions

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
METRICS = ("cosine", "rel_l2", "top1_agreement", "accuracy")


def is_bundle(path: Path) -> bool:
    return path.is_dir() and (path / "manifest.json").is_file()


@click.command("run", context_settings=CONTEXT)
@click.argument("source", metavar="BUNDLE|MODEL", type=click.Path(path_type=Path))
@click.option("--target", "-t", "target", metavar="T", help="Target for a MODEL (a bundle carries its own).")
@click.option("--inputs", "inputs_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Inputs .npz (arrays by input name). Default: the bundle's sample inputs.")
@click.option("--outputs", "outputs_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the simulated outputs here (.npz; with several times or samples each output gets "
                   "leading [time, sample] axes and t_inference_s lists the times).")
@click.option("--t-inference", "t_inference", multiple=True, metavar="1h",
              help="Time after programming (s, min, h, d, w, y; repeatable). Default 0s: the first read, at t0.")
@click.option("--seed", type=int, default=None,
              help="Seed of the Monte-Carlo instances (default: a BUNDLE's compile seed, whose first instance "
                   "is the one its calibrate pass measured; 0 for a MODEL).")
@click.option("--samples", type=click.IntRange(1), default=1, show_default=True,
              help="Programming instances (Monte-Carlo); metrics are reported as mean ± std.")
@click.option("--ideal", is_flag=True,
              help="Exact arrays, no converters, no noise, no calibration corrections (checks the mapping).")
@click.option("--disable", "disabled", multiple=True, type=click.Choice(NON_IDEALITIES), metavar="NAME",
              help=f"Switch one non-ideality off (repeatable): {', '.join(NON_IDEALITIES)}.")
@click.option("--out-noise", type=click.FloatRange(0), default=None,
              help="Output noise σ per MVM in normalised units (default 0.04).")
@click.option("--drift-compensation", type=click.Choice(["none", "global"]), default="none", show_default=True,
              help="Global drift compensation (REFERENCE.md §1): rescale each array by its read-out at t0.")
@click.option("--reference", is_flag=True, help="Also run onnxruntime on the same inputs and compare.")
@click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path),
              help="The ONNX model of a BUNDLE for --reference (default: found by name and hash).")
@click.option("--labels", "labels_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Class labels .npz ('labels' array) for accuracy.")
@click.option("--pipeline", metavar="SPEC", help="Pass pipeline for a MODEL (default: the target's).")
@click.option("--input-shape", "input_shape", multiple=True, metavar="NAME=1x3x224x224",
              help="Static shape for a MODEL input with dynamic dimensions, run on seeded sample inputs "
                   "(repeatable; with --inputs the shapes are the arrays').")
@click.option("--batch", type=click.IntRange(1), default=512, show_default=True,
              help="Largest batch a MODEL is compiled for; more inputs run in chunks.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing --outputs file.")
def run_command(
    source: Path, target: str | None, inputs_path: Path | None, outputs_path: Path | None,
    t_inference: tuple[str, ...], seed: int | None, samples: int, ideal: bool, disabled: tuple[str, ...],
    out_noise: float | None, drift_compensation: str, reference: bool, model_path: Path | None,
    labels_path: Path | None, pipeline: str | None, input_shape: tuple[str, ...], batch: int, fmt: str, force: bool,
) -> None:
    """Simulate BUNDLE (or MODEL, compiled for --target) with the target's non-ideal arrays.

    Reports, per time after programming, cosine similarity, relative L2 error and top-1 agreement with
    onnxruntime (--reference) and accuracy (--labels), as mean ± std over --samples instances.
    """
    try:
        result = _run(source, target, inputs_path, t_inference, seed, samples, ideal, disabled, out_noise,
                      drift_compensation, reference, model_path, labels_path, pipeline, input_shape, batch)
        if outputs_path is not None:
            _write_outputs(outputs_path, result, force)
    except AfmcError as exc:
        if fmt == "json":
            click.echo(json.dumps({"status": "error", "source": str(source), "error": exc.render()}))
        raise
    if fmt == "json":
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        click.echo(render_text(result), nl=False)


def _run(source: Path, target: str | None, inputs_path: Path | None, t_inference: tuple[str, ...], seed: int | None,
         samples: int, ideal: bool, disabled: tuple[str, ...], out_noise: float | None, drift_compensation: str,
         reference: bool, model_path: Path | None, labels_path: Path | None, pipeline: str | None,
         input_shape: tuple[str, ...], batch: int) -> RunResult:
    from ..cli import parse_input_shapes
    from .run import run_bundle, run_model

    times = [parse_duration(t) for t in t_inference] or [0.0]
    options = SimOptions(ideal=ideal, t_inference=times[0], seed=0 if seed is None else seed, samples=samples,
                         drift_compensation=drift_compensation)
    if out_noise is not None:
        options = SimOptions(**{**options.describe(), "out_noise": out_noise})
    options = options.without(*disabled)
    labels = load_labels(labels_path) if labels_path is not None else None
    if not source.exists():
        raise UsageError(f"{source}: no such bundle or model")
    if is_bundle(source):
        if pipeline is not None:
            raise UsageError("--pipeline applies to a MODEL; a bundle is already compiled")
        if input_shape:
            raise UsageError("--input-shape applies to a MODEL; a bundle is compiled for its shapes")
        try:
            manifest = json.loads((source / "manifest.json").read_text())
        except (OSError, ValueError) as exc:
            raise AfmcError(f"cannot read bundle: {exc}", file=str(source)) from None
        compiled_for = (manifest.get("target") or {}).get("name")
        if seed is None and isinstance(manifest.get("seed"), int):  # the instance the bundle was calibrated on
            options = dataclasses.replace(options, seed=manifest["seed"])
        if target is not None and target != compiled_for:
            raise UsageError(f"--target {target}: the bundle was compiled for '{compiled_for}'")
        inputs = None
        if inputs_path is not None:
            inputs = load_inputs(inputs_path, [i["name"] for i in manifest.get("inputs", [])])
        return run_bundle(source, inputs, options=options, times=times, reference=reference, model=model_path,
                          labels=labels)
    if source.is_dir():
        raise UsageError(f"{source}: a directory but not an afmc bundle (no manifest.json)")
    if target is None:
        raise UsageError("--target is required to run a MODEL (a bundle carries its target)")
    if model_path is not None:
        raise UsageError("--model applies to a BUNDLE; the MODEL itself is the reference")
    shapes = parse_input_shapes(input_shape)
    if shapes and inputs_path is not None:
        raise UsageError("--input-shape: with --inputs the shapes are those of the input arrays")
    inputs = load_inputs(inputs_path, model_input_names(source)) if inputs_path is not None else None
    return run_model(source, target, inputs, options=options, times=times, reference=reference, labels=labels,
                     pipeline=pipeline, batch=batch, input_shapes=shapes or None)


def _write_outputs(path: Path, result: RunResult, force: bool) -> None:
    from ..bundle import write_npz

    if path.exists() and not force:
        raise UsageError(f"{path} exists; pass --force to overwrite it")
    outputs = result.simulation.outputs
    if len(outputs) == 1 and len(outputs[0]) == 1:
        arrays = dict(outputs[0][0])
    else:
        arrays = {name: np.stack([np.stack([s[name] for s in per_time]) for per_time in outputs])
                  for name in outputs[0][0]}
        arrays["t_inference_s"] = np.asarray(result.times, np.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write_npz(tmp, arrays)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _cell(stats: dict[str, Any] | None, metric: str, samples: int) -> str:
    if stats is None:
        return "-"
    scale, digits = (100.0, 2) if metric in ("accuracy", "top1_agreement") else (1.0, 4)
    mean = f"{stats['mean'] * scale:.{digits}f}"
    return mean if samples == 1 else f"{mean} ± {stats['std'] * scale:.{digits}f}"


def render_text(result: RunResult) -> str:
    """The human report: one row per time after programming, for the first output."""
    options = result.options
    off = [name for name in NON_IDEALITIES if not _is_on(options, name)]
    mode = "ideal arrays (no converters, no noise)" if options.ideal else (
        "all non-idealities on" if not off else f"non-ideal, off: {', '.join(off)}")
    if options.drift_compensation != "none" and not options.ideal:
        mode += f", {options.drift_compensation} drift compensation"
    plural = "s" if options.samples > 1 else ""
    head = (f"afmc run: {result.source} on {result.target}: {result.inputs} inputs, {options.samples} programming "
            f"instance{plural} (seed {options.seed}), {mode}")
    lines = [head]
    name = next(iter(result.metrics[0]), None)
    if name is None:
        return "\n".join(lines) + "\n"
    present = [m for m in METRICS if m in result.metrics[0][name]]
    against = "onnxruntime" if result.reference is not None else "labels"
    unit = {"accuracy": "accuracy %", "top1_agreement": "top-1 agree %"}
    if present:
        spread = f"mean ± std over {options.samples} instances" if options.samples > 1 else "one instance"
        lines.append(f"output '{name}' vs {against} ({spread})")
        cells = [[_cell(metrics[name].get(m), m, options.samples) for m in present] for metrics in result.metrics]
        widths = [max(len(unit.get(m, m)), *(len(row[i]) for row in cells)) + 3 for i, m in enumerate(present)]
        lines.append(f"{'t_inference':<12}" + "".join(f"{unit.get(m, m):>{w}}" for m, w in zip(present, widths)))
        for t, row in zip(result.times, cells):
            lines.append(f"{format_duration(t):<12}" + "".join(f"{c:>{w}}" for c, w in zip(row, widths)))
    else:
        lines.append("no metrics (give --reference and/or --labels)")
    if result.reference_metrics is not None and "accuracy" in result.reference_metrics.get(name, {}):
        lines.append(f"onnxruntime accuracy: {result.reference_metrics[name]['accuracy'] * 100:.2f} %")
    sec = result.simulation.seconds
    lines.append(f"time: setup {sec['setup']:.2f} s, programming {sec['program']:.2f} s, reads {sec['read']:.2f} s, "
                 f"inference {sec['run']:.2f} s")
    return "\n".join(lines) + "\n"


def _is_on(options: SimOptions, name: str) -> bool:
    value = getattr(options, name.replace("-", "_"))
    return bool(value) and not options.ideal
