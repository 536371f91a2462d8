"""ImageNet ResNet weights imported by TLT layer names, checked against independent forwards:
NumPy float64 torchvision ResNets (tests/resnet_reference.py) and Keras applications' ResNet50."""
import logging
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import tensorflow as tf

import resnet_reference as ref
from conftest import REPO
from frcnn_tf.errors import FrcnnError, SpecError
from frcnn_tf.model import resnet
from frcnn_tf.model.checkpoints import load_matching_weights
from frcnn_tf.model.frcnn import FasterRCNN, build_model
from frcnn_tf.model.imported_weights import (IMPORT_KEY, TORCHVISION_INPUT, _check_mean, check_fit, import_weights,
                                             keras_network, shifted_layers, torchvision_network)
from frcnn_tf.spec.loader import parse_experiment_spec

FRESH = ("rpn_conv1", "rpn_out_class", "rpn_out_regress", "dense_class_td", "dense_regress_td")
TORCH_MEANS = ("    image_channel_mean { key: 'b' value: 103.939 }\n"
               "    image_channel_mean { key: 'g' value: 116.779 }\n"
               "    image_channel_mean { key: 'r' value: 123.68 }\n",
               "    image_channel_mean { key: 'b' value: 103.53 }\n    image_channel_mean { key: 'g' value: 116.28 }\n"
               "    image_channel_mean { key: 'r' value: 123.675 }\n")
FITS = [("all_projections: true", "all_projections: false"), ("use_pooling: false", "use_pooling: true")]


def _spec_path(tmp_path, side, replace=(), name="s.txt"):
    text = (REPO / "specs" / "frcnn_resnet18_train.txt").read_text()
    for old, new in [("height: 384", f"height: {side}"), ("width: 1248", f"width: {side}"),  # and output_image_*
                     ("rpn_nms_max_boxes: 2000", "rpn_nms_max_boxes: 20"),
                     ("rpn_pre_nms_top_N: 12000", "rpn_pre_nms_top_N: 100"), *replace]:
        assert old in text, old
        text = text.replace(old, new)
    (tmp_path / name).write_text(text)
    return str(tmp_path / name)


def _pixels(side, seed=1):
    return np.random.default_rng(seed).uniform(0, 255, (side, side, 3))  # RGB, 0-255


def _spec_input(pixels, order, mean, scale):
    """What the pipeline feeds the network: channels in `order`, minus the spec's mean, over its scale."""
    channels = pixels[..., ["rgb".index(c) for c in order]]
    return (channels - np.array([mean[c] for c in order])) / scale


def _torchvision_input(pixels):
    return ((pixels - ref.TORCHVISION_MEAN) / ref.TORCHVISION_STD).transpose(2, 0, 1)


def _loaded_model(spec_path, weights):
    model = build_model(parse_experiment_spec(spec_path)[0])
    status = load_matching_weights(model, weights)
    return model, status


def _features(model, image):
    features, _, _ = FasterRCNN(model).backbone_rpn(tf.constant(image[None], tf.float32), training=False)
    return features.numpy()[0].astype(np.float64)


def _block4(weights, depth, channels, strides):
    """TLT's block 4 alone (on a feature map instead of RoI crops), with the imported weights."""
    factory = resnet.LayerFactory(False, None, freeze_bn=True)
    image = tf.keras.Input((None, None, channels))
    model = tf.keras.Model(image, resnet.block(image, factory, depth, 4, strides, all_projections=False))
    status = load_matching_weights(model, weights)
    assert set(status.values()) == {"loaded"}
    return model


def _datasets(path):
    found = {}
    with h5py.File(path) as h5:
        h5.visititems(lambda name, item: found.update({name: item[()]}) if isinstance(item, h5py.Dataset) else None)
    return found


def _relative_error(ours, reference):
    return float(np.max(np.abs(ours - reference)) / np.max(np.abs(reference)))


def test_torchvision_resnet18_matches_a_numpy_forward(tmp_path):
    """Random torchvision ResNet18 weights as .safetensors and as a torch.save zip: both import to the
    same file, and TLT's backbone then computes torchvision's layer3 (and block 4 its layer4)."""
    state = ref.torchvision_resnet(18)
    (tmp_path / "r18.safetensors").write_bytes(ref.safetensors_bytes(state))
    (tmp_path / "r18.pth").write_bytes(ref.torch_zip_bytes(state))
    spec_65 = _spec_path(tmp_path, 65, [*FITS, TORCH_MEANS])
    result = import_weights(str(tmp_path / "r18.safetensors"), str(tmp_path / "a.hdf5"), spec_65)
    import_weights(str(tmp_path / "r18.pth"), str(tmp_path / "b.hdf5"), spec_65)
    a, b = _datasets(tmp_path / "a.hdf5"), _datasets(tmp_path / "b.hdf5")
    assert list(a) == list(b) and all(np.array_equal(a[name], b[name]) for name in a)
    assert result.source == "torchvision/timm ResNet18"
    assert len(result.mapped) == 2 + 4 * 2 * 4 + 3 * 2  # stem, 8 blocks x 2 conv/BN pairs, 3 downsample pairs
    assert result.identity == ("block_1a_conv_shortcut", "block_1a_bn_shortcut")
    assert result.fresh == FRESH and result.dropped == ("fc.weight", "fc.bias") and result.shifted == ()

    model, status = _loaded_model(spec_65, str(tmp_path / "a.hdf5"))
    assert {name for name, state_ in status.items() if state_ != "loaded"} == set(FRESH)
    pixels = _pixels(65)
    image = _spec_input(pixels, "bgr", dict(zip("rgb", ref.TORCHVISION_MEAN)), 1.0)  # the spec: bgr, scale 1
    reference = ref.features(_torchvision_input(pixels), state).transpose(1, 2, 0)
    ours = _features(model, image)
    assert ours.shape == reference.shape == (5, 5, 256)
    error_65 = _relative_error(ours, reference)
    assert error_65 < 1e-4

    layer4 = ref.stage(reference.transpose(2, 0, 1), state, 4, 2).transpose(1, 2, 0)
    block4 = _block4(str(tmp_path / "a.hdf5"), 18, 256, 2)(reference[None].astype(np.float32)).numpy()[0]
    error_block4 = _relative_error(block4, layer4)
    assert block4.shape == layer4.shape == (3, 3, 512) and error_block4 < 1e-4

    # 64 x 64 (even sides at conv1, pool1, block_2a, block_3a): the same file in a 64-pixel model with
    # use_bias (zero biases are written) matches the NumPy forward with TensorFlow's 'same' padding, and
    # torchvision's own padding only roughly: TLT's windows sit one pixel later there.
    spec_64 = _spec_path(tmp_path, 64, [*FITS, TORCH_MEANS, ("use_bias: false", "use_bias: true")], "s64.txt")
    import_weights(str(tmp_path / "r18.pth"), str(tmp_path / "c.hdf5"), spec_64)
    model_64, _ = _loaded_model(spec_64, str(tmp_path / "c.hdf5"))
    pixels = _pixels(64)
    ours = _features(model_64, _spec_input(pixels, "bgr", dict(zip("rgb", ref.TORCHVISION_MEAN)), 1.0))
    same = ref.features(_torchvision_input(pixels), state, padding="tf_same").transpose(1, 2, 0)
    symmetric = ref.features(_torchvision_input(pixels), state).transpose(1, 2, 0)
    error_same, error_symmetric = _relative_error(ours, same), _relative_error(ours, symmetric)
    assert error_same < 1e-4 and error_symmetric > 0.05
    print(f"ResNet18 torchvision -> TLT, max |diff| / max |ref|: 65x65 layer3 {error_65:.2e}, block 4 "
          f"{error_block4:.2e}; 64x64 vs 'same' padding {error_same:.2e}, vs torchvision's padding "
          f"{error_symmetric:.2e}")


def test_keras_applications_resnet50_matches_keras(tmp_path):
    """Keras applications' ResNet50 (v1: stride in the first 1x1, conv biases, BN epsilon 1.001e-5) with
    random weights and BN statistics: TLT's resnet:50 computes conv4_block6_out, and block 4
    (pool_size_2x: stride 2) conv5_block3_out, from Keras' own output."""
    keras = tf.keras.applications.ResNet50(weights=None, include_top=False, input_shape=(65, 65, 3))
    rng = np.random.default_rng(3)
    for layer in keras.layers:
        if isinstance(layer, tf.keras.layers.Conv2D):
            kernel, bias = layer.get_weights()
            fan_in = np.prod(kernel.shape[:3])
            layer.set_weights([rng.normal(0, np.sqrt(2 / fan_in), kernel.shape), rng.normal(0, 0.1, bias.shape)])
        elif isinstance(layer, tf.keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            variance = rng.uniform(0.5, 1.5, n)
            tiny = rng.random(n) < 0.1
            variance[tiny] = 1e-4
            gamma = rng.uniform(0.5, 1.5, n) * np.where(tiny, 0.01, 1.0)
            layer.set_weights([gamma, rng.normal(0, 0.1, n), rng.normal(0, 0.1, n), variance])
    source = str(tmp_path / "resnet50_notop.h5")
    keras.save_weights(source)
    spec = _spec_path(tmp_path, 65, [*FITS, ('arch: "resnet:18"', 'arch: "resnet:50"'),
                                     ("pool_size_2x: false", "pool_size_2x: true")])
    result = import_weights(source, str(tmp_path / "r50.hdf5"), spec)
    assert result.source == "Keras applications ResNet50" and result.identity == () and result.dropped == ()
    assert len(result.mapped) == 2 + 16 * 6 + 4 * 2 and result.fresh == FRESH and result.shifted == ()

    model, status = _loaded_model(spec, str(tmp_path / "r50.hdf5"))
    assert {name for name, state_ in status.items() if state_ != "loaded"} == set(FRESH)
    image = _spec_input(_pixels(65), "bgr", {"b": 103.939, "g": 116.779, "r": 123.68}, 1.0)  # Keras' 'caffe' input
    conv4, conv5 = (tf.keras.Model(keras.input, keras.get_layer(name).output)(image[None]).numpy()[0]
                    for name in ("conv4_block6_out", "conv5_block3_out"))
    ours = _features(model, image)
    error_conv4 = _relative_error(ours, conv4)
    block4 = _block4(str(tmp_path / "r50.hdf5"), 50, 1024, 2)(conv4[None]).numpy()[0]
    error_conv5 = _relative_error(block4, conv5)
    assert ours.shape == (5, 5, 1024) and error_conv4 < 1e-4
    assert block4.shape == (3, 3, 2048) and error_conv5 < 1e-4
    print(f"ResNet50 Keras applications -> TLT, max |diff| / max |ref|: conv4_block6_out {error_conv4:.2e}, "
          f"conv5_block3_out {error_conv5:.2e}")


def test_torchvision_resnet50_is_v1_5_and_refused_unless_allowed(tmp_path):
    """torchvision's ResNet50 strides in the 3x3 conv (v1.5), TLT's in the first 1x1 (v1): refused by
    default; with allow_stride_mismatch the weights land where they belong (TLT's model equals a NumPy
    v1 forward of them) but torchvision's own v1.5 features differ."""
    state = ref.torchvision_resnet(50)
    source = str(tmp_path / "r50.safetensors")
    (tmp_path / "r50.safetensors").write_bytes(ref.safetensors_bytes(state))
    spec = _spec_path(tmp_path, 65, [*FITS, TORCH_MEANS, ('arch: "resnet:18"', 'arch: "resnet:50"')])
    with pytest.raises(FrcnnError, match=r"r50.safetensors: torchvision/timm ResNet50 is ResNet v1.5 .*"
                                         r"--allow_stride_mismatch"):
        import_weights(source, str(tmp_path / "out.hdf5"), spec)
    assert not (tmp_path / "out.hdf5").exists()
    import_weights(source, str(tmp_path / "out.hdf5"), spec, allow_stride_mismatch=True)
    model, _ = _loaded_model(spec, str(tmp_path / "out.hdf5"))
    pixels = _pixels(65)
    ours = _features(model, _spec_input(pixels, "bgr", dict(zip("rgb", ref.TORCHVISION_MEAN)), 1.0))
    v1 = ref.features(_torchvision_input(pixels), state, stride_in_1x1=True).transpose(1, 2, 0)
    v1_5 = ref.features(_torchvision_input(pixels), state).transpose(1, 2, 0)
    error_v1, error_v1_5 = _relative_error(ours, v1), _relative_error(ours, v1_5)
    assert error_v1 < 1e-4 and error_v1_5 > 0.05
    print(f"ResNet50 torchvision (v1.5) -> TLT (v1): vs NumPy v1 {error_v1:.2e}, vs torchvision's v1.5 "
          f"{error_v1_5:.2e}")


@pytest.mark.parametrize("replace, field, message", [
    ([FITS[1]], "all_projections", "must be false for torchvision/timm ResNet18 weights"),
    ([FITS[0]], "use_pooling", "must be true for torchvision/timm ResNet18 weights"),
    ([*FITS, ('arch: "resnet:18"', 'arch: "resnet:34"')], "arch", 'must be "resnet:18" for torchvision/timm '
                                                                  'ResNet18 weights, got "resnet:34"'),
])
def test_a_spec_that_does_not_fit_names_the_field_and_value(tmp_path, replace, field, message):
    spec_path = _spec_path(tmp_path, 65, replace)
    spec, source = parse_experiment_spec(spec_path)
    network = torchvision_network(ref.torchvision_resnet(18), "r18.pth")
    line = next(number for number, text in enumerate(open(spec_path), 1) if text.strip().startswith(f"{field}:"))
    with pytest.raises(SpecError, match=f"{spec_path}:{line}:[0-9]+: model_config.{field}: {message}"):
        check_fit(spec, source, network, "r18.pth")


def test_grayscale_spec_is_refused(tmp_path):
    spec, source = parse_experiment_spec(_spec_path(tmp_path, 65, [
        *FITS, ("image_type: RGB", "image_type: GRAY_SCALE"),
        ("image_channel_order: 'bgr'", "image_channel_order: 'l'"),
        (TORCH_MEANS[0], "    image_channel_mean { key: 'l' value: 127.5 }\n"),
        ("output_image_channel: 3", "output_image_channel: 1")]))
    with pytest.raises(SpecError, match="model_config.input_image_config.image_type: must be RGB for torchvision/timm "
                                        "ResNet18 weights"):
        check_fit(spec, source, torchvision_network(ref.torchvision_resnet(18), "r18.pth"), "r18.pth")


def _names_only(depth):
    """A torchvision state dict's names with placeholder values: depth detection needs no real shapes."""
    kind, repeats = ref.STAGES[depth]
    names = ["conv1.weight", "bn1.weight", "fc.weight"]
    for stage, count in enumerate(repeats, 1):
        for j in range(count):
            names += [f"layer{stage}.{j}.conv{k}.weight" for k in ((1, 2, 3) if kind == "bottleneck" else (1, 2))]
    return {name: np.zeros((1, 1, 1, 1) if "conv" in name else (1,)) for name in names}


def test_depth_from_the_state_dict_names():
    assert torchvision_network(_names_only(34), "x").name == "torchvision/timm ResNet34"
    assert torchvision_network(_names_only(101), "x").depth == 101
    resnet152 = _names_only(101)
    resnet152.update({f"layer3.{j}.conv1.weight": np.zeros((1, 1, 1, 1)) for j in range(23, 36)})
    with pytest.raises(FrcnnError, match=r"x: a torchvision/timm ResNet with \(3, 4, 36, 3\) bottleneck blocks"):
        torchvision_network(resnet152, "x")
    deep_stem = {**_names_only(50), "conv1.0.weight": np.zeros((1, 1, 1, 1))}
    with pytest.raises(FrcnnError, match="x: tensor 'conv1.0.weight' is not part of a plain torchvision/timm ResNet"):
        torchvision_network(deep_stem, "x")
    with pytest.raises(FrcnnError, match="tensor 'conv2_block1_preact_bn/gamma:0' is not part of a plain Keras"):
        keras_network({"conv1_conv/kernel:0": np.zeros((7, 7, 3, 64)), "conv2_block1_preact_bn/gamma:0": np.zeros(1)},
                      "y")
    with pytest.raises(FrcnnError, match="z: already by TLT layer names .*as training_config.pretrained_weights"):
        keras_network({"conv1/kernel:0": np.zeros((7, 7, 3, 64))}, "z")


def test_shifted_layers_by_hand(tmp_path):
    def shifted(side, depth=18, pool_2x=False):
        replace = [("pool_size_2x: false", "pool_size_2x: true")] if pool_2x else []
        return shifted_layers(parse_experiment_spec(_spec_path(tmp_path, side, replace))[0].model_config, depth)

    assert shifted(65) == () and shifted(97) == ()  # 16k + 1: odd at every stride-2 layer
    assert shifted(64) == ("conv1", "pool1", "block_2a_conv_1", "block_3a_conv_1")
    assert shifted(66) == ("conv1",)  # then 33, 17, 9: odd
    assert shifted(67) == ("pool1",)  # 67 -> 34 -> 17 -> 9
    assert shifted(64, depth=50) == ("conv1", "pool1")  # bottlenecks stride in a 1x1 conv
    assert shifted(65, pool_2x=True) == ("block_4a_conv_1",)  # crops of 2 x pool_size are even


def test_a_differing_mean_is_a_warning_naming_the_values(tmp_path, caplog):
    network = torchvision_network(ref.torchvision_resnet(18), "r18.pth")
    caffe = parse_experiment_spec(_spec_path(tmp_path, 65, FITS))[0].model_config.input_image_config
    with caplog.at_level(logging.WARNING):
        _check_mean(network, caffe)  # TLT's default means are within half a level of torchvision's
    assert not caplog.records
    zero = parse_experiment_spec(_spec_path(tmp_path, 65, [*FITS, ("value: 103.939", "value: 0"), (
        "value: 116.779", "value: 0"), ("value: 123.68", "value: 0")]))[0].model_config.input_image_config
    with caplog.at_level(logging.WARNING):
        _check_mean(network, zero)
    assert "set image_channel_mean to those values" in caplog.text and "b: 103.53 g: 116.28 r: 123.675" in caplog.text
    assert TORCHVISION_INPUT.mean["r"] == pytest.approx(0.485 * 255)


def test_output_rules(tmp_path):
    (tmp_path / "r18.safetensors").write_bytes(ref.safetensors_bytes(ref.torchvision_resnet(18)))
    spec = _spec_path(tmp_path, 65, FITS)
    with pytest.raises(FrcnnError, match="out.tlt: imported weights are written as Keras HDF5"):
        import_weights(str(tmp_path / "r18.safetensors"), str(tmp_path / "out.tlt"), spec)
    (tmp_path / "out.hdf5").write_bytes(b"keep")
    with pytest.raises(FrcnnError, match="out.hdf5: exists; choose another path or pass --overwrite"):
        import_weights(str(tmp_path / "r18.safetensors"), str(tmp_path / "out.hdf5"), spec)
    assert (tmp_path / "out.hdf5").read_bytes() == b"keep"
    import_weights(str(tmp_path / "r18.safetensors"), str(tmp_path / "out.hdf5"), spec, overwrite=True)
    with h5py.File(tmp_path / "out.hdf5") as h5:
        assert '"network": "torchvision/timm ResNet18"' in h5.attrs[IMPORT_KEY]
        assert list(h5["bn_conv1"].attrs["weight_names"]) == ["bn_conv1/gamma:0", "bn_conv1/beta:0",
                                                              "bn_conv1/moving_mean:0", "bn_conv1/moving_variance:0"]
    assert [name for name in os.listdir(tmp_path) if ".tmp-" in name] == []


@pytest.mark.slow
def test_command_line(tmp_path):
    (tmp_path / "r18.pth").write_bytes(ref.torch_zip_bytes(ref.torchvision_resnet(18)))
    spec = _spec_path(tmp_path, 65, FITS)
    command = [sys.executable, str(REPO / "bin" / "import_weights.py"), "-i", str(tmp_path / "r18.pth"), "-o",
               str(tmp_path / "r18.hdf5"), "-e", spec]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == (f"wrote {tmp_path / 'r18.hdf5'}: torchvision/timm ResNet18, 40 layers mapped, 2 set to an "
                        "identity shortcut (block_1a_conv_shortcut, block_1a_bn_shortcut); not imported: fc.weight, "
                        "fc.bias")
    assert lines[1] == f"freshly initialised: {', '.join(FRESH)}"
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert again.stderr.strip().splitlines()[-1] == (f"error: {tmp_path / 'r18.hdf5'}: exists; choose another path "
                                                     "or pass --overwrite")
