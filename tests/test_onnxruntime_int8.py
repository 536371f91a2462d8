"""export --target onnxruntime: the TensorRT-form Q/DQ graph rewritten so that onnxruntime's CPU QDQ
fusion runs integer kernels, with the same scales and (but for ReLU outputs above 127 steps) the same values."""
import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import REPO
from frcnn_tf.detectors import onnx_session
from frcnn_tf.errors import FrcnnError
from frcnn_tf.export import onnx_graph
from frcnn_tf.export.onnx_export import Int8Options, run_export, saturated_activations

SCALES = {"x": 2.0 / 127, "a": 4.0 / 127, "b": 3.0 / 127, "c": 5.0 / 127}


def _residual_block():
    """x [1, 4, 6, 6] -> conv_a (3x3) -> ReLU a -> conv_b (1x1) = b; c = ReLU(b + x): a conv whose output
    a residual Add reads, as in ResNet."""
    rng = np.random.default_rng(0)
    weights = {"wa": rng.normal(0, 0.3, (4, 4, 3, 3)), "ba": rng.normal(0, 0.2, 4),
               "wb": rng.normal(0, 0.3, (4, 4, 1, 1)), "bb": rng.normal(0, 0.2, 4)}
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["conv_a"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv_a"], ["a"], name="relu_a"),
             helper.make_node("Conv", ["a", "wb", "bb"], ["b"], name="conv_b"),
             helper.make_node("Add", ["b", "x"], ["sum"], name="add"),
             helper.make_node("Relu", ["sum"], ["c"], name="relu_c")]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 4, 6, 6])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _optimized_ops(model, tmp_path):
    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]


def test_the_rewrite_fuses_every_conv_and_keeps_the_tensorrt_values(tmp_path):
    tensorrt_form = onnx_graph.quantize_for_tensorrt(_residual_block(), SCALES)
    layout = onnx_graph.for_onnxruntime(tensorrt_form, {"b": SCALES["b"]})
    onnx.checker.check_model(layout)
    assert _optimized_ops(layout, tmp_path).count("QLinearConv") == 2
    assert "Conv" not in _optimized_ops(layout, tmp_path)

    zero_points = {node.input[0]: numpy_helper.to_array(next(i for i in layout.graph.initializer
                                                             if i.name == node.input[2]))
                   for node in layout.graph.node if node.op_type == "QuantizeLinear"}
    assert {name: (int(zero), zero.dtype) for name, zero in zero_points.items()} == {
        "x": (128, np.uint8), "a": (0, np.uint8), "b": (128, np.uint8)}  # a: a ReLU output
    bias = next(n for n in layout.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "ba__int32")
    initial = {i.name: numpy_helper.to_array(i) for i in layout.graph.initializer}
    ba = numpy_helper.to_array(next(i for i in _residual_block().graph.initializer if i.name == "ba"))
    np.testing.assert_allclose(initial[bias.input[1]], SCALES["x"] * initial["wa__scale"], rtol=1e-6)
    np.testing.assert_array_equal(initial["ba__int32"], np.round(ba / initial[bias.input[1]]).astype(np.int32))

    # values: the fused graph against the TensorRT-form graph run unfused; inputs whose ReLU outputs stay
    # within 127 steps (where TensorRT would clip, the onnxruntime layout does not)
    x = np.random.default_rng(1).uniform(-1, 1, (1, 4, 6, 6)).astype(np.float32)
    reference = onnx_session(tensorrt_form.SerializeToString()).run(None, {"x": x})[0]  # unfused: TensorRT's values
    fused = onnx_session(layout.SerializeToString(), fused_int8=True).run(None, {"x": x})[0]
    # the layout quantizes b (the Add's input), which TensorRT's graph keeps float: half a step of b's scale,
    # plus the INT32 biases' rounding (half a step of s_x s_w, far below)
    difference = np.abs(fused - reference).max()
    assert 0 < difference <= 0.5 * SCALES["b"] + 1e-5


def test_without_an_output_scale_the_conv_before_an_add_stays_float(tmp_path):
    layout = onnx_graph.for_onnxruntime(onnx_graph.quantize_for_tensorrt(_residual_block(), SCALES))
    ops = _optimized_ops(layout, tmp_path)
    assert ops.count("QLinearConv") == 1  # conv_a (its ReLU output is quantized for conv_b)
    x = np.random.default_rng(2).uniform(-1, 1, (1, 4, 6, 6)).astype(np.float32)
    reference = onnx_session(onnx_graph.quantize_for_tensorrt(_residual_block(), SCALES).SerializeToString())
    fused = onnx_session(layout.SerializeToString(), fused_int8=True)
    # the same quantization points: only the INT32 biases' rounding differs (well below a step of a)
    assert np.abs(fused.run(None, {"x": x})[0] - reference.run(None, {"x": x})[0]).max() <= 0.5 * SCALES["a"]


def test_a_relu_output_that_saturates_keeps_the_int8_clip(tmp_path):
    """With a's range at a tenth of what it was (0.4), conv_a's ReLU output passes 127 steps on many values:
    export finds it on the images, and the layout keeps INT8's zero point there (TensorRT's clip), so that
    it computes what the TensorRT form computes; with zero point 0 those values would pass unclipped."""
    scales = dict(SCALES, a=0.4 / 127)
    tensorrt_form = onnx_graph.quantize_for_tensorrt(_residual_block(), scales)
    assert onnx_graph.never_negative_activations(tensorrt_form) == {"a": pytest.approx(scales["a"])}
    x = np.random.default_rng(1).uniform(-1, 1, (1, 4, 6, 6)).astype(np.float32)
    a = onnx_session(onnx_graph.with_outputs(tensorrt_form, ["a"]).SerializeToString()).run(["a"], {"x": x})[0]
    share = float(np.mean(a >= 127.5 * np.float32(scales["a"])))
    assert saturated_activations(tensorrt_form, x) == {"a": share} and share > 0.1
    reference = onnx_session(tensorrt_form.SerializeToString()).run(None, {"x": x})[0]
    differences = {}
    for clamped in ((), ("a",)):
        layout = onnx_graph.for_onnxruntime(tensorrt_form, {"b": scales["b"]}, clamped)
        initializers = {i.name: numpy_helper.to_array(i) for i in layout.graph.initializer}
        zero = initializers["a__dq__q__uint8_zero_point"]
        assert int(zero) == (128 if clamped else 0)
        fused = onnx_session(layout.SerializeToString(), fused_int8=True).run(None, {"x": x})[0]
        differences[clamped] = np.abs(fused - reference).max()
    assert differences[("a",)] <= 0.5 * scales["b"] + 1e-5 < differences[()]  # as the first test; unclipped: more


def test_a_bias_int32_cannot_hold_stays_float():
    model = _residual_block()
    weights = {i.name: i for i in model.graph.initializer}
    dead = numpy_helper.to_array(weights["wa"]).copy()
    dead[0] = 0.0  # a channel of zero weights: scale MIN_SCALE / 127, so its bias would be ~1e13 steps
    weights["wa"].CopyFrom(numpy_helper.from_array(dead, "wa"))
    layout = onnx_graph.for_onnxruntime(onnx_graph.quantize_for_tensorrt(model, SCALES), {"b": SCALES["b"]})
    conv_a = next(n for n in layout.graph.node if n.name == "conv_a")
    assert conv_a.input[2] == "ba"  # float: not fused, not wrapped around
    conv_b = next(n for n in layout.graph.node if n.name == "conv_b")
    assert conv_b.input[2] == "bb__int32__dq"


@pytest.mark.parametrize("data_type, flags, message", [
    ("fp32", {}, "--target onnxruntime lays out INT8 graphs; fp32 graphs are the same"),
    ("int8", {"cal_cache_file": "c.bin"}, "--cal_cache_file: the onnxruntime target .* writes no TensorRT cache"),
])
def test_export_refuses_onnxruntime_flags_that_make_no_sense(tmp_path, data_type, flags, message):
    options = Int8Options(target="onnxruntime", **flags)
    with pytest.raises(FrcnnError, match=message):
        run_export(str(REPO / "specs" / "frcnn_resnet18_train.txt"), str(tmp_path / "absent.hdf5"),
                   str(tmp_path / "m.onnx"), data_type, int8=options)
    assert list(tmp_path.iterdir()) == []
