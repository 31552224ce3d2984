"""``afmc run`` from Python: simulate a bundle or a model on its inputs, compare with onnxruntime.

- `run_bundle(path, inputs=None, ...)`: a compiled bundle (its IR, constants and target); without
  ``inputs`` it runs the bundle's own sample inputs.
- `run_model(model_path, target, inputs, ...)`: compiles the ONNX model with the target's pipeline
  first, at the batch size of the inputs (at most ``batch``; larger input sets run in chunks).
- `simulate(module, target, inputs, options, times)`: the Monte-Carlo loop itself: for each
  programming instance (``options.samples``), program every array once, then for each time after
  programming age the arrays, draw that time's read noise and run every input.

Inputs with more rows than the compiled batch are run in chunks of that batch (the last one padded
with zeros and trimmed), provided every graph input and output has the batch as its first dimension.

Metrics (`compare`), per output, against onnxruntime's outputs on the same inputs (float64):
``cosine`` similarity of the flattened outputs, ``rel_l2`` = ‖y − y_ref‖ / ‖y_ref‖, ``top1_agreement``
(argmax over the last axis) and, with labels, ``accuracy`` of the first output's argmax. With several
samples each metric is reported as mean, std (population, over samples) and the per-sample values.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AfmcError, UsageError
from ..ir import dtypes
from ..ir.core import Module
from .simulator import AnalogSimulator, SimOptions

__all__ = [
    "RunResult", "compare", "load_inputs", "load_labels", "onnxruntime_outputs", "parse_duration", "run_bundle",
    "run_model", "simulate",
]

_UNITS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0,
    "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0, "y": 365 * 86400.0,
}
_DURATION = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zµ]*)\s*")


def parse_duration(text: str | float) -> float:
    """Seconds from ``1s``, ``250ms``, ``20min``, ``1h``, ``1d``, ``1w``, ``1y`` (365 days) or a number."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        match = _DURATION.fullmatch(str(text).lower())
        if match is None or match.group(2) not in ("", *_UNITS):
            raise UsageError(f"bad duration '{text}': expected a number and a unit (ns, us, ms, s, min, h, d, w, y)")
        value = float(match.group(1)) * _UNITS.get(match.group(2) or "s", 1.0)
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"bad duration '{text}': must be finite and >= 0")
    return value


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of ``seconds`` in the largest unit that divides it (``3600`` → ``1h``)."""
    for unit in ("y", "d", "h", "min", "s", "ms", "us"):
        value = seconds / _UNITS[unit]
        if value >= 1 and abs(value - round(value)) < 1e-9:
            return f"{round(value)}{unit}"
    return f"{seconds:g}s"


# -- inputs ------------------------------------------------------------------------------------------


def _read_npz(path: str | Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError) as exc:
        raise AfmcError(f"cannot read: {exc}", file=str(path)) from None


def load_inputs(path: str | Path, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The arrays for the graph inputs ``names`` from an ``.npz`` (a lone array serves a lone input)."""
    arrays = _read_npz(path)
    if all(n in arrays for n in names):
        return {n: arrays[n] for n in names}
    candidates = [k for k in arrays if k != "labels"]
    if len(names) == 1 and len(candidates) == 1:
        return {names[0]: arrays[candidates[0]]}
    missing = [n for n in names if n not in arrays]
    raise AfmcError(f"no array for input(s) {', '.join(missing)}; the file holds {', '.join(arrays) or 'nothing'}",
                    file=str(path))


def load_labels(path: str | Path) -> np.ndarray:
    """Integer class labels: the array ``labels``, or the file's only array."""
    arrays = _read_npz(path)
    if "labels" in arrays:
        labels = arrays["labels"]
    elif len(arrays) == 1:
        labels = next(iter(arrays.values()))
    else:
        raise AfmcError(f"no 'labels' array; the file holds {', '.join(arrays)}", file=str(path))
    if labels.dtype.kind not in "iu":
        raise AfmcError(f"labels must be integers, got {labels.dtype}", file=str(path))
    return labels.reshape(-1)


def _cast_inputs(module: Module, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for value in module.inputs:
        if value.name not in inputs:
            raise AfmcError(f"missing input '{value.name}' ({value.type})")
        array = np.asarray(inputs[value.name])
        want = dtypes.to_numpy(value.type.dtype)
        if array.dtype != want:
            if array.dtype.kind != want.kind and not (array.dtype.kind in "iu" and want.kind in "iu"):
                raise AfmcError(f"input '{value.name}' is {array.dtype}, the model expects {value.type.dtype}")
            array = array.astype(want)
        out[value.name] = array
    return out


def _chunks(module: Module, inputs: Mapping[str, np.ndarray]) -> tuple[list[dict[str, np.ndarray]], int]:
    """Split ``inputs`` into runs of the compiled batch: (chunks, rows of the inputs)."""
    shapes = {v.name: v.type.shape for v in module.inputs}
    if all(tuple(inputs[n].shape) == s for n, s in shapes.items()):
        return [dict(inputs)], 0
    batches = {s[0] if s else -1 for s in shapes.values()}
    rows = {inputs[n].shape[0] if inputs[n].ndim else -1 for n in shapes}
    batch, count = (batches.pop(), rows.pop()) if len(batches) == len(rows) == 1 else (-1, -1)
    batched = (batch > 0 and count > 0
               and all(tuple(inputs[n].shape[1:]) == s[1:] for n, s in shapes.items())
               and all(v.type.rank and v.type.shape[0] == batch for v in module.outputs))
    if not batched:
        given = ", ".join(f"{n} {tuple(inputs[n].shape)}" for n in shapes)
        wanted = ", ".join(f"{n} {s}" for n, s in shapes.items())
        raise AfmcError(f"inputs {given} do not match the compiled shapes {wanted} (nor split into its batch)")
    chunks = []
    for start in range(0, count, batch):
        chunk = {}
        for name in shapes:
            part = inputs[name][start:start + batch]
            if part.shape[0] < batch:
                part = np.concatenate([part, np.zeros((batch - part.shape[0], *part.shape[1:]), part.dtype)])
            chunk[name] = part
        chunks.append(chunk)
    return chunks, count


def _concat(outputs: list[dict[str, np.ndarray]], rows: int) -> dict[str, np.ndarray]:
    """One run's outputs, or the chunks' outputs joined and trimmed to ``rows`` (when > 0)."""
    if rows == 0:
        return outputs[0]
    return {name: np.concatenate([o[name] for o in outputs])[:rows] for name in outputs[0]}


# -- the Monte-Carlo loop -----------------------------------------------------------------------------


@dataclass
class Simulation:
    """Outputs per time (in the order asked) and per programming instance, and where the time went."""

    times: list[float]
    outputs: list[list[dict[str, np.ndarray]]]  # [time][sample] -> name -> array
    seconds: dict[str, float] = field(default_factory=dict)


def simulate(
    module: Module,
    target: Any,
    inputs: Mapping[str, np.ndarray],
    options: SimOptions | None = None,
    times: Sequence[float] | None = None,
) -> Simulation:
    """Run ``inputs`` through every programming instance at every time (seconds after programming)."""
    options = options or SimOptions()
    times = list(times) if times else [options.t_inference]
    inputs = _cast_inputs(module, inputs)
    chunks, rows = _chunks(module, inputs)
    clock = time.perf_counter
    seconds = {"setup": 0.0, "program": 0.0, "read": 0.0, "run": 0.0}
    start = clock()
    sim = AnalogSimulator(module, target, options)
    seconds["setup"] = clock() - start
    outputs: list[list[dict[str, np.ndarray]]] = [[] for _ in times]
    for sample in range(1 if options.ideal else options.samples):
        start = clock()
        if sample:  # the constructor programmed instance 0
            sim.program(sample)
        seconds["program"] += clock() - start
        for index, t in enumerate(times):
            start = clock()
            if sample or index or t != options.t_inference:  # the constructor left instance 0 at t_inference
                sim.set_time(t)
            seconds["read"] += clock() - start
            start = clock()
            results = [sim.run(chunk) for chunk in chunks]
            seconds["run"] += clock() - start
            outputs[index].append(_concat(results, rows))
    if options.ideal and options.samples > 1:  # nothing is random: every instance is the same
        outputs = [[o[0]] * options.samples for o in outputs]
    return Simulation(times, outputs, seconds)


# -- the reference and the metrics --------------------------------------------------------------------


def onnxruntime_outputs(model_path: str | Path, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """onnxruntime (CPU) on the same inputs; a model with a static batch runs in chunks of it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001  (onnxruntime raises its own types)
        raise AfmcError(f"onnxruntime cannot load the model: {str(exc).splitlines()[0]}", file=str(model_path)) from None
    names = [o.name for o in session.get_outputs()]
    feeds = {i.name: inputs[i.name] for i in session.get_inputs() if i.name in inputs}
    first = session.get_inputs()[0].shape
    static = first and isinstance(first[0], int) and first[0] > 0
    n = next(iter(feeds.values())).shape[0] if feeds and next(iter(feeds.values())).ndim else 1
    if not static or first[0] == n:
        return dict(zip(names, session.run(names, feeds)))
    b = int(first[0])
    parts = []
    for start in range(0, n, b):
        chunk = {k: v[start:start + b] for k, v in feeds.items()}
        short = b - next(iter(chunk.values())).shape[0]
        if short:
            chunk = {k: np.concatenate([v, np.zeros((short, *v.shape[1:]), v.dtype)]) for k, v in chunk.items()}
        parts.append(dict(zip(names, session.run(names, chunk))))
    return {k: np.concatenate([p[k] for p in parts])[:n] for k in names}


def compare(outputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray] | None,
            labels: np.ndarray | None) -> dict[str, dict[str, float]]:
    """Metrics per output name (see the module doc); ``accuracy`` on the first output only."""
    metrics: dict[str, dict[str, float]] = {}
    for index, (name, y) in enumerate(outputs.items()):
        row: dict[str, float] = {}
        y64 = np.asarray(y, np.float64)
        if reference is not None and name in reference:
            r64 = np.asarray(reference[name], np.float64).reshape(y64.shape)
            ny, nr = float(np.linalg.norm(y64)), float(np.linalg.norm(r64))
            row["cosine"] = float(np.vdot(y64, r64) / (ny * nr)) if ny > 0 and nr > 0 else float(ny == nr)
            row["rel_l2"] = float(np.linalg.norm(y64 - r64) / nr) if nr > 0 else float(np.linalg.norm(y64))
            if y64.ndim >= 1 and y64.shape[-1] > 1:
                row["top1_agreement"] = float(np.mean(y64.argmax(-1) == r64.argmax(-1)))
        if labels is not None and index == 0:
            predicted = y64.argmax(-1).reshape(-1) if y64.ndim else y64.reshape(-1)
            if predicted.size != labels.size:
                raise AfmcError(f"{labels.size} labels for {predicted.size} predictions of output '{name}'")
            row["accuracy"] = float(np.mean(predicted == labels))
        metrics[name] = row
    return metrics


def _summary(per_sample: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name in per_sample[0]:
        out[name] = {}
        for metric in per_sample[0][name]:
            values = [m[name][metric] for m in per_sample]
            out[name][metric] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}
    return out


@dataclass
class RunResult:
    """What ``afmc run`` reports (`to_json` is its ``--format json`` document)."""

    source: str
    target: str
    inputs: int
    options: SimOptions
    simulation: Simulation
    metrics: list[dict[str, dict[str, dict[str, Any]]]]  # per time: output -> metric -> mean/std/values
    reference: dict[str, np.ndarray] | None = None
    reference_metrics: dict[str, dict[str, float]] | None = None

    @property
    def times(self) -> list[float]:
        return self.simulation.times

    def outputs(self, t_index: int = 0, sample: int = 0) -> dict[str, np.ndarray]:
        return self.simulation.outputs[t_index][sample]

    def to_json(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "source": self.source,
            "target": self.target,
            "mode": "ideal" if self.options.ideal else "non-ideal",
            "inputs": self.inputs,
            "samples": self.options.samples,
            "seed": self.options.seed,
            "options": self.options.describe(),
            "results": [
                {"t_inference_s": t, "t_inference": format_duration(t), "metrics": m}
                for t, m in zip(self.times, self.metrics)
            ],
            "reference": None if self.reference_metrics is None else {"backend": "onnxruntime",
                                                                       "metrics": self.reference_metrics},
            "seconds": self.simulation.seconds,
        }


def _result(source: str, module: Module, target: Any, inputs: Mapping[str, np.ndarray], options: SimOptions,
            times: Sequence[float] | None, reference_model: str | Path | None, labels: np.ndarray | None) -> RunResult:
    simulation = simulate(module, target, inputs, options, times)
    reference = onnxruntime_outputs(reference_model, inputs) if reference_model is not None else None
    metrics = [_summary([compare(o, reference, labels) for o in per_time]) for per_time in simulation.outputs]
    ref_metrics = compare(reference, None, labels) if reference is not None and labels is not None else None
    rows = int(next(iter(inputs.values())).shape[0]) if inputs and next(iter(inputs.values())).ndim else 1
    return RunResult(source, str(getattr(target, "name", "?")), rows, options, simulation, metrics, reference,
                     ref_metrics)


def _find_model(bundle: Path, manifest: Mapping[str, Any], given: str | Path | None) -> Path:
    """The ONNX file a bundle was compiled from: ``given``, or found by name next to the bundle or in
    the working directory, and checked against the manifest's SHA-256 when it records one."""
    import hashlib

    info = manifest.get("model") or {}
    if given is not None:
        return Path(given)
    name = info.get("name")
    for folder in (bundle.parent, Path.cwd(), bundle.parent / "samples", Path.cwd() / "samples"):
        path = folder / name if name else None
        if path is not None and path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if info.get("sha256") in (None, digest):
                return path
    raise AfmcError(f"--reference needs the ONNX model the bundle was compiled from ({name or 'unknown'}); "
                    "pass it with --model", file=str(bundle))


def run_bundle(
    path: str | Path,
    inputs: Mapping[str, np.ndarray] | None = None,
    *,
    options: SimOptions | None = None,
    times: Sequence[float] | None = None,
    reference: bool = False,
    model: str | Path | None = None,
    labels: np.ndarray | None = None,
) -> RunResult:
    """Simulate a bundle on ``inputs`` (default: its sample inputs); ``reference`` also runs the ONNX
    model (``model``, or found next to the bundle by the manifest's name and hash) in onnxruntime."""
    return _run_bundle(Path(path), inputs, options or SimOptions(), times, reference, model, labels)


def _run_bundle(path: Path, inputs: Mapping[str, np.ndarray] | None, options: SimOptions,
                times: Sequence[float] | None, reference: bool, model: str | Path | None,
                labels: np.ndarray | None) -> RunResult:
    from ..bundle import load_bundle
    from ..targets.spec import from_dict

    module, manifest, sample_inputs = load_bundle(path)
    if manifest.get("target") is None:
        raise AfmcError("the bundle has no target", file=str(path))
    target = from_dict(manifest["target"], f"{path}/manifest.json")
    feeds = _cast_inputs(module, inputs if inputs is not None else sample_inputs)
    reference_model = _find_model(path, manifest, model) if reference else None
    return _result(str(path), module, target, feeds, options, times, reference_model, labels)


def run_model(
    model_path: str | Path,
    target: Any,
    inputs: Mapping[str, np.ndarray] | None = None,
    *,
    options: SimOptions | None = None,
    times: Sequence[float] | None = None,
    reference: bool = False,
    labels: np.ndarray | None = None,
    pipeline: str | None = None,
    batch: int = 512,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> RunResult:
    """Compile an ONNX model for ``target`` (a spec or a name) and simulate it on ``inputs``.

    Dynamic batch dimensions are compiled at min(rows of the inputs, ``batch``); an ideal run leaves the
    ``calibrate`` pass out (its references and corrections do not act on ideal arrays). Without ``inputs`` the
    model is compiled for its static shapes, or ``input_shapes`` where it has dynamic dimensions, and runs
    on seeded sample inputs (as a bundle would)."""
    from ..bundle import sample_inputs
    from ..driver import compile_module, load_module, load_target, pipeline_for

    options = options or SimOptions()
    spec = load_target(target) if isinstance(target, str) else target
    shapes = dict(input_shapes) if input_shapes else None
    if inputs is not None:
        if input_shapes:
            raise AfmcError("input_shapes: with inputs the shapes are those of the input arrays")
        shapes = {}
        for name, array in inputs.items():
            shape = tuple(np.shape(array))
            shapes[name] = (min(shape[0], batch), *shape[1:]) if shape else shape
        shapes = _static_batch(model_path, shapes)
    module = load_module(model_path, shapes)
    passes = pipeline_for(spec, pipeline)
    if options.ideal:  # ideal arrays neither drift nor need corrections: calibrate would only cost time
        passes = [p for p in passes if p.name != "calibrate"]
    compilation = compile_module(module, spec, seed=options.seed, passes=passes)
    _warn_if_does_not_fit(compilation, spec, model_path)
    feeds = inputs if inputs is not None else sample_inputs(module, options.seed)
    return _result(str(model_path), module, spec, _cast_inputs(module, feeds), options, times,
                   model_path if reference else None, labels)


def _warn_if_does_not_fit(compilation: Any, target: Any, model_path: str | Path) -> None:
    """A model larger than the chip still simulates (every layer gets its arrays), but say so."""
    if getattr(target, "chip", None) is None or "tiles" not in compilation.context.report:
        return
    from ..report import build_report

    report = build_report(compilation.module, target, compilation.context.report, {})
    if report["status"] != "fits":
        tiles = report["tiles"]
        logging.getLogger("afmc.run").warning(
            "%s does not fit %s (%d of %d arrays); simulated as if the chip had an array for every tile",
            Path(model_path).name, target.name, tiles["required"], tiles["available"])


def model_input_names(model_path: str | Path) -> list[str]:
    """The graph inputs of an ONNX model (initializers excluded) or of an IR text file."""
    if str(model_path).endswith(".mlir"):
        from ..driver import load_module

        return [v.name for v in load_module(model_path).inputs]
    import onnx

    try:
        graph = onnx.load(str(model_path), load_external_data=False).graph
    except Exception as exc:  # noqa: BLE001
        raise AfmcError(f"cannot read the model: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                        file=str(model_path)) from None
    initializers = {t.name for t in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers]


def _static_batch(model_path: str | Path, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Keep the ONNX model's static first dimensions (inputs larger than them run in chunks)."""
    if str(model_path).endswith(".mlir"):
        return shapes
    import onnx

    try:
        graph = onnx.load(str(model_path), load_external_data=False).graph
    except Exception:  # noqa: BLE001  (the frontend reports unreadable models properly)
        return shapes
    out = dict(shapes)
    for info in graph.input:
        if out.get(info.name):
            dims = info.type.tensor_type.shape.dim
            if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
                out[info.name] = (int(dims[0].dim_value), *out[info.name][1:])
    return {k: v for k, v in out.items() if k in {i.name for i in graph.input}}
