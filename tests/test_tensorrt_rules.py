"""The TensorRT rule checker: each rule fires on a tiny hand-made ONNX that breaks exactly it, and
nothing fires on a graph that keeps every rule (so no rule is dead and none is trigger-happy)."""
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import REPO
from frcnn_tf.export import tensorrt_rules

FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64


def _model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(np.asarray(v), n)
                                                            for n, v in initializers])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _value(name, dims, elem=FLOAT):
    return helper.make_tensor_value_info(name, elem, dims)


def _rules(model):
    return [(v.node, v.rule) for v in tensorrt_rules.check(model)]


def _relu(x="x", dims=("N", 4)):
    return [helper.make_node("Relu", [x], ["y"], name="relu")], [_value(x, list(dims))], [_value("y", list(dims))]


def test_a_graph_within_every_rule_has_no_problems():
    weight = np.ones((8, 3, 3, 3), np.float32)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
        helper.make_node("DequantizeLinear", ["w8", "ws", "wz"], ["wd"], name="wdq", axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Resize", ["c", "", "scales"], ["r"], name="resize", mode="linear",
                         coordinate_transformation_mode="align_corners"),
        helper.make_node("Reshape", ["r", "flat"], ["f"], name="reshape"),
        helper.make_node("TopK", ["f", "k"], ["top", "index"], name="topk", axis=1),
    ]
    model = _model(nodes, [_value("x", ["N", 3, 8, 8])], [_value("top", ["N", 3840]), _value("index", ["N", 3840],
                                                                                                    INT64)],
                   [("s", np.float32(0.1)), ("z", np.int8(0)), ("w8", weight.astype(np.int8)),
                    ("ws", np.full(8, 0.01, np.float32)), ("wz", np.zeros(8, np.int8)),
                    ("scales", np.array([1, 1, 2, 2], np.float32)), ("flat", np.array([0, -1], np.int64)),
                    ("k", np.array([3840], np.int64))])
    onnx.checker.check_model(model)
    assert _rules(model) == []


def test_opset_outside_tensorrts_range():
    model = _model(*_relu(), opset=8)
    assert _rules(model) == [("graph", "opset 8 is outside TensorRT's range 9..20")]


def test_operator_not_imported_and_custom_domain():
    nodes = [helper.make_node("MaxRoiPool", ["x", "rois"], ["y"], name="pool", pooled_shape=[2, 2]),
             helper.make_node("CropAndResize", ["y"], ["z"], name="crop", domain="ai.onnx.contrib")]
    model = _model(nodes, [_value("x", [1, 4, 8, 8]), _value("rois", [3, 5])], [_value("z", None)])
    assert _rules(model) == [("pool", "not an operator TensorRT's ONNX parser imports"),
                             ("crop", "domain 'ai.onnx.contrib' needs a TensorRT plugin")]


def test_input_type_outside_the_operators_list():
    nodes = [helper.make_node("Floor", ["x"], ["y"], name="floor")]
    model = _model(nodes, [_value("x", [4], INT64)], [_value("y", [4], INT64)])
    assert _rules(model) == [("floor", "input x is INT64; TensorRT takes BF16, FP16, FP32")]


def test_uint8_inside_the_network():
    nodes = [helper.make_node("QuantizeLinear", ["x", "s"], ["q"], name="q"),  # no zero point: UINT8
             helper.make_node("DequantizeLinear", ["q", "s"], ["y"], name="dq")]
    model = _model(nodes, [_value("x", [4])], [_value("y", [4])], [("s", np.float32(0.1))])
    found = _rules(model)
    assert ("q", "tensor q is UINT8 inside the network") in found
    assert ("q", "needs a constant INT8 zero point (ONNX's default is UINT8)") in found


def test_resize_mode_tensorrt_rejects():
    nodes = [helper.make_node("Resize", ["x", "roi", "scales"], ["y"], name="resize", mode="linear",
                              coordinate_transformation_mode="tf_crop_and_resize")]
    model = _model(nodes, [_value("x", [1, 1, 4, 4])], [_value("y", None)],
                   [("roi", np.array([0, 0, 0, 0, 1, 1, 1, 1], np.float32)), ("scales", np.ones(4, np.float32))])
    assert _rules(model) == [("resize", "coordinate_transformation_mode 'tf_crop_and_resize' is not supported")]


def test_eyelike_on_a_dynamic_shape():
    nodes = [helper.make_node("EyeLike", ["x"], ["y"], name="eye")]
    model = _model(nodes, [_value("x", ["N", "N"])], [_value("y", ["N", "N"])])
    assert _rules(model) == [("eye", "input x has dynamic dimensions [None, None]")]
    static = _model(nodes, [_value("x", [3, 3])], [_value("y", [3, 3])])
    assert _rules(static) == []


def test_topk_above_3840_or_not_constant():
    nodes = [helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk", axis=1)]
    outputs = [_value("v", None), _value("i", None, INT64)]
    model = _model(nodes, [_value("x", [1, 6000])], outputs, [("k", np.array([3841], np.int64))])
    assert _rules(model) == [("topk", "K = 3841 > 3840, TensorRT's TopK limit")]
    dynamic = _model(nodes, [_value("x", [1, 6000]), _value("k", [1], INT64)], outputs)
    assert _rules(dynamic) == [("topk", "K (k) is not a constant, so it cannot be shown to be <= 3840")]


def test_loop_scan_output_with_a_dynamic_trip_count():
    body = helper.make_graph([helper.make_node("Identity", ["x"], ["scan"], name="body_id"),
                              helper.make_node("Identity", ["cond"], ["cond_out"], name="body_cond")], "body",
                             [_value("i", [], INT64), helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                              ], [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
                                  _value("scan", [2])])
    nodes = [helper.make_node("Loop", ["trips", ""], ["out"], name="loop", body=body)]
    model = _model(nodes, [_value("trips", [], INT64), _value("x", [2])], [_value("out", None)])
    assert _rules(model) == [("loop", "1 scan output(s) with a trip count that is not a constant")]


def test_axes_that_must_be_constants():
    nodes = [helper.make_node("Squeeze", ["x", "axes"], ["y"], name="squeeze")]
    model = _model(nodes, [_value("x", [1, 4]), _value("axes", [1], INT64)], [_value("y", None)])
    assert _rules(model) == [("squeeze", "input 1 (axes) must be a constant")]


def test_qdq_zero_point_and_per_channel_scale():
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq"),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="wdq", axis=0),
             helper.make_node("QuantizeLinear", ["y", "cs", "cz"], ["q2"], name="q_channels", axis=1)]
    model = _model(nodes, [_value("x", [1, 3])], [_value("wd", None), _value("q2", None, TensorProto.INT8)],
                   [("s", np.float32(0.1)), ("z", np.int8(3)), ("w", np.ones((4, 2), np.int8)),
                    ("ws", np.ones(3, np.float32)), ("wz", np.zeros(3, np.int8)), ("cs", np.ones(3, np.float32)),
                    ("cz", np.zeros(3, np.int8))])
    assert _rules(model) == [("q", "zero point must be INT8 zeros, not int8 [3]"),
                             ("dq", "zero point must be INT8 zeros, not int8 [3]"),
                             ("wdq", "3 scales for 4 channels on axis 0"),
                             ("q_channels", "a per-channel scale on an activation (weights only)")]


def test_int8_weights_need_an_int8_activation():
    nodes = [helper.make_node("DequantizeLinear", ["w8", "ws", "wz"], ["wd"], name="wdq", axis=0),
             helper.make_node("Conv", ["x", "wd"], ["y"], name="conv")]
    model = _model(nodes, [_value("x", [1, 3, 4, 4])], [_value("y", None)],
                   [("w8", np.ones((2, 3, 1, 1), np.int8)), ("ws", np.ones(2, np.float32)),
                    ("wz", np.zeros(2, np.int8))])
    assert _rules(model) == [("conv", "INT8 weights with a float activation (x): quantize the input too or keep "
                                      "the weights float")]
    # A MatMul of two activations (the RoI crop) may read one dequantized activation: no weights there
    nodes = [helper.make_node("QuantizeLinear", ["f", "s", "z"], ["fq"], name="q"),
             helper.make_node("DequantizeLinear", ["fq", "s", "z"], ["fd"], name="dq"),
             helper.make_node("MatMul", ["x", "fd"], ["y"], name="crop")]
    model = _model(nodes, [_value("x", [2, 3]), _value("f", [3, 4])], [_value("y", None)],
                   [("s", np.float32(0.1)), ("z", np.int8(0))])
    assert _rules(model) == []


def test_every_rule_has_a_test():
    tested = {name.removeprefix("rule_") for name in dir(tensorrt_rules) if name.startswith("rule_")}
    assert len(tested) == len(tensorrt_rules.RULES) == 11


def test_check_onnx_command(tmp_path):
    bad = tmp_path / "bad.onnx"
    nodes = [helper.make_node("EyeLike", ["x"], ["y"], name="eye")]
    onnx.save(_model(nodes, [_value("x", ["N", "N"])], [_value("y", None)]), str(bad))
    good = tmp_path / "good.onnx"
    onnx.save(_model(*_relu()), str(good))
    result = subprocess.run([sys.executable, str(REPO / "bin" / "check_onnx.py"), str(good), str(bad)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert f"error: {bad}: node eye (EyeLike): input x has dynamic dimensions [None, None]" in result.stderr
    assert f"{good}: 0 problem(s)" in result.stdout and f"{bad}: 1 problem(s)" in result.stdout


@pytest.mark.parametrize("payload", [b"not onnx at all", b""])
def test_check_onnx_unreadable_file_is_one_line(tmp_path, payload):
    path = tmp_path / "x.onnx"
    path.write_bytes(payload)
    result = subprocess.run([sys.executable, str(REPO / "bin" / "check_onnx.py"), str(path)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] != []
