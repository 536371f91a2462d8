"""Quantization-aware training with tensorflow-model-optimization (tfmot's default 8-bit scheme).

Conv2D and Dense layers of the backbone, RPN and second-stage head get fake-quant
weights and outputs (BatchNorm/ReLU/Add patterns as tfmot handles them); the
Proposal, RoI crop and per-RoI reshape layers stay in float. Wrapped layers are
named `quant_<name>`; `frcnn.find_layer` resolves either name.
"""
import tensorflow as tf
import tensorflow_model_optimization as tfmot

QUANTIZED_LAYER_TYPES = (tf.keras.layers.Conv2D, tf.keras.layers.Dense, tf.keras.layers.BatchNormalization,
                         tf.keras.layers.ReLU, tf.keras.layers.Add, tf.keras.layers.GlobalAveragePooling2D,
                         tf.keras.layers.MaxPooling2D)


def is_quantized(model):
    return any(isinstance(layer, tfmot.quantization.keras.QuantizeWrapperV2) for layer in model.layers)


def quantize_scope(custom_objects):
    """Deserialisation scope for QAT models (tfmot wrappers and quantizers plus ours)."""
    return tfmot.quantization.keras.quantize_scope(custom_objects)


def quantize_model(model, custom_objects):
    """A QAT copy of a float Faster R-CNN model, with the float model's weights."""
    annotate = tfmot.quantization.keras.quantize_annotate_layer

    def clone(layer):
        fresh = layer.__class__.from_config(layer.get_config())
        return annotate(fresh) if isinstance(layer, QUANTIZED_LAYER_TYPES) else fresh

    annotated = tf.keras.models.clone_model(model, clone_function=clone)
    with quantize_scope(custom_objects):
        # The unquantized (custom) layers are shared with `annotated`: the QAT graph is
        # their last node (FasterRCNN reads that one).
        quantized = tfmot.quantization.keras.quantize_apply(annotated)
    for layer in model.layers:
        if layer.weights:
            wrapped = isinstance(layer, QUANTIZED_LAYER_TYPES)
            _copy_weights(layer, quantized.get_layer(f"quant_{layer.name}" if wrapped else layer.name))
    return quantized


def _copy_weights(source, target):
    """Assigns `source`'s variables to `target`'s: a wrapper lists the layer's own weights first
    (tfmot moves a conv's kernel onto the wrapper), then its quantizer variables."""
    for variable, destination in zip(source.weights, target.weights):
        if variable.shape != destination.shape:
            raise ValueError(f"QAT conversion: {source.name} weight {variable.name} {variable.shape} does not "
                             f"match {destination.name} {destination.shape}")
        destination.assign(variable)


def fake_quant_layers(model):
    """Names of the layers whose kernels are fake-quantized (wrapped Conv2D/Dense)."""
    return [layer.layer.name for layer in model.layers if isinstance(layer, tfmot.quantization.keras.QuantizeWrapperV2)
            and isinstance(layer.layer, (tf.keras.layers.Conv2D, tf.keras.layers.Dense))]
