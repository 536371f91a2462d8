"""Detectors: a trained model behind one call, images -> per-image detections (NumPy).

Backends: a Keras model file, an exported ONNX model (onnxruntime, CPU) and a
TensorRT engine (needs TensorRT and a GPU; imported lazily).
"""
from typing import Protocol

import numpy as np
import tensorflow as tf

from frcnn_tf.deployed import import_tensorrt, read_onnx
from frcnn_tf.errors import FrcnnError
from frcnn_tf.model import checkpoints
from frcnn_tf.model.frcnn import FasterRCNN
from frcnn_tf.settings import DetectionSettings
from frcnn_tf.spec.derived import class_names, object_class_names, regression_weights


class Detector(Protocol):
    """images [B, H, W, C] (network input, float32) -> per image {'boxes' [k, 4] (network-input pixels,
    y1 x1 y2 x2), 'scores' [k], 'classes' [k] (index into class_names)}."""

    class_names: list

    def __call__(self, images) -> list:
        ...


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
    """A FasterRCNN's deployable graph (settings.DetectionSettings of an evaluation/inference section).

    names: the model's class names (background last)."""

    def __init__(self, frcnn, names, settings):
        self.class_names = object_class_names(names)
        self.settings = settings
        self.model = frcnn.detection_model(settings)
        # one trace for every batch size, NumPy or tensor input: a retrace costs seconds per call
        signature = [tf.TensorSpec([None, *self.model.input_shape[1:]], tf.float32)]
        self._run = tf.function(self._forward, input_signature=signature)

    def _forward(self, images):
        return self.model(images, training=False)

    @classmethod
    def from_file(cls, path, spec, section, key=None):
        model, metadata = checkpoints.load_model(path, key=checkpoints.model_key(spec, key))
        names = metadata.get("class_names") or class_names(spec.dataset_config)
        if spec.HasField("dataset_config") and names != class_names(spec.dataset_config):
            raise FrcnnError(f"{path}: the model's classes {names} differ from the spec's "
                             f"{class_names(spec.dataset_config)}")
        weights = metadata.get("regression_weights") or regression_weights(spec.training_config)
        return cls(FasterRCNN(model), names, DetectionSettings.from_section(section, weights))

    def __call__(self, images):
        return split_detections(*(t.numpy() for t in self._run(tf.cast(images, tf.float32))))


def onnx_session(model, fused_int8=False):
    """An onnxruntime CPU session of an ONNX file path or serialized model (bytes).

    By default it runs Q/DQ INT8 graphs as their operators define them, which is what TensorRT and
    QAT training compute: onnxruntime's QDQ fusion (QLinearConv and friends) is switched off, since
    its kernels add the bias in INT32 and, on CPUs without VNNI, saturate 16-bit pair sums (u8 x s8),
    so detections drift from the trained model's (17% matched on the main job's QAT model, 100%
    without it). fused_int8: fusion on, for graphs laid out for it (export --target onnxruntime).
    Other graph optimisations stay on; FP32/FP16 graphs are unaffected."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if not fused_int8:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class OnnxDetector:
    """An exported ONNX model run by onnxruntime on the CPU, with KerasDetector's interface.

    The exported graph carries its own proposal/NMS settings (chosen at export).
    """

    def __init__(self, path):
        _, self.info = read_onnx(path)
        try:
            self.session = onnx_session(path, fused_int8=self.info.get("target") == "onnxruntime")
        except Exception as err:  # onnxruntime raises many types for unreadable files
            raise FrcnnError(f"{path}: cannot load the ONNX model ({err})") from None
        self.class_names = self.info["class_names"]
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images):
        boxes, scores, classes, valid = self.session.run(None, {self.input_name: np.asarray(images, np.float32)})
        return split_detections(boxes, scores, classes, valid)


class TensorRTDetector:
    """A serialized TensorRT engine (built by build_engine) run with TensorRT's Python API and
    cuda-python, with KerasDetector's interface."""

    def __init__(self, path, names):
        trt = import_tensorrt(f"to run {path}; evaluate the ONNX model with onnxruntime here instead")
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            raise FrcnnError("TensorRT engines need cuda-python: pip install cuda-python") from None
        self.trt, self.cudart = trt, cudart
        with open(path, "rb") as handle:
            self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(handle.read())
        if self.engine is None:
            raise FrcnnError(f"{path}: TensorRT cannot deserialize this engine (built by another TensorRT version "
                             f"or for another GPU?)")
        self.context = self.engine.create_execution_context()
        io_names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        # getIOTensorName documents no order: find the input by its mode
        self.input_name = next(n for n in io_names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.names = [self.input_name] + [n for n in io_names if n != self.input_name]
        self.class_names = object_class_names(names)
        self.stream = self._check(cudart.cudaStreamCreate())

    def _check(self, result):
        error = result[0] if isinstance(result, tuple) else result
        if int(error) != 0:
            raise FrcnnError(f"CUDA error {error}")
        return result[1] if isinstance(result, tuple) and len(result) > 1 else None

    def __call__(self, images):
        images = np.ascontiguousarray(images, np.float32)
        self.context.set_input_shape(self.input_name, images.shape)
        host, device = {}, []
        try:
            for name in self.names:
                dtype = self.trt.nptype(self.engine.get_tensor_dtype(name))
                host[name] = images if name == self.input_name else np.empty(
                    tuple(self.context.get_tensor_shape(name)), dtype)
                pointer = self._check(self.cudart.cudaMalloc(max(host[name].nbytes, 1)))
                device.append(pointer)
                self.context.set_tensor_address(name, int(pointer))
            to_device, to_host = (self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                                  self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost)
            self._check(self.cudart.cudaMemcpy(device[0], images.ctypes.data, images.nbytes, to_device))
            if not self.context.execute_async_v3(int(self.stream)):
                raise FrcnnError("TensorRT failed to run the engine")
            self._check(self.cudart.cudaStreamSynchronize(self.stream))
            for name, pointer in zip(self.names[1:], device[1:]):
                self._check(self.cudart.cudaMemcpy(host[name].ctypes.data, pointer, host[name].nbytes, to_host))
        finally:
            for pointer in device:
                self.cudart.cudaFree(pointer)
        return split_detections(*(host[name] for name in ("boxes", "scores", "classes", "num_detections")))


def load_detector(path, spec, section, key=None):
    """A Keras (.hdf5/.h5/.tlt), ONNX (.onnx) or TensorRT (.engine/.trt/.plan) detector by extension."""
    if path.endswith(".onnx"):
        return OnnxDetector(path)
    if path.endswith((".engine", ".trt", ".plan")):
        return TensorRTDetector(path, class_names(spec.dataset_config))
    return KerasDetector.from_file(path, spec, section, key)
