"""Reading ONNX files: the graph skeleton, validation, and weights without copies.

Only the protobuf skeleton is ever parsed into memory (``load_external_data=False``); external
weights are memory-mapped read-only straight from their files, so a model with gigabytes of
weights costs little more than its graph. Every way a file can be wrong ends in one
``FrontendError`` naming the file (and the tensor), never in a protobuf or onnx traceback.
"""

from __future__ import annotations

import heapq
import math
import mmap
import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from ..errors import FrontendError, UnsupportedError
from ..ir import dtypes
from ..ir.verify import DEFAULT_MAX_TENSOR_BYTES, format_bytes
from ..ir.verify import max_tensor_bytes as configured_max_tensor_bytes

#: The largest single tensor (initializer, constant, intermediate) afmc accepts by default: 4 GiB.
#: ``$AFMC_MAX_TENSOR_BYTES`` overrides it (``afmc.ir.verify.max_tensor_bytes``).
MAX_TENSOR_BYTES = DEFAULT_MAX_TENSOR_BYTES

#: protobuf cannot serialise more than this; in-memory checking is impossible above it.
_PROTOBUF_LIMIT = (2 << 30) - 1


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's text: onnx's messages run over many lines."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


# -- files -------------------------------------------------------------------------------------


#: Files at least this large are not parsed whole: their big embedded initializers are left in
#: the file and memory-mapped like external data (see ``carve_skeleton``).
CARVE_MIN_FILE_BYTES = 32 << 20

#: Embedded raw data at least this large is carved out (onnx.save inlines tensors under 1 KiB).
_CARVE_MIN_TENSOR_BYTES = 4 << 10


def load_skeleton(path: str) -> tuple[onnx.ModelProto, bool]:
    """Parse ``path`` without weight data; every failure is a ``FrontendError`` naming the file.

    Returns the model and whether embedded weights were carved out (they then read as external
    data located in the model file itself, so that importing never copies them).
    """
    if not os.path.exists(path):
        raise FrontendError("no such file", file=path)
    if os.path.isdir(path):
        raise FrontendError("is a directory, not an ONNX file", file=path)
    if not os.path.isfile(path):
        raise FrontendError("not a regular file", file=path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(1)
    except OSError as exc:
        raise FrontendError(f"cannot read the file: {exc.strerror or exc}", file=path) from None
    if size == 0 or not head:
        raise FrontendError("empty file; not an ONNX model", file=path)
    carved = size >= CARVE_MIN_FILE_BYTES
    try:
        if carved:
            model = onnx.ModelProto()
            model.ParseFromString(carve_skeleton(path))
        else:
            model = onnx.load(path, format="protobuf", load_external_data=False)
    except (DecodeError, _WireError):
        raise FrontendError(
            "not an ONNX model: the protobuf does not parse (truncated or corrupt file?)", file=path
        ) from None
    except (OSError, ValueError, RuntimeError) as exc:
        raise FrontendError(f"cannot read as ONNX: {first_line(exc)}", file=path) from None
    check_structure(model, path)
    return model, carved


# -- protobuf wire format, just enough to find initializer bytes --------------------------------


class _WireError(Exception):
    """The bytes are not a well-formed protobuf message."""


def _read_varint(buf: Any, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _WireError
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf: Any, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, field start, value start, value end) of each field in buf[start:end]."""
    pos = start
    while pos < end:
        field_start = pos
        tag, pos = _read_varint(buf, pos, end)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value_start, (_, value_end) = pos, _read_varint(buf, pos, end)
        elif wire == 1:
            value_start, value_end = pos, pos + 8
        elif wire == 5:
            value_start, value_end = pos, pos + 4
        elif wire == 2:
            length, value_start = _read_varint(buf, pos, end)
            value_end = value_start + length
        else:
            raise _WireError
        if field == 0 or value_end > end:
            raise _WireError
        yield field, wire, field_start, value_start, value_end
        pos = value_end


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _len_field(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


# Field numbers from onnx.proto: ModelProto.graph, GraphProto.initializer, and TensorProto's.
_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
_T_SEGMENT, _T_RAW_DATA, _T_EXTERNAL_DATA, _T_DATA_LOCATION = 3, 9, 13, 14


def carve_skeleton(path: str) -> bytes:
    """The model's bytes with each large ``raw_data`` of a top-level initializer replaced by an
    external-data reference (location: the model file itself, offset and length of the bytes).

    Protobuf cannot parse a message without reading its bytes fields into memory; rewriting the
    wire format around them keeps the weights in the page cache, mapped on use, never copied.
    """
    location = os.path.basename(path)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        out = bytearray()
        for field, wire, field_start, start, end in _fields(buf, 0, len(buf)):
            if field != _MODEL_GRAPH or wire != 2:
                out += buf[field_start:end]
                continue
            graph = bytearray()
            for g_field, g_wire, g_field_start, g_start, g_end in _fields(buf, start, end):
                if g_field == _GRAPH_INITIALIZER and g_wire == 2:
                    graph += _len_field(_GRAPH_INITIALIZER, _carve_tensor(buf, g_start, g_end, location))
                else:
                    graph += buf[g_field_start:g_end]
            out += _len_field(_MODEL_GRAPH, bytes(graph))
        return bytes(out)


def _carve_tensor(buf: Any, start: int, end: int, location: str) -> bytes:
    kept = bytearray()
    raw: tuple[int, int] | None = None
    for field, wire, field_start, value_start, value_end in _fields(buf, start, end):
        if field == _T_RAW_DATA and wire == 2:
            raw = (value_start, value_end)
        elif field in (_T_SEGMENT, _T_EXTERNAL_DATA):
            return bytes(buf[start:end])
        elif field == _T_DATA_LOCATION:
            if wire != 0 or _read_varint(buf, value_start, value_end)[0] != TensorProto.DEFAULT:
                return bytes(buf[start:end])
        else:
            kept += buf[field_start:value_end]
    if raw is None or raw[1] - raw[0] < _CARVE_MIN_TENSOR_BYTES:
        return bytes(buf[start:end])
    for key, value in (("location", location), ("offset", str(raw[0])), ("length", str(raw[1] - raw[0]))):
        kept += _len_field(_T_EXTERNAL_DATA, _len_field(1, key.encode()) + _len_field(2, value.encode()))
    kept += _varint(_T_DATA_LOCATION << 3) + _varint(TensorProto.EXTERNAL)
    return bytes(kept)


def check_structure(model: onnx.ModelProto, file: str | None) -> None:
    """Catch the non-ONNX protobufs that happen to parse (random bytes can) before the checker."""
    if not isinstance(model, onnx.ModelProto):
        raise FrontendError(f"expected an onnx.ModelProto, got {type(model).__name__}", file=file)
    if model.ir_version <= 0 or not model.HasField("graph"):
        what = "no graph" if not model.HasField("graph") else "no IR version"
        raise FrontendError(f"not an ONNX model ({what})", file=file)
    if not model.graph.node and not model.graph.output:
        raise FrontendError("not an ONNX model (the graph has no nodes and no outputs)", file=file)
    bad = _non_text_string(model)
    if bad:
        raise FrontendError(f"not a valid ONNX model: {bad} is not UTF-8 text", file=file)
    seen: set[str] = set()
    for output in model.graph.output:
        if output.name in seen:
            raise FrontendError(f"graph output '{output.name}' is listed twice", file=file)
        seen.add(output.name)


def _is_repeated(field: Any) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf >= 6.31; ``label`` is deprecated there
    if flag is None:
        return bool(field.label == field.LABEL_REPEATED)
    return bool(flag() if callable(flag) else flag)


def _non_text_string(message: Any, where: str = "") -> str | None:
    """The first string field holding non-UTF-8 bytes (protobuf hands those out as ``bytes``)."""
    for field, value in message.ListFields():
        name = f"{where}.{field.name}" if where else field.name
        repeated = _is_repeated(field)
        if field.type == field.TYPE_STRING:
            if any(not isinstance(v, str) for v in (value if repeated else [value])):
                return name
        elif field.type == field.TYPE_MESSAGE:
            for item in value if repeated else [value]:
                found = _non_text_string(item, name)
                if found:
                    return found
    return None


def sort_nodes(graph: onnx.GraphProto) -> bool:
    """Put ``graph``'s nodes in a topological order when they are not (ONNX requires one; some
    converters, e.g. float16 converters that keep float32 inputs, append nodes out of order and
    onnxruntime sorts them). Returns whether it reordered (see `topological_order`)."""
    order = topological_order(graph)
    if order is None:
        return False
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)
    return True


def topological_order(graph: onnx.GraphProto) -> list[int] | None:
    """A stable topological order of ``graph``'s nodes (nodes already in order keep their places),
    or None when the nodes are in order already, or cannot be (a cycle: left for the checker to name).
    A node with subgraphs comes after the producers of the outer values its subgraphs read."""
    nodes = list(graph.node)
    producer = {name: index for index, node in enumerate(nodes) for name in node.output if name}

    def needs(node: onnx.NodeProto) -> set[int]:
        names = set(node.input)
        for attribute in node.attribute:
            for sub in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs):
                names.update(_referenced(sub))
        return {producer[name] for name in names if name in producer}

    deps = [needs(node) for node in nodes]
    if all(d < i for i, ds in enumerate(deps) for d in ds):
        return None
    users: list[list[int]] = [[] for _ in nodes]
    waiting = [len(ds) for ds in deps]
    for index, ds in enumerate(deps):
        for d in ds:
            users[d].append(index)
    ready = [index for index, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)  # the lowest original position first: a stable order
    order: list[int] = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for user in users[index]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, user)
    return order if len(order) == len(nodes) else None


def _referenced(graph: onnx.GraphProto) -> set[str]:
    """Every value name a graph's nodes (and their subgraphs) read."""
    names: set[str] = set()
    for node in graph.node:
        names.update(node.input)
        for attribute in node.attribute:
            for sub in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs):
                names.update(_referenced(sub))
    return names


def check_model_path(path: str) -> None:
    """The onnx checker on the file itself: works above 2 GiB and checks external data paths."""
    try:
        onnx.checker.check_model(path)
    except Exception as exc:  # noqa: BLE001  (ValidationError, or assorted C++ exceptions)
        raise FrontendError(f"invalid ONNX model: {first_line(exc)}", file=path) from None


def check_model_proto(model: onnx.ModelProto, file: str | None) -> None:
    """The onnx checker on an in-memory model whose external data ``TensorReader`` validated.

    The in-memory checker would resolve external locations against the current directory, so
    it sees a copy where each external tensor is an empty placeholder of the same name and type.
    """
    if model.ByteSize() > _PROTOBUF_LIMIT:
        return  # cannot be serialised for the checker; the importer still validates as it goes
    target = model
    if any(t.data_location == TensorProto.EXTERNAL for t, _ in iter_tensors(model.graph)):
        target = onnx.ModelProto()
        target.CopyFrom(model)
        for tensor, _ in iter_tensors(target.graph):
            if tensor.data_location == TensorProto.EXTERNAL:
                tensor.ClearField("external_data")
                tensor.data_location = TensorProto.DEFAULT
                del tensor.dims[:]
                tensor.dims.append(0)
    try:
        onnx.checker.check_model(target)
    except Exception as exc:  # noqa: BLE001  (ValidationError, or assorted C++ exceptions)
        raise FrontendError(f"invalid ONNX model: {first_line(exc)}", file=file) from None


def iter_tensors(graph: onnx.GraphProto) -> Iterator[tuple[TensorProto, str]]:
    """Every dense tensor of a graph and its subgraphs, with a name for messages."""
    for tensor in graph.initializer:
        yield tensor, tensor.name
    for sparse in graph.sparse_initializer:
        yield sparse.values, sparse.values.name
        yield sparse.indices, sparse.indices.name or sparse.values.name
    for node in graph.node:
        label = node.name or (node.output[0] if node.output else node.op_type)
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t, attr.t.name or label
            for tensor in attr.tensors:
                yield tensor, tensor.name or label
            if attr.HasField("g"):
                yield from iter_tensors(attr.g)
            for sub in attr.graphs:
                yield from iter_tensors(sub)


# -- tensors -----------------------------------------------------------------------------------


def tensor_dtype(tensor: TensorProto, name: str) -> str:
    """The IR element type of a TensorProto; unknown ones are unsupported, naming the tensor."""
    try:
        return dtypes.from_onnx(tensor.data_type)
    except KeyError as exc:
        raise UnsupportedError(f"tensor '{name}': {exc.args[0]}") from None


def tensor_nbytes(tensor: TensorProto, name: str) -> int:
    dtype = tensor_dtype(tensor, name)
    itemsize = 8 if dtype == "str" else dtypes.to_numpy(dtype).itemsize
    return math.prod(int(d) for d in tensor.dims) * itemsize


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\n``): names from a model go into one-line
    messages, and a newline in an op type must not start a second line."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def _shown_path(location: str) -> str:
    """A location for a message: control characters escaped, cut to a readable length."""
    text = printable(location)
    return text if len(text) <= 120 else text[:117] + "..."


def _external_int(text: str | None) -> int | None:
    """An external-data offset or length (None when absent): decimal digits only, as onnx writes
    them (``int`` would also take ' 1_0' or a thousand-digit number)."""
    if text is None or text == "":
        return None
    if not text.isascii() or not text.lstrip("-").isdigit() or len(text) > 20:
        raise ValueError(text)
    return int(text)


class TensorReader:
    """Turns TensorProtos into numpy arrays: external data memory-mapped, sizes checked first.

    One read-only ``mmap`` per external file, shared by all tensors in it (one descriptor per
    file, not per tensor); arrays are zero-copy views that keep the mapping alive.
    """

    def __init__(self, base_dir: str | None, file: str | None, max_tensor_bytes: int | None = None) -> None:
        self.base_dir = base_dir
        self.file = file
        # carved embedded weights refer to the model file itself by its base name
        self._self_name = os.path.basename(file) if file else None
        # None: the configured limit ($AFMC_MAX_TENSOR_BYTES, else MAX_TENSOR_BYTES)
        self.max_tensor_bytes = configured_max_tensor_bytes() if max_tensor_bytes is None else max_tensor_bytes
        self._maps: dict[str, mmap.mmap] = {}

    def error(self, message: str, node: str | None = None) -> FrontendError:
        return FrontendError(message, file=self.file, node=node)

    def check_size(self, tensor: TensorProto, name: str, node: str | None = None) -> int:
        if any(d < 0 for d in tensor.dims):
            raise self.error(f"tensor '{name}' has a negative dimension {list(tensor.dims)}", node)
        nbytes = tensor_nbytes(tensor, name)
        if nbytes > self.max_tensor_bytes:
            raise self.error(
                f"tensor '{name}' is {format_bytes(nbytes)} ({list(tensor.dims)}), over the "
                f"{format_bytes(self.max_tensor_bytes)} limit for one tensor",
                node,
            )
        return nbytes

    def validate(self, model: onnx.ModelProto) -> None:
        """Check every tensor's size and every external reference before anything is read."""
        for tensor, name in iter_tensors(model.graph):
            self.check_size(tensor, name)
            if tensor.data_location == TensorProto.EXTERNAL:
                self._external_span(tensor, name)

    def read(self, tensor: TensorProto, name: str, node: str | None = None) -> np.ndarray:
        nbytes = self.check_size(tensor, name, node)
        dtype = tensor_dtype(tensor, name)
        shape = tuple(int(d) for d in tensor.dims)
        if tensor.data_location == TensorProto.EXTERNAL:
            path, offset, _ = self._external_span(tensor, name)
            np_dtype = dtypes.to_numpy(dtype).newbyteorder("<")
            if nbytes == 0:
                return np.zeros(shape, np_dtype)
            data = np.frombuffer(self._map(path), dtype=np_dtype, count=math.prod(shape), offset=offset)
            return data.reshape(shape)
        if tensor.HasField("raw_data") and len(tensor.raw_data) != nbytes and dtype != "str":
            raise self.error(
                f"tensor '{name}' holds {len(tensor.raw_data)} bytes of raw data; "
                f"its type {list(tensor.dims)} {dtype} needs {nbytes}",
                node,
            )
        try:
            array = onnx.numpy_helper.to_array(tensor)
        except Exception as exc:  # noqa: BLE001  (ValueError, TypeError, ml_dtypes errors)
            raise self.error(f"tensor '{name}' cannot be decoded: {first_line(exc)}", node) from None
        if dtype == "str":
            array = array.astype(object)
        if tuple(array.shape) != shape:
            raise self.error(f"tensor '{name}' holds {array.size} values; its shape {list(shape)} needs "
                             f"{math.prod(shape)}", node)
        return array

    def _external_span(self, tensor: TensorProto, name: str) -> tuple[str, int, int]:
        """(real path, offset, byte count) of an external tensor, after checking all three."""
        info: dict[str, Any] = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        if not location:
            raise self.error(f"tensor '{name}' has external data without a location")
        shown = _shown_path(location)
        if self.base_dir is None:
            raise self.error(
                f"tensor '{name}' keeps its data in external file '{shown}'; give the model's folder (base_dir)"
            )
        if "\0" in location:
            raise self.error(f"tensor '{name}': external data location '{shown}' contains a NUL character")
        if os.path.isabs(location) or location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":"):
            raise self.error(f"tensor '{name}': external data location '{shown}' is an absolute path; "
                             "it must be relative to the model's folder")
        try:
            base = os.path.realpath(self.base_dir)
            path = os.path.realpath(os.path.join(base, location))
            if location == self._self_name and self.file is not None:
                path = os.path.realpath(self.file)  # the model file itself (carved weights), maybe a symlink
            elif os.path.commonpath([base, path]) != base:
                raise self.error(f"tensor '{name}': external data location '{shown}' points outside the model's folder")
            if not os.path.exists(path):
                raise self.error(f"tensor '{name}': external data file '{shown}' does not exist")
            if not os.path.isfile(path):
                raise self.error(f"tensor '{name}': external data file '{shown}' is not a regular file")
            size = os.path.getsize(path)
        except (OSError, ValueError) as exc:  # a name too long, a loop of links, a race with a deletion
            raise self.error(f"tensor '{name}': external data location '{shown}' cannot be used: {exc}") from None
        try:
            offset = _external_int(info.get("offset")) or 0
            length = _external_int(info.get("length"))
        except ValueError:
            raise self.error(f"tensor '{name}': external data offset/length are not integers") from None
        nbytes = tensor_nbytes(tensor, name)
        if offset < 0 or (length is not None and length < 0):
            raise self.error(f"tensor '{name}': negative external data offset or length")
        if length is not None and length != nbytes:
            raise self.error(
                f"tensor '{name}' has {length} bytes of data in '{shown}'; its type "
                f"({list(tensor.dims)}, {tensor_dtype(tensor, name)}) needs {nbytes}"
            )
        if offset + nbytes > size:
            raise self.error(
                f"tensor '{name}' needs bytes {offset}..{offset + nbytes} of '{shown}', "
                f"which has only {size} bytes (truncated?)"
            )
        return path, offset, nbytes

    def _map(self, path: str) -> mmap.mmap:
        mapped = self._maps.get(path)
        if mapped is None:
            try:
                with open(path, "rb") as f:
                    mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError) as exc:
                raise self.error(f"cannot map external data file '{path}': {exc}") from None
            self._maps[path] = mapped
        return mapped
