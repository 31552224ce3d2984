"""First-order timing and energy of a compiled module: a cost model and an event-driven schedule.

The estimate has two halves.

**Cost model** (`CostModel`): what one op costs for one inference, from the target's ``[timing]``
and ``[energy]`` constants (docs/targets.md). An *inference* is one evaluation of the compiled graph
at the batch size it was compiled for. Times are kept in ns, energies in pJ.

- ``xbar.mvm`` (one physical array; ``replicas`` copies split its M input vectors in time and run in
  lockstep). With P = ``input_slices`` (``dac.phases``: bit-serial input phases), R = ``rows_used``,
  K = ``cols_used`` (physical columns read, the offset reference column included) and
  C = min(``adc.columns_per_adc``, K) conversions on the busiest ADC (columns are wired to ADCs in
  contiguous groups of ``columns_per_adc``, and an array's used columns are its first K)::

      t_read   = max(dac_ns + mvm_ns, C · adc_ns)            # ADC conversion overlaps the next read (ISAAC)
      duration = ceil(M / replicas) · P · t_read
      energy   = M · P · (mvm_pj [array] + R · dac_pj [DAC] + K · adc_pj [ADC])

  This is docs/targets.md's per-MVM formula times the MVMs one copy performs; the pipeline fill of
  the first read and the last conversion is ignored, and ``mvm_pj`` is paid in full even when the
  array is partly used (it is a per-read constant).
- Digital ops (every ``nn.*`` op, ``xbar.unfold``, ``xbar.accumulate``, ``xbar.assemble``) cost
  ``count(op) / digital_ops_per_s`` and ``count(op) · digital_pj_per_op``, where ``count`` comes from
  `DIGITAL_OPS`, a table keyed by op name (a multiply-accumulate or one element of output is one op;
  shape-only ops are free); an op missing from the table counts its output elements.
- Data movement between a producer's core and a consumer's core (``core = [x, y]`` attributes put
  there by ``place``; an op without ``core``, e.g. every digital op, sits at ``chip.io``): bytes ×
  Manhattan hops × ``hop_ns_per_byte`` (store and forward) and × ``hop_pj_per_byte``. Analog-domain
  traffic is quantised: an array receives its M × R unfolded input elements at ceil(``dac.input_bits``/8)
  bytes each and sends its M × (c1 − c0) outputs at ceil(``adc.bits``/8) bytes (1 byte for the
  8-bit targets); digital traffic moves the value's dtype size (4 bytes for f32). Graph inputs
  enter at ``chip.io`` and graph outputs leave there. Links are not contended, multicast is not
  modelled (each consumer receives its own copy), and im2col duplication is paid on the wire.

**Schedule** (`simulate`): a heap-based discrete-event simulation of a stream of ``n`` inferences
over the op graph. Every task (op, inference) starts when all its operands have arrived (producer
finished + transfer delay) and its resource has a free server. Resources: each ``xbar.mvm`` is an
array that performs one MVM at a time (ops carrying the same ``core`` and ``slot`` share one array);
the digital unit has ``digital_lanes`` servers (default 1, the target's one unit), each running one
op at a time at ``digital_ops_per_s`` (N lanes stand for N digital units, e.g. one per tile);
zero-cost ops (constants, reshapes) take no resource. Waiting tasks are served oldest inference
first, then in program order, without preemption. All ``n`` inputs are queued at t = 0, so the
layers pipeline across inferences: inference k+1 uses the first layer's arrays while inference k is
in the second. Results: the latency of one inference run alone, the steady-state throughput (the
mean interval between completions over the second half of the stream), energy per inference by
component, per-array busy fractions and a timeline of the mean busy fraction, the throughput
bottleneck (the resource with the most busy time per inference) and the latency-critical layer
(the layer with the most time on the single inference's critical path).

Cost is O(tasks · log) in Python for the event loop and vectorised numpy for the statistics; 10^4
arrays × 16 inferences run in about a second.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..ir.core import Module, Op, Value
from ..registry import registrar

__all__ = [
    "ASSUMPTIONS",
    "DIGITAL_OPS",
    "CostModel",
    "OpCost",
    "Performance",
    "Run",
    "TaskGraph",
    "Transfer",
    "build_task_graph",
    "digital_op_count",
    "estimate",
    "simulate",
    "simulate_events",
]

PJ_TO_J = 1e-12
NS_TO_S = 1e-9
COMPONENTS = ("dac", "array", "adc", "network", "digital")

#: What the estimate assumes, in the words the report prints.
ASSUMPTIONS: tuple[str, ...] = (
    ("an inference is one evaluation of the compiled graph at its compiled batch size; the stream's "
     "inputs are all queued at t = 0 and throughput is the mean completion interval over the stream's second half"),
    ("xbar.mvm time = ceil(M / replicas) * input_slices * max(dac_ns + mvm_ns, min(columns_per_adc, cols_used) "
     "* adc_ns): ADC conversion overlaps the next read (ISAAC); the pipeline fill is ignored"),
    ("xbar.mvm energy = M * input_slices * (mvm_pj + rows_used * dac_pj + cols_used * adc_pj); mvm_pj is paid "
     "in full for partly used arrays"),
    ("each xbar.mvm (its replicas in lockstep) is one array resource running one MVM at a time; ops with "
     "the same core and slot share one array; reprogramming is not modelled"),
    ("digital ops (nn.*, xbar.unfold/accumulate/assemble) run at chip.io on the digital unit (digital_lanes "
     "units, each one op at a time at digital_ops_per_s); cost per op from a per-op-kind table (one MAC or "
     "one output element = 1 op)"),
    ("network: bytes * Manhattan hops * hop constants, store and forward, links not contended, no multicast; "
     "analog traffic at ceil(bits / 8) bytes per element (unfolded inputs in, ADC outputs out), digital "
     "traffic at the dtype size; ops without a core attribute sit at chip.io"),
    "waiting tasks are served oldest inference first, then in program order, without preemption",
    "weight programming, refresh, control, leakage and memory (SRAM/DRAM) energy are not modelled",
)


# ---------------------------------------------------------------------------------------------
# Digital op counts: one table keyed by op name
# ---------------------------------------------------------------------------------------------

OpCounter = Callable[[Op], int]

#: op name -> ops the digital unit performs for one evaluation of that op.
DIGITAL_OPS: dict[str, OpCounter] = {}


#: Register the op count of the named ops.
counts = registrar(DIGITAL_OPS, "op counts")


def _numel(value: Value | None) -> int:
    return value.type.numel if value is not None else 0


def _outputs(op: Op) -> int:
    return sum(result.type.numel for result in op.results)


def _operand(op: Op, index: int) -> Value | None:
    return op.operands[index] if len(op.operands) > index else None


def digital_op_count(op: Op) -> int:
    """Ops the digital unit performs for ``op``; output elements when the table has no entry."""
    return int(DIGITAL_OPS.get(op.name, _outputs)(op))


@counts("nn.constant", "nn.reshape", "nn.flatten", "nn.squeeze", "nn.unsqueeze", "nn.identity", "nn.shape")
def _free(op: Op) -> int:
    """Metadata only: no data is touched."""
    return 0


@counts("nn.conv")
def _conv(op: Op) -> int:
    """One MAC per output element per (C_in/groups · kernel) weight, plus the bias."""
    weight = _operand(op, 1)
    per_output = math.prod(weight.type.shape[1:]) if weight is not None else 1
    return _outputs(op) * per_output + (_outputs(op) if _operand(op, 2) is not None else 0)


@counts("nn.conv_transpose")
def _conv_transpose(op: Op) -> int:
    """Each input element scatters into (C_out/groups · kernel) outputs, plus the bias."""
    weight = _operand(op, 1)
    per_input = math.prod(weight.type.shape[1:]) if weight is not None else 1
    return _numel(_operand(op, 0)) * per_input + (_outputs(op) if _operand(op, 2) is not None else 0)


@counts("nn.gemm")
def _gemm(op: Op) -> int:
    a = _operand(op, 0)
    k = (a.type.shape[0] if op.attr("transA", 0) else a.type.shape[-1]) if a is not None and a.type.rank else 1
    return _outputs(op) * int(k) + (_outputs(op) if _operand(op, 2) is not None else 0)


@counts("nn.matmul")
def _matmul(op: Op) -> int:
    a = _operand(op, 0)
    k = a.type.shape[-1] if a is not None and a.type.rank else 1
    return _outputs(op) * int(k)


@counts("xbar.accumulate")
def _accumulate(op: Op) -> int:
    """One multiply-add per operand per element (slice significance, row-split partial sums), one
    more multiply with per-column scales."""
    return _outputs(op) * (len(op.operands) + (1 if op.attr("column_scales") is not None else 0))


@counts("nn.reduce_mean", "nn.reduce_sum", "nn.reduce_max", "nn.global_average_pool")
def _reduce(op: Op) -> int:
    return _numel(_operand(op, 0))


@counts("nn.max_pool", "nn.average_pool")
def _pool(op: Op) -> int:
    kernel = op.attr("kernel_shape")
    window = math.prod(int(k) for k in np.asarray(kernel).reshape(-1)) if kernel is not None else 1
    return _outputs(op) * max(window, 1)


@counts("nn.softmax")
def _softmax(op: Op) -> int:
    """Max, subtract-and-exp, sum, divide."""
    return 4 * _outputs(op)


@counts("nn.layer_normalization")
def _layer_norm(op: Op) -> int:
    """Mean, subtract, square-and-sum, normalise, scale, shift (about 7 per element)."""
    return 7 * _numel(_operand(op, 0))


@counts("nn.batch_normalization")
def _batch_norm(op: Op) -> int:
    """Scale and shift with folded statistics."""
    return 2 * _outputs(op)


# ---------------------------------------------------------------------------------------------
# The cost model
# ---------------------------------------------------------------------------------------------

Point = tuple[int, int]


@dataclass(frozen=True)
class OpCost:
    """One op for one inference: how long it holds its resource (ns) and what it spends (pJ)."""

    duration_ns: float
    dac_pj: float = 0.0
    array_pj: float = 0.0
    adc_pj: float = 0.0
    digital_pj: float = 0.0
    digital_ops: int = 0
    array_reads: int = 0  # vector phases over all copies (M · P)

    @property
    def energy_pj(self) -> float:
        return self.dac_pj + self.array_pj + self.adc_pj + self.digital_pj


@dataclass(frozen=True)
class Transfer:
    """Moving one value from one op's core(s) to another's: delay (ns), energy (pJ) and traffic."""

    delay_ns: float
    energy_pj: float
    nbytes: int
    byte_hops: float


class CostModel:
    """Per-op durations and energies and per-edge transfers for one target (see the module doc)."""

    def __init__(self, target: Any, digital_lanes: int = 1) -> None:
        if digital_lanes < 1:
            raise ValueError(f"digital_lanes must be >= 1, got {digital_lanes}")
        self.target = target
        self.timing = target.timing
        self.energy = target.energy
        self.digital_lanes = digital_lanes
        self.io: Point = tuple(target.chip.io)  # type: ignore[assignment]
        self.columns_per_adc = int(target.adc.columns_per_adc)
        self.input_bytes = max(1, -(-int(target.dac.input_bits) // 8))
        self.output_bytes = max(1, -(-int(target.adc.bits) // 8))

    # -- ops ---------------------------------------------------------------------------------
    def read_ns(self, cols_used: int) -> float:
        """One array read of one input phase, conversions included (overlapped)."""
        conversions = min(self.columns_per_adc, cols_used)
        return max(self.timing.dac_ns + self.timing.mvm_ns, conversions * self.timing.adc_ns)

    def mvm(self, op: Op) -> OpCost:
        source = op.operands[0]
        vectors = source.type.shape[1] if source is not None and source.type.rank == 3 else op.result.type.shape[0]
        replicas = max(1, int(op.attr("replicas", 1)))
        phases = max(1, int(op.attr("input_slices", 1)))
        rows, cols = int(op.attr("rows_used")), int(op.attr("cols_used"))
        reads = vectors * phases
        return OpCost(
            duration_ns=-(-vectors // replicas) * phases * self.read_ns(cols),
            dac_pj=reads * rows * self.energy.dac_pj,
            array_pj=reads * self.energy.mvm_pj,
            adc_pj=reads * cols * self.energy.adc_pj,
            array_reads=reads,
        )

    def digital(self, op: Op) -> OpCost:
        ops = digital_op_count(op)
        return OpCost(duration_ns=ops / self.timing.digital_ops_per_s * 1e9,
                      digital_pj=ops * self.energy.digital_pj_per_op, digital_ops=ops)

    def cost(self, op: Op) -> OpCost:
        return self.mvm(op) if op.name == "xbar.mvm" else self.digital(op)

    # -- data movement -----------------------------------------------------------------------
    def locations(self, op: Op | None) -> tuple[Point, ...]:
        """The core(s) of ``op``: its ``core`` attribute ([x, y], or one [x, y] per replica), else chip.io."""
        core = op.attr("core") if op is not None else None
        if core is None:
            return (self.io,)
        items = tuple(np.asarray(core).reshape(-1).tolist())
        if len(items) < 2 or len(items) % 2:
            return (self.io,)
        return tuple((int(items[i]), int(items[i + 1])) for i in range(0, len(items), 2))

    def edge_bytes(self, value: Value, consumer: Op | None) -> int:
        """Bytes ``value`` puts on the network towards ``consumer`` (``None``: a graph output)."""
        if consumer is not None and consumer.name == "xbar.mvm" and value is consumer.operands[0]:
            vectors = value.type.shape[1] if value.type.rank == 3 else value.type.numel
            return vectors * int(consumer.attr("rows_used")) * self.input_bytes
        if value.producer is not None and value.producer.name == "xbar.mvm":
            return value.type.numel * self.output_bytes
        return value.type.nbytes

    def transfer(self, src: Sequence[Point], dst: Sequence[Point], nbytes: int) -> Transfer:
        """``nbytes`` split evenly over every (source copy, destination copy) pair."""
        pairs = [(a, b) for a in src for b in dst]
        share = nbytes / len(pairs)
        hops = [abs(a[0] - b[0]) + abs(a[1] - b[1]) for a, b in pairs]
        byte_hops = share * sum(hops)
        delay = share * max(hops) * self.timing.hop_ns_per_byte
        return Transfer(delay, byte_hops * self.energy.hop_pj_per_byte, nbytes, byte_hops)


# ---------------------------------------------------------------------------------------------
# The task graph: what the simulator needs, in flat lists
# ---------------------------------------------------------------------------------------------

ARRAY, DIGITAL = "array", "digital"


@dataclass
class TaskGraph:
    """One inference's ops as tasks: durations, resources, dependencies with transfer delays."""

    labels: list[str]  # the layer each task belongs to
    kinds: list[str]  # "array" | "digital" | "free"
    duration: list[float]  # ns
    resource: list[int]  # index into the resource lists, -1 = none (zero-duration ops)
    preds: list[list[tuple[int, float]]]  # (producer task, transfer delay ns)
    succs: list[list[tuple[int, float]]]
    release: list[float]  # delay of graph inputs reaching the task, ns
    tail: list[float]  # delay of graph outputs reaching chip.io, ns
    resource_kind: list[str] = field(default_factory=list)
    resource_capacity: list[int] = field(default_factory=list)
    resource_arrays: list[int] = field(default_factory=list)  # physical arrays behind a resource
    resource_label: list[str] = field(default_factory=list)
    costs: list[OpCost] = field(default_factory=list)
    network_pj: float = 0.0
    byte_hops: float = 0.0

    @property
    def size(self) -> int:
        return len(self.duration)

    def energy_pj(self) -> dict[str, float]:
        """Energy of one inference per component (pJ)."""
        return {
            "dac": math.fsum(c.dac_pj for c in self.costs),
            "array": math.fsum(c.array_pj for c in self.costs),
            "adc": math.fsum(c.adc_pj for c in self.costs),
            "network": self.network_pj,
            "digital": math.fsum(c.digital_pj for c in self.costs),
        }

    def busy_per_inference(self) -> np.ndarray:
        """Busy time (ns) of each resource per inference, divided by its servers."""
        busy = np.zeros(len(self.resource_kind))
        res = np.asarray(self.resource, np.int64)
        used = res >= 0
        np.add.at(busy, res[used], np.asarray(self.duration)[used])
        return busy / np.maximum(np.asarray(self.resource_capacity, np.float64), 1.0)


def _label(op: Op) -> str:
    return str(op.attr("layer") or op.loc or (op.results[0].name if op.results else op.name))


def _slot_key(op: Op, locations: tuple[Point, ...]) -> tuple[Any, ...] | None:
    slot = op.attr("slot")
    if slot is None or op.attr("core") is None:
        return None
    return (locations, tuple(np.asarray(slot).reshape(-1).tolist()))


def build_task_graph(module: Module, model: CostModel) -> TaskGraph:
    """The module's ops (constants excluded) as tasks, with costs, resources and transfer delays."""
    ops = [op for op in module.ops if op.name != "nn.constant"]
    index = {id(op): i for i, op in enumerate(ops)}
    graph = TaskGraph([], [], [], [], [[] for _ in ops], [[] for _ in ops], [0.0] * len(ops), [0.0] * len(ops))
    shared: dict[tuple[Any, ...], int] = {}
    digital_resource = -1
    network_pj = 0.0
    byte_hops = 0.0
    where = [model.locations(op) for op in ops]

    def new_resource(kind: str, capacity: int, arrays: int, label: str) -> int:
        graph.resource_kind.append(kind)
        graph.resource_capacity.append(capacity)
        graph.resource_arrays.append(arrays)
        graph.resource_label.append(label)
        return len(graph.resource_kind) - 1

    def move(src: tuple[Point, ...], dst: tuple[Point, ...], nbytes: int) -> float:
        nonlocal network_pj, byte_hops
        moved = model.transfer(src, dst, nbytes)
        network_pj += moved.energy_pj
        byte_hops += moved.byte_hops
        return moved.delay_ns

    for i, op in enumerate(ops):
        cost = model.cost(op)
        label = _label(op)
        graph.costs.append(cost)
        graph.labels.append(label)
        graph.duration.append(cost.duration_ns)
        if op.name == "xbar.mvm":
            key = _slot_key(op, where[i])
            replicas = max(1, int(op.attr("replicas", 1)))
            if key is not None and key in shared:
                resource = shared[key]
                graph.resource_arrays[resource] = max(graph.resource_arrays[resource], replicas)
            else:
                resource = new_resource(ARRAY, 1, replicas, label)
                if key is not None:
                    shared[key] = resource
            graph.kinds.append(ARRAY)
            graph.resource.append(resource if cost.duration_ns > 0 else -1)
        elif cost.duration_ns > 0:
            if digital_resource < 0:
                digital_resource = new_resource(DIGITAL, model.digital_lanes, 0, "digital unit")
            graph.kinds.append(DIGITAL)
            graph.resource.append(digital_resource)
        else:
            graph.kinds.append("free")
            graph.resource.append(-1)
        seen: set[int] = set()
        for value in op.operands:
            if value is None or id(value) in seen:
                continue
            seen.add(id(value))
            producer = value.producer
            if producer is not None and producer.name == "nn.constant":
                continue  # weights and levels are stationary
            nbytes = model.edge_bytes(value, op)
            if producer is None:  # a graph input, delivered at chip.io
                graph.release[i] = max(graph.release[i], move((model.io,), where[i], nbytes))
                continue
            j = index[id(producer)]
            graph.preds[i].append((j, move(where[j], where[i], nbytes)))
    for value in dict.fromkeys(module.outputs):
        producer = value.producer
        if producer is not None and id(producer) in index:
            j = index[id(producer)]
            graph.tail[j] = max(graph.tail[j], move(where[j], (model.io,), model.edge_bytes(value, None)))
    # Several operands from one producer: one dependency, the slowest transfer.
    for i, preds in enumerate(graph.preds):
        merged: dict[int, float] = {}
        for j, delay in preds:
            merged[j] = max(merged.get(j, 0.0), delay)
        graph.preds[i] = sorted(merged.items())
        for j, delay in graph.preds[i]:
            graph.succs[j].append((i, delay))
    graph.network_pj = network_pj
    graph.byte_hops = byte_hops
    return graph


# ---------------------------------------------------------------------------------------------
# The event-driven schedule
# ---------------------------------------------------------------------------------------------

_DONE, _READY = 0, 1


@dataclass
class Run:
    """Start times of every task of ``n`` inferences (row k = inference k) and what bound them."""

    n: int
    start: np.ndarray  # (n, tasks) ns
    finish: np.ndarray  # (n, tasks) ns
    completion: np.ndarray  # (n,) ns: the inference's outputs are at chip.io
    binder: np.ndarray | None = None  # (n·tasks,) flat id of the task that fixed each start, -1 = input

    @property
    def makespan(self) -> float:
        return float(self.completion.max()) if self.n else 0.0


def simulate(graph: TaskGraph, n: int, trace: bool = False) -> Run:
    """Discrete-event schedule of ``n`` inferences, all queued at t = 0 (see the module doc).

    Without ``trace``, arrays that only one task uses are simulated a layer at a time with numpy
    (`_simulate_grouped`): the result is the same, to the bit, as the plain event loop
    (`simulate_events`), which runs instead when the grouped one cannot vouch for it."""
    if not trace and n > 1:
        run = _simulate_grouped(graph, n)
        if run is not None:
            return run
    return simulate_events(graph, n, trace)


def simulate_events(graph: TaskGraph, n: int, trace: bool = False) -> Run:
    """The plain event loop behind `simulate`: one heap event per task and inference."""
    size = graph.size
    total = n * size
    ready_at = list(graph.release) * n
    start = [0.0] * total
    binder = [-1] * total if trace else None
    sources = [k * size + i for k in range(n) for i in range(size) if not graph.preds[i]]
    loop = _EventLoop(graph, graph.succs, [len(p) for p in graph.preds] * n, ready_at, start, binder)
    loop.run(sources)
    starts = np.asarray(start, np.float64).reshape(n, size)
    finish = starts + np.asarray(graph.duration, np.float64)[None, :]
    completion = (finish + np.asarray(graph.tail, np.float64)[None, :]).max(axis=1) if size else np.zeros(n)
    return Run(n, starts, finish, completion, np.asarray(binder, np.int64) if binder is not None else None)


class _EventLoop:
    """Tasks (task id = inference · size + task) become ready when their last predecessor's output
    arrives, wait for their resource (first by inference, then by task) and hold it for their duration;
    a task without a resource is done on arrival. ``on_done(tid, now)`` hears every finished task;
    ``binder`` (tracing) records, for each task, the task it last waited for."""

    def __init__(self, graph: TaskGraph, succs: Sequence[Sequence[tuple[int, float]]], remaining: list[int],
                 ready_at: list[float], start: list[float], binder: list[int] | None = None,
                 on_done: Callable[[int, float], None] | None = None) -> None:
        self.graph, self.succs, self.remaining, self.ready_at = graph, succs, remaining, ready_at
        self.start, self.binder, self.on_done = start, binder, on_done
        self.events: list[tuple[float, int, int, int]] = []
        self._seq = 0

    def ready(self, tid: int) -> None:
        """Task ``tid`` has all its inputs: queue its ready event at ``ready_at[tid]``."""
        heapq.heappush(self.events, (self.ready_at[tid], self._seq, tid, _READY))
        self._seq += 1

    def run(self, sources: Sequence[int]) -> None:
        graph, succs, remaining, ready_at = self.graph, self.succs, self.remaining, self.ready_at
        start, binder, on_done, events = self.start, self.binder, self.on_done, self.events
        size, dur, res = graph.size, graph.duration, graph.resource
        free = list(graph.resource_capacity)
        waiting: list[list[tuple[int, int, int]]] = [[] for _ in free]
        last_done = [-1] * len(free)
        for tid in sources:
            self.ready(tid)
        push, pop = heapq.heappush, heapq.heappop
        while events:
            now = events[0][0]
            touched: list[int] = []
            while events and events[0][0] == now:
                _, _, tid, kind = pop(events)
                i = tid % size
                r = res[i]
                if kind == _READY:
                    if r >= 0:
                        push(waiting[r], (tid // size, i, tid))
                        if r not in touched:
                            touched.append(r)
                        continue
                    start[tid] = now  # zero-cost task: done on arrival
                else:
                    free[r] += 1
                    last_done[r] = tid
                    if r not in touched:
                        touched.append(r)
                base = tid - i
                for s, delay in succs[i]:
                    sid = base + s
                    arrival = now + delay
                    if arrival > ready_at[sid]:
                        ready_at[sid] = arrival
                        if binder is not None:
                            binder[sid] = tid
                    elif binder is not None and binder[sid] < 0 and arrival == ready_at[sid]:
                        binder[sid] = tid
                    remaining[sid] -= 1
                    if remaining[sid] == 0:
                        self.ready(sid)
                if on_done is not None:
                    on_done(tid, now)
            for r in touched:
                queue = waiting[r]
                while free[r] and queue:
                    _, i, tid = pop(queue)
                    free[r] -= 1
                    start[tid] = now
                    if binder is not None and ready_at[tid] < now:
                        binder[tid] = last_done[r]  # it waited for the resource
                    push(events, (now + dur[i], self._seq, tid, _DONE))
                    self._seq += 1


class _Reordered(Exception):
    """The grouped schedule met a case where a private array would not serve in inference order."""


@dataclass
class _Group:
    """Tasks on private arrays with the same producers: simulated together, one numpy step per inference.

    ``delays[p]`` is the transfer delay from producer ``preds[p]`` to each member; ``edge_*`` list
    every (member, consumer, delay) edge, ``consumers`` the distinct consumers with how many edges
    reach each."""

    members: np.ndarray
    duration: np.ndarray
    delays: np.ndarray
    edge_member: np.ndarray
    edge_slot: np.ndarray
    edge_delay: np.ndarray
    consumers: list[int]
    consumer_edges: list[int]


def _groups(graph: TaskGraph) -> tuple[list[_Group], list[list[tuple[int, int]]], np.ndarray]:
    """The groups of `_simulate_grouped`, each task's (group, producer row) pairs, and a mask of members.

    A member is an array task with a resource of its own (one server, no other task on it) and
    positive duration, none of whose producers is such a task; members with the same producers
    form a group."""
    size = graph.size
    users: dict[int, int] = {}
    for r in graph.resource:
        if r >= 0:
            users[r] = users.get(r, 0) + 1
    private = [graph.kinds[i] == ARRAY and graph.resource[i] >= 0 and users[graph.resource[i]] == 1
               and graph.resource_capacity[graph.resource[i]] == 1 for i in range(size)]
    keyed: dict[tuple[int, ...], list[int]] = {}
    for i in range(size):
        preds = graph.preds[i]
        if private[i] and preds and not any(private[j] for j, _ in preds):
            keyed.setdefault(tuple(j for j, _ in preds), []).append(i)
    member = np.zeros(size, bool)
    feeds: list[list[tuple[int, int]]] = [[] for _ in range(size)]
    groups: list[_Group] = []
    for key, tasks in keyed.items():
        g = len(groups)
        members = np.asarray(tasks, np.int64)
        member[members] = True
        delays = np.asarray([[d for _, d in graph.preds[i]] for i in tasks], np.float64).T.copy()
        for row, j in enumerate(key):
            feeds[j].append((g, row))
        pairs = [(pos, s, d) for pos, i in enumerate(tasks) for s, d in graph.succs[i]]
        consumers = sorted({s for _, s, _ in pairs})
        slot = {s: c for c, s in enumerate(consumers)}
        counts = [0] * len(consumers)
        for _, s, _ in pairs:
            counts[slot[s]] += 1
        groups.append(_Group(
            members=members,
            duration=np.asarray([graph.duration[i] for i in tasks], np.float64),
            delays=delays,
            edge_member=np.asarray([p for p, _, _ in pairs], np.int64),
            edge_slot=np.asarray([slot[s] for _, s, _ in pairs], np.int64),
            edge_delay=np.asarray([d for _, _, d in pairs], np.float64),
            consumers=consumers,
            consumer_edges=counts,
        ))
    return groups, feeds, member


def _simulate_grouped(graph: TaskGraph, n: int) -> Run | None:
    """`simulate_events` with the members of each `_Group` handled as one vector per inference.

    A member's array serves only it, so while it serves the inferences in order, its start is
    max(ready, previous finish): one numpy step per group and inference once the group's shared
    producers are done. Its consumers learn the arrivals at once (their ready event still fires at
    the same time), so the heap holds only the other tasks. That order holds when each group's
    inferences become ready in order and no member's ready time goes back from one inference to
    the next; otherwise an inference could overtake another on an array, and this returns None so
    that the plain loop decides. Every time is the same sum of the same floats as in the plain loop."""
    groups, feeds, member = _groups(graph)
    if not groups:
        return None
    size = graph.size
    is_member = member.tolist()
    succs = [[(s, d) for s, d in graph.succs[i] if not is_member[s]] for i in range(size)]
    remaining = [len(p) for p in graph.preds] * n
    ready_at = list(graph.release) * n
    start_flat = [0.0] * (n * size)
    starts = np.zeros((n, size))
    release = np.asarray(graph.release, np.float64)
    g_ready = [[release[g.members].copy() for _ in range(n)] for g in groups]
    g_remaining = [[g.delays.shape[0]] * n for g in groups]
    g_next = [0] * len(groups)
    g_last_ready: list[np.ndarray | None] = [None] * len(groups)
    g_last_finish: list[np.ndarray | None] = [None] * len(groups)

    def run_group(g: int, k: int) -> None:
        group = groups[g]
        if g_next[g] != k:
            raise _Reordered
        g_next[g] = k + 1
        ready = g_ready[g][k]
        last_ready, last_finish = g_last_ready[g], g_last_finish[g]
        if last_ready is None or last_finish is None:
            begin = ready
        else:
            if (ready < last_ready).any():
                raise _Reordered
            begin = np.maximum(ready, last_finish)
        end = begin + group.duration
        g_last_ready[g], g_last_finish[g] = ready, end
        starts[k, group.members] = begin
        arrival = np.full(len(group.consumers), -np.inf)
        np.maximum.at(arrival, group.edge_slot, end[group.edge_member] + group.edge_delay)
        base = k * size
        for s, latest, count in zip(group.consumers, arrival.tolist(), group.consumer_edges):
            sid = base + s
            ready_at[sid] = max(ready_at[sid], latest)
            remaining[sid] -= count
            if remaining[sid] == 0:
                loop.ready(sid)

    def feed_groups(tid: int, now: float) -> None:
        """A producer of some groups finished: their members' ready times move; a group whose
        producers are all done runs."""
        k = tid // size
        for g, row in feeds[tid % size]:
            ready = g_ready[g][k]
            np.maximum(ready, now + groups[g].delays[row], out=ready)
            g_remaining[g][k] -= 1
            if g_remaining[g][k] == 0:
                run_group(g, k)

    loop = _EventLoop(graph, succs, remaining, ready_at, start_flat, on_done=feed_groups)
    sources = [k * size + i for k in range(n) for i in range(size) if not graph.preds[i] and not is_member[i]]
    try:
        loop.run(sources)
    except _Reordered:
        return None
    if any(nxt != n for nxt in g_next):
        return None  # a group never ran: a cycle or a missing producer; the plain loop tells
    flat = np.asarray(start_flat, np.float64).reshape(n, size)
    starts[:, ~member] = flat[:, ~member]
    finish = starts + np.asarray(graph.duration, np.float64)[None, :]
    completion = (finish + np.asarray(graph.tail, np.float64)[None, :]).max(axis=1)
    return Run(n, starts, finish, completion, None)


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


def _busy_integral(starts: np.ndarray, ends: np.ndarray, weights: np.ndarray, at: np.ndarray) -> np.ndarray:
    """∫_0^x Σ_i w_i·[s_i <= t < e_i] dt at each x in ``at``: O((tasks + points) log tasks)."""

    def ramp(points: np.ndarray) -> np.ndarray:  # Σ_{p < x} w·(x − p)
        order = np.argsort(points, kind="stable")
        p, w = points[order], weights[order]
        cw = np.concatenate([[0.0], np.cumsum(w)])
        cpw = np.concatenate([[0.0], np.cumsum(w * p)])
        idx = np.searchsorted(p, at, side="left")
        return at * cw[idx] - cpw[idx]

    return ramp(starts) - ramp(ends)


def utilization_timeline(graph: TaskGraph, run: Run, buckets: int) -> tuple[list[float], float]:
    """Mean busy fraction of the model's physical arrays in ``buckets`` equal slices of the stream."""
    horizon = run.makespan
    res = np.asarray(graph.resource, np.int64)
    arrays = np.asarray(graph.resource_arrays, np.float64)
    array_resource = np.asarray([k == ARRAY for k in graph.resource_kind], bool)
    is_array = (res >= 0) & array_resource[np.maximum(res, 0)] if array_resource.size else np.zeros(res.shape, bool)
    total = float(arrays[array_resource].sum()) if array_resource.size else 0.0
    if horizon <= 0 or total <= 0 or not is_array.any():
        return [0.0] * buckets, horizon / buckets if buckets else 0.0
    cols = np.flatnonzero(is_array)
    starts = run.start[:, cols].reshape(-1)
    ends = run.finish[:, cols].reshape(-1)
    weights = np.broadcast_to(arrays[res[cols]], run.start[:, cols].shape).reshape(-1)
    edges = np.linspace(0.0, horizon, buckets + 1)
    busy = np.diff(_busy_integral(starts, ends, weights, edges))
    width = horizon / buckets
    return [float(v) for v in np.clip(busy / (total * width), 0.0, 1.0)], width


def critical_path(graph: TaskGraph, run: Run) -> list[tuple[str, float]]:
    """(layer, ns of work) along the chain of tasks that fixed the last completion of inference 0."""
    assert run.binder is not None
    size = graph.size
    if not size:
        return []
    tail = np.asarray(graph.tail, np.float64)
    tid = int(np.argmax(run.finish[0] + tail))
    chain: list[int] = []
    while tid >= 0:
        chain.append(tid)
        tid = int(run.binder[tid])
    path: list[tuple[str, float]] = []
    for tid in reversed(chain):
        i = tid % size
        if graph.duration[i] <= 0:
            continue
        if path and path[-1][0] == graph.labels[i]:
            path[-1] = (graph.labels[i], path[-1][1] + graph.duration[i])
        else:
            path.append((graph.labels[i], graph.duration[i]))
    return path


# ---------------------------------------------------------------------------------------------
# The estimate
# ---------------------------------------------------------------------------------------------


@dataclass
class Performance:
    """The estimate for one module on one target (see `estimate`)."""

    latency_ns: float
    clock_hz: float
    interval_ns: float  # steady-state time between completions
    bound_interval_ns: float  # the bottleneck resource's busy time per inference
    energy_pj: dict[str, float]
    stream: int
    timeline: list[float]
    timeline_bucket_ns: float
    array_busy: np.ndarray  # per array resource: busy fraction over the stream
    digital_busy: float
    bottleneck: dict[str, Any]
    critical: list[tuple[str, float]]
    layers: list[dict[str, Any]]
    arrays: int
    byte_hops: float
    digital_lanes: int

    @property
    def latency_s(self) -> float:
        return self.latency_ns * NS_TO_S

    @property
    def latency_cycles(self) -> int:
        return max(0, math.ceil(self.latency_ns * NS_TO_S * self.clock_hz - 1e-6))

    @property
    def throughput(self) -> float:
        """Inferences per second in steady state (0 when nothing takes time)."""
        return 1.0 / (self.interval_ns * NS_TO_S) if self.interval_ns > 0 else 0.0

    @property
    def throughput_bound(self) -> float:
        return 1.0 / (self.bound_interval_ns * NS_TO_S) if self.bound_interval_ns > 0 else 0.0

    @property
    def energy_total_pj(self) -> float:
        return math.fsum(self.energy_pj.values())

    @property
    def energy_j(self) -> float:
        return self.energy_total_pj * PJ_TO_J

    @property
    def critical_layer(self) -> str | None:
        if not self.critical:
            return None
        totals: dict[str, float] = {}
        for layer, ns in self.critical:
            totals[layer] = totals.get(layer, 0.0) + ns
        return max(totals, key=lambda layer: (totals[layer], -list(totals).index(layer)))

    def summary(self) -> dict[str, Any]:
        """The module attribute ``performance``: a short summary that prints in the IR."""
        return {
            "latency_s": self.latency_s, "latency_cycles": self.latency_cycles,
            "throughput": self.throughput, "energy_j": self.energy_j,
        }

    def to_report(self) -> dict[str, Any]:
        """``report['performance']`` (JSON-ready; keys documented in the schedule pass)."""
        busy = self.array_busy
        return {
            "latency_s": self.latency_s,
            "latency_cycles": self.latency_cycles,
            "clock_hz": self.clock_hz,
            "throughput_inferences_per_s": self.throughput,
            "throughput_bound_inferences_per_s": self.throughput_bound,
            "energy_per_inference_j": self.energy_j,
            "energy_per_inference_pj": self.energy_total_pj,
            "energy_breakdown_pj": dict(self.energy_pj),
            "stream": self.stream,
            "digital_lanes": self.digital_lanes,
            "utilization": {
                "arrays": self.arrays,
                "array_busy_mean": float(busy.mean()) if busy.size else 0.0,
                "array_busy_max": float(busy.max()) if busy.size else 0.0,
                "digital_busy": self.digital_busy,
            },
            "utilization_timeline": list(self.timeline),
            "utilization_timeline_bucket_s": self.timeline_bucket_ns * NS_TO_S,
            "network_byte_hops": self.byte_hops,
            "bottleneck": dict(self.bottleneck),
            "critical_layer": self.critical_layer,
            "critical_path": [{"layer": layer, "time_s": ns * NS_TO_S} for layer, ns in self.critical],
            "layers": [dict(row) for row in self.layers],
            "assumptions": list(ASSUMPTIONS),
        }


def _layers(graph: TaskGraph) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for i, label in enumerate(graph.labels):
        row = rows.setdefault(label, {"layer": label, "arrays": 0, "array_time_s": 0.0,
                                      "digital_time_s": 0.0, "energy_pj": 0.0})
        cost = graph.costs[i]
        row["energy_pj"] += cost.energy_pj
        if graph.kinds[i] == ARRAY:
            row["arrays"] += graph.resource_arrays[graph.resource[i]] if graph.resource[i] >= 0 else 0
            row["array_time_s"] = max(row["array_time_s"], graph.duration[i] * NS_TO_S)
        elif graph.kinds[i] == DIGITAL:
            row["digital_time_s"] += graph.duration[i] * NS_TO_S
    return list(rows.values())


def _bottleneck(graph: TaskGraph) -> tuple[dict[str, Any], float]:
    busy = graph.busy_per_inference()
    if not busy.size or busy.max() <= 0:
        return {"resource": None, "layer": None, "busy_s_per_inference": 0.0}, 0.0
    r = int(np.argmax(busy))
    layer = graph.resource_label[r]
    if graph.resource_kind[r] == DIGITAL:  # name the layer that keeps the digital unit busiest
        per_layer: dict[str, float] = {}
        for i, label in enumerate(graph.labels):
            if graph.resource[i] == r:
                per_layer[label] = per_layer.get(label, 0.0) + graph.duration[i]
        layer = max(per_layer, key=lambda name: (per_layer[name], -list(per_layer).index(name)))
    return {"resource": graph.resource_kind[r], "layer": layer,
            "busy_s_per_inference": float(busy[r]) * NS_TO_S}, float(busy[r])


def estimate(module: Module, target: Any, stream: int = 16, digital_lanes: int = 1,
             buckets: int = 20) -> Performance:
    """Latency, throughput, energy and utilisation of ``module`` on ``target`` (see the module doc)."""
    if stream < 1:
        raise ValueError(f"stream must be >= 1, got {stream}")
    model = CostModel(target, digital_lanes)
    graph = build_task_graph(module, model)
    single = simulate(graph, 1, trace=True)
    run = simulate(graph, stream) if stream > 1 else single
    if stream > 1:
        half = (stream - 1) // 2
        interval = float(run.completion[-1] - run.completion[half]) / (stream - 1 - half)
    else:
        interval = single.makespan
    horizon = run.makespan
    busy_total = np.zeros(len(graph.resource_kind))
    res = np.asarray(graph.resource, np.int64)
    used = res >= 0
    if used.any():
        np.add.at(busy_total, res[used], (run.finish - run.start)[:, used].sum(axis=0))
    capacity = np.maximum(np.asarray(graph.resource_capacity, np.float64), 1.0)
    fraction = busy_total / capacity / horizon if horizon > 0 else np.zeros_like(busy_total)
    kinds = np.asarray(graph.resource_kind, dtype=object)
    timeline, width = utilization_timeline(graph, run, buckets)
    bottleneck, bound = _bottleneck(graph)
    digital = fraction[kinds == DIGITAL]
    return Performance(
        latency_ns=single.makespan,
        clock_hz=float(target.timing.clock_hz),
        interval_ns=interval,
        bound_interval_ns=bound,
        energy_pj=graph.energy_pj(),
        stream=stream,
        timeline=timeline,
        timeline_bucket_ns=width,
        array_busy=fraction[kinds == ARRAY] if kinds.size else np.zeros(0),
        digital_busy=float(digital[0]) if digital.size else 0.0,
        bottleneck=bottleneck,
        critical=critical_path(graph, single),
        layers=_layers(graph),
        arrays=int(sum(a for a, k in zip(graph.resource_arrays, graph.resource_kind) if k == ARRAY)),
        byte_hops=graph.byte_hops,
        digital_lanes=digital_lanes,
    )
