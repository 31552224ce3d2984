"""partition: every op gets a region and a reason; regions and crossings are counted."""

from __future__ import annotations

import numpy as np
import onnx
from afmc.targets import load_target
from helpers import sample_path, sample_shapes
from onnx import TensorProto, helper, numpy_helper

from afmc.driver import compile_module
from afmc.frontend import import_model, import_onnx
from afmc.ir import parse_module, print_module
from afmc.pipeline import parse_pipeline


def partitioned(module, spec: str = "partition", target: str = "pcm"):  # type: ignore[no-untyped-def]
    ctx = compile_module(module, load_target(target), passes=parse_pipeline(spec).instantiate()).context
    return {op.loc: (op.attr("region"), op.attr("reason")) for op in module.ops if op.name != "nn.constant"}, ctx


def model_with_depthwise_and_attention() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w_dw = numpy_helper.from_array(rng.standard_normal((16, 1, 3, 3)).astype(np.float32), "w_dw")
    w_pw = numpy_helper.from_array(rng.standard_normal((32, 16, 1, 1)).astype(np.float32), "w_pw")
    w_q = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w_q")
    nodes = [
        helper.make_node("Conv", ["x", "w_dw"], ["dw"], name="depthwise", group=16, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["dw", "w_pw"], ["pw"], name="pointwise"),
        helper.make_node("Relu", ["pw"], ["r"], name="relu"),
        helper.make_node("Reshape", ["r", "shape"], ["tokens"], name="to_tokens"),
        helper.make_node("MatMul", ["tokens", "w_q"], ["q"], name="query"),
        helper.make_node("Transpose", ["tokens"], ["kt"], name="keys_t", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="scores"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 4, 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 64, 64])],
        [w_dw, w_pw, w_q, numpy_helper.from_array(np.array([1, 64, 8], np.int64), "shape")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_reasons_for_every_kind_of_op() -> None:
    module = import_model(model_with_depthwise_and_attention())
    regions, ctx = partitioned(module, "partition{min-utilization=0.05}")
    assert regions["pointwise"] == ("analog", "static-weight conv")
    assert regions["query"] == ("analog", "static-weight matmul")
    assert regions["scores"] == ("digital", "weights are activations")
    assert regions["relu"] == ("digital", "no analog implementation (digital unit)")
    assert regions["depthwise"][0] == "digital" and regions["depthwise"][1].startswith("too wasteful")
    assert all(reason for _, reason in regions.values())
    report = ctx.report["partition"]
    assert report["analog_regions"] == 2
    assert report["crossings"] == {"analog_to_digital": 2, "digital_to_analog": 2}


def test_keep_digital_and_min_macs() -> None:
    module = import_onnx(sample_path("mlp_digits"), sample_shapes("mlp_digits", 1))
    regions, _ = partitioned(module, "partition{keep-digital=/fc1/* min-macs=1000}")
    assert regions["/fc1/Gemm"] == ("digital", "pinned digital by keep-digital=/fc1/*")
    assert regions["/fc3/Gemm"] == ("digital", "too small: 640 MACs < min-macs=1000")
    assert regions["/fc2/Gemm"] == ("analog", "static-weight gemm")


def test_min_fan_in_keeps_layers_with_few_inputs_per_output_digital() -> None:
    """conv1 of the digits CNN sums 9 inputs per output (1 channel × 3 × 3), conv2 144, fc 32."""
    module = import_onnx(sample_path("cnn_digits"), sample_shapes("cnn_digits", 1))
    regions, _ = partitioned(module, "canonicalize,fold-batchnorm,partition{min-fan-in=16}")
    assert regions["/conv1/Conv"] == (
        "digital", "too few inputs per output: 9 < min-fan-in=16 (device noise and drift spread do not average out)")
    assert regions["/conv2/Conv"] == regions["/conv3/Conv"] == ("analog", "static-weight conv")
    assert regions["/fc/Gemm"] == ("analog", "static-weight gemm")
    module = import_onnx(sample_path("cnn_digits"), sample_shapes("cnn_digits", 1))
    regions, _ = partitioned(module, "canonicalize,fold-batchnorm,partition{min-fan-in=9}")
    assert regions["/conv1/Conv"] == ("analog", "static-weight conv")  # the bound is strict: 9 inputs pass 9


def test_pcm_pipeline_keeps_the_narrow_layers_digital() -> None:
    """The pcm target's own pipeline: the CNN's conv1 (9 inputs) and the transformer's embedding (4) stay
    digital, every other matrix layer of the samples is analog."""
    specs = [str(spec) for spec in parse_pipeline(load_target("pcm").pipeline)]
    upto = ",".join(specs[: next(i for i, spec in enumerate(specs) if spec.startswith("partition")) + 1])
    assert "min-fan-in=16" in upto
    for name, narrow in (("cnn_digits", {"/conv1/Conv"}), ("transformer_digits", {"/embed/MatMul"}),
                         ("mlp_digits", set())):
        module = import_onnx(sample_path(name), sample_shapes(name, 1))
        regions, _ = partitioned(module, upto)
        digital = {loc for loc, (region, reason) in regions.items() if reason.startswith("too few inputs")}
        assert digital == narrow, name


def test_partition_output_round_trips_and_carries_attributes() -> None:
    module = import_onnx(sample_path("cnn_digits"), sample_shapes("cnn_digits", 1))
    compile_module(module, load_target("pcm"), passes=parse_pipeline("canonicalize,fold-batchnorm,partition").instantiate())
    text = print_module(module)
    assert 'region = "analog"' in text and "region_id = 0" in text
    assert print_module(parse_module(text)) == text


def test_fold_batchnorm_removes_every_batchnorm_of_the_cnn() -> None:
    module = import_onnx(sample_path("cnn_digits"), sample_shapes("cnn_digits", 1))
    assert any(op.name == "nn.batch_normalization" for op in module.ops)
    compile_module(module, None, passes=parse_pipeline("fold-batchnorm").instantiate())
    assert not any(op.name == "nn.batch_normalization" for op in module.ops)


def test_fold_batchnorm_into_grouped_conv_and_conv_transpose_matches_onnxruntime() -> None:
    import onnxruntime as ort

    from afmc.interp import run_module

    rng = np.random.default_rng(0)
    for kind, out in (("Conv", [1, 4, 3, 3]), ("ConvTranspose", [1, 4, 7, 7])):
        inits = [numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "w"),
                 numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "cb")]
        inits += [numpy_helper.from_array(rng.random(4).astype(np.float32) + 0.5, n) for n in "sbmv"]
        nodes = [helper.make_node(kind, ["x", "w", "cb"], ["y"], name="c", group=2),
                 helper.make_node("BatchNormalization", ["y", "s", "b", "m", "v"], ["z"], name="bn")]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
                                  [helper.make_tensor_value_info("z", TensorProto.FLOAT, out)], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        x = rng.standard_normal((1, 4, 5, 5)).astype(np.float32)
        want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
        module = import_model(model)
        compile_module(module, None, passes=parse_pipeline("fold-batchnorm").instantiate())
        assert not any(op.name == "nn.batch_normalization" for op in module.ops)
        np.testing.assert_allclose(run_module(module, {"x": x})["z"], want, rtol=1e-5, atol=1e-5)


def test_depthwise_convolutions_stay_digital_by_default() -> None:
    """One array per group at 9 used cells of 65,536: the default ``min-utilization`` (1 %) keeps it
    digital; ``min-utilization=0`` maps it anyway."""
    module = import_model(model_with_depthwise_and_attention())
    regions, _ = partitioned(module, "partition")
    assert regions["depthwise"][0] == "digital" and "min-utilization=0.01" in regions["depthwise"][1]
    assert regions["pointwise"][0] == "analog"
    regions, _ = partitioned(import_model(model_with_depthwise_and_attention()), "partition{min-utilization=0}")
    assert regions["depthwise"][0] == "analog"
