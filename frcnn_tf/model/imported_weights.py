"""ImageNet ResNet weights from torchvision/timm or Keras applications, by TLT's layer names.

`import_weights` reads a torchvision/timm ResNet18/34/50/101 state dict (`.pth`, `.safetensors`) or
Keras applications' ResNet50/101 weights (`.h5`), checks that the experiment spec builds the same
network, and writes a Keras HDF5 weight file with one group per TLT layer (conv1, bn_conv1,
block_1a_conv_1, ..., block_4*), which `training_config.pretrained_weights` loads by name.

What fits and how:
- Both sources max-pool after conv1 (`use_pooling: true`) and have projection shortcuts only in
  the first block of each stage (`all_projections: false`). TLT's first block of stage 1 always
  has a projection; for ResNet18/34 (identity shortcut there) it is set to an identity (1x1 eye
  kernel, BN that passes its input: exact where BN uses its moving statistics).
- Stage 4 is TLT's block 4, the second-stage head on every RoI (stride 2 only with pool_size_2x).
- torch conv kernels OIHW become HWIO; BN weight/bias/running_mean/running_var become
  gamma/beta/moving_mean/moving_variance. TLT's BatchNormalization has epsilon 1e-3, the sources
  1e-5 (Keras: 1.001e-5): gamma is multiplied by sqrt((var + 1e-3) / (var + eps_source)) per
  channel, so that inference-mode BN computes exactly the source's. Keras applications' conv biases
  are folded into the next BN's moving mean when the spec has `use_bias: false` (zero biases are
  written for torchvision weights when it has `use_bias: true`).
- The input normalisation the weights expect (torchvision: RGB, mean 255 * (0.485, 0.456, 0.406),
  std 255 * (0.229, 0.224, 0.225); Keras: BGR, mean (103.939, 116.779, 123.68), no scaling) is
  met by folding the spec's channel order and image_scaling_factor into conv1's kernel (exact);
  the spec's image_channel_mean must be the source's (a warning says so otherwise: a mean cannot
  be folded exactly, conv1 zero-pads).
- Not fitting: torchvision/timm ResNet50/101 are ResNet v1.5 (stride in the 3x3 conv), TLT's are v1
  (stride in the first 1x1, as Keras applications): refused unless allow_stride_mismatch.
  TensorFlow's 'same' padding puts stride-2 windows with kernels wider than 1 one pixel later than
  the sources' symmetric padding wherever that layer's input has an even size (conv1, pool1, the
  basic blocks' first convs of blocks 2-4): the weights fit, the features shift; it is logged.
- The fully connected classifier is dropped; the RPN and the classification/regression heads stay
  freshly initialised.
"""
import dataclasses
import importlib.metadata
import io
import json
import math
import os
import re

import h5py
import numpy as np
from absl import logging

from frcnn_tf.errors import FrcnnError
from frcnn_tf.io_utils import atomic_write_bytes, refuse_to_overwrite
from frcnn_tf.model import resnet
from frcnn_tf.model.frcnn import build_model
from frcnn_tf.proto import input_image_pb2
from frcnn_tf.spec.loader import parse_experiment_spec
from frcnn_tf.tensor_files import read_weights

OUTPUT_EXTENSIONS = (".hdf5", ".h5")
IMPORT_KEY = "frcnn_tf_import"  # HDF5 attribute: where the weights came from and the input conv1 expects
MEAN_TOLERANCE = 1.0  # 0-255 pixel levels between the spec's image_channel_mean and the source's


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """The input a source network expects: x = (pixel - mean) / std per colour (0-255 pixels)."""

    order: str
    mean: dict
    std: dict


TORCHVISION_INPUT = Preprocessing("rgb", dict(zip("rgb", (123.675, 116.28, 103.53))),
                                  dict(zip("rgb", (58.395, 57.12, 57.375))))
KERAS_CAFFE_INPUT = Preprocessing("bgr", dict(zip("bgr", (103.939, 116.779, 123.68))), dict.fromkeys("bgr", 1.0))


@dataclasses.dataclass(frozen=True)
class SourceNetwork:
    """A source ResNet by TLT layer names: layers {name: {kernel (HWIO) | bias | gamma | beta |
    moving_mean | moving_variance: float64 array}}; dropped: source tensors without a TLT layer."""

    name: str
    depth: int
    stride_in_3x3: bool
    bn_epsilon: float
    preprocessing: Preprocessing
    layers: dict
    dropped: tuple


@dataclasses.dataclass(frozen=True)
class ImportResult:
    source: str  # e.g. "torchvision/timm ResNet18"
    mapped: tuple  # model layers filled from the source
    identity: tuple  # model layers set to an identity shortcut
    fresh: tuple  # model layers with weights the file leaves freshly initialised
    dropped: tuple  # source tensors not imported (the classifier)
    shifted: tuple  # stride-2 layers whose windows sit one pixel off the source's (see shifted_layers)


_TORCH_KEY = re.compile(r"(?:(conv1|bn1)|layer([1-4])\.([0-9]+)\.(?:(conv|bn)([1-3])|downsample\.([01])))\."
                        r"(weight|bias|running_mean|running_var|num_batches_tracked)")
_KERAS_KEY = re.compile(r"conv(?:1|([2-5])_block([0-9]+)_([0-3]))_(conv|bn)/"
                        r"(kernel|bias|gamma|beta|moving_mean|moving_variance)(?::0)?")
_TORCH_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
_TORCH_CONV = {"weight": "kernel", "bias": "bias"}
_CLASSIFIERS = re.compile(r"fc\.(weight|bias)|(predictions|probs)/(kernel|bias)(:0)?")


def _depth(path, family, repeats, bottleneck):
    for depth, expected in resnet.REPEATS.items():
        if tuple(repeats) == expected and resnet.is_bottleneck(depth) == bottleneck:
            return depth
    kind = "bottleneck" if bottleneck else "basic"
    raise FrcnnError(f"{path}: a {family} ResNet with {tuple(repeats)} {kind} blocks per stage; frcnn_tf builds "
                     f"ResNet {', '.join(map(str, resnet.REPEATS))}")


def _network(path, family, entries, dropped, **fields):
    """A SourceNetwork from (stage, repeat, layer, weight kind, array) entries; stage 0 is the stem, whose
    layer is its TLT name; a block's layer is (conv | bn, 1-3 | shortcut), named once the depth is known."""
    repeats = [0, 0, 0, 0]
    for stage, repeat, *_ in entries:
        if stage:
            repeats[stage - 1] = max(repeats[stage - 1], repeat + 1)
    if not entries:
        raise FrcnnError(f"{path}: holds no ResNet layers")
    bottleneck = any(layer == ("conv", "3") for _, _, layer, _, _ in entries)
    depth = _depth(path, family, repeats, bottleneck)
    layers = {}
    for stage, repeat, layer, kind, value in entries:
        name = f"{resnet.sub_block_name(stage, repeat)}_{layer[0]}_{layer[1]}" if stage else layer
        layers.setdefault(name, {})[kind] = np.asarray(value, np.float64)
    return SourceNetwork(name=f"{family} ResNet{depth}", depth=depth, layers=layers, dropped=tuple(dropped), **fields)


def _unknown(path, key, family):
    return FrcnnError(f"{path}: tensor '{key}' is not part of a plain {family} ResNet (a variant such as a "
                      "deep stem, ResNeXt, ResNet v2 or squeeze-excitation?); only ResNet18/34/50/101 weights import")


def torchvision_network(tensors, path):
    """A torchvision/timm ResNet state dict (conv1, bn1, layerS.J.convK/bnK/downsample.0/1, fc) by TLT names."""
    entries, dropped = [], []
    for key, value in tensors.items():
        found = _TORCH_KEY.fullmatch(key)
        if _CLASSIFIERS.fullmatch(key):
            dropped.append(key)
            continue
        if not found:
            raise _unknown(path, key, "torchvision/timm")
        stem, stage, repeat, kind, part, downsample, weight = found.groups()
        if weight == "num_batches_tracked":
            continue
        if stem:
            layer, is_bn = ("bn_conv1", True) if stem == "bn1" else ("conv1", False)
        else:
            is_bn = kind == "bn" if downsample is None else downsample == "1"
            layer = ("bn" if is_bn else "conv", "shortcut" if downsample is not None else part)
        if not is_bn and weight == "weight":
            if value.ndim != 4:
                raise FrcnnError(f"{path}: '{key}' has shape {list(value.shape)}, a conv kernel [out, in, h, w]")
            value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        table = _TORCH_BN if is_bn else _TORCH_CONV
        if weight not in table:
            raise _unknown(path, key, "torchvision/timm")
        entries.append((int(stage or 0), int(repeat or 0), layer, table[weight], value))
    return _network(path, "torchvision/timm", entries, dropped, stride_in_3x3=True, bn_epsilon=1e-5,
                    preprocessing=TORCHVISION_INPUT)


def keras_network(tensors, path):
    """Keras applications' ResNet50/101 weights (conv1_conv, convS_blockJ_K_conv/bn, K 0 = shortcut) by TLT names."""
    entries, dropped = [], []
    for key, value in tensors.items():
        if _CLASSIFIERS.fullmatch(key):
            dropped.append(key)
            continue
        found = _KERAS_KEY.fullmatch(key)
        if not found and key.startswith(("conv1/", "bn_conv1/", "block_")):
            raise FrcnnError(f"{path}: already by TLT layer names ('{key}'); set it as training_config."
                             "pretrained_weights directly")
        if not found:
            raise _unknown(path, key, "Keras applications")
        stage, block, part, kind, weight = found.groups()
        if stage is None:
            layer, stage, repeat = ("conv1" if kind == "conv" else "bn_conv1"), 0, 0
        else:
            stage, repeat, layer = int(stage) - 1, int(block) - 1, (kind, "shortcut" if part == "0" else part)
        entries.append((stage, repeat, layer, weight, value))
    return _network(path, "Keras applications", entries, dropped, stride_in_3x3=False, bn_epsilon=1.001e-5,
                    preprocessing=KERAS_CAFFE_INPUT)


def check_fit(spec, spec_source, network, source_path, allow_stride_mismatch=False):
    """Raises SpecError naming the spec field (and the value it must have) where the spec's backbone
    is not the source network, and FrcnnError for a v1.5 bottleneck unless allow_stride_mismatch."""
    model = spec.model_config

    def refuse(field, message):
        return spec_source.error(f"model_config.{field}", f"model_config.{field}: {message}")

    arch = f"resnet:{network.depth}"
    if model.arch != arch:
        raise refuse("arch", f"must be \"{arch}\" for {network.name} weights, got \"{model.arch}\"")
    if model.input_image_config.image_type != input_image_pb2.RGB:
        raise refuse("input_image_config.image_type",
                     f"must be RGB for {network.name} weights: their conv1 reads three colour channels")
    if not model.use_pooling:
        raise refuse("use_pooling", f"must be true for {network.name} weights: they max-pool after conv1 (without "
                                    "pooling, block 1 strides instead)")
    if model.all_projections:
        raise refuse("all_projections", f"must be false for {network.name} weights: they have projection shortcuts "
                                        "only in the first block of each stage (all_projections adds fresh ones to "
                                        "every block)")
    if resnet.is_bottleneck(network.depth) and network.stride_in_3x3:
        message = (f"{source_path}: {network.name} is ResNet v1.5 (stride 2 in the 3x3 conv of each stage's first "
                   f"block); TLT's resnet:{network.depth} is v1 (stride 2 in the first 1x1 conv, as Keras "
                   "applications' ResNets), so these weights do not compute their ImageNet features there")
        if not allow_stride_mismatch:
            raise FrcnnError(f"{message}; import Keras applications' weights instead, or pass --allow_stride_mismatch "
                             "to start from them anyway")
        logging.warning("%s; imported anyway (--allow_stride_mismatch)", message)


def _bn_after(conv):
    return "bn_conv1" if conv == "conv1" else conv.replace("_conv_", "_bn_")


def _input_fold(network, image_config):
    """conv1 input channels of the source for the spec's channel order, and the factor per channel
    that turns the spec's (pixel - mean) / image_scaling_factor into the source's (pixel - mean) / std."""
    expected = network.preprocessing
    order = image_config.image_channel_order
    return ([expected.order.index(colour) for colour in order],
            np.array([image_config.image_scaling_factor / expected.std[colour] for colour in order]))


def _check_mean(network, image_config):
    expected = network.preprocessing.mean
    spec_mean = dict(image_config.image_channel_mean)
    if max(abs(spec_mean[colour] - expected[colour]) for colour in spec_mean) > MEAN_TOLERANCE:
        wanted = " ".join(f"{colour}: {expected[colour]:g}" for colour in image_config.image_channel_order)
        logging.warning("model_config.input_image_config.image_channel_mean is {%s}; %s weights were trained on "
                        "pixels minus {%s}: set image_channel_mean to those values (image_channel_order and "
                        "image_scaling_factor are folded into conv1 and may stay)",
                        " ".join(f"{c}: {spec_mean[c]:g}" for c in image_config.image_channel_order), network.name,
                        wanted)


def _layer_arrays(network, layer, source_path):
    """The source's arrays for one TLT conv or BN layer, in the layer's own weight order."""
    values = dict(network.layers[layer.name])
    names = [weight.name.split("/")[-1].split(":")[0] for weight in layer.weights]
    if "bias" in names and "bias" not in values:
        values["bias"] = np.zeros(layer.filters)
    missing = [name for name in names if name not in values]
    if missing:
        raise FrcnnError(f"{source_path}: layer {layer.name} lacks {', '.join(missing)}")
    for name, weight in zip(names, layer.weights):
        if values[name].shape != tuple(weight.shape):
            raise FrcnnError(f"{source_path}: {layer.name} {name} has shape {list(values[name].shape)}, the spec's "
                             f"model needs {list(weight.shape)} (a wider or otherwise different ResNet?)")
    return [values[name] for name in names]


def _identity_shortcut(model, conv_name, source_path):
    """Arrays of a 1x1 stride-1 C->C projection and its BN that pass the input through unchanged."""
    conv, bn = model.get_layer(conv_name), model.get_layer(_bn_after(conv_name))
    if conv.kernel.shape[:2] != (1, 1) or conv.kernel.shape[2] != conv.kernel.shape[3] or conv.strides != (1, 1):
        raise FrcnnError(f"{source_path}: the spec's model has {conv_name} ({list(conv.kernel.shape)}, stride "
                         f"{conv.strides[0]}) where the source has no layer")
    channels = conv.filters
    kernel = np.eye(channels).reshape(1, 1, channels, channels)
    return {conv_name: [kernel] + ([np.zeros(channels)] if conv.use_bias else []),
            bn.name: [np.ones(channels), np.zeros(channels), np.zeros(channels), np.full(channels, 1 - bn.epsilon)]}


def _backbone_layer(name):
    """conv1, bn_conv1 and blocks 1-4: the layers an ImageNet ResNet has weights for."""
    return name in ("conv1", "bn_conv1") or name.startswith("block_")


def tlt_weights(network, model, image_config, source_path):
    """({layer name: arrays in the layer's weight order}, identity layer names) for the spec's model.

    conv1 takes the spec's input normalisation; source conv biases go into the next BN's moving mean
    where the model has none; BN gamma absorbs the source's epsilon. Every backbone and block-4 layer
    of the model is filled, from the source or as an identity shortcut, or this raises.
    """
    names = {layer.name for layer in model.layers}
    extra = [name for name in network.layers if name not in names]
    if extra:
        raise FrcnnError(f"{source_path}: the spec's model has no layer {extra[0]} (source layers without a "
                         f"counterpart: {len(extra)})")
    identity = {}
    for layer in model.layers:
        if layer.name.endswith("_conv_shortcut") and layer.name not in network.layers \
                and _bn_after(layer.name) not in network.layers:
            identity.update(_identity_shortcut(model, layer.name, source_path))
    unfilled = [layer.name for layer in model.layers if layer.weights and _backbone_layer(layer.name)
                and layer.name not in network.layers and layer.name not in identity]
    if unfilled:
        raise FrcnnError(f"{source_path}: has no weights for {unfilled[0]} of the spec's model ({len(unfilled)} "
                         "layers missing)")
    layers = {name: {kind: value.copy() for kind, value in weights.items()} for name, weights in network.layers.items()}
    channels, factors = _input_fold(network, image_config)
    layers["conv1"]["kernel"] = layers["conv1"]["kernel"][:, :, channels, :] * factors[None, None, :, None]
    for name, weights in layers.items():
        if "bias" in weights and not model.get_layer(name).use_bias:
            layers[_bn_after(name)]["moving_mean"] -= weights.pop("bias")
    for name, weights in layers.items():
        if "gamma" in weights:
            variance, epsilon = weights["moving_variance"], model.get_layer(name).epsilon
            weights["gamma"] = weights["gamma"] * np.sqrt((variance + epsilon) / (variance + network.bn_epsilon))
    source = dataclasses.replace(network, layers=layers)
    arrays = {name: _layer_arrays(source, model.get_layer(name), source_path) for name in layers}
    return {**arrays, **identity}, tuple(identity)


def shifted_layers(model_config, depth):
    """TLT layers with stride 2 and a kernel wider than 1 whose input has an even side for this spec
    (all of them for a size_min spec, whose sizes vary): there TensorFlow's 'same' padding pads one
    pixel less before than after, the sources pad symmetrically, so each window sits one input pixel
    later. Block 4's crops (2 x pool_size) are always even."""
    image = model_config.input_image_config
    fixed = image.WhichOneof("image_size_config") == "size_height_width"
    sides = [image.size_height_width.height, image.size_height_width.width] if fixed else None
    candidates = [("conv1", 1), ("pool1", 2)]
    if not resnet.is_bottleneck(depth):  # bottlenecks stride in a 1x1 conv, which needs no padding
        candidates += [("block_2a_conv_1", 4), ("block_3a_conv_1", 8)]
    shifted = [name for name, reduction in candidates
               if not fixed or any(math.ceil(side / reduction) % 2 == 0 for side in sides)]
    if model_config.roi_pooling_config.pool_size_2x and not resnet.is_bottleneck(depth):
        shifted.append("block_4a_conv_1")
    return tuple(shifted)


def write_weight_file(path, model, arrays, provenance):
    """A Keras HDF5 weight file (save_weights' layout) with `arrays` by layer name, written atomically."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        h5.attrs["layer_names"] = [name.encode() for name in arrays]
        h5.attrs["backend"] = b"tensorflow"
        h5.attrs["keras_version"] = importlib.metadata.version("tf-keras").encode()
        h5.attrs[IMPORT_KEY] = json.dumps(provenance)
        for name, values in arrays.items():
            weights = model.get_layer(name).weights
            group = h5.create_group(name)
            group.attrs["weight_names"] = [weight.name.encode() for weight in weights]
            for weight, value in zip(weights, values):
                group.create_dataset(weight.name, data=np.asarray(value, np.float32))
    atomic_write_bytes(path, buffer.getvalue())


def _log_notes(network, model, model_config, shifted, identity):
    image = model_config.input_image_config
    logging.info("conv1 takes this spec's input: channel order '%s' and image_scaling_factor %g folded in (the "
                 "weights expect %s channels divided by %s)", image.image_channel_order, image.image_scaling_factor,
                 network.preprocessing.order.upper(),
                 "/".join(f"{network.preprocessing.std[c]:g}" for c in network.preprocessing.order))
    _check_mean(network, image)
    logging.info("BatchNormalization epsilon: %g here, %g in the source; gamma rescaled per channel (exact where BN "
                 "uses its moving statistics: freeze_bn, evaluation, inference)", model.get_layer("bn_conv1").epsilon,
                 network.bn_epsilon)
    if identity:
        logging.info("%s: TLT projects the first shortcut of block 1, the source passes it through: set to an "
                     "identity (exact where BN uses its moving statistics)", ", ".join(identity))
    if not model_config.roi_pooling_config.pool_size_2x:
        logging.info("block 4 (the source's stage 4) runs at stride 1 on the RoI crops (pool_size_2x false, TLT's "
                     "design); the source strides 2 there")
    if shifted:
        logging.warning("%s: stride 2 over an even-sized input, where TensorFlow's 'same' padding starts each window "
                        "one pixel later than the source's symmetric padding: the weights fit, but the features there "
                        "are the source's sampled one pixel off (an input side of 16k + 1 pixels avoids it in blocks "
                        "1-3)", ", ".join(shifted))


def import_weights(source_path, output_path, spec_path, overwrite=False, allow_stride_mismatch=False):
    """Writes the source's weights by TLT layer names to output_path (Keras HDF5) for the spec's model."""
    if os.path.splitext(output_path)[1] not in OUTPUT_EXTENSIONS:
        raise FrcnnError(f"{output_path}: imported weights are written as Keras HDF5; name the file .hdf5 or .h5")
    refuse_to_overwrite([output_path], overwrite)
    spec, spec_source = parse_experiment_spec(spec_path)
    file_format, tensors = read_weights(source_path)
    network = (keras_network if file_format == "keras" else torchvision_network)(tensors, source_path)
    check_fit(spec, spec_source, network, source_path, allow_stride_mismatch)
    model = build_model(spec)
    arrays, identity = tlt_weights(network, model, spec.model_config.input_image_config, source_path)
    shifted = shifted_layers(spec.model_config, network.depth)
    _log_notes(network, model, spec.model_config, shifted, identity)
    image = spec.model_config.input_image_config
    write_weight_file(output_path, model, arrays, {
        "source": os.path.basename(source_path), "network": network.name, "arch": spec.model_config.arch,
        "image_channel_order": image.image_channel_order, "image_scaling_factor": image.image_scaling_factor})
    return ImportResult(source=network.name, mapped=tuple(network.layers), identity=identity,
                        fresh=tuple(layer.name for layer in model.layers if layer.weights and layer.name not in arrays),
                        dropped=network.dropped, shifted=shifted)
