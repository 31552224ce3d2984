"""Lowering an ONNX graph to the ``nn`` dialect, one node at a time, folding constants as it goes.

The importer walks the (checked, opset-converted) graph in order. Each node goes through its
handler from ``HANDLERS`` (registered with ``@handles``) or, for the plain ``ONNX_TO_NN`` ops, the
generic handler: operands from the name map, attributes spelled out with schema defaults, result
types from onnx's per-node shape inference fed with the constant operands, and evaluation with
the reference interpreter when every operand is a constant. Shape arithmetic therefore folds away
as soon as it is imported, and every result type is static.
"""

from __future__ import annotations

import ast
import functools
import itertools
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx.inliner
import onnx.version_converter
from onnx import AttributeProto, NodeProto, TensorProto

from ..errors import AfmcError, FrontendError, InternalError, UnsupportedError, VerifyError
from ..interp import evaluate_op
from ..ir import dtypes
from ..ir.core import Module, Op, TensorType, Value
from ..ir.nn import ONNX_TO_NN, OPSET
from ..ir.verify import check_nn_rules
from ..ir.verify import max_tensor_bytes as configured_max_tensor_bytes
from ..registry import registrar
from .loader import (
    TensorReader,
    check_model_path,
    check_model_proto,
    check_structure,
    first_line,
    format_bytes,
    load_skeleton,
    printable,
    sort_nodes,
    topological_order,
)

#: Results up to this size are folded at import. Shape arithmetic is tiny; weight-sized
#: transforms (Transpose/Cast of a weight) are left to the ``fold-constants`` pass so that
#: importing never copies weights.
FOLD_MAX_BYTES = 1 << 20

#: Constant operands up to this many elements are shown to shape inference as data.
_DATA_MAX_ELEMENTS = 1 << 12

#: INT attributes that hold an ONNX element type; the IR stores the IR dtype name instead.
DTYPE_ATTRS = frozenset({"to", "dtype", "output_dtype", "stash_type"})

#: Ops the version converter rewrites into supported ones (checked again after conversion).
_CONVERTED_AWAY = frozenset({"Upsample"})

_DEFAULT_DOMAINS = ("", "ai.onnx")

Handler = Callable[["Importer", NodeProto, str], None]
HANDLERS: dict[str, Handler] = {}


#: Register an import handler for ONNX op types that need more than the generic lowering.
handles = registrar(HANDLERS, "import handlers")


# -- public API --------------------------------------------------------------------------------


def import_onnx(
    path: str | os.PathLike[str],
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    max_tensor_bytes: int | None = None,
    fold_max_bytes: int = FOLD_MAX_BYTES,
) -> Module:
    """Import the ONNX file at ``path``; external data is memory-mapped from the file's folder.

    ``input_shapes`` gives the full static shape of inputs with dynamic dimensions. Every
    expected failure raises ``FrontendError`` (``UnsupportedError`` for unsupported ops).
    ``max_tensor_bytes`` bounds every tensor, declared or computed (default: ``$AFMC_MAX_TENSOR_BYTES``,
    else ``MAX_TENSOR_BYTES``); a larger one is refused by name and size before it is allocated.
    """
    file = os.fspath(path)
    limit = max_tensor_bytes if max_tensor_bytes is not None else configured_max_tensor_bytes()

    def run() -> Module:
        model, carved = load_skeleton(file)
        reader = TensorReader(os.path.dirname(os.path.abspath(file)), file, limit)
        # A carved skeleton is small and complete: check it in memory rather than have the
        # checker parse the whole file (weights included) again; so is a graph put in order here.
        reordered = sort_nodes(model.graph)
        check: Callable[[onnx.ModelProto], None] = (
            (lambda m: check_model_proto(m, file)) if carved or reordered else (lambda m: check_model_path(file))
        )
        return _import(model, input_shapes, reader, check, fold_max_bytes)

    return _guarded(file, run)


def import_model(
    model: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    base_dir: str | None = None,
    *,
    max_tensor_bytes: int | None = None,
    fold_max_bytes: int = FOLD_MAX_BYTES,
) -> Module:
    """Import an in-memory model; ``base_dir`` is where its external data files live, if any."""
    limit = max_tensor_bytes if max_tensor_bytes is not None else configured_max_tensor_bytes()

    def run() -> Module:
        check_structure(model, None)
        reader = TensorReader(base_dir, None, limit)
        ordered = model
        if topological_order(model.graph) is not None:  # sort a copy: the caller's model stays as it is
            ordered = onnx.ModelProto()
            ordered.CopyFrom(model)
            sort_nodes(ordered.graph)
        return _import(ordered, input_shapes, reader, lambda m: check_model_proto(m, None), fold_max_bytes)

    return _guarded(None, run)


def _guarded(file: str | None, run: Callable[[], Module]) -> Module:
    """No raw exception leaves the frontend: a surprise is an ``InternalError`` (exit code 1)."""
    try:
        return run()
    except AfmcError as exc:
        if exc.file is None:
            exc.file = file
        # names and op types come from the model: a control character in one stays on this line
        exc.message = printable(exc.message)
        exc.node = printable(exc.node) if exc.node else exc.node
        raise
    except UnicodeDecodeError:  # protobuf checks UTF-8 only when a string field is read
        raise FrontendError("not a valid ONNX model: a string field is not valid UTF-8", file=file) from None
    except Exception as exc:
        raise InternalError(f"the ONNX frontend failed: {type(exc).__name__}: {first_line(exc)}", file=file) from exc


def _import(
    model: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None,
    reader: TensorReader,
    check: Callable[[onnx.ModelProto], None],
    fold_max_bytes: int,
) -> Module:
    reader.validate(model)
    checked = bool(model.functions)
    if checked:  # calls to model-local functions (torch.onnx's dynamo exporter) become plain nodes
        check(model)
        try:
            model = onnx.inliner.inline_local_functions(model)
        except Exception as exc:  # noqa: BLE001  (onnx's C++ layer raises assorted types)
            raise FrontendError(f"cannot inline the model's local functions: {first_line(exc)}") from None
    # unsupported ops first: an op unknown to onnx gets this message rather than the checker's
    raise_unsupported(model.graph.node, allowed=_CONVERTED_AWAY, constants=graph_constants(model.graph))
    if not checked:
        check(model)
    model, opset, originals = canonical_opset(model)
    raise_unsupported(model.graph.node, constants=graph_constants(model.graph))
    return Importer(model.graph, opset, reader, fold_max_bytes, originals).run(input_shapes)


# -- op support and opsets ---------------------------------------------------------------------


def node_label(node: NodeProto, index: int, prefix: str = "") -> str:
    """The node's location: its name, or ``<OpType>_<index>`` when it has none. A node of torch.onnx's
    dynamo exporter (named ``node_MatMul_48``) is prefixed with the torch module it came from, from its
    ``pkg.torch.onnx.name_scopes`` metadata (``bert.encoder.layer.0.attention.self.query/node_MatMul_48``),
    as the TorchScript exporter's names are: reports and ``keep-digital`` patterns can tell layers apart."""
    name = node.name or f"{prefix}{node.op_type}_{index}"
    scope = _torch_module(node)
    return f"{scope}/{name}" if scope else name


def _torch_module(node: NodeProto) -> str:
    """The dotted path of the torch module a dynamo-exported node came from ('' when unknown or the root)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                return ""
            if (isinstance(scopes, list) and len(scopes) >= 2 and scopes[0] == ""
                    and all(isinstance(item, str) for item in scopes)):
                return printable(scopes[-2])
            return ""
    return ""


def supported_op_types() -> frozenset[str]:
    """Every default-domain op type the frontend imports: the ``nn`` ops, the ones with their own
    handler (Constant, Size, Dropout, If, ...) and the ones the version converter rewrites away."""
    return frozenset(ONNX_TO_NN) | frozenset(HANDLERS) | _CONVERTED_AWAY


def is_supported(node: NodeProto) -> bool:
    return node.domain in _DEFAULT_DOMAINS and (node.op_type in HANDLERS or node.op_type in ONNX_TO_NN)


def raise_unsupported(
    nodes: Iterable[NodeProto],
    prefix: str = "",
    allowed: frozenset[str] = frozenset(),
    constants: frozenset[str] = frozenset(),
) -> None:
    """One error listing every unsupported op type, with one node name (and a count) each.

    A node that ``is_foldable`` on the values in ``constants`` is not listed: the importer
    evaluates it once with onnx's reference implementation (an exotic op in a shape subgraph).
    """
    found: dict[str, list[Any]] = {}
    for index, node in enumerate(nodes):
        if is_supported(node) or (node.domain in _DEFAULT_DOMAINS and node.op_type in allowed):
            continue
        if is_foldable(node, constants):
            continue
        key = node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"
        if key in found:
            found[key][1] += 1
            continue
        subgraph = any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute)
        found[key] = [node_label(node, index, prefix), 1, subgraph]
    if not found:
        return
    parts = []
    for key, (label, count, subgraph) in found.items():
        text = f"{key} (node '{label}'"
        text += f" and {count - 1} more" if count > 1 else ""
        text += "; has a subgraph, not supported" if subgraph else ""
        parts.append(text + ")")
    raise UnsupportedError("unsupported ops: " + ", ".join(parts))


#: Ops whose results differ from run to run: never folded, whatever their inputs.
_RANDOM_OPS = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}
)

#: Ops whose results are always constants at import, whatever their inputs (every type is static).
_ALWAYS_CONSTANT = frozenset({"Constant", "Shape", "Size"})


def _has_subgraph(node: NodeProto) -> bool:
    return any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute)


def is_foldable(node: NodeProto, constants: frozenset[str] | set[str]) -> bool:
    """True for a deterministic default-domain ONNX op without subgraphs whose inputs are all in
    ``constants``: its results can be computed once, at import."""
    return (
        node.domain in _DEFAULT_DOMAINS
        and node.op_type not in _RANDOM_OPS
        and not _has_subgraph(node)
        and onnx.defs.has(node.op_type)
        and all(name in constants for name in node.input if name)
    )


def graph_constants(graph: onnx.GraphProto, known: Iterable[str] = ()) -> frozenset[str]:
    """The values of ``graph`` that are known at import: initializers, ``known`` (the outer
    scope's constants), results of Constant/Shape/Size, and results of foldable nodes on those.
    If outputs count as run-time values (conservative: only the taken branch is imported)."""
    constants = set(known)
    constants.update(t.name for t in graph.initializer)
    constants.update(s.values.name for s in graph.sparse_initializer)
    for node in graph.node:
        fixed = node.domain in _DEFAULT_DOMAINS and node.op_type in _ALWAYS_CONSTANT
        if fixed or is_foldable(node, constants):
            constants.update(name for name in node.output if name)
    return frozenset(constants)


def _all_op_types(graph: onnx.GraphProto) -> set[str]:
    types: set[str] = set()
    for node in graph.node:
        if node.domain in _DEFAULT_DOMAINS:
            types.add(node.op_type)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                types |= _all_op_types(sub)
    return types


def _schema_at(op_type: str, opset: int) -> onnx.defs.OpSchema | None:
    try:
        return _schema(op_type, opset)
    except onnx.defs.SchemaError:
        return None


def _signature(schema: onnx.defs.OpSchema) -> tuple[Any, ...]:
    """Everything of a schema but its type constraints: attributes with defaults, inputs, outputs."""
    attrs = tuple(
        sorted((n, str(a.type), a.required, a.default_value.SerializeToString()) for n, a in schema.attributes.items())
    )
    inputs = tuple((i.name, str(i.option), i.type_str) for i in schema.inputs)
    outputs = tuple((o.name, str(o.option), o.type_str) for o in schema.outputs)
    return attrs, inputs, outputs, schema.min_input, schema.max_input, schema.min_output, schema.max_output


def _type_constraints(schema: onnx.defs.OpSchema) -> tuple[Any, ...]:
    return tuple(sorted((t.type_param_str, tuple(sorted(t.allowed_type_strs))) for t in schema.type_constraints))


@functools.cache
def same_meaning(op_type: str, opset_a: int, opset_b: int) -> bool:
    """True when ``op_type`` means the same at both opsets: the same schema, or only new element
    types added in between (ONNX bumps an op's version for that alone). A version step that keeps
    the signature and the types changed meaning (negative axes, padding rules): not the same."""
    low, high = sorted((opset_a, opset_b))
    chain: list[onnx.defs.OpSchema] = []
    for opset in range(low, high + 1):
        schema = _schema_at(op_type, opset)
        if schema is None:
            return False
        if not chain or chain[-1].since_version != schema.since_version:
            chain.append(schema)
    return all(
        _signature(a) == _signature(b) and _type_constraints(a) != _type_constraints(b) for a, b in itertools.pairwise(chain)
    )


def canonical_opset(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int, dict[str, TensorProto]]:
    """The model at opset ``OPSET``: as is when none of its ops changed meaning in between, else
    through the version converter (which costs ~6 ms even on a tiny model).

    The converter serialises the whole model, so it sees a light copy whose large embedded
    initializers are data-less stubs; the third result maps their names to the originals.
    """
    versions = [o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS]
    if not versions:
        raise FrontendError("the model does not import the default ONNX opset")
    version = int(versions[0])
    if version == OPSET:
        return model, OPSET, {}
    changed = sorted(t for t in _all_op_types(model.graph) if not same_meaning(t, version, OPSET))
    if not changed:
        return model, OPSET, {}  # every op means the same at both opsets: nothing to convert
    light, originals = _light_copy(model)
    try:
        converted = onnx.version_converter.convert_version(light, OPSET)
    except Exception as exc:  # noqa: BLE001  (onnx's C++ layer raises assorted types)
        # the converter's text is "<source path>: adapt: Assertion `...` failed: <reason>"
        reason = first_line(exc).rsplit(" failed: ", 1)[-1]
        if version > OPSET:
            raise UnsupportedError(
                f"the model's opset {version} is newer than afmc's opset {OPSET}; {', '.join(changed)} changed "
                f"since, and the version converter cannot convert back: {reason}"
            ) from None
        raise FrontendError(f"cannot convert opset {version} to {OPSET}: {reason}") from None
    # the converter drops node metadata (the dynamo exporter's module scopes, see `node_label`)
    metadata = {node.name: node.metadata_props for node in model.graph.node if node.name and node.metadata_props}
    for node in converted.graph.node:
        if not node.metadata_props and node.name in metadata:
            node.metadata_props.extend(metadata[node.name])
    return converted, OPSET, originals


#: Embedded initializers above this size are stubbed out for the version converter. Small ones
#: stay: down-conversion adapters read axes/shape initializers.
_STUB_MIN_BYTES = 1 << 16


def _light_copy(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, TensorProto]]:
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    graph, source = light.graph, model.graph
    graph.name = source.name
    graph.node.extend(source.node)
    graph.input.extend(source.input)
    graph.output.extend(source.output)
    graph.value_info.extend(source.value_info)
    graph.sparse_initializer.extend(source.sparse_initializer)
    originals: dict[str, TensorProto] = {}
    for tensor in source.initializer:
        if tensor.data_location != TensorProto.EXTERNAL and tensor.ByteSize() > _STUB_MIN_BYTES:
            graph.initializer.append(TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims))
            originals[tensor.name] = tensor
        else:
            graph.initializer.append(tensor)
    return light, originals


@functools.cache
def _schema(op_type: str, opset: int) -> onnx.defs.OpSchema:
    return onnx.defs.get_schema(op_type, opset, "")


# -- attributes --------------------------------------------------------------------------------

_ATTR_READERS: dict[int, Callable[[AttributeProto], Any]] = {
    AttributeProto.INT: lambda a: int(a.i),
    AttributeProto.FLOAT: lambda a: float(np.float32(a.f)),
    AttributeProto.STRING: lambda a: a.s.decode("utf-8", "replace"),
    AttributeProto.INTS: lambda a: tuple(int(v) for v in a.ints),
    AttributeProto.FLOATS: lambda a: tuple(float(np.float32(v)) for v in a.floats),
    AttributeProto.STRINGS: lambda a: tuple(s.decode("utf-8", "replace") for s in a.strings),
}


def _dtype_name(code: int, what: str) -> str:
    try:
        return dtypes.from_onnx(code)
    except KeyError as exc:
        raise UnsupportedError(f"{what}: {exc.args[0]}") from None


# -- the importer ------------------------------------------------------------------------------


def _module_name(graph_name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", graph_name).strip("_")
    if not name:
        return "main"
    return f"m_{name}" if name[0].isdigit() else name


def _symbol_sizes(pairs: Iterable[tuple[list[int | str] | None, tuple[int, ...]]]) -> dict[str, set[int]]:
    """Named dimensions (ONNX ``dim_param``) to the sizes the given shapes give them, from (declared
    dims, given shape) pairs. A name with one size fixes that dimension of the inputs not given (ONNX:
    one name, one size in a graph); a name given two sizes fixes nothing."""
    sizes: dict[str, set[int]] = {}
    for dims, shape in pairs:
        for dim, size in zip(dims or (), shape):
            if isinstance(dim, str) and dim != "?":
                sizes.setdefault(dim, set()).add(size)
    return sizes


def _type_of(type_proto: onnx.TypeProto) -> tuple[int, list[int | str] | None] | None:
    """(elem type, dims) of a tensor TypeProto; a dim is an int, a symbol, or '?'; None if not a tensor."""
    if type_proto.WhichOneof("value") != "tensor_type":
        return None
    tensor = type_proto.tensor_type
    if not tensor.HasField("shape"):
        return tensor.elem_type, None
    dims: list[int | str] = []
    for dim in tensor.shape.dim:
        kind = dim.WhichOneof("value")
        if kind == "dim_value" and dim.dim_value >= 0:
            dims.append(int(dim.dim_value))
        else:
            dims.append(dim.dim_param if kind == "dim_param" and dim.dim_param else "?")
    return tensor.elem_type, dims


class Importer:
    """The state of one import: the module being built and the ONNX name -> Value map."""

    def __init__(
        self,
        graph: onnx.GraphProto,
        opset: int,
        reader: TensorReader,
        fold_max_bytes: int,
        originals: Mapping[str, TensorProto] | None = None,
    ) -> None:
        self.graph = graph
        self.originals = dict(originals or {})
        self.opset = opset
        self.opset_imports = [onnx.helper.make_opsetid("", opset)]
        self.reader = reader
        self.fold_max_bytes = fold_max_bytes
        self.module = Module(_module_name(graph.name))
        self.env: dict[str, Value] = {}
        self.pending: dict[str, TensorProto | onnx.SparseTensorProto] = {}
        self.declared: dict[str, tuple[int, list[int | str] | None]] = {}
        self.onnx_names: set[str] = set()
        #: Constant ONNX sequences (lists of arrays) between folded nodes; never in the module.
        self.sequences: dict[str, list[np.ndarray]] = {}
        self._synthetic = 0

    # -- driving -------------------------------------------------------------------------------
    def run(self, input_shapes: Mapping[str, Sequence[int]] | None) -> Module:
        self._collect_names(self.graph)
        self._add_graph_constants(self.graph)
        self._add_inputs(input_shapes or {})
        self.import_nodes(self.graph.node)
        self._set_outputs()
        self.module.remove_dead()
        return self.module

    def import_nodes(self, nodes: Iterable[NodeProto], prefix: str = "") -> None:
        for index, node in enumerate(nodes):
            loc = node_label(node, index, prefix)
            handler = HANDLERS.get(node.op_type) or (
                import_generic if node.op_type in ONNX_TO_NN else import_by_reference
            )
            try:
                handler(self, node, loc)
            except AfmcError as exc:
                if exc.node is None:
                    exc.node = loc
                raise

    def _collect_names(self, graph: onnx.GraphProto) -> None:
        names = self.onnx_names
        names.update(v.name for v in graph.input)
        names.update(v.name for v in graph.output)
        names.update(t.name for t in graph.initializer)
        for node in graph.node:
            names.update(node.input)
            names.update(node.output)
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    self._collect_names(sub)

    def _add_graph_constants(self, graph: onnx.GraphProto) -> None:
        """Initializers become constants on first use; value_info and outputs are declared types."""
        for tensor in graph.initializer:
            self.pending[tensor.name] = self.originals.get(tensor.name, tensor)
        for sparse in graph.sparse_initializer:
            self.pending[sparse.values.name] = sparse
        for info in list(graph.value_info) + list(graph.output):
            parsed = _type_of(info.type)
            if parsed is not None and info.name:
                self.declared[info.name] = parsed

    def _add_inputs(self, input_shapes: Mapping[str, Sequence[int]]) -> None:
        real = [v for v in self.graph.input if v.name not in self.pending]
        names = [v.name for v in real]
        unknown = [n for n in input_shapes if n not in names]
        if unknown:
            listed = ", ".join(f"'{n}'" for n in names) or "none"
            raise FrontendError(
                f"input shape given for unknown input {', '.join(repr(n) for n in unknown)}; the model's inputs are {listed}"
            )
        missing: list[str] = []
        parsed_inputs = []
        for info in real:
            parsed = _type_of(info.type)
            if parsed is None:
                raise UnsupportedError(f"input '{info.name}' is not a tensor ({info.type.WhichOneof('value')})")
            parsed_inputs.append((info, parsed))
        given = {info.name: self._given_shape(info.name, input_shapes[info.name], parsed[1])
                 for info, parsed in parsed_inputs if info.name in input_shapes}
        sizes = _symbol_sizes((parsed[1], given[info.name]) for info, parsed in parsed_inputs if info.name in given)
        bound = {name: next(iter(values)) for name, values in sizes.items() if len(values) == 1}
        for info, parsed in parsed_inputs:
            dtype = _dtype_name(parsed[0], f"input '{info.name}'")
            dims = parsed[1]
            if info.name in given:
                shape = given[info.name]
            elif dims is not None and all(isinstance(d, int) or d in bound for d in dims):
                # a named dimension that a given shape fixes (ONNX: one name, one size in a graph)
                shape = tuple(d if isinstance(d, int) else bound[d] for d in dims)
            else:
                example = "x".join(str(d) if isinstance(d, int) else str(bound.get(d, 1)) for d in dims) if dims else "1x..."
                shown = "unknown rank" if dims is None else f"dynamic dimensions {dims}"
                clashes = [f"'{d}' is {' and '.join(map(str, sorted(sizes[d])))} in the given shapes"
                           for d in dict.fromkeys(dims or ()) if isinstance(d, str) and len(sizes.get(d, ())) > 1]
                note = f" ({'; '.join(clashes)})" if clashes else ""
                missing.append(f"input '{info.name}' has {shown}{note}; give --input-shape {info.name}={example}")
                continue
            value_type = TensorType(shape, dtype)
            self._check_bytes(value_type, f"input '{info.name}'")
            self.env[info.name] = self.module.add_input(info.name, value_type)
        if missing:
            raise FrontendError("; ".join(missing))

    @staticmethod
    def _given_shape(name: str, given: Sequence[int], dims: list[int | str] | None) -> tuple[int, ...]:
        try:
            shape = tuple(int(d) for d in given)
            if any(int(d) != d for d in given):
                raise ValueError
        except (TypeError, ValueError):
            raise FrontendError(f"input shape for '{name}' must be a sequence of integers, got {given!r}") from None
        text = "x".join(map(str, shape))
        if any(d <= 0 for d in shape):
            raise FrontendError(f"input shape {name}={text}: dimensions must be positive")
        if dims is not None:
            if len(dims) != len(shape):
                raise FrontendError(f"input shape {name}={text} has rank {len(shape)}; the model's input has rank "
                                    f"{len(dims)} {dims}")
            clashes = [i for i, (d, s) in enumerate(zip(dims, shape)) if isinstance(d, int) and d != s]
            if clashes:
                raise FrontendError(f"input shape {name}={text} contradicts the model's static dimensions {dims}")
        return shape

    def _set_outputs(self) -> None:
        for info in self.graph.output:
            if info.name in self.sequences:
                raise UnsupportedError(f"graph output '{info.name}' is an ONNX sequence; afmc's IR holds tensors only")
            value = self.value(info.name)
            if value is None:
                raise FrontendError(f"graph output '{info.name}' is not produced by any node")
            if value.name != info.name:  # an alias (inlined If): give the output its exact name
                result = Value(info.name, value.type)
                self.module.claim_name(info.name)
                self.module.append(Op("nn.identity", [value], [result], {}, info.name))
                value = result
            self.module.outputs.append(value)

    # -- values --------------------------------------------------------------------------------
    def value(self, name: str) -> Value | None:
        """The Value for an ONNX name, materialising an initializer on first use; '' is None."""
        if not name:
            return None
        found = self.env.get(name)
        if found is not None:
            return found
        tensor = self.pending.pop(name, None)
        if tensor is None:
            return None
        array = self._read_sparse(tensor) if isinstance(tensor, onnx.SparseTensorProto) else self.reader.read(tensor, name)
        return self.add_constant(array, name, name)

    def operand(self, name: str) -> Value | None:
        if name in self.sequences:
            raise UnsupportedError(f"'{name}' is an ONNX sequence; afmc's IR holds tensors only")
        value = self.value(name)
        if value is None and name:
            raise FrontendError(
                f"input '{name}' is not defined before this node (the graph is not in topological order, "
                "or the value does not exist)"
            )
        return value

    def bind(self, name: str, value: Value) -> None:
        if name in self.env or name in self.pending:
            raise FrontendError(f"value '{name}' is defined twice")
        self.env[name] = value

    def bind_sequence(self, name: str, items: list[np.ndarray]) -> None:
        """A constant sequence from a folded node, for the folded nodes that consume it."""
        if name in self.env or name in self.pending or name in self.sequences:
            raise FrontendError(f"value '{name}' is defined twice")
        for index, item in enumerate(items):
            self._check_bytes(TensorType.of(item), f"'{name}'[{index}]")
        self.sequences[name] = items

    def constant(self, value: Value | None) -> np.ndarray | None:
        return self.module.constant_of(value)

    def constant_names(self) -> set[str]:
        """ONNX names bound to constants so far, and initializers not yet materialised."""
        return {name for name, value in self.env.items() if self.constant(value) is not None} | set(self.pending)

    def add_constant(self, array: np.ndarray, name: str, loc: str) -> Value:
        """Put ``array`` in the pool under the ONNX name ``name`` and bind it."""
        self._check_bytes(TensorType.of(np.asarray(array)), f"'{name}'")
        _, op = self.module.add_constant(array, name, loc)
        self.module.append(op)
        self.bind(name, op.result)
        return op.result

    def synthetic_name(self, hint: str) -> str:
        """A fresh name that no ONNX value and no module value uses (for outputs the model omitted,
        and the values of ops a handler lowers a node into). It is not reserved: ``emit`` claims it
        (reserving it here made ``emit`` refuse it as a duplicate)."""
        while True:
            self._synthetic += 1
            candidate = f"{hint}.{self._synthetic}"
            if candidate not in self.onnx_names and not self.module.has_name(candidate):
                return candidate

    def _check_bytes(self, value_type: TensorType, what: str) -> None:
        if value_type.is_static and value_type.nbytes > self.reader.max_tensor_bytes:
            raise FrontendError(
                f"{what} would be {format_bytes(value_type.nbytes)} ({value_type}), over the "
                f"{format_bytes(self.reader.max_tensor_bytes)} limit for one tensor"
            )

    def _read_sparse(self, sparse: onnx.SparseTensorProto) -> np.ndarray:
        name = sparse.values.name
        values = self.reader.read(sparse.values, name)
        indices = self.reader.read(sparse.indices, name).astype(np.int64)
        shape = tuple(int(d) for d in sparse.dims)
        dense_type = TensorType(shape, dtypes.from_numpy(values.dtype))
        self._check_bytes(dense_type, f"sparse tensor '{name}'")
        dense = np.zeros(shape, values.dtype)
        try:
            if indices.ndim == 1:
                dense.reshape(-1)[indices] = values
            else:
                dense[tuple(indices.T)] = values
        except (IndexError, ValueError) as exc:
            raise FrontendError(f"sparse tensor '{name}' has bad indices: {exc}") from None
        return dense

    # -- node lowering -------------------------------------------------------------------------
    def attributes(self, node: NodeProto) -> dict[str, Any]:
        """Every schema attribute: given, or its default; dtype codes as IR dtype names."""
        schema = self.schema(node)
        given = {a.name: a for a in node.attribute}
        unknown = sorted(set(given) - set(schema.attributes))
        if unknown:
            raise FrontendError(f"{node.op_type} has no attribute {', '.join(repr(n) for n in unknown)}")
        result: dict[str, Any] = {}
        for name, spec in schema.attributes.items():
            attr = given.get(name)
            if attr is None:
                if spec.required:
                    raise FrontendError(f"{node.op_type} needs attribute '{name}'")
                if spec.default_value.type == AttributeProto.UNDEFINED:
                    continue  # optional without a default (Conv pads, ...): left out
                attr = spec.default_value
            result[name] = self.attribute_value(node, attr, name)
        return result

    def attribute_value(self, node: NodeProto, attr: AttributeProto, name: str) -> Any:
        if attr.ref_attr_name:
            raise UnsupportedError(f"attribute '{name}' refers to a function attribute")
        if attr.type == AttributeProto.TENSOR:
            return self.reader.read(attr.t, f"{node.op_type}.{name}")
        read = _ATTR_READERS.get(attr.type)
        if read is None:
            kind = AttributeProto.AttributeType.Name(attr.type)
            raise UnsupportedError(f"attribute '{name}' of type {kind} is not supported")
        value = read(attr)
        if name in DTYPE_ATTRS and attr.type == AttributeProto.INT and not (name == "output_dtype" and value == 0):
            value = _dtype_name(value, f"attribute '{name}'")  # QuantizeLinear's output_dtype 0: not given
        return value

    def schema(self, node: NodeProto) -> onnx.defs.OpSchema:
        try:
            return _schema(node.op_type, self.opset)
        except onnx.defs.SchemaError:
            raise UnsupportedError(f"{node.op_type} is not an ONNX op at opset {self.opset}") from None

    def output_names(self, node: NodeProto, loc: str) -> list[str]:
        """The node's outputs without trailing omitted ones; omitted ones in between get fresh names."""
        names = list(node.output)
        while names and not names[-1]:
            names.pop()
        return [n or self.synthetic_name(f"{loc}.unused") for n in names]

    def infer(
        self, node: NodeProto, names: list[str], operands: Sequence[Value | None], attrs: Mapping[str, Any] | None = None
    ) -> list[TensorType | None]:
        """Result types from onnx's shape inference for this node alone (corrected by ``SHAPE_FIXES``
        given the node's ``attrs``), cross-checked with the model's declared types; None when the
        rank is unknown."""
        input_types: dict[str, onnx.TypeProto] = {}
        input_data: dict[str, TensorProto] = {}
        for name, value in zip(node.input, operands):
            if value is None:
                continue
            input_types[name] = onnx.helper.make_tensor_type_proto(dtypes.to_onnx(value.type.dtype), value.type.shape)
            array = self.constant(value)
            if array is not None and array.size <= _DATA_MAX_ELEMENTS:
                input_data[name] = onnx.numpy_helper.from_array(np.asarray(array), name)
        if list(node.output) != names:
            renamed = NodeProto()
            renamed.CopyFrom(node)
            del renamed.output[:]
            renamed.output.extend(names)
            node = renamed
        try:
            inferred = onnx.shape_inference.infer_node_outputs(
                self.schema(node), node, input_types, input_data, opset_imports=self.opset_imports
            )
        except Exception as exc:  # noqa: BLE001  (InferenceError, ValidationError, SchemaError, ...)
            shapes = ", ".join("none" if v is None else str(v.type) for v in operands)
            raise FrontendError(f"shape inference failed on operands {shapes}: {first_line(exc)}") from None
        fix = SHAPE_FIXES.get(node.op_type)
        types: list[TensorType | None] = []
        for index, name in enumerate(names):
            parsed = _type_of(inferred[name]) if name in inferred else None
            if parsed is None or parsed[0] == TensorProto.UNDEFINED:
                raise FrontendError(f"cannot infer the type of output '{name}'")
            dims = parsed[1]
            if fix is not None and attrs is not None:
                dims = fix(attrs, operands, index, dims)
            dims = self._merge_declared(name, parsed[0], dims)
            dtype = _dtype_name(parsed[0], f"output '{name}'")
            types.append(None if dims is None else TensorType(tuple(d if isinstance(d, int) else -1 for d in dims), dtype))
        return types

    def _merge_declared(self, name: str, elem: int, dims: list[int | str] | None) -> list[int | str] | None:
        """Cross-check with the model's value_info/outputs; fill dims only the model knows."""
        declared = self.declared.get(name)
        if declared is None:
            return dims
        d_elem, d_dims = declared
        if d_elem not in (TensorProto.UNDEFINED, elem):
            raise FrontendError(
                f"output '{name}' is {TensorProto.DataType.Name(elem)} by shape inference but the model declares "
                f"{TensorProto.DataType.Name(d_elem) if d_elem in TensorProto.DataType.values() else d_elem}"
            )
        if d_dims is None:
            return dims
        if dims is None:
            return d_dims
        if len(d_dims) != len(dims):
            raise FrontendError(f"output '{name}' has rank {len(dims)} {dims} by shape inference; the model declares {d_dims}")
        merged: list[int | str] = []
        for mine, theirs in zip(dims, d_dims):
            if isinstance(mine, int) and isinstance(theirs, int) and mine != theirs:
                raise FrontendError(f"output '{name}' has shape {dims} by shape inference; the model declares {d_dims}")
            merged.append(mine if isinstance(mine, int) else theirs)
        return merged

    def emit(
        self,
        nn_name: str,
        operands: Sequence[Value | None],
        types: Sequence[TensorType | None],
        names: Sequence[str],
        attrs: Mapping[str, Any],
        loc: str,
    ) -> None:
        """Fold the op if its operands are constants and its results small, else append it."""
        self._check_rules(nn_name, operands, attrs, loc)
        args = [self.constant(v) for v in operands]
        constant = all(a is not None for a, v in zip(args, operands) if v is not None)
        static = all(t is not None and t.is_static for t in types)
        if constant and static:
            fold = sum(t.nbytes for t in types if t is not None) <= self.fold_max_bytes
        else:  # shape inference could not tell: evaluation is the only way to a static type
            fold = constant and sum(a.nbytes for a in args if a is not None) <= self.fold_max_bytes
        if fold:
            arrays = self._evaluate(nn_name, operands, args, types, names, attrs, loc)
            if arrays is not None:
                for name, array in zip(names, arrays):
                    self.add_constant(array, name, loc)
                return
        for name, value_type in zip(names, types):
            if value_type is None or not value_type.is_static:
                shown = "unknown rank" if value_type is None else str(value_type)
                # shape-like operands (axes, pads, shapes) are integer tensors: name the runtime ones
                culprits = [
                    f"'{v.name}'" for v, a in zip(operands, args) if v is not None and a is None and v.type.dtype[0] in "iu"
                ]
                which = f"the values of {', '.join(culprits)}, which are" if culprits else "values that are"
                raise UnsupportedError(  # data-dependent shapes: a feature afmc does not have
                    f"cannot infer a static shape for output '{name}' ({shown}); it depends on {which} "
                    "not constant at compile time"
                )
            self._check_bytes(value_type, f"output '{name}'")
        results = []
        for name, value_type in zip(names, types):
            if name in self.env or name in self.pending:
                raise FrontendError(f"value '{name}' is defined twice")
            self.module.claim_name(name)
            results.append(Value(name, value_type))  # type: ignore[arg-type]
        self.module.append(Op(nn_name, operands, results, attrs, loc))
        for name, result in zip(names, results):
            if name in self.onnx_names:
                self.bind(name, result)

    @staticmethod
    def _check_rules(nn_name: str, operands: Sequence[Value | None], attrs: Mapping[str, Any], loc: str) -> None:
        """The IR's checks of operand shapes and attribute values (``verify.NN_RULES``): a node
        that onnx's checker and inference let through (a rank-1 Conv weight, group 0) stops here."""
        probe = Op(nn_name, operands, [], attrs, loc)
        try:
            check_nn_rules(probe)
        except VerifyError as exc:
            raise FrontendError(exc.message) from None
        finally:
            probe.drop_operands()

    def _evaluate(
        self,
        nn_name: str,
        operands: Sequence[Value | None],
        args: list[np.ndarray | None],
        types: Sequence[TensorType | None],
        names: Sequence[str],
        attrs: Mapping[str, Any],
        loc: str,
    ) -> list[np.ndarray] | None:
        """The op's results on constant operands, or None when the interpreter lacks the op."""
        probe_types = [t if t is not None else TensorType((), "f32") for t in types]
        probe = Op(nn_name, operands, [Value(n, t) for n, t in zip(names, probe_types)], attrs, loc)
        try:
            arrays = evaluate_op(probe, args)
        except UnsupportedError:
            return None
        except AfmcError:
            raise
        except Exception as exc:  # noqa: BLE001  (a numpy error on this model's constants)
            raise FrontendError(f"evaluating this constant {nn_name} failed: {first_line(exc)}") from None
        finally:
            probe.drop_operands()
        typed = []
        for name, array, value_type in zip(names, arrays, types):
            array = np.asarray(array)
            if value_type is not None:
                array = array.astype(dtypes.to_numpy(value_type.dtype), copy=False)
                expected = value_type.shape
                if len(expected) != array.ndim or any(e >= 0 and e != a for e, a in zip(expected, array.shape)):
                    raise InternalError(
                        f"{nn_name} folded '{name}' to shape {list(array.shape)}, shape inference says {value_type}"
                    )
            typed.append(array)
        return typed


# -- handlers ----------------------------------------------------------------------------------


def import_generic(imp: Importer, node: NodeProto, loc: str) -> None:
    """An op of ``ONNX_TO_NN``: same operands, all attributes, inferred static result types."""
    operands = [imp.operand(name) for name in node.input]
    _check_element_types(imp.schema(node), operands)
    attrs = imp.attributes(node)
    check = NODE_CHECKS.get(node.op_type)
    if check is not None:
        check(attrs, operands)
    names = imp.output_names(node, loc)
    types = imp.infer(node, names, operands, attrs)
    imp.emit(ONNX_TO_NN[node.op_type], operands, types, names, attrs, loc)


def _check_element_types(schema: onnx.defs.OpSchema, operands: Sequence[Value | None]) -> None:
    """An operand type the op's schema at ``OPSET`` does not allow (a newer model's float16 Celu,
    added in opset 24) has no ``nn`` op: say so by name rather than let shape inference fail."""
    allowed = {c.type_param_str: c.allowed_type_strs for c in schema.type_constraints}
    for index, value in enumerate(operands):
        if value is None or not schema.inputs:
            continue
        formal = schema.inputs[min(index, len(schema.inputs) - 1)]
        type_str = f"tensor({_ONNX_TYPE_NAMES.get(value.type.dtype, '')})"
        if formal.type_str in allowed and type_str not in allowed[formal.type_str]:
            raise UnsupportedError(
                f"{schema.name} does not take {value.type.dtype} ({formal.name}) at opset {OPSET}, the opset afmc "
                "works in"
            )


#: IR element type -> ONNX type-string name.
_ONNX_TYPE_NAMES = {
    "f16": "float16", "f32": "float", "f64": "double", "i8": "int8", "i16": "int16", "i32": "int32",
    "i64": "int64", "u8": "uint8", "u16": "uint16", "u32": "uint32", "u64": "uint64", "bool": "bool",
    "str": "string",
}


def import_by_reference(imp: Importer, node: NodeProto, loc: str) -> None:
    """An op afmc does not implement, on constant operands (``raise_unsupported`` let it through as
    ``is_foldable``): evaluated once with onnx's reference implementation, its tensor results become
    constants. Shape inference sizes them first, so the tensor size limit holds before anything is
    computed. Sequence results (SplitToSequence feeding ConcatFromSequence) are kept aside for the
    next folded node; the IR holds tensors only. Operands that did not fold (a weight-sized result
    left to the ``fold-constants`` pass) make it the unsupported op it is."""
    operands: list[Value | None] = []
    args: list[Any] = []
    for name in node.input:
        if name in imp.sequences:
            operands.append(None)
            args.append(imp.sequences[name])
            continue
        value = imp.operand(name)
        array = imp.constant(value)
        if value is not None and array is None:
            raise UnsupportedError(
                f"unsupported op {node.op_type}: afmc does not implement it, and its inputs, though computed "
                f"from constants, were not folded at import (results over {format_bytes(imp.fold_max_bytes)} are "
                "left to the fold-constants pass)"
            )
        operands.append(value)
        args.append(array)
    names = imp.output_names(node, loc)
    types: list[TensorType | None] = [None] * len(names)
    if not _has_sequences(imp.schema(node)):
        types = imp.infer(node, names, operands, imp.attributes(node))
        for name, value_type in zip(names, types):
            if value_type is not None:
                imp._check_bytes(value_type, f"output '{name}'")
    for name, result, value_type in zip(names, _reference_run(node, names, args), types):
        if not isinstance(result, np.ndarray):
            imp.bind_sequence(name, result)
            continue
        if value_type is not None:
            if value_type.is_static and tuple(result.shape) != value_type.shape:
                raise FrontendError(
                    f"onnx's reference {node.op_type} gives '{name}' shape {list(result.shape)}, shape inference "
                    f"{value_type}"
                )
            result = result.astype(dtypes.to_numpy(value_type.dtype), copy=False)
        imp.add_constant(result, name, loc)


def _has_sequences(schema: onnx.defs.OpSchema) -> bool:
    """True when an input or output of the op may be a sequence or an optional, not a tensor."""
    allowed = {c.type_param_str: c.allowed_type_strs for c in schema.type_constraints}
    formals = (*schema.inputs, *schema.outputs)
    return any(not t.startswith("tensor(") for f in formals for t in allowed.get(f.type_str, [f.type_str]))


def _reference_run(node: NodeProto, names: Sequence[str], args: Sequence[Any]) -> list[Any]:
    """``node`` (outputs renamed to ``names``) run by ``onnx.reference`` at opset ``OPSET``: one
    ndarray per tensor result, a list of them per sequence result."""
    from onnx.reference import ReferenceEvaluator

    single = NodeProto()
    single.CopyFrom(node)
    del single.output[:]
    single.output.extend(names)
    feeds = {name: arg for name, arg in zip(node.input, args) if name and arg is not None}
    try:
        results = ReferenceEvaluator(single, opsets={"": OPSET}).run(None, feeds)
    except Exception as exc:  # noqa: BLE001  (the reference raises whatever numpy raises)
        raise FrontendError(
            f"evaluating this constant {node.op_type} with onnx's reference implementation failed: {first_line(exc)}"
        ) from None
    checked: list[Any] = []
    for name, result in zip(names, results):
        items = result if isinstance(result, list) else [result]
        if result is None or not all(isinstance(i, np.ndarray) or np.isscalar(i) for i in items):
            raise UnsupportedError(f"output '{name}' of the constant {node.op_type} is not a tensor or a sequence")
        arrays = [np.asarray(i) for i in items]
        for array in arrays:
            try:
                dtypes.from_numpy(array.dtype)
            except KeyError as exc:
                raise UnsupportedError(f"output '{name}' of the constant {node.op_type}: {exc.args[0]}") from None
        checked.append(arrays if isinstance(result, list) else arrays[0])
    return checked


# -- checks that onnx's checker and shape inference leave out --------------------------------------

#: ``check(attrs, operands)`` per ONNX op type: raises ``FrontendError`` for a node that onnx's
#: checker and per-node inference accept but that is not a valid op (found by ``afmc.fuzz``).
NodeCheck = Callable[[Mapping[str, Any], Sequence["Value | None"]], None]
NODE_CHECKS: dict[str, NodeCheck] = {}


checks_node = registrar(NODE_CHECKS, "node checks")


@checks_node("Transpose")
def _check_transpose(attrs: Mapping[str, Any], operands: Sequence[Value | None]) -> None:
    """``perm`` is a permutation of the data's axes (onnx infers a rank-1 result from ``perm=[0]``
    on a matrix; the op is undefined)."""
    data, perm = operands[0], attrs.get("perm")
    if data is not None and perm is not None and sorted(perm) != list(range(data.type.rank)):
        raise FrontendError(f"Transpose perm {list(perm)} is not a permutation of the {data.type.rank} axes of {data.type}")


# -- corrections to onnx's shape inference ------------------------------------------------------

#: ``fix(attrs, operands, output index, inferred dims) -> dims`` per ONNX op type, for the cases
#: where onnx's per-node inference disagrees with the op's semantics or gives no shape (None).
ShapeFix = Callable[
    [Mapping[str, Any], Sequence["Value | None"], int, "list[int | str] | None"], "list[int | str] | None"
]
SHAPE_FIXES: dict[str, ShapeFix] = {}


fixes_shape = registrar(SHAPE_FIXES, "shape fixes")


@fixes_shape("MaxPool", "AveragePool")
def _ceil_mode_pool(attrs: Mapping[str, Any], operands: Sequence[Value | None], index: int,
                    dims: list[int | str] | None) -> list[int | str] | None:
    """With ``ceil_mode`` a last window that would start in the trailing padding is dropped
    (ONNX reference, PyTorch, onnxruntime); onnx 1.23's shape inference keeps it."""
    data = operands[0]
    if not attrs.get("ceil_mode") or attrs.get("auto_pad", "NOTSET") != "NOTSET" or data is None or dims is None:
        return dims
    sizes = data.type.shape[2:]
    nd = len(sizes)
    kernel = attrs.get("kernel_shape", ())
    if len(kernel) != nd or len(dims) != nd + 2:
        return dims
    strides = attrs.get("strides") or (1,) * nd
    dilations = attrs.get("dilations") or (1,) * nd
    pads = attrs.get("pads") or (0,) * (2 * nd)
    fixed = list(dims[:2])
    for i, size in enumerate(sizes):
        span = size + pads[i] + pads[i + nd] - ((kernel[i] - 1) * dilations[i] + 1)
        out = -(-span // strides[i]) + 1
        if (out - 1) * strides[i] >= size + pads[i]:
            out -= 1
        fixed.append(max(out, 0))
    return fixed


@fixes_shape("GroupNormalization")
def _same_as_data(attrs: Mapping[str, Any], operands: Sequence[Value | None], index: int,
                  dims: list[int | str] | None) -> list[int | str] | None:
    """GroupNormalization-21 is a function op without a per-node inference function in onnx 1.23:
    its result has the data's shape."""
    data = operands[0]
    return list(data.type.shape) if dims is None and data is not None else dims


@handles("Constant")
def import_constant(imp: Importer, node: NodeProto, loc: str) -> None:
    """A ``Constant`` node is a pool constant exactly like an initializer."""
    if len(node.attribute) != 1:
        raise FrontendError(f"Constant needs exactly one value attribute, has {len(node.attribute)}")
    attr = node.attribute[0]
    name = node.output[0]
    if attr.name == "sparse_value":
        array = imp._read_sparse(attr.sparse_tensor)
    elif attr.name == "value":
        array = imp.reader.read(attr.t, name)
    else:
        value = imp.attribute_value(node, attr, attr.name)
        kinds = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
                 "value_ints": np.int64, "value_string": object, "value_strings": object}
        if attr.name not in kinds:
            raise FrontendError(f"Constant has unknown attribute '{attr.name}'")
        array = np.array(value, dtype=kinds[attr.name])
    imp.add_constant(array, name, loc)


@handles("Shape")
def import_shape(imp: Importer, node: NodeProto, loc: str) -> None:
    """Every type is static, so ``Shape`` is always a constant (this is what dissolves shape subgraphs)."""
    data = imp.operand(node.input[0])
    assert data is not None
    attrs = imp.attributes(node)
    start, end = attrs.get("start", 0), attrs.get("end")
    imp.add_constant(np.array(data.type.shape[start:end], dtype=np.int64), node.output[0], loc)


@handles("Size")
def import_size(imp: Importer, node: NodeProto, loc: str) -> None:
    data = imp.operand(node.input[0])
    assert data is not None
    imp.add_constant(np.array(data.type.numel, dtype=np.int64), node.output[0], loc)


@handles("Dropout")
def import_dropout(imp: Importer, node: NodeProto, loc: str) -> None:
    """Inference-mode Dropout is the identity; its mask, if asked for, is all true."""
    data = imp.operand(node.input[0])
    assert data is not None
    if len(node.input) > 2 and node.input[2]:
        training = imp.constant(imp.operand(node.input[2]))
        if training is None or bool(np.asarray(training).reshape(-1)[0]):
            raise UnsupportedError("Dropout in training mode (random) is not supported")
    imp.emit("nn.identity", [data], [data.type], [node.output[0]], {}, loc)
    if len(node.output) > 1 and node.output[1]:
        imp.add_constant(np.ones(data.type.shape, dtype=np.bool_), node.output[1], loc)


@handles("QuantizeLinear")
def import_quantize_linear(imp: Importer, node: NodeProto, loc: str) -> None:
    """The generic lowering, with ``output_dtype`` 0 (not given) spelled out as the element type it
    stands for: the zero point's, else uint8."""
    operands = [imp.operand(name) for name in node.input]
    _check_element_types(imp.schema(node), operands)
    attrs = imp.attributes(node)
    if attrs.get("output_dtype", 0) == 0:
        zero = operands[2] if len(operands) > 2 else None
        attrs["output_dtype"] = zero.type.dtype if zero is not None else "u8"
    names = imp.output_names(node, loc)
    imp.emit("nn.quantize_linear", operands, imp.infer(node, names, operands, attrs), names, attrs, loc)


@handles("MatMulInteger")
def import_matmul_integer(imp: Importer, node: NodeProto, loc: str) -> None:
    """With a constant 2-D B and zero points (the weights of onnxruntime's dynamically quantized models):
    ``Cast<int32>((float(A) - float(a_zero_point)) @ float(B - b_zero_point))``, so that the weight is
    an ordinary float MatMul that maps onto the arrays; equal to the int32 product while its sums stay
    below 2^24 in magnitude (float32 rounding beyond). Anything else is ``nn.matmul_integer``."""
    names = list(node.input) + [""] * (4 - len(node.input))
    a, b = imp.operand(names[0]), imp.operand(names[1])
    a_zero = imp.operand(names[2]) if names[2] else None
    b_zero = imp.operand(names[3]) if names[3] else None
    assert a is not None and b is not None
    weight, b_offset = imp.constant(b), None if b_zero is None else imp.constant(b_zero)
    if (weight is None or weight.ndim != 2 or a.type.rank < 1 or (b_zero is not None and b_offset is None)
            or (a_zero is not None and a_zero.type.numel != 1) or imp.constant(a) is not None):
        import_generic(imp, node, loc)
        return
    matrix = weight.astype(np.int32)
    if b_offset is not None:
        matrix = matrix - b_offset.astype(np.int32)  # a scalar, or one per column (shape [N])
    shape = (*a.type.shape[:-1], matrix.shape[1]) if a.type.rank > 1 else (matrix.shape[1],)

    def step(nn_name: str, operands: list[Value], value_type: TensorType, hint: str | None, attrs: dict[str, Any]) -> Value:
        name = node.output[0] if hint is None else imp.synthetic_name(f"{node.output[0]}.{hint}")
        imp.onnx_names.add(name)  # bound like the model's own values
        imp.emit(nn_name, operands, [value_type], [name], attrs, loc)
        value = imp.value(name)
        assert value is not None
        return value

    x = step("nn.cast", [a], TensorType(a.type.shape, "f32"), "a", {"to": "f32", "saturate": 1})
    if a_zero is not None:
        offset = step("nn.cast", [a_zero], TensorType(a_zero.type.shape, "f32"), "a_zero", {"to": "f32", "saturate": 1})
        x = step("nn.sub", [x, offset], x.type, "a_centred", {})
    w = imp.add_constant(matrix.astype(np.float32), imp.synthetic_name(f"{node.output[0]}.weight"), loc)
    product = step("nn.matmul", [x, w], TensorType(shape, "f32"), "float", {})
    step("nn.cast", [product], TensorType(shape, "i32"), None, {"to": "i32", "saturate": 1})


@handles("CastLike")
def import_cast_like(imp: Importer, node: NodeProto, loc: str) -> None:
    """``CastLike(x, like)`` is ``Cast(x)`` to the (static) element type of ``like``."""
    data, like = imp.operand(node.input[0]), imp.operand(node.input[1])
    assert data is not None and like is not None
    attrs = {**imp.attributes(node), "to": like.type.dtype}
    imp.emit("nn.cast", [data], [TensorType(data.type.shape, like.type.dtype)], [node.output[0]], attrs, loc)


@handles("If")
def import_if(imp: Importer, node: NodeProto, loc: str) -> None:
    """An ``If`` whose condition folds to a constant is inlined; a data-dependent one is an error."""
    cond = imp.operand(node.input[0])
    array = imp.constant(cond)
    if array is None:
        source = node.input[0]
        origin = (f"the model's input '{source}'" if source in {v.name for v in imp.module.inputs}
                  else f"'{source}'")
        raise UnsupportedError(f"If with a condition computed at run time ({origin}; data-dependent control flow) is "
                               "not supported; export the branch you need as its own model (e.g. optimum's "
                               "decoder_model.onnx and decoder_with_past_model.onnx for a merged decoder)")
    if np.asarray(array).size != 1:
        raise FrontendError(f"If condition has {np.asarray(array).size} elements, needs one")
    taken = "then_branch" if bool(np.asarray(array).reshape(-1)[0]) else "else_branch"
    branch = next((a.g for a in node.attribute if a.name == taken), None)
    if branch is None:
        raise FrontendError(f"If has no {taken}")
    if len(branch.output) != len(node.output):
        raise FrontendError(f"If {taken} has {len(branch.output)} outputs, the node {len(node.output)}")
    prefix = f"{loc}/{taken}/"
    imp._add_graph_constants(branch)
    raise_unsupported(branch.node, prefix, constants=graph_constants(branch, imp.constant_names()))
    imp.import_nodes(branch.node, prefix)
    for out, branch_out in zip(node.output, branch.output):
        value = imp.operand(branch_out.name)
        if out and value is not None:
            imp.bind(out, value)
