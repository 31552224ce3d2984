"""The ``afmc`` command line (contract in DESIGN.md: commands, options, exit codes 0/1/2/3)."""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from . import __version__
from .diagnostics import (
    EXIT_SIGINT,
    EXIT_SIGTERM,
    Terminated,
    configure_logging,
    report_error,
    signals_deferred,
    terminate_on_sigterm,
)
from .errors import AfmcError, UsageError
from .ir.printer import print_module
from .pipeline import Instrumentation

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def parse_input_shapes(specs: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """``NAME=1x3x224x224`` or ``NAME=1,3,224,224`` (repeatable) into a dict; bad syntax names the
    offending spec. The name is everything before the last ``=`` (ONNX names may hold ``:`` or ``x``)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        name, sep, dims = spec.rpartition("=")
        try:
            shape = tuple(int(d) for d in re.split(r"[x,]", dims.lower())) if dims else ()
        except ValueError:
            shape = ()
        if not sep or not name or not shape or any(d <= 0 for d in shape):
            raise UsageError(f"--input-shape '{spec}': expected NAME=D1xD2x... (or D1,D2,...) with positive dimensions")
        if name in shapes:
            raise UsageError(f"--input-shape: input '{name}' is given twice")
        shapes[name] = shape
    return shapes


def write_text_atomically(path: Path, text: str, force: bool) -> None:
    """Write through a temporary file in the same folder and rename: never a half-written file,
    and an existing file is replaced (with ``force``) in one step or not at all. A signal during
    the write removes the temporary file (``signals_deferred`` guards its creation and rename)."""
    if path.exists() and not force:
        raise UsageError(f"{path} exists; pass --force to overwrite it")
    if path.exists() and not path.is_file():  # a device (/dev/null), a FIFO, a directory
        raise UsageError(f"{path} is not a regular file; --force replaces only files")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp: str | None = None
    try:
        with signals_deferred():
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            umask = os.umask(0o022)
            os.umask(umask)
            os.fchmod(handle.fileno(), 0o666 & ~umask)  # mkstemp makes it 0600; a plain file it is
        with signals_deferred():
            os.replace(tmp, path)
            tmp = None
    except BaseException:
        if tmp is not None:
            with signals_deferred():
                Path(tmp).unlink(missing_ok=True)
        raise


input_shape_option = click.option(
    "--input-shape", "input_shape", multiple=True, metavar="NAME=1x3x224x224",
    help="Static shape for an input with dynamic dimensions (repeatable).",
)
target_option = click.option("--target", "-t", "target", metavar="T", help="Built-in target name or path to a target TOML.")


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="afmc")
@click.option("-v", "--verbose", count=True, help="More log output (repeatable).")
def cli(verbose: int) -> None:
    """afmc: compile ONNX models onto analog in-memory-compute chips, check the fit, simulate them."""
    configure_logging(verbose)


@cli.command("compile", context_settings=CONTEXT)
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@target_option
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Bundle directory (with --target; default MODEL.afmc), or IR text file without a target.")
@input_shape_option
@click.option("--pipeline", metavar="SPEC", help="Pass pipeline, e.g. 'canonicalize,fold-batchnorm'.")
@click.option("--print-ir-before", "print_before", multiple=True, metavar="PASS|all", help="Print the IR before a pass.")
@click.option("--print-ir-after", "print_after", multiple=True, metavar="PASS|all", help="Print the IR after a pass.")
@click.option("--dump-ir-dir", type=click.Path(file_okay=False, path_type=Path), help="Write NNN_<pass>.mlir after each pass.")
@click.option("--timing", is_flag=True, help="Print the time each pass took.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write the report JSON here.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for every random choice.")
@click.option("--calibration-data", "calibration_data", metavar="F.npz|none",
              help="Model inputs (.npz, one array per input, any number of rows) for the calibrate pass. "
                   "Default: MODEL's <name>_calibration.npz beside it, if any (the samples ship one); "
                   "'none': calibrate without data.")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
def compile_command(
    model: Path, target: str | None, output: Path | None, input_shape: tuple[str, ...], pipeline: str | None,
    print_before: tuple[str, ...], print_after: tuple[str, ...], dump_ir_dir: Path | None, timing: bool,
    report_path: Path | None, seed: int, calibration_data: str | None, force: bool,
) -> None:
    """Compile MODEL (ONNX, or IR text .mlir) for a target and write the bundle.

    Without --target only the target-independent passes run and the IR text is written. With a
    calibrate pass in the pipeline, the calibration data's first batch becomes the bundle's sample inputs.
    """
    from .bundle import write_bundle
    from .driver import (
        compile_module,
        fit_report,
        load_module,
        load_target,
        pipeline_for,
        raise_if_does_not_fit,
    )

    shapes = parse_input_shapes(input_shape)
    spec = load_target(target)
    passes = pipeline_for(spec, pipeline)
    if spec is not None:
        output = output or Path(model.stem + ".afmc")
        for path in (output, report_path):
            if path is not None and path.exists() and not force:
                raise UsageError(f"{path} exists; pass --force to overwrite it")
    instruments = Instrumentation(
        frozenset(print_before), frozenset(print_after), dump_ir_dir, timing, stream=sys.stderr
    )
    data_path = _calibration_path(model, calibration_data, spec is not None,
                                  any(p.name == "calibrate" for p in passes))
    module = load_module(model, shapes)
    data, sample = _calibration_arrays(module, data_path)
    try:
        result = compile_module(module, spec, instruments=instruments, seed=seed, passes=passes,
                                calibration_data=data, require_fit=True)
    finally:
        if timing and instruments.times:
            sys.stderr.write(instruments.timing_report())
    if spec is None:
        text = print_module(result.module)
        if output is None:
            click.echo(text, nl=False)
        else:
            write_text_atomically(output, text, force)
        return
    report = fit_report(result, model)
    raise_if_does_not_fit(report)
    assert output is not None
    extra = {"model": report["model"], "seed": seed, "pipeline": ",".join(str(p.name) for p in passes)}
    if "calibration" in result.context.report:
        extra["calibration"] = {"data": None if data_path is None else data_path.name,
                                **result.context.report["calibration"]}
    write_bundle(output, result.module, spec, report, extra, inputs=sample, force=force, report_path=report_path)
    tiles = report["tiles"]
    calibrated = f", calibrated on {data_path.name}" if data_path is not None else ""
    click.echo(f"afmc: wrote {output} ({tiles['required']} of {tiles['available']} arrays, "
               f"{len(report['layers'])} analog layers{calibrated})", err=True)


def _calibration_path(model: Path, given: str | None, has_target: bool, calibrates: bool) -> Path | None:
    """The calibration data file: ``--calibration-data``, else ``<model stem>_calibration.npz`` beside the
    model when the pipeline calibrates; ``none`` for no data."""
    if given is not None and given.lower() == "none":
        return None
    if given is not None:
        if not has_target:
            raise UsageError("--calibration-data needs --target (only a target's pipeline calibrates)")
        path = Path(given)
        if not path.is_file():
            raise UsageError(f"--calibration-data {given}: no such file")
        return path
    default = model.with_name(f"{model.stem}_calibration.npz")
    return default if has_target and calibrates and default.is_file() else None


def _calibration_arrays(module: Any, path: Path | None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(the checked calibration arrays, their first batch as the bundle's sample inputs), or (None, None)."""
    if path is None:
        return None, None
    from .bundle import read_npz
    from .passes.calibrate import calibration_chunks, check_calibration_data

    try:
        arrays = check_calibration_data(module, read_npz(path))
    except AfmcError as exc:
        exc.file = exc.file or str(path)
        raise
    batch = module.inputs[0].type.shape[0] if module.inputs and module.inputs[0].type.rank else 0
    runs, _ = calibration_chunks(module, arrays, batch)  # one run: the first batch
    return arrays, runs[0]


@cli.command("check", context_settings=CONTEXT)
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--target", "-t", "target", metavar="T", required=True, help="Built-in target name or path to a target TOML.")
@input_shape_option
@click.option("--pipeline", metavar="SPEC", help="Pass pipeline (default: the target's, up to tile/place).")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "junit"]), default="text", show_default=True)
def check_command(model: Path, target: str, input_shape: tuple[str, ...], pipeline: str | None, fmt: str) -> None:
    """Does MODEL fit the target? Exit 0 when it fits, 3 when it does not, 2 on bad input."""
    from .driver import check_passes, compile_module, fit_report, load_module, load_target
    from .report import to_json, to_junit, to_text

    try:
        spec = load_target(target)
        passes = check_passes(spec, pipeline)
        module = load_module(model, parse_input_shapes(input_shape))
        report = fit_report(compile_module(module, spec, passes=passes), model)
    except AfmcError as exc:
        if fmt == "json":  # the contract: one JSON document on stdout, whatever happened
            click.echo(json.dumps({"status": "error", "target": target, "error": exc.render()}))
        raise
    render = {"text": to_text, "json": to_json, "junit": to_junit}[fmt]
    click.echo(render(report), nl=False)
    if report["status"] != "fits":
        raise click.exceptions.Exit(3)


@cli.command("ir", context_settings=CONTEXT)
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@target_option
@input_shape_option
@click.option("--after", "after", metavar="PASS", help="Run the pipeline up to and including PASS.")
@click.option("--pipeline", metavar="SPEC", help="Pass pipeline to use with --after.")
@click.option("--constants", is_flag=True, help="Print every constant's data instead of eliding large ones.")
def ir_command(
    model: Path, target: str | None, input_shape: tuple[str, ...], after: str | None, pipeline: str | None,
    constants: bool,
) -> None:
    """Print the IR of MODEL; a .mlir file is parsed, verified and printed back."""
    from .driver import compile_module, load_module, load_target, pipeline_for

    spec = load_target(target)
    passes = pipeline_for(spec, pipeline)
    module = load_module(model, parse_input_shapes(input_shape))
    if after is not None:
        compile_module(module, spec, stop_after=after, passes=passes)
    click.echo(print_module(module, constants=constants), nl=False)


@cli.command("passes", context_settings=CONTEXT)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def passes_command(fmt: str) -> None:
    """List every pass with its options and what it does."""
    from .pipeline import describe_passes

    rows = describe_passes()
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    for row in rows:
        click.echo(f"{row['name']:<16} {row['summary']}")
        for option in row["options"]:
            click.echo(f"    {option['name']}={option['type']} (default {option['default']!r})")


@cli.command("targets", context_settings=CONTEXT)
@click.argument("name", required=False)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def targets_command(name: str | None, fmt: str) -> None:
    """List the targets, or show one (a built-in name, a plugin name or a TOML path)."""
    from .targets import list_targets, load_target

    if name is None:
        names = list_targets()
        if fmt == "json":
            click.echo(json.dumps([_target_row(load_target(n)) for n in names], indent=2))
        else:
            for n in names:
                row = _target_row(load_target(n))
                click.echo(f"{n:<12} {row.get('technology', ''):<9} {row.get('description', '')}")
        return
    spec = load_target(name)
    data = spec.to_dict()
    click.echo(json.dumps(data, indent=2) if fmt == "json" else _format_target(data))


def _target_row(spec: Any) -> dict[str, Any]:
    data = spec.to_dict()
    return {"name": data.get("name"), "technology": data.get("technology"), "description": data.get("description", "")}


def _format_target(data: dict[str, Any], indent: str = "") -> str:
    lines = []
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"{indent}{key}:")
            lines.append(_format_target(value, indent + "  "))
        else:
            lines.append(f"{indent}{key}: {value}")
    return "\n".join(lines)


def _add_subsystem_commands() -> None:
    """Commands that live beside their subsystem (``afmc run`` in ``afmc.sim.cli``)."""
    from .sim.cli import run_command

    cli.add_command(run_command, "run")


_add_subsystem_commands()


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the CLI and maps every failure to one line and an exit code.

    SIGINT exits 130 and SIGTERM 143. Both raise an exception through the running command first,
    so that partial output is removed on the way out (``diagnostics.signals_deferred``).
    """
    try:
        with terminate_on_sigterm():
            code = cli.main(args=argv, prog_name="afmc", standalone_mode=False)
        if isinstance(code, int):  # click returns an Exit's code instead of raising it here
            return code
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:  # click's wrapping of KeyboardInterrupt (and EOF at a prompt)
        print("afmc: error: interrupted", file=sys.stderr)
        return EXIT_SIGINT
    except click.ClickException as exc:
        print(f"afmc: error: {exc.format_message()}".replace("\n", " "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("afmc: error: interrupted", file=sys.stderr)
        return EXIT_SIGINT
    except Terminated:
        print("afmc: error: terminated", file=sys.stderr)
        return EXIT_SIGTERM
    except AfmcError as exc:
        return report_error(exc)
    except Exception as exc:  # noqa: BLE001  (last line of defence: one line, exit 1)
        return report_error(exc)
    return 0


def run() -> None:
    try:
        code = main()
    except KeyboardInterrupt:  # a second Ctrl-C while the first was being reported
        code = EXIT_SIGINT
    except Terminated:
        code = EXIT_SIGTERM
    sys.exit(code)
