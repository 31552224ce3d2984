"""Hostile-input fuzzing: mutation strategies for ONNX models, target TOML and IR text, and the
rules a run of ``afmc`` on a mutated file must obey.

The contract under test (DESIGN.md, issue 7): whatever the input, ``afmc`` ends in success or in
one ``afmc: error:`` line with exit code 2 (3 is a valid "does not fit" answer of ``check``);
never a traceback, never an internal error (exit 1), never more than 10 s or 2 GiB.

A case is ``(family, kind, seed)``: the mutation is a pure function of it, so any failure found
by ``bench/fuzz.py`` or by the hypothesis tests in ``tests/test_fuzz.py`` replays exactly with
``python bench/fuzz.py --replay family:kind:seed``. Mutators are registered by decorator in one
table per family (``MUTATORS``), as the importer registers its handlers.

Model kinds mutate the bundled samples (``samples/*.onnx``): bytes (truncation, bit flips, byte
runs), random protobuf fields through reflection, and targeted ONNX damage (dimensions, dtypes,
cycles, dangling and duplicate names, missing initializers, opsets, domains, attributes, tensor
payloads, external data). TOML kinds mutate the built-in targets (syntax, wrong types,
out-of-range and non-finite values, unknown and missing keys, deep nesting). IR kinds mutate the
text ``afmc ir`` prints (tokens, types, numbers, names).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib

import onnx
from google.protobuf.descriptor import FieldDescriptor
from onnx import AttributeProto, TensorProto

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
TARGETS_DIR = ROOT / "targets"

#: Every case must finish within this (seconds) and this address space (bytes).
CASE_SECONDS = 10.0
CASE_MEMORY = 2 << 30

#: Sample models and the input shape each needs (their batch dimension is dynamic).
SAMPLE_SHAPES = {
    "mlp_digits": "input=1x64",
    "cnn_digits": "input=1x1x8x8",
    "transformer_digits": "input=1x1x8x8",
}
TARGET_NAMES = ("pcm", "crossbar", "flash")

FAMILIES = ("model", "toml", "ir")


# -- interesting values -----------------------------------------------------------------------

INTS = (0, 1, -1, 2, -2, 3, 7, 255, 256, 65535, 65536, 2**31 - 1, 2**31, -(2**31), 2**32, 2**40, 2**53 + 1,
        2**62, 2**63 - 1, -(2**63))
DIMS = (0, -1, -7, 1, 3, 2**20, 2**31, 2**32 + 1, 2**40, 2**62, 2**63 - 1, -(2**63))
FLOATS = (0.0, -0.0, 1.0, -1.0, 0.5, 1e-45, 1e-308, 5e-324, 3.4e38, 1e308, -1e308, math.inf, -math.inf, math.nan)
STRINGS = ("", " ", "x", "input", "logits", "../../../../etc/passwd", "/etc/passwd", "..", ".", "a" * 4096,
           "\u202e\u0000\ufffd", "名前", "com.evil", "%0", "@x", "{", '"', "\\", "\n", "1e999")


def _int_for(fd: FieldDescriptor, rng: random.Random) -> int:
    """An interesting integer that fits the field's wire type."""
    lo, hi = {
        FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
        FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
        FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1), FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
        FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
    }.get(fd.type, (-(2**63), 2**63 - 1))
    value = rng.choice(INTS) if rng.random() < 0.8 else rng.randint(-100, 100)
    return min(max(value, lo), hi)


# -- byte-level mutations (any family) --------------------------------------------------------


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data) + 1)] if data else data


def flip_bits(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if out:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def mangle_bytes(data: bytes, rng: random.Random) -> bytes:
    """Overwrite, insert, delete or duplicate a short run of bytes."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(len(out) + 1)
        run = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        action = rng.randrange(4)
        if action == 0:
            out[pos : pos + len(run)] = run
        elif action == 1:
            out[pos:pos] = run
        elif action == 2:
            del out[pos : pos + rng.randint(1, 64)]
        else:
            out[pos:pos] = out[pos : pos + rng.randint(1, 256)]
    return bytes(out)


# -- the registry ------------------------------------------------------------------------------


@dataclass
class Workspace:
    """Where a case writes its files: ``root/case/`` holds the input; ``root`` is "outside"."""

    root: Path

    @property
    def folder(self) -> Path:
        return self.root / "case"


ModelMutator = Callable[[onnx.ModelProto, bytes, random.Random, Workspace], bytes]
TextMutator = Callable[[str, random.Random], bytes]

MUTATORS: dict[str, dict[str, Callable[..., bytes]]] = {family: {} for family in FAMILIES}


def mutator(family: str, kind: str) -> Callable[[Callable[..., bytes]], Callable[..., bytes]]:
    def register(fn: Callable[..., bytes]) -> Callable[..., bytes]:
        if kind in MUTATORS[family]:
            raise ValueError(f"two {family} mutators named {kind}")
        MUTATORS[family][kind] = fn
        return fn

    return register


def kinds(family: str) -> list[str]:
    return sorted(MUTATORS[family])


# -- ONNX model mutations ----------------------------------------------------------------------


def _nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return list(model.graph.node)


def _value_names(model: onnx.ModelProto) -> list[str]:
    g = model.graph
    names = {v.name for v in g.input} | {v.name for v in g.output} | {t.name for t in g.initializer}
    for node in g.node:
        names.update(node.input)
        names.update(node.output)
    names.discard("")
    return sorted(names)


def _value_infos(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    g = model.graph
    return [*g.input, *g.output, *g.value_info]


@mutator("model", "truncate")
def _m_truncate(model: onnx.ModelProto, data: bytes, rng: random.Random, ws: Workspace) -> bytes:
    return truncate(data, rng)


@mutator("model", "bit-flip")
def _m_flip(model: onnx.ModelProto, data: bytes, rng: random.Random, ws: Workspace) -> bytes:
    return flip_bits(data, rng)


@mutator("model", "bytes")
def _m_bytes(model: onnx.ModelProto, data: bytes, rng: random.Random, ws: Workspace) -> bytes:
    return mangle_bytes(data, rng)


def _is_repeated(fd: FieldDescriptor) -> bool:
    from .frontend.loader import _is_repeated as repeated

    return repeated(fd)


def _set_fields(message: Any) -> Iterator[tuple[Any, FieldDescriptor, int | None]]:
    """(message, field, index in a repeated field or None) of every set field, depth first."""
    for fd, value in message.ListFields():
        repeated = _is_repeated(fd)
        items = list(enumerate(value)) if repeated else [(None, value)]
        for index, item in items:
            yield message, fd, index
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                yield from _set_fields(item)


def _random_scalar(fd: FieldDescriptor, old: Any, rng: random.Random) -> Any:
    if fd.type == FieldDescriptor.TYPE_ENUM:
        numbers = sorted(fd.enum_type.values_by_number)
        return rng.choice(numbers)
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return not old
    if fd.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return rng.choice(FLOATS)
    if fd.type == FieldDescriptor.TYPE_STRING:
        return rng.choice(STRINGS) if rng.random() < 0.7 else old + rng.choice(STRINGS)
    if fd.type == FieldDescriptor.TYPE_BYTES:
        choice = rng.randrange(4)
        if choice == 0:
            return b""
        if choice == 1:
            return old[: rng.randrange(len(old) + 1)]
        if choice == 2:
            return old + old
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    return _int_for(fd, rng)


@mutator("model", "proto-field")
def _m_proto_field(model: onnx.ModelProto, data: bytes, rng: random.Random, ws: Workspace) -> bytes:
    """Change 1-3 random protobuf fields anywhere in the model: set, clear, drop, duplicate, swap."""
    for _ in range(rng.randint(1, 3)):
        fields = list(_set_fields(model))
        if not fields:
            break
        message, fd, index = rng.choice(fields)
        container = getattr(message, fd.name)
        action = rng.randrange(5)
        if _is_repeated(fd):
            assert index is not None
            if action == 0:
                del container[index]
            elif action == 1 and len(container) > 1:
                j = rng.randrange(len(container))
                if fd.type == FieldDescriptor.TYPE_MESSAGE:
                    a, b = type(container[index])(), type(container[index])()
                    a.CopyFrom(container[index])
                    b.CopyFrom(container[j])
                    container[index].CopyFrom(b)
                    container[j].CopyFrom(a)
                else:
                    container[index], container[j] = container[j], container[index]
            elif fd.type == FieldDescriptor.TYPE_MESSAGE:
                container.add().CopyFrom(container[index])
            else:
                container[index] = _random_scalar(fd, container[index], rng)
        elif action == 0 or fd.type == FieldDescriptor.TYPE_MESSAGE:
            message.ClearField(fd.name)
        else:
            setattr(message, fd.name, _random_scalar(fd, container, rng))
    return model.SerializeToString()


@mutator("model", "dims")
def _m_dims(model: onnx.ModelProto, data: bytes, rng: random.Random, ws: Workspace) -> bytes:
    """Huge, zero or negative dimensions on declared values or initializers."""
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.5 and model.graph.initializer:
            tensor = rng.choice(model.graph.initializer)
            dims = list(tensor.dims) or [1]
            dims[rng.randrange(len(dims))] = rng.choice(DIMS)
            if rng.random() < 0.2:
                dims.append(rng.choice(DIMS))
            del tensor.dims[:]
            tensor.dims.extend(dims)
        else:
            info = rng.choice(_value_infos(model))
            shape = info.type.tensor_type.shape
            if not shape.dim:
                shape.dim.add().dim_value = 1
            dim = rng.choice(shape.dim)
            if rng.random() < 0.8:
                dim.dim_value = rng.choice(DIMS)
            else:
                dim.dim_param = rng.choice(["N", "", "?", "batch"])
    return model.SerializeToString()


@mutator("model", "dtype")
def _m_dtype(model: onnx.ModelProto, data: bytes, rng: random.Random, ws: Workspace) -> bytes:
    """Wrong element types on initializers, declared values and Cast-like attributes."""
    codes = [*TensorProto.DataType.values(), 99, 2**31 - 1]
    fields: list[tuple[Any, str]] = [(tensor, "data_type") for tensor in model.graph.initializer]
    fields += [(info.type.tensor_type, "elem_type") for info in _value_infos(model)]
    fields += [(attr, "i") for node in model.graph.node for attr in node.attribute
               if attr.name in ("to", "dtype", "stash_type", "output_dtype")]
    for _ in range(rng.randint(1, 2)):
        message, name = rng.choice(fields)
        setattr(message, name, rng.choice(codes))
    return model.SerializeToString()


@mutator("model", "cycle")
def _m_cycle(model: onnx.ModelProto, data: bytes, rng: random.Random, ws: Workspace) -> bytes:
    """Feed a node from itself or from a later node (a cycle or a back edge)."""
    nodes = _nodes(model)
    i = rng.randrange(len(nodes))
    j = rng.randrange(i, len(nodes))
    node, later = model.graph.node[i], model.graph.node[j]
    if node.input and later.output:
        node.input[rng.randrange(len(node.input))] = rng.choice(later.output)
    if rng.random() < 0.3:  # also put it in order, so only the cycle is wrong
        moved = onnx.NodeProto()
        moved.CopyFrom(model.graph.node[i])
        del model.graph.node[i]
        model.graph.node.append(moved)
    return model.SerializeToString()


@mutator("model", "dangling")
def _m_dangling(model: onnx.ModelProto, data: bytes, rng: random.Random, ws: Workspace) -> bytes:
    """A use of a name nothing defines, a graph output nothing produces, or a removed producer."""
    g = model.graph
    action = rng.randrange(3)
    if action == 0:
        node = rng.choice(g.node)
        if node.input:
            node.input[rng.randrange(len(node.input))] = rng.choice(["ghost", "", "input ", "Input"])
    elif action == 1:
        g.output[rng.randrange(len(g.output))].name = "ghost_output"
    else:
        del g.node[rng.randrange(len(g.node))]
    return model.SerializeToString()


@mutator("model", "duplicate")
def _m_duplicate(model: onnx.ModelProto, data: bytes, rng: random.Random, ws: Workspace) -> bytes:
    """Two definitions of one name: node outputs, initializers, graph inputs, node names."""
    g = model.graph
    action = rng.randrange(5)
    names = _value_names(model)
    if action == 0:
        node = rng.choice(g.node)
        node.output[0] = rng.choice(names)
    elif action == 1 and g.initializer:
        g.initializer.add().CopyFrom(rng.choice(g.initializer))
    elif action == 2:
        g.input.add().CopyFrom(rng.choice(g.input))
    elif action == 3:
        node = rng.choice(g.node)
        g.node.insert(rng.randrange(len(g.node) + 1), node)
    else:
        g.output.add().CopyFrom(rng.choice(g.output))
    return model.SerializeToString()


@mutator("model", "missing-initializer")
def _m_missing_initializer(model: onnx.ModelProto, data: bytes, rng: random.Random, ws: Workspace) -> bytes:
    g = model.graph
    for _ in range(rng.randint(1, 3)):
        if g.initializer:
            removed = g.initializer.pop(rng.randrange(len(g.initializer)))
            if rng.random() < 0.5:  # and declare it as a graph input instead (old exporters did)
                g.input.add().CopyFrom(onnx.helper.make_tensor_value_info(removed.name, removed.data_type, None))
    return model.SerializeToString()


@mutator("model", "opset")
def _m_opset(model: onnx.ModelProto, data: bytes, rng: random.Random, ws: Workspace) -> bytes:
    """Old, new, absurd or missing opsets and IR versions."""
    versions = (0, 1, 5, 6, 7, 9, 10, 11, 12, 13, 14, 17, 18, 20, 21, 22, 23, 24, 99, 2**31, 2**62, -1)
    action = rng.randrange(5)
    if action == 0 or not model.opset_import:
        del model.opset_import[:]
    elif action == 1:
        model.opset_import.add().CopyFrom(model.opset_import[0])
        model.opset_import[-1].version = rng.choice(versions)
    elif action == 2:
        model.opset_import[0].domain = rng.choice(["ai.onnx.ml", "com.evil", "ai.onnx"])
    else:
        model.opset_import[0].version = rng.choice(versions)
    if rng.random() < 0.3:
        model.ir_version = rng.choice((0, 1, 3, 4, 7, 8, 10, 11, 12, 99, -1, 2**62))
    return model.SerializeToString()


@mutator("model", "domain")
def _m_domain(model: onnx.ModelProto, data: bytes, rng: random.Random, ws: Workspace) -> bytes:
    """Unknown domains and op types, with or without a matching opset import."""
    node = rng.choice(model.graph.node)
    if rng.random() < 0.6:
        node.domain = rng.choice(["com.evil", "ai.onnx.ml", "ai.onnx.preview.training", "com.microsoft", " "])
        if rng.random() < 0.5:
            model.opset_import.append(onnx.helper.make_opsetid(node.domain, rng.choice([1, 3, 99])))
    else:
        node.op_type = rng.choice(["Evil", "", "relu", "Loop", "Scan", "If", "NonZero", "Identity", "Sum",
                                   "Resize", "Einsum", "Attention", "Upsample", "Max", "Split", "TopK"])
    return model.SerializeToString()


def _random_attribute(name: str, rng: random.Random) -> AttributeProto:
    kind = rng.randrange(8)
    if kind == 0:
        return onnx.helper.make_attribute(name, rng.choice(INTS))
    if kind == 1:
        ints = [rng.choice(INTS) for _ in range(rng.randint(0, 6))]
        return onnx.helper.make_attribute(name, ints, attr_type=AttributeProto.INTS)
    if kind == 2:
        return onnx.helper.make_attribute(name, rng.choice(FLOATS))
    if kind == 3:
        return onnx.helper.make_attribute(name, rng.choice(STRINGS))
    if kind == 4:
        return onnx.helper.make_attribute(name, [rng.choice(FLOATS) for _ in range(rng.randint(1, 4))])
    if kind == 5:
        return onnx.helper.make_attribute(name, onnx.helper.make_tensor("t", TensorProto.FLOAT, [2], [1.0, 2.0]))
    if kind == 6:
        empty = onnx.helper.make_graph([], "sub", [], [])
        return onnx.helper.make_attribute(name, empty)
    attr = AttributeProto(name=name, type=rng.choice(list(AttributeProto.AttributeType.values())))
    attr.ref_attr_name = rng.choice(["", "x"])
    return attr


@mutator("model", "attribute")
def _m_attribute(model: onnx.ModelProto, data: bytes, rng: random.Random, ws: Workspace) -> bytes:
    """Invalid attribute values and types, unknown and removed attributes."""
    for _ in range(rng.randint(1, 2)):
        node = rng.choice(model.graph.node)
        action = rng.randrange(4)
        if action == 0 and node.attribute:
            attr = rng.choice(node.attribute)
            attr.CopyFrom(_random_attribute(attr.name, rng))
        elif action == 1 and node.attribute:
            attr = rng.choice(node.attribute)
            if attr.ints:
                attr.ints[rng.randrange(len(attr.ints))] = rng.choice(INTS)
            elif attr.type == AttributeProto.INT:
                attr.i = rng.choice(INTS)
            elif attr.type == AttributeProto.FLOAT:
                attr.f = rng.choice(FLOATS)
            else:
                del node.attribute[rng.randrange(len(node.attribute))]
        elif action == 2 and node.attribute:
            del node.attribute[rng.randrange(len(node.attribute))]
        else:
            names = ["axis", "perm", "kernel_shape", "strides", "pads", "dilations", "group", "alpha", "to",
                     "transB", "epsilon", "keepdims", "axes", "evil", "auto_pad", "ceil_mode", "value"]
            node.attribute.append(_random_attribute(rng.choice(names), rng))
    return model.SerializeToString()


@mutator("model", "int-values")
def _m_int_values(model: onnx.ModelProto, data: bytes, rng: random.Random, ws: Workspace) -> bytes:
    """Extreme values in small integer constants (the shapes, axes and pads of shape arithmetic)."""
    import numpy as np
    from onnx import numpy_helper

    tensors = [t for t in model.graph.initializer if t.data_type in (TensorProto.INT64, TensorProto.INT32)]
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR and attr.t.data_type in (TensorProto.INT64, TensorProto.INT32):
                tensors.append(attr.t)
    if not tensors:
        return _m_attribute(model, data, rng, ws)
    tensor = rng.choice(tensors)
    array = numpy_helper.to_array(tensor).copy()
    flat = array.reshape(-1)
    info = np.iinfo(array.dtype)
    for _ in range(rng.randint(1, 2)):
        if flat.size:
            flat[rng.randrange(flat.size)] = min(max(rng.choice(INTS), info.min), info.max)
    tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    return model.SerializeToString()


@mutator("model", "tensor-data")
def _m_tensor_data(model: onnx.ModelProto, data: bytes, rng: random.Random, ws: Workspace) -> bytes:
    """Payloads that do not match their type: short raw data, typed fields of the wrong length,
    both at once, strings, segments."""
    g = model.graph
    if not g.initializer:
        return _m_dims(model, data, rng, ws)
    tensor = rng.choice(g.initializer)
    action = rng.randrange(6)
    if action == 0:
        tensor.raw_data = tensor.raw_data[: rng.randrange(len(tensor.raw_data) + 1)]
    elif action == 1:
        tensor.ClearField("raw_data")
        tensor.float_data.extend([1.0] * rng.randint(0, 5))
    elif action == 2:
        tensor.int64_data.extend([rng.choice(INTS) for _ in range(3)])
    elif action == 3:
        tensor.data_type = TensorProto.STRING
        tensor.string_data.extend([b"\xff\xfe", b"x"])
    elif action == 4:
        tensor.segment.begin, tensor.segment.end = rng.choice(INTS), rng.choice(INTS)
    else:
        tensor.raw_data = tensor.raw_data + bytes(rng.randint(1, 9))
    return model.SerializeToString()


@mutator("model", "shuffle")
def _m_shuffle(model: onnx.ModelProto, data: bytes, rng: random.Random, ws: Workspace) -> bytes:
    """Nodes out of topological order, or an empty graph."""
    g = model.graph
    if rng.random() < 0.1:
        del g.node[:]
        return model.SerializeToString()
    nodes = list(g.node)
    i, j = rng.randrange(len(nodes)), rng.randrange(len(nodes))
    nodes[i], nodes[j] = nodes[j], nodes[i]
    del g.node[:]
    g.node.extend(nodes)
    return model.SerializeToString()


@mutator("model", "external-data")
def _m_external(model: onnx.ModelProto, data: bytes, rng: random.Random, ws: Workspace) -> bytes:
    """Move an initializer to an external file, then point it somewhere hostile or wrong."""
    g = model.graph
    candidates = [t for t in g.initializer if t.HasField("raw_data")]
    if not candidates:
        return _m_tensor_data(model, data, rng, ws)
    tensor = rng.choice(candidates)
    payload = tensor.raw_data
    folder = ws.folder
    (folder / "weights.bin").write_bytes(b"\0" * 64 + payload)
    (ws.root / "outside.bin").write_bytes(b"\0" * 64 + payload)
    (folder / "sub").mkdir(exist_ok=True)
    with contextlib.suppress(OSError):
        os.symlink(ws.root / "outside.bin", folder / "link_out.bin")
        os.symlink(folder / "weights.bin", folder / "link_in.bin")
        os.symlink("/dev/zero", folder / "link_dev.bin")
        os.mkfifo(folder / "fifo.bin")
    location = rng.choice([
        "weights.bin", "weights.bin", "./weights.bin", "sub/../weights.bin", "../outside.bin",
        "sub/../../outside.bin", str(ws.root / "outside.bin"), str(folder / "weights.bin"), "link_out.bin",
        "link_in.bin", "link_dev.bin", "fifo.bin", "missing.bin", ".", "sub", "", "C:\\weights.bin",
        "\\\\server\\share\\w.bin", "weights.bin\x00.txt", "/dev/zero", "model.onnx", "%2e%2e/outside.bin",
    ])
    offset = rng.choice(["64", "64", "0", "-1", "65", str(2**63), "abc", "", " 64", "1e3", "0x40"])
    length = rng.choice([str(len(payload)), str(len(payload)), None, "0", "-1", str(len(payload) + 1), "2"])
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entries = [("location", location), ("offset", offset)] + ([("length", length)] if length is not None else [])
    if rng.random() < 0.2:
        entries.append(rng.choice([("location", "weights.bin"), ("checksum", "x"), ("evil", "1")]))
    if rng.random() < 0.1:
        entries = [e for e in entries if e[0] != "location"]
    for key, value in entries:
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


def mutate_model(sample: str, kind: str, rng: random.Random, ws: Workspace) -> bytes:
    data = (SAMPLES / f"{sample}.onnx").read_bytes()
    model = onnx.ModelProto()
    model.ParseFromString(data)
    return MUTATORS["model"][kind](model, data, rng, ws)


# -- target TOML mutations ---------------------------------------------------------------------


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def dump_toml(data: dict[str, Any]) -> str:
    """Any TOML-shaped dict as TOML: top-level tables get headers, deeper ones are inline."""
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"\n[{_toml_key(key)}]")
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()]
    return "\n".join(lines) + "\n"


def _leaves(data: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield path + (key,)
            yield from _leaves(value, path + (key,))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield path + (index,)
            yield from _leaves(value, path + (index,))


def _parent(data: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        data = data[key]
    return data


def _odd_value(old: Any, rng: random.Random) -> Any:
    """Out of range, non-finite, or the wrong type."""
    choice = rng.randrange(9)
    if choice == 0 and isinstance(old, (int, float)) and not isinstance(old, bool):
        return old * rng.choice([-1, 0, 2**20, 2**40, 10**30])
    if choice <= 2:
        return rng.choice(INTS + (10**30, -(10**30)))
    if choice == 3:
        return rng.choice(FLOATS)
    if choice == 4:
        return rng.choice(STRINGS)
    if choice == 5:
        return rng.choice([True, False])
    if choice == 6:
        return rng.choice([[], [1], [1, 2, 3], [[0, 0]], ["a", "b"], [math.nan, math.inf], [[[[]]]]])
    if choice == 7:
        return rng.choice([{}, {"x": 1}, {"rows": 1}])
    return rng.choice([4096, 4096, 65536, 2**24, 2**20])


def _load_target_dict(name: str) -> tuple[str, dict[str, Any]]:
    text = (TARGETS_DIR / f"{name}.toml").read_text()
    return text, tomllib.loads(text)


@mutator("toml", "truncate")
def _t_truncate(text: str, rng: random.Random) -> bytes:
    return truncate(text.encode(), rng)


@mutator("toml", "bit-flip")
def _t_flip(text: str, rng: random.Random) -> bytes:
    return flip_bits(text.encode(), rng)


@mutator("toml", "bytes")
def _t_bytes(text: str, rng: random.Random) -> bytes:
    return mangle_bytes(text.encode(), rng)


@mutator("toml", "lines")
def _t_lines(text: str, rng: random.Random) -> bytes:
    """Delete, duplicate or swap lines (duplicate keys and tables are invalid TOML)."""
    lines = text.splitlines()
    for _ in range(rng.randint(1, 3)):
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        action = rng.randrange(3)
        if action == 0:
            del lines[i]
        elif action == 1:
            lines.insert(j, lines[i])
        else:
            lines[i], lines[j] = lines[j], lines[i]
    return ("\n".join(lines) + "\n").encode()


@mutator("toml", "value")
def _t_value(text: str, rng: random.Random) -> bytes:
    """One to three values replaced by out-of-range, non-finite or wrongly typed ones."""
    data = tomllib.loads(text)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(list(_leaves(data)))
        parent = _parent(data, path)
        parent[path[-1]] = _odd_value(parent[path[-1]], rng)
    return dump_toml(data).encode()


@mutator("toml", "range")
def _t_range(text: str, rng: random.Random) -> bytes:
    """Numbers just or far out of range: 0, negative, huge, fractional, non-finite."""
    data = tomllib.loads(text)
    numeric = [p for p in _leaves(data) if isinstance(_parent(data, p)[p[-1]], (int, float))
               and not isinstance(_parent(data, p)[p[-1]], bool)]
    for _ in range(rng.randint(1, 2)):
        path = rng.choice(numeric)
        parent = _parent(data, path)
        old = parent[path[-1]]
        parent[path[-1]] = rng.choice([0, -1, old + 1, old - 1, -old, old * 1000, 2**31, 2**63 - 1, 0.5,
                                       math.nan, math.inf, 4096, 65536, 65537, 2**24])
    return dump_toml(data).encode()


@mutator("toml", "big-chip")
def _t_big_chip(text: str, rng: random.Random) -> bytes:
    """The largest chips the schema allows, and just over: meshes, cores, arrays, array sizes,
    thousands of dead cores; mostly valid, so that the passes get to work on them."""
    data = tomllib.loads(text)
    chip = data.setdefault("chip", {})
    x, y = rng.choice([(1024, 1024), (4096, 1), (1, 4096), (256, 256), (64, 4096), (1024, 1025), (4096, 4096)])
    dead: list[list[int]] = []
    if rng.random() < 0.3:
        cells = rng.sample(range(x * y), min(x * y - 1, rng.choice([1, 100, 5000])))
        dead = [[c % x, c // x] for c in cells]
        if rng.random() < 0.2:
            dead.append(rng.choice([[x, 0], [0, y], list(dead[0])]))  # outside the mesh, or twice
    chip.update(mesh_x=x, mesh_y=y, cores=x * y - len(dead), dead_cores=dead, io=[0, 0])
    chip["arrays_per_core"] = rng.choice([1, 1, 1, 16, 2**20, 2**20 + 1])
    if rng.random() < 0.1:
        chip["io"] = [x - 1, y] if rng.random() < 0.5 else [x - 1, y - 1]
    if rng.random() < 0.5 and "array" in data:
        data["array"].update(rows=rng.choice([1, 2, 65536]), cols=rng.choice([4, 64, 65536]))
        data["adc"]["columns_per_adc"] = 1
    return dump_toml(data).encode()


@mutator("toml", "keys")
def _t_keys(text: str, rng: random.Random) -> bytes:
    """Remove a key or a section, add an unknown one, rename one."""
    data = tomllib.loads(text)
    paths = [p for p in _leaves(data) if isinstance(_parent(data, p), dict)]
    path = rng.choice(paths)
    parent = _parent(data, path)
    action = rng.randrange(3)
    if action == 0:
        del parent[path[-1]]
    elif action == 1:
        parent[rng.choice(["evil", "Rows", "rows ", "", "array", "name"])] = _odd_value(0, rng)
    else:
        parent[path[-1] + rng.choice(["s", "_", "X"])] = parent.pop(path[-1])
    return dump_toml(data).encode()


@mutator("toml", "deep")
def _t_deep(text: str, rng: random.Random) -> bytes:
    """Pathological TOML: deep nesting, long strings, many keys."""
    depth = rng.choice([50, 1000, 5000, 20000])
    action = rng.randrange(4)
    if action == 0:
        return (text + "\nevil = " + "[" * depth + "]" * depth + "\n").encode()
    if action == 1:
        return (text + "\nevil = " + "{a = " * depth + "1" + "}" * depth + "\n").encode()
    if action == 2:
        return (text.replace('description = "', 'description = "' + "x" * (1 << 20), 1)).encode()
    return (text + "\n[evil]\n" + "".join(f"k{i} = {i}\n" for i in range(depth))).encode()


def mutate_toml(target: str, kind: str, rng: random.Random) -> bytes:
    text, _ = _load_target_dict(target)
    return MUTATORS["toml"][kind](text, rng)


# -- IR text mutations -------------------------------------------------------------------------


_IR_TOKEN = re.compile(r'%"(?:[^"\\]|\\.)*"|%[\w.$/-]+|@[\w.$/-]+|tensor<[^>]*>|"(?:[^"\\]|\\.)*"|[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?|\w+(?:\.\w+)*|\S')


def _ir_tokens(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _IR_TOKEN.finditer(text)]


@mutator("ir", "truncate")
def _i_truncate(text: str, rng: random.Random) -> bytes:
    return truncate(text.encode(), rng)


@mutator("ir", "bytes")
def _i_bytes(text: str, rng: random.Random) -> bytes:
    return mangle_bytes(text.encode(), rng) if rng.random() < 0.5 else flip_bits(text.encode(), rng)


@mutator("ir", "tokens")
def _i_tokens(text: str, rng: random.Random) -> bytes:
    """Delete, duplicate or swap tokens."""
    for _ in range(rng.randint(1, 3)):
        spans = _ir_tokens(text)
        (a, b), (c, d) = rng.choice(spans), rng.choice(spans)
        action = rng.randrange(3)
        if action == 0:
            text = text[:a] + text[b:]
        elif action == 1:
            text = text[:c] + text[a:b] + " " + text[c:]
        elif a < c:
            text = text[:a] + text[c:d] + text[b:c] + text[a:b] + text[d:]
    return text.encode()


@mutator("ir", "types")
def _i_types(text: str, rng: random.Random) -> bytes:
    """Huge, zero, negative or malformed dimensions and unknown element types."""
    spans = [m.span() for m in re.finditer(r"tensor<[^>]*>", text)]
    a, b = rng.choice(spans)
    dims = "x".join(str(rng.choice(DIMS)) for _ in range(rng.randint(0, 4)))
    dtype = rng.choice(["f32", "f32", "i64", "bool", "str", "f8", "", "x"])
    replacement = rng.choice([f"tensor<{dims}x{dtype}>", f"tensor<{dtype}>", "tensor<>", "tensor<?xf32>",
                              f"tensor<{dims}>", "tensor<1xx2xf32>"])
    return (text[:a] + replacement + text[b:]).encode()


@mutator("ir", "numbers")
def _i_numbers(text: str, rng: random.Random) -> bytes:
    """Extreme numbers in attributes and dense constants."""
    spans = [m.span() for m in re.finditer(r"(?<![\w%@.])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.])", text)]
    for _ in range(rng.randint(1, 3)):
        a, b = rng.choice(spans)
        value = rng.choice([*INTS, 10**400, "1e999", "nan", "inf", "-inf", "1.5", "-0"])
        text = text[:a] + str(value) + text[b:]
        spans = [m.span() for m in re.finditer(r"(?<![\w%@.])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.])", text)]
    return text.encode()


@mutator("ir", "names")
def _i_names(text: str, rng: random.Random) -> bytes:
    """Rename a value, symbol or op: dangling uses, duplicate definitions, unknown ops."""
    values = sorted(set(re.findall(r"%[\w.$/-]+", text)))
    ops = sorted(set(re.findall(r"= ((?:nn|xbar)\.\w+)\(", text)))
    symbols = sorted(set(re.findall(r"@[\w.$/-]+", text)))
    action = rng.randrange(4)
    if action == 0 and len(values) > 1:
        old, new = rng.sample(values, 2)
        return text.replace(old + " ", new + " ", 1).encode()
    if action == 1 and ops:
        return text.replace(rng.choice(ops), rng.choice(["nn.evil", "evil", "xbar.mvm", "nn.constant", "nn.add"]), 1).encode()
    if action == 2 and symbols:
        return text.replace(rng.choice(symbols), rng.choice(["@ghost", '@"x"', "@"]), 1).encode()
    return text.replace("return", rng.choice(["return %ghost,", "return %input,", "return"]), 1).encode()


_IR_TEXT: dict[str, str] = {}


def sample_ir(sample: str) -> str:
    """The IR text of a sample as ``afmc ir --constants`` prints it (cached)."""
    if sample not in _IR_TEXT:
        from .driver import load_module
        from .ir.printer import print_module

        shape = SAMPLE_SHAPES[sample].split("=")[1]
        module = load_module(SAMPLES / f"{sample}.onnx", {"input": tuple(int(d) for d in shape.split("x"))})
        _IR_TEXT[sample] = print_module(module, constants=True)
    return _IR_TEXT[sample]


def mutate_ir(sample: str, kind: str, rng: random.Random) -> bytes:
    return MUTATORS["ir"][kind](sample_ir(sample), rng)


# -- cases -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One fuzz case: the mutation is a pure function of these three."""

    family: str
    kind: str
    seed: int

    def __str__(self) -> str:
        return f"{self.family}:{self.kind}:{self.seed}"

    @classmethod
    def parse(cls, text: str) -> Case:
        family, kind, seed = text.rsplit(":", 2)
        if family not in FAMILIES or kind not in MUTATORS[family]:
            known = "; ".join(f"{f}: {', '.join(kinds(f))}" for f in FAMILIES)
            raise ValueError(f"unknown case {text!r}; known kinds: {known}")
        return cls(family, kind, int(seed))


def case_at(index: int, seed: int = 0) -> Case:
    """The ``index``-th case of a run: families in turn (models twice as often), kinds in turn."""
    families = ("model", "toml", "model", "ir")
    family = families[index % len(families)]
    turn = index // len(families)
    names = kinds(family)
    return Case(family, names[turn % len(names)], seed * 1_000_003 + index)


@dataclass
class Outcome:
    """What one ``afmc`` command did on a mutated input, and what was wrong with it (if anything)."""

    argv: list[str]
    code: int | None
    stdout: str
    stderr: str
    seconds: float
    problem: str | None = None

    def summary(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        first = next((line for line in lines if line.startswith("afmc: error:")), lines[0] if lines else "")
        return f"exit {self.code} in {self.seconds:.2f}s: {first[:200]}"


@dataclass
class CaseResult:
    case: Case
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return [f"{' '.join(o.argv)}: {o.problem}" for o in self.outcomes if o.problem]


#: Exit codes each command may end with on hostile input (DESIGN.md: 3 is check's "does not fit").
ALLOWED = {"ir": {0, 2}, "check": {0, 2, 3}, "targets": {0, 2}, "compile": {0, 2, 3}}


def judge(outcome: Outcome) -> str | None:
    """Why ``outcome`` breaks the contract, or None when it keeps it."""
    command = outcome.argv[0]
    err_lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    if outcome.code is None:
        return outcome.problem or "did not finish"
    if "Traceback (most recent call last)" in outcome.stderr + outcome.stdout:
        return "printed a traceback"
    if outcome.code not in ALLOWED[command]:
        return f"exit code {outcome.code} (allowed {sorted(ALLOWED[command])}): {outcome.summary()}"
    if outcome.seconds > CASE_SECONDS:
        return f"took {outcome.seconds:.1f}s (limit {CASE_SECONDS:.0f}s)"
    errors = [line for line in err_lines if line.startswith("afmc: error:")]
    if outcome.code == 2 and len(errors) != 1:
        return f"exit 2 needs exactly one 'afmc: error:' line on stderr, got {err_lines[:5]!r}"
    if outcome.code == 0 and errors:
        return f"exit 0 with an error line: {errors[0]!r}"
    if len(errors) > 1:  # exit 3: check's report (no error line), or DoesNotFit's one line
        return f"more than one error line: {errors[:3]!r}"
    # after the error line only a pipeline string's diagram: the string, a caret under the bad token
    caret = err_lines[err_lines.index(errors[0]) + 1 :] if errors else []
    if caret and not (len(caret) == 2 and all(line.startswith("  ") for line in caret) and caret[1].strip() == "^"):
        return f"stray output after the error line: {caret[:3]!r}"
    stray = [line for line in err_lines if not line.startswith("afmc: ") and line not in caret]
    if stray:
        return f"stray output on stderr: {stray[:3]!r}"
    return None


class CaseTimeout(BaseException):
    """Raised by the in-process watchdog when a case runs past its time (BaseException: afmc's
    handlers must not turn it into an error line)."""


@contextlib.contextmanager
def _watchdog(seconds: float) -> Iterator[None]:
    """SIGALRM after ``seconds`` raises ``CaseTimeout`` (main thread only; a no-op elsewhere)."""
    try:
        previous = signal.signal(signal.SIGALRM, _raise_timeout)
    except ValueError:
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _raise_timeout(signum: int, frame: Any) -> None:
    raise CaseTimeout


def run_cli(argv: list[str], timeout: float = CASE_SECONDS * 2) -> Outcome:
    """``afmc.cli.main(argv)`` in this process, its output captured and judged."""
    from .cli import main

    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    code: int | None = None
    problem = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            with _watchdog(timeout):
                code = main(list(argv))
        except CaseTimeout:
            problem = f"hung: no result after {timeout:.0f}s"
        except BaseException as exc:  # noqa: BLE001  (anything escaping main() is the bug we look for)
            problem = "exception escaped main(): " + "".join(traceback.format_exception(exc))[-2000:]
    outcome = Outcome(list(argv), code, out.getvalue(), err.getvalue(), time.perf_counter() - start, problem)
    outcome.problem = judge(outcome) if code is not None else problem
    return outcome


#: The pipeline ``check`` runs in quick mode: the targets' pipelines up to tiling, without the
#: placement search (whose time limit alone is seconds per case).
QUICK_PIPELINE = "canonicalize,fold-constants,fold-batchnorm,canonicalize,partition,tile"


def commands(case: Case, path: Path, quick: bool = False) -> list[list[str]]:
    """The ``afmc`` commands a case runs on its mutated file: ``ir``, ``check`` and ``compile`` (its
    bundle and report in the case's folder) for models and IR text; ``targets`` and ``check
    --target FILE`` for target files. ``quick`` compiles with ``QUICK_PIPELINE`` instead of the
    target's own pipeline."""
    pipeline = ["--pipeline", QUICK_PIPELINE] if quick else []
    if case.family == "toml":
        model = str(SAMPLES / "mlp_digits.onnx")
        return [["targets", str(path)],
                ["check", model, "--target", str(path), "--input-shape", "input=1x64", *pipeline]]
    shape = []
    if case.family == "model" and case.seed % 7:
        shape = ["--input-shape", SAMPLE_SHAPES[_sample_of(case)]]
    outputs = ["-o", str(path.parent / BUNDLE), "--report", str(path.parent / REPORT)]
    return [["ir", str(path), *shape], ["check", str(path), "--target", "pcm", *shape, *pipeline],
            ["compile", str(path), "--target", "pcm", *shape, *pipeline, *outputs]]


#: Where a case's ``afmc compile`` writes, in the case's folder.
BUNDLE, REPORT = "out.afmc", "report.json"


def check_outputs(outcome: Outcome, folder: Path) -> str | None:
    """After ``afmc compile``: a whole bundle and report on success, nothing at all otherwise, and
    never a staging directory or temporary file (names starting with '.') left behind."""
    hidden = sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
    if hidden:
        return f"left {hidden} behind"
    bundle, report = folder / BUNDLE, folder / REPORT
    if outcome.code == 0:
        files = sorted(p.name for p in bundle.iterdir()) if bundle.is_dir() else []
        if len(files) < 6 or not report.is_file():
            return f"exit 0 but the bundle holds {files} and the report {'is' if report.is_file() else 'is not'} there"
    elif bundle.exists() or report.exists():
        return f"exit {outcome.code} but {'the bundle' if bundle.exists() else 'the report'} was written"
    return None


def _sample_of(case: Case) -> str:
    names = sorted(SAMPLE_SHAPES)
    return names[case.seed % len(names)]


def write_case(case: Case, ws: Workspace) -> Path:
    """Write the mutated input of ``case`` into ``ws.folder`` and return its path."""
    rng = random.Random(str(case))
    ws.folder.mkdir(parents=True, exist_ok=True)
    if case.family == "model":
        path = ws.folder / "model.onnx"
        path.write_bytes(mutate_model(_sample_of(case), case.kind, rng, ws))
    elif case.family == "toml":
        path = ws.folder / "target.toml"
        path.write_bytes(mutate_toml(TARGET_NAMES[case.seed % len(TARGET_NAMES)], case.kind, rng))
    else:
        path = ws.folder / "model.mlir"
        path.write_bytes(mutate_ir(_sample_of(case), case.kind, rng))
    return path


def run_case(case: Case, root: Path, quick: bool = False) -> CaseResult:
    """Mutate, write, run every command of ``case`` in this process; ``root`` is emptied first."""
    shutil.rmtree(root, ignore_errors=True)
    ws = Workspace(root)
    path = write_case(case, ws)
    result = CaseResult(case)
    for argv in commands(case, path, quick):
        outcome = run_cli(argv)
        if argv[0] == "compile" and outcome.problem is None:
            outcome.problem = check_outputs(outcome, path.parent)
        result.outcomes.append(outcome)
    shutil.rmtree(root, ignore_errors=True)
    return result


# -- worker: many cases in one process, under the memory limit ----------------------------------


def limit_memory(limit: int = CASE_MEMORY) -> None:
    """``preexec_fn`` for children: cap the address space (MemoryError rather than swapping)."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def worker(root: Path, quick: bool = False) -> None:
    """Read case names on stdin, one per line; write one JSON result per line on stdout.

    Run by ``bench/fuzz.py`` (and the tests) as ``python -m afmc.fuzz worker ROOT [--quick]``
    under ``limit_memory``; the parent kills and restarts it when a case overstays its time.
    Results go out on a private copy of stdout; file descriptor 1 itself is pointed at
    ``/dev/null`` so that nothing else written there (a C library's chatter) corrupts them.
    """
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    for line in sys.stdin:
        case = Case.parse(line.strip())
        try:
            result = run_case(case, root, quick)
            payload = {"case": str(case), "problems": result.problems,
                       "outcomes": [[o.argv[0], o.code, round(o.seconds, 3)] for o in result.outcomes]}
        except BaseException as exc:  # noqa: BLE001  (a broken mutator is reported, not fatal)
            payload = {"case": str(case), "problems": [f"harness: {type(exc).__name__}: {exc}"], "outcomes": []}
        channel.write(json.dumps(payload) + "\n")


if __name__ == "__main__":
    if len(sys.argv) in (3, 4) and sys.argv[1] == "worker":
        worker(Path(sys.argv[2]), quick="--quick" in sys.argv[3:])
    else:
        sys.exit("usage: python -m afmc.fuzz worker ROOT [--quick]")
