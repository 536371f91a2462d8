"""Keras detection graph -> ONNX (tf2onnx), with a dynamic batch dimension.

Input `input_image` [N, H, W, C] float32: the preprocessed image exactly as the
input pipeline makes it (channel order, mean subtraction, scaling, letterbox).
Outputs: `boxes` [N, K, 4] (y1, x1, y2, x2 in input pixels), `scores` [N, K],
`classes` [N, K] int32 (index into the `class_names` metadata), `num_detections`
[N] int32. Preprocessing settings, class names and the precision are stored as ONNX metadata.

Precisions: `fp32`; `fp16` (the convolutional body in FP16, see onnx_graph); `int8`:
explicit Q/DQ quantization plus a TensorRT calibration cache, the ranges calibrated
on images for a float model or read from a QAT model's fake-quant ops.
"""
import dataclasses
import json
import os
import pathlib

import onnx
import tensorflow as tf
import tf2onnx
from absl import logging
from tqdm import tqdm

from frcnn_tf.errors import FrcnnError
from frcnn_tf.export import calibration, onnx_graph
from frcnn_tf.io_utils import atomic_write_bytes, refuse_to_overwrite
from frcnn_tf.model.frcnn import FasterRCNN, ProposalSettings, regression_weights
from frcnn_tf.spec.summary import class_names
from frcnn_tf.train import checkpoints

OPSET = 17
OUTPUT_NAMES = ("boxes", "scores", "classes", "num_detections")
SUPPORTED_OPS_FILE = pathlib.Path(__file__).with_name("tensorrt_onnx_ops.txt")


def tensorrt_supported_ops():
    return {line.strip() for line in SUPPORTED_OPS_FILE.read_text().splitlines()
            if line.strip() and not line.startswith("#")}


def unsupported_ops(onnx_model):
    """Op types in the graph (subgraphs included) outside TensorRT's ONNX operator list."""
    return sorted(onnx_graph.op_types(onnx_model) - tensorrt_supported_ops())


def _rename_outputs(model):
    """Gives the graph outputs stable names (tf2onnx names them after Keras tensors)."""
    renames = {output.name: name for output, name in zip(model.graph.output, OUTPUT_NAMES)}
    for node in model.graph.node:
        node.output[:] = [renames.get(n, n) for n in node.output]
        node.input[:] = [renames.get(n, n) for n in node.input]
    for output in model.graph.output:
        output.name = renames[output.name]


def preprocessing_metadata(spec):
    image = spec.model_config.input_image_config
    return {"image_channel_order": image.image_channel_order, "image_channel_mean": dict(image.image_channel_mean),
            "image_scaling_factor": image.image_scaling_factor,
            "resize": "stretch" if spec.augmentation_config.preprocessing.enable_auto_resize else "letterbox"}


@dataclasses.dataclass(frozen=True)
class Int8Options:
    """INT8 calibration (TLT's export flags); the cache defaults to <output>.cal.bin."""

    cal_cache_file: str = None
    cal_image_dir: str = None
    batch_size: int = 8
    batches: int = 10
    calibrator: str = "entropy"
    percentile: float = 99.99


def export_graph(model, metadata, spec, section):
    """(onnx.ModelProto, metadata) of the detection graph of a loaded model (float or QAT)."""
    names = metadata.get("class_names") or class_names(spec.dataset_config)
    weights = metadata.get("regression_weights") or regression_weights(spec.training_config)
    detector = FasterRCNN(model).detection_model(weights, ProposalSettings.of(section), section.object_confidence_thres,
                                                 section.classifier_nms_overlap_threshold,
                                                 section.classifier_nms_max_boxes)
    signature = (tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name="input_image"),)
    proto, _ = tf2onnx.convert.from_keras(detector, input_signature=signature, opset=OPSET)
    leftover = sorted(onnx_graph.op_types(proto) & {"FakeQuantWithMinMaxVars", "FakeQuantWithMinMaxArgs"})
    if leftover:
        raise FrcnnError("the QAT model has empty quantization ranges (fake-quant min == max): train it for at "
                         "least one epoch before export")
    _rename_outputs(proto)
    info = {"class_names": [n for n in names if n != "background"], "input_shape": list(model.input_shape[1:]),
            "qat": bool(metadata.get("qat")), **preprocessing_metadata(spec)}
    return proto, info


def calibration_batches(spec, options):
    """Up to options.batches batches of network inputs (NumPy), from --cal_image_dir or else the
    training folds (augmented, as TLT calibrates)."""
    from frcnn_tf.data.pipeline import InputPipeline
    from frcnn_tf.inference import image_dataset, list_images

    pipeline = InputPipeline(spec)
    if options.cal_image_dir:
        data = image_dataset(pipeline, list_images(options.cal_image_dir), options.batch_size).map(
            lambda images, scale, size: images)
    else:
        data = pipeline.dataset(training=True, batch_size=options.batch_size).map(lambda batch: batch["images"])
    return (images.numpy() for images in data.take(options.batches))


def calibrate(proto, batches, method="entropy", percentile=99.99):
    """{tensor: amax} for the body's activation tensors of a float graph, over the batches."""
    import onnxruntime

    names = onnx_graph.body_tensors(proto.graph)
    session = onnxruntime.InferenceSession(onnx_graph.with_outputs(proto, names).SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    histograms = {name: calibration.AbsHistogram() for name in names}
    seen = 0
    for images in tqdm(batches, desc="calibration", unit="batch", disable=None):
        for name, values in zip(names, session.run(names, {"input_image": images})):
            histograms[name].update(values)
        seen += len(images)
    if not seen:
        raise FrcnnError("no calibration images: pass --cal_image_dir or check the spec's training tfrecords")
    logging.info("calibrated %d tensors on %d images (%s)", len(names), seen, method)
    return {name: calibration.amax_of(histogram, method, percentile) for name, histogram in histograms.items()}


def quantize_int8(proto, info, spec, options):
    """(Q/DQ ONNX, {tensor: amax}, cache method) for a float (calibrated) or QAT graph."""
    if info["qat"]:
        quantized, ranges = onnx_graph.symmetric_qat_ranges(proto)
        return quantized, ranges, "qat"
    ranges = calibrate(proto, calibration_batches(spec, options), options.calibrator, options.percentile)
    return onnx_graph.quantize_for_tensorrt(proto, ranges), ranges, options.calibrator


def run_export(spec_path, model_path, output_path, data_type="fp32", overwrite=False, key=None,
               int8=Int8Options()):
    """Exports a model file to ONNX at output_path (+ the calibration cache for int8); returns
    the metadata written with it."""
    from frcnn_tf.spec import parse_experiment_spec
    from frcnn_tf.spec.validate import require_section

    cache_path = (int8.cal_cache_file or f"{os.path.splitext(output_path)[0]}.cal.bin") if data_type == "int8" else None
    refuse_to_overwrite([output_path, cache_path], overwrite)
    spec, source = parse_experiment_spec(spec_path)
    section = spec.inference_config if spec.HasField("inference_config") else require_section(
        spec, source, "evaluation_config")
    if int8.calibrator not in calibration.CALIBRATORS:
        raise FrcnnError(f"--calibrator {int8.calibrator}: choose one of {', '.join(calibration.CALIBRATORS)}")
    model, metadata = checkpoints.load_model(model_path, key=checkpoints.model_key(spec, key))
    if None in model.input_shape[1:3]:
        raise FrcnnError(f"{model_path}: export needs a fixed input size (size_height_width in the spec)")
    if metadata.get("qat") and data_type == "fp16":
        raise FrcnnError(f"{model_path}: a QAT model exports as int8 (its ranges become the Q/DQ nodes) or fp32")
    proto, info = export_graph(model, metadata, spec, section)
    if data_type == "fp16":
        proto = onnx_graph.to_float16(proto)
    elif data_type == "int8":
        proto, ranges, method = quantize_int8(proto, info, spec, int8)
        calibration.write_cache(cache_path, ranges, method)
        info["cal_cache_file"] = os.path.basename(cache_path)
        info["calibrator"] = method
        print(f"wrote {cache_path} ({len(ranges)} tensor scales, {method})")
    info["data_type"] = data_type
    onnx.helper.set_model_props(proto, {"frcnn_tf": json.dumps(info)})
    onnx.checker.check_model(proto)
    missing = unsupported_ops(proto)
    if missing:
        logging.warning("ops outside TensorRT's ONNX operator list: %s", ", ".join(missing))
    atomic_write_bytes(output_path, proto.SerializeToString())
    print(f"wrote {output_path} ({data_type}; inputs input_image {['N', *info['input_shape']]}; outputs "
          f"{', '.join(OUTPUT_NAMES)})")
    return info
