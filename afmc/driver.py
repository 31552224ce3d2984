"""The compile driver behind the CLI and the Python API: load, pick a pipeline, run it."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import AfmcError, DoesNotFit
from .ir.core import Module
from .ir.parser import parse_file
from .ir.verify import verify
from .pipeline import Instrumentation, Pass, PassContext, parse_pipeline, run_passes

#: The pipeline used without a target: the target-independent cleanups.
GENERIC_PIPELINE = "canonicalize,fold-constants,fold-batchnorm,canonicalize"


def load_module(path: str | Path, input_shapes: Mapping[str, tuple[int, ...]] | None = None) -> Module:
    """An ONNX model (imported) or an IR text file (``.mlir``: parsed and verified)."""
    path = Path(path)
    if path.suffix == ".mlir":
        module = parse_file(path)  # size-limited, regular files only, UTF-8: errors name the file
        try:
            verify(module)
        except AfmcError as exc:
            exc.file = str(path)
            raise
        return module
    from .frontend import import_onnx

    return import_onnx(path, input_shapes=dict(input_shapes or {}))


def load_target(name: str | None) -> Any:
    if name is None:
        return None
    from .targets import load_target as load

    return load(name)


def pipeline_for(target: Any, spec: str | None) -> list[Pass]:
    """``spec`` when given, else the target's default pipeline, else the generic one."""
    if spec is None:
        spec = getattr(target, "pipeline", None) or GENERIC_PIPELINE
    return parse_pipeline(spec).instantiate()


@dataclass
class Compilation:
    """A compiled module and everything the passes learned about it."""

    module: Module
    context: PassContext
    instruments: Instrumentation = field(default_factory=Instrumentation)


def compile_module(
    module: Module,
    target: Any = None,
    pipeline: str | None = None,
    instruments: Instrumentation | None = None,
    seed: int = 0,
    calibration_data: dict[str, Any] | None = None,
    stop_after: str | None = None,
    passes: list[Pass] | None = None,
    require_fit: bool = False,
) -> Compilation:
    """Run the pipeline on ``module`` (in place); ``stop_after`` ends after the named pass.

    ``passes`` (already parsed) wins over ``pipeline`` (a string) and the target's default.
    ``require_fit``: raise `DoesNotFit` right after the last tiling/placement pass when the model does not
    fit the target, before the passes after it (calibrate) spend their time on a bundle never written.
    """
    passes = passes if passes is not None else pipeline_for(target, pipeline)
    if stop_after is not None:
        names = [p.name for p in passes]
        if stop_after not in names:
            raise AfmcError(f"--after: pass '{stop_after}' is not in the pipeline ({', '.join(names)})")
        passes = passes[: len(names) - names[::-1].index(stop_after)]
    ctx = PassContext(target=target, seed=seed, calibration_data=calibration_data)
    instruments = instruments or Instrumentation()
    last = max((i for i, p in enumerate(passes) if p.name in CHECK_PASSES), default=None)

    def refuse_misfit(index: int, module: Module, ctx: PassContext) -> None:
        if index == last and target is not None:
            from .report import build_report

            raise_if_does_not_fit(build_report(module, target, ctx.report, {}))

    run_passes(module, passes, ctx, instruments, after=refuse_misfit if require_fit else None)
    return Compilation(module, ctx, instruments)


#: ``check`` runs the target's pipeline up to the last of these (fit and layout, no calibration),
#: then the performance estimate if the pipeline has one.
CHECK_PASSES = ("tile", "place")
ESTIMATE_PASSES = ("schedule",)


def model_identity(path: str | Path) -> dict[str, Any]:
    """Name and SHA-256 of the model file (the graph file; external data files are not hashed)."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"name": path.name, "sha256": digest.hexdigest()}


def check_passes(target: Any, spec: str | None) -> list[Pass]:
    """The pipeline ``check`` runs: up to the last tiling/placement pass of the full one."""
    passes = pipeline_for(target, spec)
    names = [p.name for p in passes]
    last = max((i for i, name in enumerate(names) if name in CHECK_PASSES), default=None)
    if last is None:
        raise AfmcError(f"pipeline '{','.join(names)}' has no tile pass; check cannot count arrays")
    kept = passes[: last + 1] + [p for p in passes[last + 1 :] if p.name in ESTIMATE_PASSES]
    # Counting and placing need the arrays' shapes, not their cell levels: a model as large as the
    # machine's memory can still be checked.
    from .passes.tile import Tile

    return [replace(p, levels=False) if isinstance(p, Tile) else p for p in kept]


def fit_report(compilation: Compilation, model_path: str | Path) -> dict[str, Any]:
    from .report import build_report

    return build_report(
        compilation.module, compilation.context.target, compilation.context.report, model_identity(model_path)
    )


def raise_if_does_not_fit(report: dict[str, Any]) -> None:
    if report["status"] == "fits":
        return
    missing = report["missing"]
    layers = ", ".join(f"{m['layer']} ({m['arrays_short']} short)" for m in missing["layers"][:5])
    more = f" and {len(missing['layers']) - 5} more" if len(missing["layers"]) > 5 else ""
    raise DoesNotFit(
        f"does not fit {report['target']}: needs {report['tiles']['required']} arrays, "
        f"{report['tiles']['available']} available ({missing['tiles']} missing); layers: {layers}{more}"
    )
