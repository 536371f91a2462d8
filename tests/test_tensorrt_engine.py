"""build_engine's TensorRT 10 and 11 paths, driven through a recording stand-in for the `tensorrt`
module (TensorRT cannot be installed here; the real module is used wherever it is)."""
import dataclasses
import json
import sys
import types

import onnx
import pytest
from onnx import TensorProto, helper

from frcnn_tf.errors import FrcnnError
from frcnn_tf.export import calibration
from frcnn_tf.deployed import TensorRTMissing
from frcnn_tf.export.tensorrt_engine import EngineOptions, build_engine


def _onnx(path, data_type, qdq=False, cache=None, target=None):
    nodes = [helper.make_node("Identity", ["input_image"], ["boxes"])]
    if qdq:
        nodes.append(helper.make_node("QuantizeLinear", ["input_image", "s", "z"], ["q"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input_image", TensorProto.FLOAT,
                                                                         ["N", 64, 96, 3])],
                              [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, None)])
    model = helper.make_model(graph)
    info = {"data_type": data_type, **({"cal_cache_file": cache} if cache else {}),
            **({"target": target} if target else {})}
    helper.set_model_props(model, {"frcnn_tf": json.dumps(info)})
    onnx.save(model, str(path))
    return str(path)


def fake_tensorrt(version, parser_errors=(), layer_outputs=("input_image", "conv1/Relu:0")):
    """A module with the parts of TensorRT's Python API build_engine uses, recording the calls.

    parser_errors: what the ONNX parser reports (it fails when there are any); layer_outputs:
    the tensor names of the parsed network's layers."""
    calls = {"flags": [], "network_flags": None, "profile": None, "workspace": None}
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class Enum:
        def __init__(self, **values):
            self.__dict__.update(values)

    trt.NetworkDefinitionCreationFlag = Enum(STRONGLY_TYPED=5)
    trt.BuilderFlag = Enum(FP16="FP16", INT8="INT8")
    trt.MemoryPoolType = Enum(WORKSPACE="WORKSPACE")

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Tensor:
        def __init__(self, name, shape=None):
            self.name, self.shape = name, shape

    class Layer:
        def __init__(self, name):
            self.num_outputs, self.name = 1, name

        def get_output(self, index):
            return Tensor(self.name)

    class Network:
        num_inputs, num_layers = 1, len(layer_outputs)

        def get_input(self, index):
            return Tensor("input_image", (-1, 64, 96, 3))

        def get_layer(self, index):
            return Layer(layer_outputs[index])

    class Parser:
        num_errors = len(parser_errors)

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            calls["parsed"] = path
            return not parser_errors

        def get_error(self, index):
            return parser_errors[index]

    class Profile:
        def set_shape(self, name, low, opt, high):
            calls["profile"] = (name, low, opt, high)

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls["workspace"] = size

        def add_optimization_profile(self, profile):
            pass

        def set_flag(self, flag):
            calls["flags"].append(flag)

        def set_calibration_profile(self, profile):
            calls["calibration_profile"] = True

        def __setattr__(self, name, value):
            calls[name.replace("int8_", "")] = value

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls["network_flags"] = flags
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"engine-bytes"

    class IInt8EntropyCalibrator2:
        def __init__(self):
            pass

    class IInt8MinMaxCalibrator(IInt8EntropyCalibrator2):
        pass

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, Parser
    trt.IInt8EntropyCalibrator2, trt.IInt8MinMaxCalibrator = IInt8EntropyCalibrator2, IInt8MinMaxCalibrator
    return trt, calls


@pytest.fixture
def tensorrt(monkeypatch):
    def install(version, **kwargs):
        trt, calls = fake_tensorrt(version, **kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        return calls
    return install


def test_tensorrt_11_builds_strongly_typed_without_precision_flags(tensorrt, tmp_path):
    calls = tensorrt("11.0.0")
    onnx_path = _onnx(tmp_path / "m.onnx", "int8", qdq=True)
    result = build_engine(onnx_path, str(tmp_path / "m.engine"), EngineOptions(1, 4, 8, workspace_mib=256))
    assert calls["network_flags"] == 1 << 5 and calls["flags"] == [] and "calibrator" not in calls
    assert calls["profile"] == ("input_image", (1, 64, 96, 3), (4, 64, 96, 3), (8, 64, 96, 3))
    assert calls["workspace"] == 256 << 20
    assert (tmp_path / "m.engine").read_bytes() == b"engine-bytes" and result["mode"] == "strongly typed"
    with pytest.raises(FrcnnError, match="TensorRT 11 builds strongly typed networks only"):
        build_engine(onnx_path, str(tmp_path / "n.engine"), EngineOptions(strongly_typed=False))


def test_tensorrt_10_int8_from_the_calibration_cache(tensorrt, tmp_path):
    calls = tensorrt("10.3.0")
    calibration.write_cache(str(tmp_path / "m.cal.bin"),
                            {"input_image": 1.0, "conv1/Relu:0": 1 / 127, "gone:0": 1 / 127}, "entropy", "10.3.0")
    onnx_path = _onnx(tmp_path / "m.onnx", "fp32")
    result = build_engine(onnx_path, str(tmp_path / "m.engine"),
                          EngineOptions(data_type="int8", cal_cache_file=str(tmp_path / "m.cal.bin")))
    assert calls["network_flags"] == 0 and calls["flags"] == ["INT8"]  # no FP16: box math stays FP32
    calibrator = calls["calibrator"]
    assert type(calibrator).__mro__[1].__name__ == "IInt8EntropyCalibrator2"
    assert calibrator.read_calibration_cache() == (tmp_path / "m.cal.bin").read_bytes()
    assert calibrator.get_batch(["input_image"]) is None and result["mode"].startswith("implicit INT8")
    assert result["cache_names_found"] == (2, 3) and "2 of 3 tensor names found in the network" in result["mode"]


def test_a_cache_for_another_tensorrt_version_is_refused_unless_rewritten(tensorrt, tmp_path):
    calls = tensorrt("10.16.1.11")
    cache = tmp_path / "m.cal.bin"
    calibration.write_cache(str(cache), {"input_image": 1.0}, "entropy", "8.6.1")
    onnx_path = _onnx(tmp_path / "m.onnx", "fp32")
    options = EngineOptions(data_type="int8", cal_cache_file=str(cache))
    with pytest.raises(FrcnnError, match=r"m.cal.bin:1: the cache is for TensorRT version 8601, this is 10.16.1.11 "
                                         r"\(101601\), which ignores it .* --rewrite_cache_version"):
        build_engine(onnx_path, str(tmp_path / "m.engine"), options)
    assert not (tmp_path / "m.engine").exists()
    build_engine(onnx_path, str(tmp_path / "m.engine"), dataclasses.replace(options, rewrite_cache_version=True))
    assert calls["calibrator"].read_calibration_cache().startswith(b"TRT-101601-EntropyCalibration2\ninput_image: ")
    assert cache.read_text().startswith("TRT-8601-")  # the file itself is left as it was


def test_a_cache_naming_nothing_in_the_network_is_refused(tensorrt, tmp_path):
    tensorrt("10.3.0", layer_outputs=("input_image", "other__12:0"))
    calibration.write_cache(str(tmp_path / "m.cal.bin"), {"conv1/Relu__2236:0": 1 / 127}, "entropy", "10.3.0")
    with pytest.raises(FrcnnError, match="none of its 1 tensor names is in the network"):
        build_engine(_onnx(tmp_path / "m.onnx", "fp32"), str(tmp_path / "m.engine"),
                     EngineOptions(data_type="int8", cal_cache_file=str(tmp_path / "m.cal.bin")))


def test_tensorrt_10_builds_qdq_and_fp16_graphs_strongly_typed(tensorrt, tmp_path):
    for data_type, qdq in (("int8", True), ("fp16", False), ("fp32", False)):
        calls = tensorrt("10.3.0")
        result = build_engine(_onnx(tmp_path / f"{data_type}.onnx", data_type, qdq=qdq),
                              str(tmp_path / f"{data_type}.engine"))
        assert calls["network_flags"] == 1 << 5 and calls["flags"] == [] and "calibrator" not in calls
        assert result["mode"] == "strongly typed" and result["data_type"] == data_type
    calls = tensorrt("10.3.0")  # weak typing only when asked for
    build_engine(str(tmp_path / "fp16.onnx"), str(tmp_path / "weak.engine"), EngineOptions(strongly_typed=False))
    assert calls["flags"] == ["FP16"] and calls["network_flags"] == 0
    with pytest.raises(FrcnnError, match="exists; choose another --engine_file or pass --overwrite"):
        build_engine(str(tmp_path / "fp16.onnx"), str(tmp_path / "fp16.engine"))


@pytest.mark.parametrize("version", ["10.3.0", "11.4.0"])
def test_a_data_type_the_onnx_does_not_carry_is_an_error(tensorrt, tmp_path, version):
    tensorrt(version)
    fp32 = _onnx(tmp_path / "m.onnx", "fp32")
    with pytest.raises(FrcnnError, match="the ONNX is fp32, and TensorRT builds the precisions the ONNX carries; "
                                         "export with --data_type fp16"):
        build_engine(fp32, str(tmp_path / "m.engine"), EngineOptions(data_type="fp16"))
    int8 = _onnx(tmp_path / "q.onnx", "int8", qdq=True)
    with pytest.raises(FrcnnError, match="the ONNX is int8"):
        build_engine(int8, str(tmp_path / "q.engine"), EngineOptions(data_type="fp32"))
    assert not list(tmp_path.glob("*.engine"))


def test_tensorrt_11_has_no_implicit_int8(tensorrt, tmp_path):
    tensorrt("11.4.0.106")
    calibration.write_cache(str(tmp_path / "m.cal.bin"), {"input_image": 1.0}, "entropy", "11.4.0")
    with pytest.raises(FrcnnError, match="TensorRT 11 has no implicit INT8 .* export the model with --data_type int8"):
        build_engine(_onnx(tmp_path / "m.onnx", "fp32"), str(tmp_path / "m.engine"),
                     EngineOptions(data_type="int8", cal_cache_file=str(tmp_path / "m.cal.bin")))
    tensorrt("10.3.0")
    with pytest.raises(FrcnnError, match="INT8 from a calibration cache needs a weakly typed network"):
        build_engine(str(tmp_path / "m.onnx"), str(tmp_path / "m.engine"),
                     EngineOptions(data_type="int8", cal_cache_file=str(tmp_path / "m.cal.bin"), strongly_typed=True))


def test_a_parser_error_is_one_error_naming_the_onnx(tensorrt, tmp_path):
    tensorrt("10.3.0", parser_errors=("In node 355 (importEyeLike): UNSUPPORTED_NODE: Eyelike does not work for "
                                      "dynamically shaped tensors.",))
    with pytest.raises(FrcnnError, match=r"m.onnx: TensorRT's ONNX parser failed: In node 355 \(importEyeLike\)"):
        build_engine(_onnx(tmp_path / "m.onnx", "fp32"), str(tmp_path / "m.engine"))
    assert not (tmp_path / "m.engine").exists()


def test_missing_tensorrt_is_exit_status_2(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as when it is not installed
    with pytest.raises(TensorRTMissing, match="m.onnx is ready") as caught:
        build_engine(_onnx(tmp_path / "m.onnx", "fp32"), str(tmp_path / "m.engine"))
    assert caught.value.exit_code == 2


def test_engine_backend_without_tensorrt_is_exit_status_2(monkeypatch, tmp_path):
    from frcnn_tf.detectors import TensorRTDetector

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    (tmp_path / "m.engine").write_bytes(b"engine")
    with pytest.raises(TensorRTMissing, match="evaluate the ONNX model with onnxruntime here instead"):
        TensorRTDetector(str(tmp_path / "m.engine"), ["red", "background"])


def test_an_onnx_laid_out_for_onnxruntime_is_refused_before_tensorrt_is_needed(tmp_path):
    path = _onnx(tmp_path / "m.onnx", "int8", qdq=True, target="onnxruntime")
    with pytest.raises(FrcnnError, match="--target onnxruntime .*export the model again with --target tensorrt"):
        build_engine(path, str(tmp_path / "m.engine"))
    assert not (tmp_path / "m.engine").exists()
