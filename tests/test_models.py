"""Small but realistic third-party-style graphs built with onnx.helper (torch is not a dependency):
a GPT-like causal LM, a ViT-like encoder and a YOLO-like detector head, in the shapes torch's
exporters give them (shape subgraphs, Constant-node weights, causal masks from Trilu).

Each is imported, run by the reference interpreter and compared with onnxruntime (max abs error
<= 1e-5 on float outputs; integer outputs such as indices equal), then compiled for the crossbar
target and run with ideal arrays: IR text round trip after every pass, same output types.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from afmc.targets import load_target
from onnx import TensorProto, helper, numpy_helper

from afmc.driver import compile_module
from afmc.frontend import import_model
from afmc.interp import run_module
from afmc.ir import parse_module, print_module
from afmc.ir.verify import verify
from afmc.pipeline import parse_pipeline

F, I64 = TensorProto.FLOAT, TensorProto.INT64
ATOL = 1e-5


class Graph:
    """Collects nodes and weights; ``w`` adds a seeded random weight as a Constant node (as torch's
    TorchScript exporter writes them) or an initializer."""

    def __init__(self, seed: int) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(seed)
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def w(self, *shape: int, scale: float = 0.2, as_node: bool = False) -> str:
        array = (self.rng.standard_normal(shape) * scale).astype(np.float32)
        return self.const(array, as_node)

    def const(self, array: np.ndarray, as_node: bool = True) -> str:
        name = self.name("c")
        tensor = numpy_helper.from_array(np.asarray(array), name)
        if as_node:
            self.nodes.append(helper.make_node("Constant", [], [name], value=tensor))
        else:
            self.inits.append(tensor)
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, out: tuple[str, ...] = (), **attrs: object) -> Any:
        """The node's output name (a list of them when ``n_out`` > 1); ``out`` names graph outputs."""
        outs = list(out) or [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.name(op_type), **attrs))
        return outs[0] if len(outs) == 1 else outs

    def linear(self, x: str, d_in: int, d_out: int) -> str:
        return self.op("Add", [self.op("MatMul", [x, self.w(d_in, d_out)]), self.w(d_out, scale=0.05)])

    def layer_norm(self, x: str, d: int) -> str:
        scale = self.const(np.ones(d, np.float32) + self.rng.standard_normal(d).astype(np.float32) * 0.1)
        return self.op("LayerNormalization", [x, scale, self.w(d, scale=0.05)], axis=-1)

    def model(self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "g", inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
        model.ir_version = 10
        onnx.checker.check_model(model)
        return model


def gpt() -> onnx.ModelProto:
    """Token + position embeddings, causal self-attention (mask from Trilu on a ConstantOfShape of
    the run-time sequence length), tanh-Gelu MLP, LogSoftmax over the vocabulary. The head split
    is computed from Shape with Div and Mod (exporters' shape subgraphs)."""
    vocab, d, heads, layers = 50, 32, 4, 2
    g = Graph(1)
    idx = "idx"
    shape = g.op("Shape", [idx])
    seq = g.op("Gather", [shape, g.const(np.array(1, np.int64))], axis=0)
    batch = g.op("Gather", [shape, g.const(np.array(0, np.int64))], axis=0)
    positions = g.op("Range", [g.const(np.array(0, np.int64)), seq, g.const(np.array(1, np.int64))])
    x = g.op("Add", [g.op("Gather", [g.w(vocab, d), idx]), g.op("Gather", [g.w(16, d), positions])])
    # head size = d // heads, checked with Mod the way exporters do: (d - d % heads) / heads
    d_const = g.const(np.array([d], np.int64))
    h_const = g.const(np.array([heads], np.int64))
    head = g.op("Div", [g.op("Sub", [d_const, g.op("Mod", [d_const, h_const])]), h_const])
    unsq = [g.op("Unsqueeze", [t, g.const(np.array([0], np.int64))]) for t in (batch, seq)]
    split_shape = g.op("Concat", [unsq[0], unsq[1], h_const, head], axis=0)
    merge_shape = g.op("Concat", [unsq[0], unsq[1], d_const], axis=0)
    square = g.op("Concat", [unsq[1], unsq[1]], axis=0)
    ones = g.op("ConstantOfShape", [square], value=numpy_helper.from_array(np.array([1.0], np.float32)))
    future = g.op("Cast", [g.op("Trilu", [ones, g.const(np.array(1, np.int64))], upper=1)], to=TensorProto.BOOL)
    minus_inf = g.const(np.array(-np.inf, np.float32))
    for _ in range(layers):
        h = g.layer_norm(x, d)
        q, k, v = (
            g.op("Transpose", [g.op("Reshape", [g.linear(h, d, d), split_shape])], perm=[0, 2, 1, 3]) for _ in range(3)
        )
        scores = g.op("Einsum", [q, k], equation="bhqd,bhkd->bhqk")
        scores = g.op("Mul", [scores, g.const(np.array(1 / np.sqrt(d // heads), np.float32))])
        attn = g.op("Softmax", [g.op("Where", [future, minus_inf, scores])], axis=-1)
        y = g.op("Reshape", [g.op("Transpose", [g.op("MatMul", [attn, v])], perm=[0, 2, 1, 3]), merge_shape])
        x = g.op("Add", [x, g.linear(y, d, d)])
        mlp = g.op("Gelu", [g.linear(g.layer_norm(x, d), d, 4 * d)], approximate="tanh")
        x = g.op("Add", [x, g.linear(mlp, 4 * d, d)])
    logits = g.op("MatMul", [g.layer_norm(x, d), g.w(d, vocab)])
    g.op("ArgMax", [g.op("LogSoftmax", [logits], axis=-1, out=("logprobs",))], axis=-1, keepdims=0, out=("next",))
    return g.model(
        [helper.make_tensor_value_info("idx", I64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logprobs", F, ["batch", "seq", vocab]),
         helper.make_tensor_value_info("next", I64, ["batch", "seq"])],
    )


def vit() -> onnx.ModelProto:
    """Conv patch embedding, class token (Expand to the batch), exact-Gelu encoder blocks with
    GreaterOrEqual/And masking of a padded token, LpNormalization'd embedding and class scores."""
    d, classes = 24, 7
    g = Graph(2)
    patches = g.op("Conv", ["x", g.w(d, 3, 4, 4), g.w(d, scale=0.05)], strides=[4, 4])
    batch = g.op("Slice", [g.op("Shape", ["x"]), g.const(np.array([0], np.int64)), g.const(np.array([1], np.int64))])
    tokens = g.op("Transpose", [g.op("Flatten", [g.op("Transpose", [patches], perm=[0, 2, 3, 1])], axis=1)], perm=[0, 1])
    tokens = g.op("Reshape", [tokens, g.op("Concat", [batch, g.const(np.array([16, d], np.int64))], axis=0)])
    cls = g.op("Expand", [g.w(1, 1, d, as_node=True), g.op("Concat", [batch, g.const(np.array([1, d], np.int64))], axis=0)])
    x = g.op("Add", [g.op("Concat", [cls, tokens], axis=1), g.w(1, 17, d)])
    for _ in range(2):
        h = g.layer_norm(x, d)
        q, k, v = (g.linear(h, d, d) for _ in range(3))
        scores = g.op("Div", [g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 2, 1])]), g.const(np.array(np.sqrt(d), np.float32))])
        x = g.op("Add", [x, g.linear(g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v]), d, d)])
        x = g.op("Add", [x, g.linear(g.op("Gelu", [g.linear(g.layer_norm(x, d), d, 2 * d)]), 2 * d, d)])
    first = g.op("Gather", [g.layer_norm(x, d), g.const(np.array(0, np.int64))], axis=1)
    pooled = g.op("ReduceMean", [x, g.const(np.array([1], np.int64))], keepdims=0)
    embedding = g.op("LpNormalization", [g.op("Add", [first, pooled])], axis=-1, p=2, out=("embedding",))
    g.op("Gemm", [embedding, g.w(classes, d), g.w(classes)], transB=1, out=("scores",))
    return g.model(
        [helper.make_tensor_value_info("x", F, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("scores", F, ["batch", classes]),
         helper.make_tensor_value_info("embedding", F, ["batch", d])],
    )


def yolo() -> onnx.ModelProto:
    """Focus stem (SpaceToDepth), GroupNorm+Mish and InstanceNorm+PRelu stages, nearest Resize
    and Concat, a detection head with Sigmoid scores, ReduceMax/ArgMax over classes, TopK over
    anchors and GatherElements of the chosen boxes."""
    classes, k = 4, 6
    g = Graph(3)
    x = g.op("SpaceToDepth", ["x"], blocksize=2)  # [n, 12, 16, 16]
    a = g.op("Conv", [x, g.w(16, 12, 3, 3), g.w(16)], pads=[1, 1, 1, 1])
    a = g.op("Mish", [g.op("GroupNormalization", [a, g.w(16, scale=1.0), g.w(16)], num_groups=4)])
    b = g.op("Conv", [a, g.w(32, 16, 3, 3, scale=0.1), g.w(32)], pads=[1, 1, 1, 1], strides=[2, 2])
    b = g.op("InstanceNormalization", [b, g.w(32, scale=1.0), g.w(32)])
    b = g.op("PRelu", [b, g.const((np.abs(g.rng.standard_normal((32, 1, 1))) * 0.2).astype(np.float32))])
    up = g.op("Resize", [b, "", g.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    y = g.op("Conv", [g.op("Concat", [a, up], axis=1), g.w(3 * (5 + classes), 48, 1, 1), g.w(3 * (5 + classes))])
    y = g.op("Transpose", [g.op("Reshape", [y, g.const(np.array([0, 3, 5 + classes, 256], np.int64))])], perm=[0, 1, 3, 2])
    y = g.op("Reshape", [y, g.const(np.array([0, -1, 5 + classes], np.int64))])  # [n, 768, 9]
    box, obj, cls = g.op("Split", [y, g.const(np.array([4, 1, classes], np.int64))], n_out=3, axis=-1)
    score = g.op("Mul", [g.op("Sigmoid", [obj]), g.op("Softmax", [cls], axis=-1)])
    best = g.op("ReduceMax", [score, g.const(np.array([-1], np.int64))], keepdims=0)
    label = g.op("ArgMax", [score], axis=-1, keepdims=0)
    _, index = g.op("TopK", [best, g.const(np.array([k], np.int64))], axis=1, out=("top", "top_index"))
    index4 = g.op("Unsqueeze", [index, g.const(np.array([-1], np.int64))])
    index4 = g.op("Expand", [index4, g.const(np.array([1, 1, 4], np.int64))])
    g.op("GatherElements", [g.op("Sigmoid", [box]), index4], axis=1, out=("boxes",))
    g.op("GatherElements", [label, index], axis=1, out=("labels",))
    return g.model(
        [helper.make_tensor_value_info("x", F, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("boxes", F, ["batch", k, 4]),
         helper.make_tensor_value_info("top", F, ["batch", k]),
         helper.make_tensor_value_info("labels", I64, ["batch", k])],
    )


MODELS = {
    "gpt": (gpt, {"idx": (2, 12)}),
    "vit": (vit, {"x": (3, 3, 16, 16)}),
    "yolo": (yolo, {"x": (2, 3, 32, 32)}),
}


def _feeds(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    feeds = {}
    for info in model.graph.input:
        shape = shapes[info.name]
        if info.type.tensor_type.elem_type == I64:
            feeds[info.name] = rng.integers(0, 50, shape).astype(np.int64)
        else:
            feeds[info.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _onnxruntime(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


@pytest.mark.parametrize("name", list(MODELS))
def test_interpreter_matches_onnxruntime(name: str) -> None:
    build, shapes = MODELS[name]
    model = build()
    feeds = _feeds(model, shapes)
    module = import_model(model, shapes)
    verify(module)
    text = print_module(module)
    assert print_module(parse_module(text)) == text
    got, want = run_module(module, feeds), _onnxruntime(model, feeds)
    assert list(got) == list(want)
    for key, expected in want.items():
        assert got[key].dtype == expected.dtype and got[key].shape == expected.shape, key
        if expected.dtype.kind == "f":
            np.testing.assert_allclose(got[key], expected, rtol=0, atol=ATOL, err_msg=key)
        else:
            np.testing.assert_array_equal(got[key], expected, err_msg=key)


@pytest.mark.parametrize("name", list(MODELS))
def test_compiles_for_crossbar_and_runs(name: str) -> None:
    """The target pipeline handles the new ops (they stay digital); ideal arrays differ from the
    float model only by weight quantisation."""
    build, shapes = MODELS[name]
    model = build()
    feeds = _feeds(model, shapes)
    module = import_model(model, shapes)
    target = load_target("crossbar")
    compile_module(module, target, passes=parse_pipeline(target.pipeline).instantiate())
    text = print_module(module, constants=True)
    assert print_module(parse_module(text), constants=True) == text
    got, want = run_module(module, feeds), _onnxruntime(model, feeds)
    for key, expected in want.items():
        assert got[key].dtype == expected.dtype and got[key].shape == expected.shape, key
    first = next(iter(want))
    cosine = float(np.sum(got[first] * want[first]) / (np.linalg.norm(got[first]) * np.linalg.norm(want[first])))
    assert cosine > 0.99
