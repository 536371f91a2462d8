"""TensorRT engine building (the tlt-converter step) from an exported ONNX model.

TensorRT is imported lazily. Networks are strongly typed on TensorRT 10 and 11:
precisions come from the ONNX itself (FP16 weights and Casts, INT8 Q/DQ nodes),
as NVIDIA's explicit-quantization guide asks. The exception is TensorRT 10's
implicit INT8 for an FP32 ONNX: weakly typed, INT8 from the calibration cache
through a calibrator whose only job is to hand TensorRT that cache.
"""
import dataclasses
import os

from absl import logging

from frcnn_tf.deployed import import_tensorrt, read_onnx
from frcnn_tf.errors import FrcnnError
from frcnn_tf.io_utils import atomic_write_bytes, refuse_to_overwrite

@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """Optimization profile over the batch dimension, workspace in MiB, precision."""

    min_batch_size: int = 1
    opt_batch_size: int = 1
    max_batch_size: int = 1
    workspace_mib: int = 1024
    data_type: str = None  # default: the ONNX's own (its frcnn_tf metadata)
    cal_cache_file: str = None
    strongly_typed: bool = None  # default: yes, but for implicit INT8 from a cache (TensorRT 10 only)
    rewrite_cache_version: bool = False  # give a cache from another TensorRT version this one's header


def onnx_info(path):
    """(frcnn_tf metadata, whether the graph has Q/DQ nodes) of an exported model."""
    model, info = read_onnx(path)
    return info, any(n.op_type == "QuantizeLinear" for n in model.graph.node)


def precision_plan(onnx_path, onnx_type, has_qdq, requested, strongly_typed, major):
    """(strongly typed?, implicit INT8 from a cache?) for building `onnx_path` as `requested`.

    A strongly typed network computes in the ONNX's own types (FP16 weights and Casts, Q/DQ),
    so asking for another precision is an error, not an engine of the ONNX's precision
    labelled as asked. The one weakly typed route left is TensorRT 10's implicit INT8: an
    FP32 ONNX with a calibration cache (deprecated since 10.1, removed in 11.0).
    """
    implicit = requested == "int8" and onnx_type == "fp32" and not has_qdq
    if implicit:
        if major >= 11:
            raise FrcnnError(f"{onnx_path}: TensorRT 11 has no implicit INT8 (calibration caches); export the model "
                             f"with --data_type int8 for an ONNX with Q/DQ nodes")
        if strongly_typed:
            raise FrcnnError(f"{onnx_path}: INT8 from a calibration cache needs a weakly typed network; drop "
                             f"--strongly_typed or export with --data_type int8")
        return False, True
    if requested != onnx_type:
        raise FrcnnError(f"{onnx_path}: the ONNX is {onnx_type}, and TensorRT builds the precisions the ONNX "
                         f"carries; export with --data_type {requested} (or build without --data_type)")
    if major >= 11 and strongly_typed is False:
        raise FrcnnError("TensorRT 11 builds strongly typed networks only; drop --nostrongly_typed")
    return strongly_typed is not False, False


def network_tensor_names(network):
    """Names of the network's inputs and of every layer output (what a calibration cache names)."""
    names = {network.get_input(i).name for i in range(network.num_inputs)}
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        names.update(layer.get_output(j).name for j in range(layer.num_outputs))
    return names


def cache_for(trt, cache_path, network, rewrite_version):
    """(cache bytes for this TensorRT, algorithm, (names found in the network, names in the cache))."""
    from frcnn_tf.export.calibration import parse_cache, tensorrt_version_number, with_version

    with open(cache_path, encoding="utf-8") as handle:
        text = handle.read()
    cache = parse_cache(text, cache_path)
    running = tensorrt_version_number(trt.__version__)
    if cache.version != running:
        if not rewrite_version:
            raise FrcnnError(f"{cache_path}:1: the cache is for TensorRT version {cache.version}, this is "
                             f"{trt.__version__} ({running}), which ignores it and calibrates from nothing; pass "
                             f"--rewrite_cache_version (the scales do not depend on the version) or export again "
                             f"with --trt_version {trt.__version__}")
        logging.warning("%s: header rewritten from TensorRT %d to %d", cache_path, cache.version, running)
        text = with_version(text, trt.__version__)
    found = len(set(cache.scales) & network_tensor_names(network))
    if not found:
        raise FrcnnError(f"{cache_path}: none of its {len(cache.scales)} tensor names is in the network; was it "
                         f"exported with this model?")
    return text.encode("utf-8"), cache.algorithm, (found, len(cache.scales))


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
    refuse_to_overwrite([engine_path], overwrite, "another --engine_file")
    info, has_qdq = onnx_info(onnx_path)
    if info.get("target", "tensorrt") != "tensorrt":
        raise FrcnnError(f"{onnx_path}: exported with --target {info['target']} (UINT8 activations TensorRT does not "
                         "take); export the model again with --target tensorrt to build an engine")
    onnx_type = info.get("data_type", "fp32")
    data_type = options.data_type or onnx_type
    cache_path = options.cal_cache_file or (
        os.path.join(os.path.dirname(onnx_path), info["cal_cache_file"]) if info.get("cal_cache_file") else None)
    if not options.min_batch_size <= options.opt_batch_size <= options.max_batch_size:
        raise FrcnnError("batch sizes must satisfy min <= opt <= max")
    trt = import_tensorrt(f"{onnx_path} is ready" + (f" with its calibration cache {cache_path}" if cache_path else "")
                          + "; build the engine where TensorRT runs")
    major = int(trt.__version__.split(".")[0])
    strongly_typed, implicit = precision_plan(onnx_path, onnx_type, has_qdq, data_type, options.strongly_typed, major)
    if implicit and not cache_path:
        raise FrcnnError(f"{onnx_path}: INT8 from an FP32 ONNX needs --cal_cache_file")
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
    image = next(network.get_input(i) for i in range(network.num_inputs) if network.get_input(i).name == "input_image")
    shape = tuple(image.shape)[1:]
    profile.set_shape(image.name, (options.min_batch_size, *shape), (options.opt_batch_size, *shape),
                      (options.max_batch_size, *shape))
    config.add_optimization_profile(profile)
    result = {"engine": engine_path, "tensorrt": trt.__version__, "data_type": data_type}
    if strongly_typed:
        mode = "strongly typed"
    elif implicit:  # INT8 only: unlisted layers run FP32, never FP16 box arithmetic
        cache_bytes, algorithm, result["cache_names_found"] = cache_for(trt, cache_path, network,
                                                                        options.rewrite_cache_version)
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _cache_calibrator(trt, cache_bytes, algorithm)
        config.set_calibration_profile(profile)
        mode = "implicit INT8 from {} ({} of {} tensor names found in the network)".format(
            cache_path, *result["cache_names_found"])
    else:  # asked for with --nostrongly_typed on TensorRT 10: builder flags, TensorRT picks precisions
        config.set_flag(trt.BuilderFlag.FP16)
        if data_type == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
        mode = "weakly typed with builder flags"
    logging.info("building a TensorRT %s engine (%s), batch %d..%d", trt.__version__, mode, options.min_batch_size,
                 options.max_batch_size)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise FrcnnError(f"{onnx_path}: TensorRT could not build an engine (see its log above)")
    atomic_write_bytes(engine_path, bytes(serialized))
    return {**result, "mode": mode}
