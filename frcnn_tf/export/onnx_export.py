"""Keras detection graph -> ONNX (tf2onnx), with a dynamic batch dimension.

Input `input_image` [N, H, W, C] float32: the preprocessed image exactly as the
input pipeline makes it (channel order, mean subtraction, scaling, letterbox).
Outputs: `boxes` [N, K, 4] (y1, x1, y2, x2 in input pixels), `scores` [N, K],
`classes` [N, K] int32 (index into the `class_names` metadata), `num_detections`
[N] int32. Preprocessing settings and class names are stored as ONNX metadata.
"""
import json
import os
import pathlib

import onnx
import tensorflow as tf
import tf2onnx
from absl import logging

from frcnn_tf.errors import FrcnnError
from frcnn_tf.io_utils import atomic_write_bytes
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
    found = set()

    def visit(graph):
        for node in graph.node:
            found.add(node.op_type)
            for attribute in node.attribute:
                if attribute.g.node:
                    visit(attribute.g)

    visit(onnx_model.graph)
    return sorted(found - tensorrt_supported_ops())


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


def export_fp32(model_path, spec, section, key=None):
    """(onnx.ModelProto, metadata) of the detection graph of a trained model file."""
    model, metadata = checkpoints.load_model(model_path, key=checkpoints.model_key(spec, key))
    if None in model.input_shape[1:3]:
        raise FrcnnError(f"{model_path}: export needs a fixed input size (size_height_width in the spec)")
    names = metadata.get("class_names") or class_names(spec.dataset_config)
    weights = metadata.get("regression_weights") or regression_weights(spec.training_config)
    detector = FasterRCNN(model).detection_model(weights, ProposalSettings.of(section), section.object_confidence_thres,
                                                 section.classifier_nms_overlap_threshold,
                                                 section.classifier_nms_max_boxes)
    signature = (tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name="input_image"),)
    proto, _ = tf2onnx.convert.from_keras(detector, input_signature=signature, opset=OPSET)
    _rename_outputs(proto)
    info = {"class_names": [n for n in names if n != "background"], "input_shape": list(model.input_shape[1:]),
            "qat": bool(metadata.get("qat")), **preprocessing_metadata(spec)}
    onnx.helper.set_model_props(proto, {"frcnn_tf": json.dumps(info)})
    onnx.checker.check_model(proto)
    return proto, info


def run_export(spec_path, model_path, output_path, data_type="fp32", overwrite=False, key=None):
    """Exports a model file to ONNX at output_path; returns the metadata written with it."""
    from frcnn_tf.spec import parse_experiment_spec
    from frcnn_tf.spec.validate import require_section

    if os.path.exists(output_path) and not overwrite:
        raise FrcnnError(f"{output_path}: exists; choose another -o or pass --overwrite")
    spec, source = parse_experiment_spec(spec_path)
    section = spec.inference_config if spec.HasField("inference_config") else require_section(
        spec, source, "evaluation_config")
    if data_type != "fp32":
        raise FrcnnError(f"--data_type {data_type}: only fp32 export is built so far")
    proto, info = export_fp32(model_path, spec, section, key)
    missing = unsupported_ops(proto)
    if missing:
        logging.warning("ops outside TensorRT's ONNX operator list: %s", ", ".join(missing))
    atomic_write_bytes(output_path, proto.SerializeToString())
    print(f"wrote {output_path} ({data_type}; inputs input_image {['N', *info['input_shape']]}; outputs "
          f"{', '.join(OUTPUT_NAMES)})")
    return info
