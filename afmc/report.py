"""The fit report behind ``afmc check`` and ``report.json``: one dict, three renderings (text, JSON, JUnit).

Keys are documented in ``docs/report.md``; the dict is built only from the compiled module, the
target and the passes' report sections, so the same inputs give the same report byte for byte.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any
from xml.sax.saxutils import quoteattr

from .ir.core import Module

SCHEMA = "afmc.report/1"


def capacity(target: Any) -> dict[str, int]:
    """Arrays the chip offers: working cores × arrays per core."""
    chip = target.chip
    cores = min(chip.cores, chip.mesh_x * chip.mesh_y - len(chip.dead_cores))
    return {"cores": cores, "arrays_per_core": chip.arrays_per_core, "arrays": cores * chip.arrays_per_core}


def build_report(module: Module, target: Any, sections: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    """Assemble the report from the module and what the passes recorded in ``sections``."""
    layers = list(sections.get("tiles", []))
    required = sum(int(layer["physical_arrays"]) for layer in layers)
    cap = capacity(target) if target is not None and getattr(target, "chip", None) else {"cores": 0, "arrays_per_core": 0, "arrays": 0}
    fits = required <= cap["arrays"]
    partition = sections.get("partition", {"ops": [], "analog_regions": 0, "crossings": {}})
    digital = Counter(row["reason"] for row in partition["ops"] if row["region"] == "digital")
    cells_used = sum(layer["utilization"] * layer["arrays"] for layer in layers)
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "status": "fits" if fits else "does_not_fit",
        "model": model,
        "target": getattr(target, "name", None),
        "tiles": {
            "required": required,
            "available": cap["arrays"],
            "cores_used": math.ceil(required / cap["arrays_per_core"]) if cap["arrays_per_core"] else 0,
            "cores_available": cap["cores"],
        },
        "utilization": {
            "chip": required / cap["arrays"] if cap["arrays"] else 0.0,
            "cells": cells_used / sum(layer["arrays"] for layer in layers) if layers else 0.0,
        },
        "layers": layers,
        "ops": partition["ops"],
        "digital_ops_by_reason": dict(sorted(digital.items())),
        "regions": {"analog": partition["analog_regions"], "crossings": partition["crossings"]},
    }
    if not fits:
        report["missing"] = _missing(layers, cap["arrays"], required)
    for key in ("placement", "performance"):
        if key in sections:
            report[key] = sections[key]
    return report


def _missing(layers: list[dict[str, Any]], available: int, required: int) -> dict[str, Any]:
    """Fill the chip layer by layer in program order; the layers left over are the ones that do not fit."""
    left = available
    over = []
    for layer in layers:
        need = int(layer["physical_arrays"])
        placed = min(need, max(left, 0))
        left -= need
        if placed < need:
            over.append({"layer": layer["layer"], "arrays_needed": need, "arrays_short": need - placed})
    return {"tiles": required - available, "layers": over}


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=False, default=_plain) + "\n"


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def to_text(report: dict[str, Any]) -> str:
    """A short table in the manner of the Edge TPU compiler's summary."""
    tiles = report["tiles"]
    lines = [
        f"afmc check: {report['model'].get('name', '')} on {report['target']}: "
        + ("FITS" if report["status"] == "fits" else "DOES NOT FIT"),
        (
            f"arrays required {tiles['required']} of {tiles['available']} "
            f"({report['utilization']['chip']:.1%}), cores used {tiles['cores_used']} of {tiles['cores_available']}"
        ),
        "",
        f"{'layer':<32} {'kind':<8} {'K x N':>12} {'splits':>9} {'slices':>6} {'arrays':>7} {'util':>6}",
    ]
    for layer in report["layers"]:
        splits = f"{layer['row_splits']}x{layer['col_splits']}" + (f"x{layer['groups']}g" if layer["groups"] > 1 else "")
        lines.append(
            f"{_tail(layer['layer'], 32):<32} {layer['kind']:<8} {str(layer['rows']) + 'x' + str(layer['cols']):>12} "
            f"{splits:>9} {layer['slices']:>6} {layer['physical_arrays']:>7} {layer['utilization']:>6.1%}"
        )
    if report["digital_ops_by_reason"]:
        lines += ["", "digital ops by reason:"]
        lines += [f"  {count:>5}  {reason}" for reason, count in report["digital_ops_by_reason"].items()]
    regions = report["regions"]
    lines += ["", f"analog regions {regions['analog']}, crossings {sum(regions['crossings'].values())}"]
    if "performance" in report:
        perf = report["performance"]
        lines.append(
            f"estimate: latency {perf['latency_s'] * 1e6:.2f} us ({perf['latency_cycles']} cycles), "
            f"throughput {perf['throughput_inferences_per_s']:.4g}/s, "
            f"energy {perf['energy_per_inference_j'] * 1e9:.4g} nJ per inference, bottleneck {_bottleneck(perf)}"
        )
    if "missing" in report:
        missing = report["missing"]
        lines += ["", f"missing {missing['tiles']} arrays; layers that do not fit:"]
        lines += [f"  {m['layer']}: {m['arrays_short']} of {m['arrays_needed']} arrays short" for m in missing["layers"]]
    return "\n".join(lines) + "\n"


def _tail(name: str, width: int) -> str:
    """``name`` cut to ``width`` from the left: a layer's path ends in what tells it from its siblings
    (``.../attention/self/query/MatMul`` and ``.../key/MatMul``)."""
    return name if len(name) <= width else "..." + name[len(name) - width + 3:]


def _bottleneck(perf: dict[str, Any]) -> str:
    neck = perf.get("bottleneck")
    if isinstance(neck, dict):
        return f"{neck.get('resource', '')} {neck.get('layer', '')}".strip()
    return str(neck)


def to_junit(report: dict[str, Any]) -> str:
    """One test case per analog layer plus one for the whole model; a misfit is a failure."""
    name = report["model"].get("name", "model")
    cases = []
    missing = {m["layer"]: m for m in report.get("missing", {}).get("layers", [])}
    for layer in report["layers"]:
        body = ""
        if layer["layer"] in missing:
            m = missing[layer["layer"]]
            short = "{} of {} arrays short".format(m["arrays_short"], m["arrays_needed"])
            body = f"<failure message={quoteattr(short)}/>"
        layer_name = quoteattr(layer["layer"])
        cases.append(f"  <testcase classname={quoteattr(name)} name={layer_name}>{body}</testcase>")
    total = report["tiles"]
    need = "needs {} arrays, {} available".format(total["required"], total["available"])
    fit_body = "" if report["status"] == "fits" else f"<failure message={quoteattr(need)}/>"
    fits_name = quoteattr("fits " + str(report["target"]))
    cases.insert(0, f"  <testcase classname={quoteattr(name)} name={fits_name}>{fit_body}</testcase>")
    failures = sum("<failure" in c for c in cases)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<testsuite name={quoteattr("afmc check " + name)} tests="{len(cases)}" failures="{failures}" errors="0">\n'
        + "\n".join(cases) + "\n</testsuite>\n"
    )
