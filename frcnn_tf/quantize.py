"""Quantization-aware training with TensorRT's INT8 arithmetic (explicit quantization), on tfmot.

TensorRT runs a Q/DQ network as: weights INT8 per output channel, symmetric, narrow range
[-127, 127]; activations INT8 per tensor, symmetric, zero point 0, clamped to [-128, 127],
quantized where a Conv/MatMul reads them. Training here computes exactly that:

* BatchNorm is folded into the conv before it when the model is converted (`quantize_model`:
  bias x k + shift per output channel, k = gamma / sqrt(var + eps), from the moving statistics;
  the kernel keeps its values and k becomes the conv's trainable `channel_scale`): a QAT model
  trains the folded conv, kernel x channel_scale, which is what TensorRT runs. Keeping k as its
  own variable keeps BatchNorm's conditioning: training the product kernel x k as one variable
  moves each channel 1/k^2 times further relative to its size than the float model's training
  did, and one epoch of it (batch 1, lr 0.001) took the main job's model from mAP 0.40 to 0.05;
* every Conv2D/Dense is wrapped in tfmot's QuantizeWrapperV2 with `TensorRTWeightQuantization`:
  its kernel x channel_scale (1 for convs without BatchNorm) is fake-quantized per output channel;
* a `TensorQuantize` layer sits on every tensor a Conv2D/Dense or a residual Add reads (the
  image, block inputs, the RoI crop before block 4, the pooled head features): one per tensor,
  shared by its readers, its range amax calibrated on the float model when the model is converted
  (the image at its full range, every other tensor by TensorRT's entropy calibrator bounded as export's
  PTQ bounds it) and fixed while QAT trains the weights;
* proposals, crop coordinates, NMS and box decoding stay float.

Every scale is a power of two, the smallest at least amax / 127 (`power_of_two_at_least`; at
most one bit of resolution given up). Then a dequantized value is an integer times a power of
two, exactly, so a conv's products and sums are exact in float32 (while the sum stays below
2^24 steps), in whatever order TensorFlow, onnxruntime or TensorRT's INT32 accumulators add
them: the Keras QAT model, the exported Q/DQ graph run by onnxruntime and the TensorRT engine
compute the same numbers up to the one rounding of the bias add, instead of diverging by a
rounding flip per layer that the next layers amplify.

`fake_quantize` is ONNX's DequantizeLinear(QuantizeLinear(x, scale, 0)) in TensorFlow ops
(divide, round half to even, clip, multiply), bit for bit; the straight-through gradient passes
inside the clip range.
"""
import dataclasses
import hashlib

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from frcnn_tf import calibrators
from frcnn_tf.errors import FrcnnError
from frcnn_tf.tensorrt_limits import INT8_MAX, INT8_MIN, MIN_SCALE, WEIGHT_INT8_MAX

QUANTIZED_TYPES = ("Conv2D", "Dense")  # wrapped; their inputs and residual Adds' inputs get a TensorQuantize
QUANTIZED_INPUTS = QUANTIZED_TYPES + ("Add",)
WRAPPER_PREFIX = "quant_"


def fake_quantize(values, scale, low, high):
    """clip(round_half_even(values / scale), low, high) * scale (float32), with the straight-through
    gradient inside [low * scale, high * scale]. scale broadcasts against values (per tensor: a
    scalar; per output channel: [C] against a kernel's last axis)."""

    @tf.custom_gradient
    def quantize(x, step):
        integers = _integers(x, step, low, high)

        def gradient(upstream):
            inside = tf.logical_and(x >= low * step, x <= high * step)
            return upstream * tf.cast(inside, upstream.dtype), tf.zeros_like(step)
        return integers * step, gradient
    return quantize(values, scale)


def _integers(values, scale, low, high):
    """ONNX QuantizeLinear's integers (as float32): clip(round_half_even(values / scale), low, high)."""
    return tf.clip_by_value(tf.round(values / scale), low, high)


def power_of_two_at_least(values):
    """The smallest power of two >= each positive normal float32 value, exactly (from the IEEE-754
    bits: a value with mantissa bits set rounds up to the next exponent)."""
    bits = tf.bitcast(tf.convert_to_tensor(values, tf.float32), tf.int32)
    exponent = tf.bitwise.right_shift(bits, 23) + tf.cast(tf.bitwise.bitwise_and(bits, 0x7FFFFF) > 0, tf.int32)
    return tf.bitcast(tf.bitwise.left_shift(exponent, 23), tf.float32)


def weight_scale(kernel):
    """Per-output-channel scale [C] of a Conv2D (HWIO) or Dense ([in, out]) kernel: the power of two
    at least max|w| / 127."""
    magnitude = tf.reduce_max(tf.abs(kernel), axis=list(range(len(kernel.shape) - 1)))
    return power_of_two_at_least(tf.maximum(magnitude, MIN_SCALE) / WEIGHT_INT8_MAX)


def activation_scale(amax):
    """The per-tensor scale of a range [-amax, amax]: the power of two at least amax / 127 (TensorRT's
    calibration cache value)."""
    return power_of_two_at_least(tf.maximum(amax, MIN_SCALE) / INT8_MAX)


CHANNEL_SCALE = "channel_scale"


class PerChannelWeightQuantizer(tfmot.quantization.keras.quantizers.Quantizer):
    """Symmetric narrow-range INT8 per output channel of kernel x channel_scale (a trainable [C]
    variable: the folded BatchNorm's k); the INT8 scale follows the current product."""

    def build(self, tensor_shape, name, layer):
        return {CHANNEL_SCALE: layer.add_weight(f"{name}_{CHANNEL_SCALE}", shape=(tensor_shape[-1],),
                                                initializer="ones", trainable=True)}

    def __call__(self, inputs, training, weights, **kwargs):
        folded = inputs * weights[CHANNEL_SCALE]
        return fake_quantize(folded, weight_scale(folded), -WEIGHT_INT8_MAX, WEIGHT_INT8_MAX)

    def get_config(self):
        return {}

    def __eq__(self, other):
        return isinstance(other, PerChannelWeightQuantizer)


class FixedKernelWeightQuantizer(PerChannelWeightQuantizer):
    """The weight quantizer of stop 24's QAT checkpoints (BatchNorm multiplied into the kernel
    variable, no channel_scale), kept only so that check_scheme can load and refuse them."""

    def build(self, tensor_shape, name, layer):
        return {}

    def __call__(self, inputs, training, weights, **kwargs):
        return super().__call__(inputs, training, {CHANNEL_SCALE: 1.0}, **kwargs)


class TensorRTWeightQuantization(tfmot.quantization.keras.QuantizeConfig):
    """tfmot QuantizeConfig of a Conv2D/Dense: the kernel per output channel, nothing else (the
    activation a layer reads is quantized by the TensorQuantize before it). channel_scale False:
    a checkpoint of the scheme before the trainable channel scale (refused by check_scheme)."""

    def __init__(self, channel_scale=False):
        self.channel_scale = channel_scale

    def get_weights_and_quantizers(self, layer):
        quantizer = PerChannelWeightQuantizer() if self.channel_scale else FixedKernelWeightQuantizer()
        return [(layer.kernel, quantizer)]

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        layer.kernel = quantize_weights[0]

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {"channel_scale": self.channel_scale}


class TensorRTQuantizeWrapper(tfmot.quantization.keras.QuantizeWrapperV2):
    """tfmot's wrapper, with the kernel trainable only when the wrapped layer is: tfmot lists it as
    trainable always, so the frozen blocks (freeze_blocks) would have trained in QAT."""

    @property
    def trainable_weights(self):
        return super().trainable_weights if self.trainable else []

    @property
    def non_trainable_weights(self):
        frozen = [] if self.trainable else super().trainable_weights
        return self._dedup_weights(frozen + super().non_trainable_weights)


class TensorQuantize(tf.keras.layers.Layer):
    """Per-tensor symmetric INT8 fake quantization of an activation [any shape], float32: scale
    activation_scale(amax), values clamped to [-128, 127] steps, as TensorRT's Q/DQ pair computes, in
    training and inference alike.

    amax (scalar, non-trainable) is calibrated when the model is converted (`quantize_model`) and stays
    fixed while QAT trains the weights, as NVIDIA's pytorch-quantization fine-tunes. A range tracked
    during training (a moving average of each image's max|x|) grows with the brightest images: on
    traffic_lights (8 epochs, pruned, mAP 0.4643) the early ReLUs' ranges grew 3-4x in one QAT epoch and
    the model lost 4.4 points; calibrated and fixed, 1.0 (three runs: +0.3, -1.8, -1.6). Uncalibrated
    (amax 0), every value clamps to +-128 of the least step (about 1e-12).
    """

    def __init__(self, for_export=False, **kwargs):
        kwargs.pop("decay", None)  # QAT models saved before calibrated ranges: the moving average they trained with
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.for_export = bool(for_export)

    def build(self, input_shape):
        self.amax = self.add_weight("amax", shape=(), initializer="zeros", trainable=False,
                                    aggregation=tf.VariableAggregation.MEAN)
        super().build(input_shape)

    def call(self, inputs):
        scale = activation_scale(self.amax)
        return export_quantize(inputs, scale) if self.for_export else fake_quantize(inputs, scale, INT8_MIN, INT8_MAX)

    def get_config(self):
        return {**super().get_config(), "for_export": self.for_export}


def export_quantize(values, scale):
    """The TensorQuantize of an exported graph: TensorFlow's QuantizeAndDequantizeV2 (signed, 8 bits,
    half to even) over [-128 scale, 127 scale (1 - 2^-20)]. Grappler does not fold it (tf2onnx disables
    folding quantization emulation) and tf2onnx rewrites it into QuantizeLinear/DequantizeLinear with
    scale max(min / -128, max / 127) = `scale` exactly: -128 scale is exact in float32 and the upper
    bound is kept a hair below 127 scale so that its side never rounds above it. (Its own arithmetic
    differs from fake_quantize in the last bit at times; it is only converted, never run for results.)"""
    return tf.quantization.quantize_and_dequantize_v2(
        values, INT8_MIN * scale, INT8_MAX * (1.0 - 2.0 ** -20) * scale, signed_input=True, num_bits=8,
        range_given=True, round_mode="HALF_TO_EVEN", narrow_range=False)


CUSTOM_OBJECTS = {cls.__name__: cls for cls in (PerChannelWeightQuantizer, TensorRTWeightQuantization,
                                                TensorRTQuantizeWrapper, TensorQuantize)}


def is_quantized(model):
    return any(isinstance(layer, tfmot.quantization.keras.QuantizeWrapperV2) for layer in model.layers)


def check_scheme(model, path):
    """Refuses a QAT model of an earlier frcnn_tf scheme: tfmot's default one (asymmetric output
    ranges, not what TensorRT computes) or one with BatchNorm after its quantized convs (scales that
    are not powers of two once folded), which cannot be trained on or deployed as trained."""
    if not is_quantized(model):
        return
    if not any(isinstance(layer, TensorQuantize) for layer in model.layers):
        raise FrcnnError(f"{path}: a QAT model of tfmot's default 8-bit scheme, which TensorRT cannot run as "
                         "trained; retrain its float model with enable_qat (TensorRT's INT8 scheme)")
    if any(isinstance(layer, tf.keras.layers.BatchNormalization) for layer in model.layers):
        raise FrcnnError(f"{path}: a QAT model of an earlier frcnn_tf scheme (BatchNorm not folded), which "
                         "TensorRT cannot run bit for bit as trained; retrain its float model with enable_qat")
    if any(not layer.quantize_config.channel_scale for layer in model.layers
           if isinstance(layer, TensorRTQuantizeWrapper)):
        raise FrcnnError(f"{path}: a QAT model of an earlier frcnn_tf scheme (BatchNorm multiplied into the "
                         "kernel, which trains unstably); retrain its float model with enable_qat")


def quantize_scope(custom_objects):
    """Deserialisation scope for QAT models (tfmot's wrapper, this scheme's classes, `custom_objects`)."""
    return tfmot.quantization.keras.quantize_scope({**CUSTOM_OBJECTS, **custom_objects})


def _rename_inputs(layer_config, renames):
    for node in layer_config["inbound_nodes"]:
        for reference in node:
            reference[0] = renames.get(reference[0], reference[0])


def _model_from_layers(config, layers, renames, custom_objects):
    """A new model from a functional `config` with its layer list replaced by `layers` and the
    model's inputs and outputs renamed by `renames` ({old layer name: new})."""
    for key in ("input_layers", "output_layers"):
        for reference in config[key]:
            reference[0] = renames.get(reference[0], reference[0])
    config["layers"] = layers
    with quantize_scope(custom_objects):
        return tf.keras.Model.from_config(config, custom_objects={**CUSTOM_OBJECTS, **custom_objects})


def _readers(config):
    """{layer name: [names of the layers that read its output]} of a functional model config."""
    readers = {}
    for layer in config["layers"]:
        for node in layer["inbound_nodes"]:
            for reference in node:
                readers.setdefault(reference[0], []).append(layer["name"])
    return readers


def _foldable_batch_norms(model, config):
    """{Conv2D/Dense name: name of the BatchNormalization that alone reads its linear output}."""
    by_name, readers, folds = {layer.name: layer for layer in model.layers}, _readers(config), {}
    for layer in config["layers"]:
        follower = readers.get(layer["name"], [])
        if (layer["class_name"] in QUANTIZED_TYPES and len(follower) == 1
                and layer["config"].get("activation", "linear") == "linear"
                and isinstance(by_name[follower[0]], tf.keras.layers.BatchNormalization)):
            folds[layer["name"]] = follower[0]
    return folds


def quantize_model(model, custom_objects, calibration_batches, calibration_model=None):
    """(QAT copy of a float Faster R-CNN model (pruned or not), {TensorQuantize name:
    calibrators.TensorRange}): the copy has the model's weights, each BatchNorm folded into the conv
    before it (it computes what the float model computes in inference mode, before quantization), and
    activation ranges calibrated on `calibration_batches` (an iterable of image batches
    [N, H, W, C] float32, network inputs) by `calibrate_ranges`, in `calibration_model` (default
    `model`): the same layers and weights, e.g. with the deployed graph's proposals."""
    config = model.get_config()
    folds = _foldable_batch_norms(model, config)
    layers, quantizers, renames = [], {}, {}
    for layer in config["layers"]:
        if layer["name"] in folds.values():
            continue
        if layer["class_name"] in QUANTIZED_INPUTS:
            for node in layer["inbound_nodes"]:
                for reference in node:
                    source, node_index, tensor_index = reference[:3]
                    if (source, node_index, tensor_index) not in quantizers:
                        name = f"{source}_quantize" + (f"_{tensor_index}" if tensor_index else "")
                        quantizers[source, node_index, tensor_index] = name
                        layers.append({"class_name": "TensorQuantize", "name": name,
                                       "config": {"name": name, "trainable": True, "dtype": "float32"},
                                       "inbound_nodes": [[[renames.get(source, source), node_index, tensor_index,
                                                           {}]]]})
                    reference[:3] = [quantizers[source, node_index, tensor_index], 0, 0]
        _rename_inputs(layer, renames)
        if layer["class_name"] in QUANTIZED_TYPES:
            inner = dict(layer["config"], use_bias=True) if layer["name"] in folds else layer["config"]
            name = renames[inner["name"]] = f"{WRAPPER_PREFIX}{inner['name']}"
            if layer["name"] in folds:
                renames[folds[layer["name"]]] = name
            layer = {"class_name": "TensorRTQuantizeWrapper", "name": name, "inbound_nodes": layer["inbound_nodes"],
                     "config": {"name": name, "trainable": inner.get("trainable", True), "dtype": inner["dtype"],
                                "layer": {"class_name": layer["class_name"], "config": inner},
                                "quantize_config": {"class_name": "TensorRTWeightQuantization",
                                                    "config": {"channel_scale": True}}}}
        layers.append(layer)
    quantized = _model_from_layers(config, layers, renames, custom_objects)
    by_name = {layer.name: layer for layer in model.layers}
    for layer in model.layers:
        if layer.name in folds.values():
            continue
        values = {name: variable.numpy() for name, variable in _variables(layer).items()}
        if layer.name in folds:
            k, shift = batch_norm_factors(by_name[folds[layer.name]])
            values["bias"] = (values.get("bias", np.zeros_like(k)) * k + shift).astype(np.float32)
            values[f"kernel_{CHANNEL_SCALE}"] = k
        target = _variables(quantized.get_layer(renames.get(layer.name, layer.name)))
        for name, value in values.items():
            target[name].assign(value)
    return quantized, calibrate_ranges(quantized, calibration_model or model, quantizers, calibration_batches)


def calibrate_ranges(qat, model, quantizers, batches):
    """Sets the amax of each TensorQuantize of `qat` from the values its tensor takes in the float
    `model` (inference mode) over `batches`: a model input (the preprocessed image) keeps its full
    range, as export's PTQ keeps it; every other tensor gets TensorRT's entropy threshold bounded to
    clip at most 0.01 % of its values (calibrators.amax_of). quantizers: {(source layer name, node
    index, tensor index): TensorQuantize name}. Returns {TensorQuantize name: calibrators.TensorRange}."""
    names = list(quantizers.values())
    tensors = [tf.nest.flatten(model.get_layer(source).get_output_at(node))[index]
               for source, node, index in quantizers]
    probe = tf.function(tf.keras.Model(model.inputs, tensors), reduce_retracing=True)  # eager: 1.2x the time
    histograms = {name: calibrators.AbsHistogram() for name in names}
    seen = 0
    for images in batches:
        calibrators.update_histograms(histograms, zip(names, (values.numpy() for values in
                                                              tf.nest.flatten(probe(images, training=False)))))
        seen += len(images)
    if not seen:
        raise FrcnnError("no images to calibrate the QAT model's activation ranges: check the spec's "
                         "training tfrecords")
    full_range = {name for (source, _, _), name in quantizers.items() if source in model.input_names}
    ranges = calibrators.ranges_of(histograms, "entropy", full_range=full_range)
    for name, tensor_range in ranges.items():
        qat.get_layer(name).amax.assign(tensor_range.amax)
    return ranges


def _variables(layer):
    """{short name (kernel, gamma, amax, ...): variable} of a layer or a QAT wrapper (tfmot replaces
    the wrapped layer's kernel attribute by its quantized tensor; the wrapper keeps the variable)."""
    return {variable.name.split("/")[-1].split(":")[0]: variable for variable in layer.weights}


def folded_kernel(wrapper):
    """The kernel a QAT wrapper quantizes: kernel x channel_scale, float32 (NumPy)."""
    variables = _variables(wrapper)
    return variables["kernel"].numpy() * variables[f"kernel_{CHANNEL_SCALE}"].numpy()


def weight_integers(kernel):
    """(INT8 values, per-channel scale [C]) of a kernel as training quantizes it: NumPy int8 and float32."""
    kernel = tf.convert_to_tensor(kernel, tf.float32)
    scale = weight_scale(kernel)
    integers = _integers(kernel, scale, -WEIGHT_INT8_MAX, WEIGHT_INT8_MAX)
    return integers.numpy().astype(np.int8), scale.numpy()


def batch_norm_factors(layer):
    """(k [C], shift [C]) with BN(x) = k * x + shift in inference mode."""
    weights = {name: variable.numpy() for name, variable in _variables(layer).items()}
    gamma = weights.get("gamma", np.ones_like(weights["moving_variance"]))
    beta = weights.get("beta", np.zeros_like(weights["moving_mean"]))
    k = (gamma / np.sqrt(weights["moving_variance"] + np.float32(layer.epsilon))).astype(np.float32)
    return k, (beta - weights["moving_mean"] * k).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class TrainedScales:
    """A QAT model's INT8 scales as export writes them: weights {kernel_digest: float32 [C]} (of the
    deployable kernels) and activations, the float32 scale of each TensorQuantize."""

    weights: dict
    activations: list


def deployable_model(model, custom_objects):
    """(Keras model, TrainedScales): the QAT `model` in inference mode in the form TensorRT runs it,
    for export. Each wrapped Conv2D/Dense becomes a plain layer whose kernel is exactly its INT8
    values x per-channel scale (BatchNorm was folded in at conversion); the TensorQuantize layers
    keep their ranges and emit `export_quantize`. The weight scales are keyed by `kernel_digest` of
    the kernel, which survives ONNX's layouts."""
    config = model.get_config()
    layers, renames = [], {}
    for layer in config["layers"]:
        _rename_inputs(layer, renames)
        if layer["class_name"] == "TensorRTQuantizeWrapper":
            inner = layer["config"]["layer"]["config"]
            renames[layer["name"]] = inner["name"]
            layer = {"class_name": layer["config"]["layer"]["class_name"], "name": inner["name"],
                     "config": inner, "inbound_nodes": layer["inbound_nodes"]}
        elif layer["class_name"] == "TensorQuantize":
            layer["config"]["for_export"] = True
        layers.append(layer)
    deployable = _model_from_layers(config, layers, renames, custom_objects)
    scales = {}
    for layer in model.layers:
        if isinstance(layer, tfmot.quantization.keras.QuantizeWrapperV2):
            variables = _variables(layer)
            integers, scale = weight_integers(folded_kernel(layer))
            kernel = integers.astype(np.float32) * scale
            scales[kernel_digest(kernel)] = scale
            deployable.get_layer(layer.layer.name).set_weights(
                [kernel] + ([variables["bias"].numpy()] if "bias" in variables else []))
        elif layer.weights:
            deployable.get_layer(layer.name).set_weights(layer.get_weights())
    activations = [activation_scale(layer.amax).numpy() for layer in model.layers if isinstance(layer, TensorQuantize)]
    return deployable, TrainedScales(weights=scales, activations=activations)


def kernel_digest(values):
    """A digest of a weight's values that does not depend on its layout (sorted float32 bytes)."""
    return hashlib.sha1(np.sort(np.asarray(values, np.float32).ravel()).tobytes()).hexdigest()


def fake_quant_layers(model):
    """Names of the layers whose kernels are fake-quantized (wrapped Conv2D/Dense)."""
    return [layer.layer.name for layer in model.layers if isinstance(layer, tfmot.quantization.keras.QuantizeWrapperV2)]


def activation_quantizers(model):
    """{TensorQuantize layer name: amax} of a QAT model."""
    return {layer.name: float(layer.amax.numpy()) for layer in model.layers if isinstance(layer, TensorQuantize)}
