"""Detectors: a trained model behind one call, images -> per-image detections (NumPy).

Backends: a Keras HDF5 model (here); exported ONNX models and TensorRT engines
plug in with the same interface.
"""
import numpy as np
import tensorflow as tf

from frcnn_tf.errors import FrcnnError
from frcnn_tf.model.frcnn import FasterRCNN, ProposalSettings, regression_weights
from frcnn_tf.spec.summary import class_names
from frcnn_tf.train import checkpoints


def split_detections(boxes, scores, classes, valid):
    """Batched padded outputs -> [{'boxes' [k, 4], 'scores' [k], 'classes' [k]}] per image."""
    return [{"boxes": boxes[i, :n], "scores": scores[i, :n], "classes": classes[i, :n]}
            for i, n in enumerate(np.asarray(valid))]


def to_file_pixels(found, scale, size):
    """Detections in network-input pixels -> pixels of the (height, width) = size image file, clipped."""
    height, width = size
    boxes = found["boxes"] / np.tile(scale, 2)
    boxes = np.clip(boxes, 0.0, [height, width, height, width])
    return {**found, "boxes": boxes}


class KerasDetector:
    """A FasterRCNN with the final NMS of an evaluation_config / inference_config section."""

    def __init__(self, frcnn, names, weights, section):
        self.class_names = [n for n in names if n != "background"]
        self.model = frcnn.detection_model(weights, ProposalSettings.of(section), section.object_confidence_thres,
                                           section.classifier_nms_overlap_threshold,
                                           section.classifier_nms_max_boxes)
        self._run = tf.function(lambda images: self.model(images, training=False))

    @classmethod
    def from_file(cls, path, spec, section, key=None):
        model, metadata = checkpoints.load_model(path, key=checkpoints.model_key(spec, key))
        names = metadata.get("class_names") or class_names(spec.dataset_config)
        if spec.HasField("dataset_config") and names != class_names(spec.dataset_config):
            raise FrcnnError(f"{path}: the model's classes {names} differ from the spec's "
                             f"{class_names(spec.dataset_config)}")
        weights = metadata.get("regression_weights") or regression_weights(spec.training_config)
        return cls(FasterRCNN(model), names, weights, section)

    def __call__(self, images):
        return split_detections(*(t.numpy() for t in self._run(images)))


class OnnxDetector:
    """An exported ONNX model run by onnxruntime on the CPU, with KerasDetector's interface.

    The exported graph carries its own proposal/NMS settings (chosen at export).
    """

    def __init__(self, path):
        import json

        import onnx
        import onnxruntime

        try:
            props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
            self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnx/onnxruntime raise many types for unreadable files
            raise FrcnnError(f"{path}: cannot load the ONNX model ({err})") from None
        if "frcnn_tf" not in props:
            raise FrcnnError(f"{path}: not an ONNX model exported by frcnn_tf (no frcnn_tf metadata)")
        self.info = json.loads(props["frcnn_tf"])
        self.class_names = self.info["class_names"]
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images):
        boxes, scores, classes, valid = self.session.run(None, {self.input_name: np.asarray(images, np.float32)})
        return split_detections(boxes, scores, classes, valid)


def load_detector(path, spec, section, key=None):
    """A Keras (.hdf5/.h5/.tlt) or ONNX (.onnx) detector by file extension."""
    if path.endswith(".onnx"):
        return OnnxDetector(path)
    return KerasDetector.from_file(path, spec, section, key)
