"""The ``schedule`` pass and ``afmc.sim.timing``: hand-computed latency and energy on a tiny target,
pipelining across layers, one MVM per array at a time, hops from ``core`` attributes, the energy
breakdown, every sample on every built-in target, determinism and scale.

The tiny target (``tiny``): 8×8 differential arrays holding an 8-bit weight in one slice, a 4-bit
bit-serial DAC streaming 8-bit inputs (P = 2 phases), one ADC per 4 columns, mvm 10 ns, dac 2 ns,
adc 5 ns, 1 ns and 0.5 pJ per byte-hop, a digital unit of 1 op/ns at 2 pJ/op; mvm 100 pJ, dac 1 pJ,
adc 3 pJ. Times are compared to 1e-9 relative (float sums of exact ns values).
"""

from __future__ import annotations

import itertools
import json
import math
import random
from typing import Any

import numpy as np
import onnx
import pytest
from afmc.targets import load_target
from afmc.targets.spec import TargetSpec, from_dict
from helpers import TARGETS, sample_path, sample_shapes
from onnx import TensorProto, helper, numpy_helper

from afmc.driver import compile_module, load_module
from afmc.errors import UsageError
from afmc.frontend.importer import import_model
from afmc.ir import Module, parse_module, print_module
from afmc.ir.core import Op, TensorType
from afmc.pipeline import PassContext, parse_pipeline, run_passes
from afmc.report import build_report, to_json
from afmc.sim.timing import (
    ASSUMPTIONS,
    CostModel,
    TaskGraph,
    _simulate_grouped,
    build_task_graph,
    digital_op_count,
    estimate,
    simulate,
    simulate_events,
)

# -- the tiny target and models ---------------------------------------------------------------------


def tiny_target(**timing: float) -> TargetSpec:
    data = load_target("pcm").to_dict()
    data["name"] = "tiny"
    data["array"].update(rows=8, cols=8, bits_per_cell=8, weight_bits=8, encoding="differential", parallel_devices=1)
    data["dac"].update(bits=4, bit_serial=True, input_bits=8)
    data["adc"].update(columns_per_adc=4)
    data["chip"].update(cores=16, mesh_x=4, mesh_y=4, arrays_per_core=1, dead_cores=[], io=[0, 0])
    data["timing"] = {"clock_hz": 1e9, "mvm_ns": 10.0, "dac_ns": 2.0, "adc_ns": 5.0, "hop_ns_per_byte": 1.0,
                      "digital_ops_per_s": 1e9, **timing}
    data["energy"] = {"mvm_pj": 100.0, "dac_pj": 1.0, "adc_pj": 3.0, "hop_pj_per_byte": 0.5, "digital_pj_per_op": 2.0}
    return from_dict(data, "tiny")


def weight(*shape: int) -> np.ndarray:
    return np.random.default_rng(7).uniform(-1, 1, shape).astype(np.float32)


def chain_model(widths: list[int], vectors: int = 3) -> onnx.ModelProto:
    """MatMul layers of the given widths with a ReLU between them: x[vectors, widths[0]] → ..."""
    nodes, inits = [], []
    current = "x"
    for i, (k, n) in enumerate(itertools.pairwise(widths)):
        inits.append(numpy_helper.from_array(weight(k, n), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"], name=f"fc{i}"))
        current = f"m{i}"
        if i < len(widths) - 2:
            nodes.append(helper.make_node("Relu", [current], [f"r{i}"], name=f"relu{i}"))
            current = f"r{i}"
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [vectors, widths[0]])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, None)], inits,
    )
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))


def compiled(widths: list[int], target: TargetSpec, tile: str = "tile", vectors: int = 3) -> tuple[Module, PassContext]:
    module = import_model(chain_model(widths, vectors))
    ctx = PassContext(target=target)
    run_passes(module, parse_pipeline(f"partition,{tile}").instantiate(), ctx)
    return module, ctx


def mvms(module: Module, layer: str | None = None) -> list[Op]:
    return [op for op in module.ops if op.name == "xbar.mvm" and (layer is None or op.attr("layer") == layer)]


def schedule(module: Module, target: TargetSpec, spec: str = "schedule") -> dict[str, Any]:
    ctx = PassContext(target=target)
    run_passes(module, parse_pipeline(spec).instantiate(), ctx)
    return ctx.report["performance"]


def close(a: float, b: float, rel: float = 1e-9) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-18)


# -- the cost model, by hand ------------------------------------------------------------------------


def test_one_layer_by_hand() -> None:
    """x[3, 6] @ W[6, 5] on one array: rows_used 6, cols_used 5, P = 2.

    read = max(dac 2 + mvm 10, min(4, 5) conversions · 5) = 20 ns; mvm = 3 vectors · 2 · 20 = 120 ns.
    Digital (1 op/ns): unfold 3·6 = 18, accumulate 3·5·1 = 15, assemble 15 → 48 ns, 96 pJ.
    Energy: 6 reads → array 600, dac 6·6·1 = 36, adc 6·5·3 = 90 pJ.
    """
    target = tiny_target()
    module, _ = compiled([6, 5], target)
    (mvm,) = mvms(module)
    assert (mvm.attr("rows_used"), mvm.attr("cols_used"), mvm.attr("input_slices")) == (6, 5, 2)
    perf = schedule(module, target)
    assert close(perf["latency_s"], 168e-9)
    assert perf["latency_cycles"] == 168
    assert perf["energy_breakdown_pj"] == {"dac": 36.0, "array": 600.0, "adc": 90.0, "network": 0.0, "digital": 96.0}
    assert close(perf["energy_per_inference_j"], 822e-12)
    # Steady state: the array (120 ns per inference) limits, the digital unit (48 ns) overlaps.
    assert close(perf["throughput_bound_inferences_per_s"], 1 / 120e-9)
    assert close(perf["throughput_inferences_per_s"], 1 / 120e-9, 1e-6)
    assert perf["bottleneck"] == {"resource": "array", "layer": "fc0", "busy_s_per_inference": pytest.approx(120e-9)}
    assert perf["critical_layer"] == "fc0"
    assert module.attributes["performance"]["latency_cycles"] == 168


def test_two_layers_by_hand() -> None:
    """x[3, 6] @ W0[6, 2] → relu → @ W1[2, 7].

    Layer 0: read max(12, 2·5) = 12 → 3·2·12 = 72 ns; layer 1: read max(12, min(4, 7)·5) = 20 → 120 ns.
    Digital ops: unfold 18, acc 6, assemble 6, relu 6, unfold 6, acc 21, assemble 21 = 84 (ns and ·2 pJ).
    Latency 18 + 72 + 6 + 6 + 6 + 6 + 120 + 21 + 21 = 276 ns.
    Energy: array 12·100; dac 6·6 + 6·2 = 48; adc 6·2·3 + 6·7·3 = 162; digital 168.
    """
    target = tiny_target()
    module, _ = compiled([6, 2, 7], target)
    perf = schedule(module, target)
    assert close(perf["latency_s"], 276e-9)
    assert perf["energy_breakdown_pj"] == {"dac": 48.0, "array": 1200.0, "adc": 162.0, "network": 0.0,
                                           "digital": 168.0}
    assert close(perf["energy_per_inference_j"], 1578e-12)
    layers = {row["layer"]: row for row in perf["layers"]}
    assert close(layers["fc0"]["array_time_s"], 72e-9) and close(layers["fc1"]["array_time_s"], 120e-9)
    assert layers["fc0"]["arrays"] == layers["fc1"]["arrays"] == 1
    assert perf["bottleneck"]["layer"] == "fc1"
    # The digital unit (84 ns) is busy but not the bottleneck: the stream settles at the slowest array.
    assert close(perf["throughput_inferences_per_s"], 1 / 120e-9, 1e-6)


def test_pipeline_throughput_is_the_slowest_stage_and_latency_the_sum() -> None:
    """With free digital work and no network, a 2-layer chain is a 2-stage pipeline: latency is
    the sum of the stages, throughput 1 / the slower one, and the first layer works on inference
    k+1 while the second works on k."""
    target = tiny_target(digital_ops_per_s=1e18)
    module, _ = compiled([6, 2, 7], target)
    perf = schedule(module, target, "schedule{stream=16}")
    assert close(perf["latency_s"], 192e-9, 1e-6)
    assert close(perf["throughput_inferences_per_s"], 1 / 120e-9, 1e-6)
    perf_short = schedule(module, target, "schedule{stream=1}")
    assert close(perf_short["throughput_inferences_per_s"], 1 / perf_short["latency_s"])
    model = CostModel(target)
    graph = build_task_graph(module, model)
    run = simulate(graph, 4)
    first = next(i for i, kind in enumerate(graph.kinds) if kind == "array" and graph.labels[i] == "fc0")
    second = next(i for i, kind in enumerate(graph.kinds) if kind == "array" and graph.labels[i] == "fc1")
    # Overlap: layer 0 of inference 1 runs before layer 1 of inference 0 finishes.
    assert run.start[1, first] < run.finish[0, second]
    assert np.all(np.diff(run.completion) > 0)


def test_one_mvm_per_array_at_a_time() -> None:
    target = tiny_target(digital_ops_per_s=1e18)
    module, _ = compiled([6, 5], target)
    graph = build_task_graph(module, CostModel(target))
    run = simulate(graph, 8)
    (i,) = [i for i, kind in enumerate(graph.kinds) if kind == "array"]
    order = np.argsort(run.start[:, i])
    starts, finishes = run.start[order, i], run.finish[order, i]
    assert np.all(starts[1:] >= finishes[:-1] - 1e-9)  # never two MVMs on the array at once
    assert close(float(finishes[-1] - starts[0]), 8 * 120.0)  # and it is never idle in between


@pytest.mark.parametrize(("replicate", "layer_ns"), [("1", 120.0), ("2", 80.0), ("3", 40.0), ("4", 40.0)])
def test_replicas_shorten_the_layer(replicate: str, layer_ns: float) -> None:
    """ceil(3 vectors / replicas) · 2 phases · 20 ns; the energy does not change (same reads)."""
    target = tiny_target(digital_ops_per_s=1e18)
    module, _ = compiled([6, 5], target, f"tile{{replicate={replicate}}}")
    perf = schedule(module, target)
    assert close(perf["latency_s"], layer_ns * 1e-9, 1e-6)
    assert close(perf["throughput_inferences_per_s"], 1 / (layer_ns * 1e-9), 1e-6)
    assert perf["energy_breakdown_pj"]["array"] == 600.0
    assert perf["utilization"]["arrays"] == int(replicate)


def test_hops_come_from_core_attributes() -> None:
    """The array at core [2, 1], io at [0, 0]: 3 hops. In: 3 vectors · 6 rows · 1 byte = 18 B → 54 ns,
    27 pJ; out: 3 · 5 outputs · 1 byte = 15 B → 45 ns, 22.5 pJ."""
    target = tiny_target()
    module, _ = compiled([6, 5], target)
    (mvm,) = mvms(module)
    mvm.set_attrs(core=(2, 1), slot=0)
    perf = schedule(module, target)
    assert close(perf["latency_s"], (168 + 54 + 45) * 1e-9)
    assert perf["energy_breakdown_pj"]["network"] == 49.5
    assert perf["network_byte_hops"] == 99.0
    # The IR text carries the placement and parses back to the same estimate.
    again = parse_module(print_module(module))
    assert close(schedule(again, target)["latency_s"], perf["latency_s"])


def test_io_position_and_per_replica_cores() -> None:
    """io at [1, 1], the array's two replicas at [3, 1] (2 hops) and [1, 3] (2 hops): each gets half."""
    data = tiny_target().to_dict()
    data["chip"]["io"] = [1, 1]
    target = from_dict(data)
    module, _ = compiled([6, 5], target, "tile{replicate=2}")
    (mvm,) = mvms(module)
    mvm.set_attrs(core=((3, 1), (1, 3)))
    perf = schedule(module, target)
    assert perf["network_byte_hops"] == (18 + 15) * 2
    # each copy receives 9 B and sends 7.5 B over 2 hops: 18 + 15 ns on top of 18 + 80 + 15 + 15
    assert close(perf["latency_s"], (128 + 18 + 15) * 1e-9)


def test_arrays_with_the_same_core_and_slot_share_one_array() -> None:
    target = tiny_target(digital_ops_per_s=1e18)
    module, _ = compiled([6, 2, 7], target)
    a, b = mvms(module)
    a.set_attrs(core=(1, 0), slot=0)
    b.set_attrs(core=(1, 0), slot=1)
    separate = schedule(module, target)
    b.set_attrs(slot=0)
    shared = schedule(module, target)
    assert close(separate["throughput_inferences_per_s"], 1 / 120e-9, 1e-6)
    assert close(shared["throughput_inferences_per_s"], 1 / 192e-9, 1e-6)  # 72 + 120 ns on one array


def test_digital_lanes_and_digital_bottleneck() -> None:
    """A slow digital unit (0.1 op/ns) makes it the bottleneck: 48 ops → 480 ns per inference;
    two lanes (two units at 0.1 op/ns each) halve the bound."""
    target = tiny_target(digital_ops_per_s=1e8)
    module, _ = compiled([6, 5], target)
    perf = schedule(module, target)
    assert perf["bottleneck"]["resource"] == "digital"
    assert perf["bottleneck"]["layer"] == "fc0"
    assert close(perf["throughput_inferences_per_s"], 1 / 480e-9, 1e-6)
    two = schedule(module, target, "schedule{digital-lanes=2}")
    assert close(two["throughput_bound_inferences_per_s"], 1 / 240e-9)
    assert two["throughput_inferences_per_s"] > perf["throughput_inferences_per_s"]
    assert two["throughput_inferences_per_s"] <= two["throughput_bound_inferences_per_s"] * (1 + 1e-9)


def test_digital_op_table() -> None:
    module = import_model(chain_model([6, 5]))  # untiled: a digital MatMul of 3·5 outputs × K = 6
    (matmul,) = [op for op in module.ops if op.name == "nn.matmul"]
    assert digital_op_count(matmul) == 90
    target = tiny_target()
    perf = estimate(module, target)
    assert perf.energy_pj["digital"] == 180.0 and close(perf.latency_ns, 90.0)
    assert perf.bottleneck["resource"] == "digital" and perf.arrays == 0


def test_utilization_timeline() -> None:
    target = tiny_target(digital_ops_per_s=1e18)
    module, _ = compiled([6, 5], target)
    perf = schedule(module, target, "schedule{stream=10}")
    timeline = perf["utilization_timeline"]
    assert len(timeline) == 20 and all(0.0 <= v <= 1.0 for v in timeline)
    assert min(timeline) > 0.999  # a single array busy back to back for the whole stream
    assert close(perf["utilization_timeline_bucket_s"] * 20, 10 * 120e-9, 1e-6)
    assert perf["utilization"]["array_busy_max"] == pytest.approx(1.0)


def test_options_and_errors() -> None:
    spec = "schedule{stream=4 digital-lanes=2}"
    assert str(parse_pipeline(spec)) == spec
    with pytest.raises(UsageError):
        parse_pipeline("schedule{stream=0}").instantiate()
    module = import_model(chain_model([6, 5]))
    with pytest.raises(Exception, match="schedule needs a target"):
        run_passes(module, parse_pipeline("schedule").instantiate(), PassContext())


# -- every sample on every built-in target ----------------------------------------------------------

REPORT_KEYS = {
    "latency_s", "latency_cycles", "throughput_inferences_per_s", "energy_per_inference_j",
    "energy_breakdown_pj", "utilization_timeline", "bottleneck", "assumptions",
}


@pytest.mark.parametrize("target_name", TARGETS)
def test_samples_on_builtin_targets(sample: str, target_name: str) -> None:
    target = load_target(target_name)
    names = [spec.name for spec in parse_pipeline(target.pipeline)]
    assert names[-1] == "schedule" and "tile" in names
    module = load_module(sample_path(sample), sample_shapes(sample, 1))
    compilation = compile_module(module, target)
    report = build_report(module, target, compilation.context.report, {"name": sample})
    perf = json.loads(to_json(report))["performance"]
    assert REPORT_KEYS <= set(perf)
    assert set(perf["energy_breakdown_pj"]) == {"dac", "array", "adc", "network", "digital"}
    total = sum(perf["energy_breakdown_pj"].values())
    assert math.isclose(total * 1e-12, perf["energy_per_inference_j"], rel_tol=1e-12)
    assert perf["latency_s"] > 0 and perf["latency_cycles"] >= perf["latency_s"] * target.timing.clock_hz - 1
    assert 0 < perf["throughput_inferences_per_s"] <= perf["throughput_bound_inferences_per_s"] * (1 + 1e-9)
    assert perf["throughput_inferences_per_s"] >= 1 / perf["latency_s"] * (1 - 1e-9)  # pipelining never hurts
    assert perf["assumptions"] == list(ASSUMPTIONS)
    assert perf["energy_breakdown_pj"]["array"] > 0 and perf["bottleneck"]["layer"]
    summary = module.attributes["performance"]
    assert summary["latency_s"] == perf["latency_s"] and summary["energy_j"] == perf["energy_per_inference_j"]
    text = print_module(module)
    assert print_module(parse_module(text)) == text


def test_deterministic() -> None:
    target = load_target("crossbar")
    outputs = []
    for _ in range(2):
        module = load_module(sample_path("cnn_digits"), sample_shapes("cnn_digits", 1))
        compilation = compile_module(module, target)
        for i, op in enumerate(mvms(module)):  # a made-up placement, so that the network counts
            op.set_attrs(core=(i % 14, (i // 14) % 12), slot=0)
        run_passes(module, parse_pipeline("schedule{stream=5}").instantiate(), compilation.context)
        report = build_report(module, target, compilation.context.report, {"name": "cnn"})
        outputs.append((to_json(report), print_module(module)))
    assert outputs[0] == outputs[1]
    assert json.loads(outputs[0][0])["performance"]["energy_breakdown_pj"]["network"] > 0


# -- scale ------------------------------------------------------------------------------------------


def synthetic(layers: int, arrays_per_layer: int, vectors: int = 4) -> Module:
    """A chain of ``layers`` layers of ``arrays_per_layer`` 8×8 arrays each, built directly (unverified)."""
    module = Module()
    x = module.add_input("x", TensorType((vectors, 8), "f32"))
    _, levels_op = module.add_constant(np.zeros((2, 8, 8), np.uint8), "levels")
    module.append(levels_op)
    current = x
    for layer in range(layers):
        name = f"l{layer}"
        unfold = module.append(module.create_op(
            "xbar.unfold", [current], [TensorType((1, vectors, 8), "f32")],
            {"layer": name, "kind": "matmul", "groups": 1}, name))
        parts = []
        for a in range(arrays_per_layer):
            mvm = module.append(module.create_op(
                "xbar.mvm", [unfold.result, levels_op.result], [TensorType((vectors, 8), "f32")],
                {"layer": name, "group": 0, "rows": (0, 8), "cols": (0, 8), "rows_used": 8, "cols_used": 8,
                 "replicas": 1, "input_slices": 2, "core": (a % 4, (a // 4) % 4)}, name))
            parts.append(mvm.result)
        acc = module.append(module.create_op(
            "xbar.accumulate", parts, [TensorType((vectors, 8), "f32")],
            {"layer": name, "group": 0, "cols": (0, 8), "scales": tuple([1.0] * len(parts))}, name))
        current = acc.result
    module.outputs = [current]
    return module


def test_ten_thousand_arrays() -> None:
    """100 layers × 100 arrays × 16 inferences (its speed is bench material, not asserted). Per layer:
    the arrays run in parallel for 4 vectors · 2 phases · 20 ns = 160 ns; the farthest array (core
    [3, 3], 6 hops) receives 4 · 8 bytes and returns 4 · 8 bytes: 2 · 6 · 32 = 384 ns. Digital work
    is free here."""
    module = synthetic(layers=100, arrays_per_layer=100)
    perf = estimate(module, tiny_target(digital_ops_per_s=1e18), stream=16)
    assert perf.arrays == 10_000
    assert close(perf.latency_ns, 100 * (160 + 384), 1e-6)
    assert close(perf.bound_interval_ns, 160.0) and close(perf.interval_ns, 160.0, 1e-6)
    assert len(perf.array_busy) == 10_000


# -- the grouped schedule is the event loop, to the bit -----------------------------------------------


def _same_run(graph: Any, n: int) -> bool | None:
    """None when the grouped schedule declined (the event loop runs then), else whether it matched."""
    grouped = _simulate_grouped(graph, n)
    if grouped is None:
        return None
    plain = simulate_events(graph, n)
    return (np.array_equal(grouped.start, plain.start) and np.array_equal(grouped.finish, plain.finish)
            and np.array_equal(grouped.completion, plain.completion))


@pytest.mark.parametrize("target_name", TARGETS)
def test_grouped_schedule_matches_the_event_loop_on_samples(sample: str, target_name: str) -> None:
    """Private arrays a layer at a time (`_simulate_grouped`) against one event per task, with a
    made-up placement so that every array gets its own transfer delays."""
    target = load_target(target_name)
    module = load_module(sample_path(sample), sample_shapes(sample, 1))
    compile_module(module, target, pipeline="canonicalize,fold-constants,fold-batchnorm,canonicalize,partition,tile")
    for i, op in enumerate(mvms(module)):
        op.set_attrs(core=(i % target.chip.mesh_x, (i // 3) % target.chip.mesh_y))
    for lanes in (1, 2):
        graph = build_task_graph(module, CostModel(target, lanes))
        for n in (2, 7, 16):
            assert _same_run(graph, n) is True


def _random_graph(rng: random.Random) -> TaskGraph:
    """A random DAG of digital, free and array tasks, some arrays shared, random delays and releases."""
    size = rng.randint(2, 14)
    kinds: list[str] = []
    duration: list[float] = []
    resource: list[int] = []
    resource_kind, capacity, shared = ["digital"], [rng.choice([1, 2, 3])], []
    for _ in range(size):
        draw = rng.random()
        if draw < 0.35:
            kinds.append("digital"), duration.append(float(rng.choice([1, 2, 3, 5, 8]))), resource.append(0)
        elif draw < 0.45:
            kinds.append("free"), duration.append(0.0), resource.append(-1)
        else:
            kinds.append("array"), duration.append(float(rng.choice([1, 2, 4, 7])))
            if shared and rng.random() < 0.2:
                resource.append(rng.choice(shared))
                continue
            resource_kind.append("array"), capacity.append(1), resource.append(len(resource_kind) - 1)
            if rng.random() < 0.3:
                shared.append(len(resource_kind) - 1)
    preds: list[list[tuple[int, float]]] = [[] for _ in range(size)]
    succs: list[list[tuple[int, float]]] = [[] for _ in range(size)]
    for i in range(size):
        preds[i] = [(j, float(rng.choice([0, 0, 1, 2, 3, 6]))) for j in range(i) if rng.random() < 0.35]
        for j, delay in preds[i]:
            succs[j].append((i, delay))
    return TaskGraph(["l"] * size, kinds, duration, resource, preds, succs,
                     [float(rng.choice([0, 0, 1, 5])) for _ in range(size)],
                     [float(rng.choice([0, 1])) for _ in range(size)],
                     resource_kind, capacity, [1] * len(resource_kind), ["r"] * len(resource_kind))


def test_grouped_schedule_matches_the_event_loop_on_random_graphs() -> None:
    """Shared digital lanes, shared arrays, ties and releases: wherever the grouped schedule answers,
    it gives the event loop's times exactly."""
    rng = random.Random(11)
    answered = 0
    for _ in range(1500):
        same = _same_run(_random_graph(rng), rng.choice([2, 3, 6]))
        assert same is not False
        answered += same is True
    assert answered > 500
