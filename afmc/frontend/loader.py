"""Reading ONNX files: the graph skeleton, validation, and weights without copies.

Only the protobuf skeleton is ever parsed into memory (``load_external_data=False``); external
weights are memory-mapped read-only straight from their files, so a model with gigabytes of
weights costs little more than its graph. Every way a file can be wrong ends in one
``FrontendError`` naming the file (and the tensor), never in a protobuf or onnx traceback.
"""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from ..errors import FrontendError, UnsupportedError
from ..ir import dtypes

#: The largest single tensor (initializer, constant, intermediate) afmc accepts: 4 GiB.
MAX_TENSOR_BYTES = 4 << 30

#: protobuf cannot serialise more than this; in-memory checking is impossible above it.
_PROTOBUF_LIMIT = (2 << 30) - 1


def format_bytes(n: int) -> str:
    """``1.5 GiB`` style sizes for messages."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} B"


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's text: onnx's messages run over many lines."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


# -- files -------------------------------------------------------------------------------------


def load_skeleton(path: str) -> onnx.ModelProto:
    """Parse ``path`` without external data; every failure is a ``FrontendError`` naming the file."""
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
    try:
        model = onnx.load(path, format="protobuf", load_external_data=False)
    except DecodeError:
        raise FrontendError(
            "not an ONNX model: the protobuf does not parse (truncated or corrupt file?)", file=path
        ) from None
    except (OSError, ValueError, RuntimeError) as exc:
        raise FrontendError(f"cannot read as ONNX: {first_line(exc)}", file=path) from None
    check_structure(model, path)
    return model


def check_structure(model: onnx.ModelProto, file: str | None) -> None:
    """Catch the non-ONNX protobufs that happen to parse (random bytes can) before the checker."""
    if not isinstance(model, onnx.ModelProto):
        raise FrontendError(f"expected an onnx.ModelProto, got {type(model).__name__}", file=file)
    if model.ir_version <= 0 or not model.HasField("graph"):
        what = "no graph" if not model.HasField("graph") else "no IR version"
        raise FrontendError(f"not an ONNX model ({what})", file=file)
    if not model.graph.node and not model.graph.output:
        raise FrontendError("not an ONNX model (the graph has no nodes and no outputs)", file=file)
    seen: set[str] = set()
    for output in model.graph.output:
        if output.name in seen:
            raise FrontendError(f"graph output '{output.name}' is listed twice", file=file)
        seen.add(output.name)


def check_model_path(path: str) -> None:
    """The onnx checker on the file itself: works above 2 GiB and checks external data paths."""
    try:
        onnx.checker.check_model(path)
    except Exception as exc:  # ValidationError, or assorted C++ exceptions on malformed files
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
    except Exception as exc:
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


class TensorReader:
    """Turns TensorProtos into numpy arrays: external data memory-mapped, sizes checked first.

    One read-only ``mmap`` per external file, shared by all tensors in it (one descriptor per
    file, not per tensor); arrays are zero-copy views that keep the mapping alive.
    """

    def __init__(self, base_dir: str | None, file: str | None, max_tensor_bytes: int = MAX_TENSOR_BYTES) -> None:
        self.base_dir = base_dir
        self.file = file
        self.max_tensor_bytes = max_tensor_bytes
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
        except Exception as exc:
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
        if self.base_dir is None:
            raise self.error(
                f"tensor '{name}' keeps its data in external file '{location}'; give the model's folder (base_dir)"
            )
        if os.path.isabs(location) or location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":"):
            raise self.error(f"tensor '{name}': external data location '{location}' is an absolute path; "
                             "it must be relative to the model's folder")
        base = os.path.realpath(self.base_dir)
        path = os.path.realpath(os.path.join(base, location))
        if os.path.commonpath([base, path]) != base:
            raise self.error(f"tensor '{name}': external data location '{location}' points outside the model's folder")
        if not os.path.exists(path):
            raise self.error(f"tensor '{name}': external data file '{location}' does not exist")
        if not os.path.isfile(path):
            raise self.error(f"tensor '{name}': external data file '{location}' is not a regular file")
        try:
            offset = int(info.get("offset", 0) or 0)
            length = int(info["length"]) if info.get("length") not in (None, "") else None
        except ValueError:
            raise self.error(f"tensor '{name}': external data offset/length are not integers") from None
        nbytes = tensor_nbytes(tensor, name)
        size = os.path.getsize(path)
        if offset < 0 or (length is not None and length < 0):
            raise self.error(f"tensor '{name}': negative external data offset or length")
        if length is not None and length != nbytes:
            raise self.error(
                f"tensor '{name}': external data length {length} does not match its type "
                f"({list(tensor.dims)}, {nbytes} bytes)"
            )
        if offset + nbytes > size:
            raise self.error(
                f"tensor '{name}' needs bytes {offset}..{offset + nbytes} of '{location}', "
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
