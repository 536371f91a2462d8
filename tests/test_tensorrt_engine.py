"""build_engine's TensorRT 10 and 11 paths, driven through a recording stand-in for the `tensorrt`
module (TensorRT cannot be installed here; the real module is used wherever it is)."""
import json
import sys
import types

import onnx
import pytest
from onnx import TensorProto, helper

from frcnn_tf.errors import FrcnnError
from frcnn_tf.export import calibration
from frcnn_tf.export.tensorrt_engine import EngineOptions, TensorRTMissing, build_engine


def _onnx(path, data_type, qdq=False, cache=None):
    nodes = [helper.make_node("Identity", ["input_image"], ["boxes"])]
    if qdq:
        nodes.append(helper.make_node("QuantizeLinear", ["input_image", "s", "z"], ["q"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input_image", TensorProto.FLOAT,
                                                                         ["N", 64, 96, 3])],
                              [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, None)])
    model = helper.make_model(graph)
    info = {"data_type": data_type, **({"cal_cache_file": cache} if cache else {})}
    helper.set_model_props(model, {"frcnn_tf": json.dumps(info)})
    onnx.save(model, str(path))
    return str(path)


def fake_tensorrt(version):
    """A module with the parts of TensorRT's Python API build_engine uses, recording the calls."""
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

    class Input:
        name, shape = "input_image", (-1, 64, 96, 3)

    class Network:
        def get_input(self, index):
            return Input()

    class Parser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            calls["parsed"] = path
            return True

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
    def install(version):
        trt, calls = fake_tensorrt(version)
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
    calibration.write_cache(str(tmp_path / "m.cal.bin"), {"input_image": 127.0}, "entropy")
    onnx_path = _onnx(tmp_path / "m.onnx", "int8", cache="m.cal.bin")
    result = build_engine(onnx_path, str(tmp_path / "m.engine"))
    assert calls["network_flags"] == 0 and calls["flags"] == ["FP16", "INT8"]
    calibrator = calls["calibrator"]
    assert type(calibrator).__mro__[1].__name__ == "IInt8EntropyCalibrator2"
    assert calibrator.read_calibration_cache() == (tmp_path / "m.cal.bin").read_bytes()
    assert calibrator.get_batch(["input_image"]) is None and result["mode"].startswith("implicit INT8")


def test_tensorrt_10_qdq_and_fp16_use_builder_flags(tensorrt, tmp_path):
    calls = tensorrt("10.3.0")
    build_engine(_onnx(tmp_path / "q.onnx", "int8", qdq=True), str(tmp_path / "q.engine"))
    assert calls["flags"] == ["FP16", "INT8"] and "calibrator" not in calls
    calls = tensorrt("10.3.0")
    build_engine(_onnx(tmp_path / "h.onnx", "fp16"), str(tmp_path / "h.engine"))
    assert calls["flags"] == ["FP16"] and calls["network_flags"] == 0
    with pytest.raises(FrcnnError, match="exists; choose another --engine_file or pass --overwrite"):
        build_engine(str(tmp_path / "h.onnx"), str(tmp_path / "h.engine"))


def test_missing_tensorrt_is_exit_status_2(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as when it is not installed
    with pytest.raises(TensorRTMissing, match="m.onnx is ready") as caught:
        build_engine(_onnx(tmp_path / "m.onnx", "fp32"), str(tmp_path / "m.engine"))
    assert caught.value.exit_code == 2


def test_engine_backend_without_tensorrt_is_exit_status_2(monkeypatch, tmp_path):
    from frcnn_tf.predict import TensorRTDetector

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    (tmp_path / "m.engine").write_bytes(b"engine")
    with pytest.raises(TensorRTMissing, match="evaluate the ONNX model with onnxruntime here instead"):
        TensorRTDetector(str(tmp_path / "m.engine"), ["red", "background"])
