"""TensorRT engine building (the tlt-converter step) from an exported ONNX model.

TensorRT is imported lazily. TensorRT 11 (and 10 with `strongly_typed`) builds a
strongly typed network: precisions come from the ONNX itself (FP16 weights and
Casts, INT8 Q/DQ nodes). TensorRT 10 otherwise uses builder flags: FP16, and INT8
either from the Q/DQ nodes or, for an FP32 ONNX, from the calibration cache through
a calibrator whose only job is to hand TensorRT that cache.
"""
import dataclasses
import json
import os

import onnx
from absl import logging

from frcnn_tf.errors import FrcnnError
from frcnn_tf.io_utils import atomic_write_bytes, refuse_to_overwrite

INSTALL_HINT = ("install TensorRT 10 or 11 with its Python bindings (pip install tensorrt, on a machine with an "
                "NVIDIA GPU and driver)")


class TensorRTMissing(FrcnnError):
    """TensorRT is not installed here; the CLI exits with status 2."""

    exit_code = 2


def import_tensorrt(ready=""):
    try:
        import tensorrt
    except ImportError:  # also the PyPI stub that fails to fetch its libraries
        raise TensorRTMissing(f"TensorRT is not installed: {INSTALL_HINT}. {ready}".strip()) from None
    except Exception as err:  # the stub raises its own errors at import
        raise TensorRTMissing(f"TensorRT could not be loaded ({err}): {INSTALL_HINT}. {ready}".strip()) from None
    return tensorrt


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """Optimization profile over the batch dimension, workspace in MiB, precision flags."""

    min_batch_size: int = 1
    opt_batch_size: int = 1
    max_batch_size: int = 1
    workspace_mib: int = 1024
    data_type: str = None  # default: the ONNX's own (its frcnn_tf metadata)
    cal_cache_file: str = None
    strongly_typed: bool = None  # default: TensorRT >= 11


def onnx_info(path):
    """(frcnn_tf metadata, whether the graph has Q/DQ nodes) of an exported model."""
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as err:  # protobuf decode errors have many types
        raise FrcnnError(f"{path}: cannot read the ONNX model ({err})") from None
    props = {p.key: p.value for p in model.metadata_props}
    if "frcnn_tf" not in props:
        raise FrcnnError(f"{path}: not an ONNX model exported by frcnn_tf (no frcnn_tf metadata)")
    return json.loads(props["frcnn_tf"]), any(n.op_type == "QuantizeLinear" for n in model.graph.node)


def _cache_calibrator(trt, cache_bytes, algorithm):
    """A calibrator that only serves a calibration cache (no batches: the cache holds every scale)."""
    base = trt.IInt8EntropyCalibrator2 if algorithm == "EntropyCalibration2" else trt.IInt8MinMaxCalibrator

    class CacheCalibrator(base):
        def __init__(self):
            base.__init__(self)

        def get_batch_size(self):
            return 1

        def get_batch(self, names, *unused):
            return None

        def read_calibration_cache(self, *unused):
            return cache_bytes

        def write_calibration_cache(self, cache):
            return None

    return CacheCalibrator()


def build_engine(onnx_path, engine_path, options=EngineOptions(), overwrite=False):
    """Builds and writes a serialized engine; returns a dict describing the build."""
    from frcnn_tf.export.calibration import read_cache

    refuse_to_overwrite([engine_path], overwrite, "another --engine_file")
    info, has_qdq = onnx_info(onnx_path)
    data_type = options.data_type or info.get("data_type", "fp32")
    cache_path = options.cal_cache_file or (
        os.path.join(os.path.dirname(onnx_path), info["cal_cache_file"]) if info.get("cal_cache_file") else None)
    if not options.min_batch_size <= options.opt_batch_size <= options.max_batch_size:
        raise FrcnnError("batch sizes must satisfy min <= opt <= max")
    trt = import_tensorrt(f"{onnx_path} is ready" + (f" with its calibration cache {cache_path}" if cache_path else "")
                          + "; build the engine where TensorRT runs")
    major = int(trt.__version__.split(".")[0])
    strongly_typed = major >= 11 if options.strongly_typed is None else options.strongly_typed
    if major >= 11 and not strongly_typed:
        raise FrcnnError("TensorRT 11 builds strongly typed networks only; drop --nostrongly_typed")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(onnx_path):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise FrcnnError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    profile = builder.create_optimization_profile()
    image = network.get_input(0)
    shape = tuple(image.shape)[1:]
    profile.set_shape(image.name, (options.min_batch_size, *shape), (options.opt_batch_size, *shape),
                      (options.max_batch_size, *shape))
    config.add_optimization_profile(profile)
    mode = "strongly typed"
    if not strongly_typed:
        if data_type in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)  # INT8 layers fall back to FP16, not FP32
        if data_type == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            if has_qdq:
                mode = "explicit INT8 (Q/DQ) with builder flags"
            else:
                if not cache_path:
                    raise FrcnnError(f"{onnx_path}: INT8 from an FP32 ONNX needs --cal_cache_file")
                algorithm, _ = read_cache(cache_path)
                with open(cache_path, "rb") as handle:
                    config.int8_calibrator = _cache_calibrator(trt, handle.read(), algorithm)
                config.set_calibration_profile(profile)
                mode = f"implicit INT8 from {cache_path}"
        else:
            mode = f"{data_type} builder flags"
    logging.info("building a TensorRT %s engine (%s), batch %d..%d", trt.__version__, mode, options.min_batch_size,
                 options.max_batch_size)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise FrcnnError(f"{onnx_path}: TensorRT could not build an engine (see its log above)")
    atomic_write_bytes(engine_path, bytes(serialized))
    print(f"wrote {engine_path} (TensorRT {trt.__version__}, {data_type}, {mode})")
    return {"engine": engine_path, "tensorrt": trt.__version__, "data_type": data_type, "mode": mode}
