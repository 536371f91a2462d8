"""TensorRT's INT8 arithmetic in training: power-of-two scales, the fake quantizers against onnxruntime's
Q/DQ, per-channel weights, BatchNorm folded at conversion, and a small QAT network whose exported Q/DQ
graph onnxruntime runs to the same numbers bit for bit."""
import numpy as np
import onnx
import onnxruntime
import pytest
import tensorflow as tf
import tf2onnx
from onnx import TensorProto, helper, numpy_helper

from frcnn_tf import calibrators, quantize
from frcnn_tf.detectors import onnx_session
from frcnn_tf.errors import FrcnnError
from frcnn_tf.export import onnx_graph, tensorrt_rules


def _onnx_qdq(values, scale):
    """onnxruntime's DequantizeLinear(QuantizeLinear(values, scale, int8 0))."""
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"])], "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(values.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(values.shape))],
        [numpy_helper.from_array(np.float32(scale), "scale"), numpy_helper.from_array(np.int8(0), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": values})[0]


def test_fake_quantize_by_hand():
    # scale 0.5: x / 0.5 = 0.5 -> 0 and 1.5 -> 2, 2.5 -> 2 (half to even); 128 -> 127, -128.5 -> -128 (clamp)
    values = tf.constant([0.24, 0.25, 0.75, 1.25, -0.25, 63.5, 64.0, -64.25, 100.0, -100.0])
    expected = [0.0, 0.0, 1.0, 1.0, 0.0, 63.5, 63.5, -64.0, 63.5, -64.0]
    np.testing.assert_array_equal(quantize.fake_quantize(values, tf.constant(0.5), -128, 127).numpy(), expected)
    with tf.GradientTape() as tape:
        tape.watch(values)
        output = quantize.fake_quantize(values, tf.constant(0.5), -128, 127)
    # straight through inside [-64, 63.5], nothing outside
    np.testing.assert_array_equal(tape.gradient(output, values).numpy(), [1, 1, 1, 1, 1, 1, 0, 0, 0, 0])


def test_power_of_two_at_least_by_hand():
    values = np.array([1.0, 0.75, 0.01, 3.0, 2.0 ** -20, np.nextafter(np.float32(1), np.float32(2)), 1e-14],
                      np.float32)
    expected = np.array([1.0, 1.0, 2.0 ** -6, 4.0, 2.0 ** -20, 2.0, 2.0 ** -46], np.float32)  # 2^-47 = 7.1e-15
    np.testing.assert_array_equal(quantize.power_of_two_at_least(values).numpy(), expected)
    # amax 1.27 -> 0.01 per step -> 2^-6 = 0.015625; amax 127 -> exactly 1
    np.testing.assert_array_equal(quantize.activation_scale(tf.constant([1.27, 127.0])).numpy(), [2.0 ** -6, 1.0])


def test_tensor_quantize_equals_onnxruntime_qdq_bit_for_bit():
    layer = quantize.TensorQuantize()
    rng = np.random.default_rng(0)
    first = rng.normal(0, 3, [4, 8, 8, 16]).astype(np.float32)
    uncalibrated = layer(first, training=True).numpy()  # amax 0: every value clamps to +-128 of the least step
    assert np.abs(uncalibrated).max() <= 128 * quantize.activation_scale(0.0).numpy() < 1e-11
    layer.amax.assign(np.abs(first).max())
    layer(4 * first, training=True)  # training keeps the calibrated range
    assert layer.amax.numpy() == np.abs(first).max()
    scale = quantize.activation_scale(layer.amax).numpy()
    assert scale == 2.0 ** np.ceil(np.log2(layer.amax.numpy() / 127))  # a power of two
    # values on exact half steps, beyond the range, and ordinary ones
    values = np.concatenate([rng.normal(0, 4, 5000), (np.arange(-140, 140) + 0.5) * scale,
                             [1e6, -1e6, 0.0]]).astype(np.float32).reshape(1, 1, -1, 1)
    trained, deployed = layer(values, training=False).numpy(), _onnx_qdq(values, scale)
    # bit for bit, except that a small negative input gives -0.0 in TensorFlow and +0.0 in onnxruntime
    np.testing.assert_array_equal((trained + np.float32(0)).view(np.uint32), deployed.view(np.uint32))
    assert trained.max() == np.float32(127) * scale and trained.min() == np.float32(-128) * scale


def test_weights_per_output_channel_narrow_range_by_hand():
    kernel = np.array([[0.5, 0.003], [-1.27, 0.0]], np.float32)  # Dense [in 2, out 2]
    integers, scale = quantize.weight_integers(kernel)
    # max|w| / 127 = 0.01 and 2.36e-5 -> powers of two 2^-6 and 2^-15; 0.5 * 64 = 32, -1.27 * 64 = -81.28,
    # 0.003 * 32768 = 98.3
    np.testing.assert_array_equal(scale, [2.0 ** -6, 2.0 ** -15])
    np.testing.assert_array_equal(integers, [[32, 98], [-81, 0]])
    # Training quantizes kernel x channel_scale (the folded BatchNorm's k): here half the kernel's first
    # column times 2, which is the kernel above exactly (powers of two scale without rounding).
    half = kernel * np.array([0.5, 1.0], np.float32)
    fake = quantize.PerChannelWeightQuantizer()(tf.constant(half), True, {"channel_scale": tf.constant([2.0, 1.0])})
    np.testing.assert_array_equal(fake.numpy(), integers * scale)  # what training multiplies with


def _conv_bn_model():
    """image [1, 6, 6, 3] -> conv 3x3 x4 (no bias) -> BN -> ReLU -> conv 1x1 x2 -> + shortcut conv -> output."""
    image = tf.keras.Input([6, 6, 3], name="image")
    x = tf.keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv")(image)
    x = tf.keras.layers.BatchNormalization(name="bn")(x)
    x = tf.keras.layers.ReLU(name="relu")(x)
    x = tf.keras.layers.Conv2D(2, 1, name="head")(x)
    shortcut = tf.keras.layers.Conv2D(2, 1, name="shortcut")(image)
    model = tf.keras.Model(image, tf.keras.layers.Add(name="add")([x, shortcut]))
    rng = np.random.default_rng(1)
    for layer in model.layers:
        layer.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in layer.get_weights()])
    # gamma: one negative, one zero channel; positive variances
    model.get_layer("bn").set_weights([np.array([1.5, -0.7, 0.0, 0.3], np.float32), rng.normal(0, 0.1, 4),
                                       rng.normal(0, 0.1, 4), rng.uniform(0.5, 2.0, 4)])
    return model


def _images(seed=3, count=2):
    return np.random.default_rng(seed).normal(0, 1, [count, 6, 6, 3]).astype(np.float32)


def test_qat_conversion_folds_batch_norm_and_places_quantizers_where_tensorrt_reads_int8():
    float_model = _conv_bn_model()
    qat, _ = quantize.quantize_model(float_model, {}, [_images()])
    assert sorted(quantize.fake_quant_layers(qat)) == ["conv", "head", "shortcut"]
    assert not [layer for layer in qat.layers if isinstance(layer, tf.keras.layers.BatchNormalization)]
    # one per tensor a conv or the residual add reads: the image (conv and shortcut share it), the ReLU, both add inputs
    assert sorted(quantize.activation_quantizers(qat)) == ["head_quantize", "image_quantize",
                                                          "relu_quantize", "shortcut_quantize"]
    gamma, beta, mean, variance = float_model.get_layer("bn").get_weights()
    k = gamma / np.sqrt(variance + 1e-3)  # Keras' epsilon 1e-3
    variables = quantize._variables(qat.get_layer("quant_conv"))
    # the kernel keeps its values and k becomes the trainable channel scale (BatchNorm's conditioning)
    np.testing.assert_array_equal(variables["kernel"].numpy(), float_model.get_layer("conv").kernel.numpy())
    np.testing.assert_allclose(variables["kernel_channel_scale"].numpy(), k, rtol=1e-6)
    assert any(v is variables["kernel_channel_scale"] for v in qat.trainable_variables)
    kernel, bias = quantize.folded_kernel(qat.get_layer("quant_conv")), variables["bias"].numpy()
    np.testing.assert_allclose(kernel, float_model.get_layer("conv").kernel.numpy() * k, rtol=1e-6)
    np.testing.assert_allclose(bias, beta - mean * k, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(quantize.folded_kernel(qat.get_layer("quant_head")),
                                  float_model.get_layer("head").kernel.numpy())  # other weights kept, scale 1
    assert quantize.is_quantized(qat) and not quantize.is_quantized(float_model)
    # before quantization the folded model is the float model in inference mode
    head = tf.keras.Model(float_model.input, float_model.get_layer("relu").output)
    images = _images()
    folded = tf.nn.relu(tf.nn.conv2d(images, kernel, 1, "SAME") + bias).numpy()
    np.testing.assert_allclose(folded, head(images, training=False).numpy(), atol=1e-5)


def test_conversion_calibrates_ranges_the_image_whole_others_bounded_entropy_and_training_keeps_them():
    """One image of 100000 exponentially distributed values (mean 1), read by a conv directly and through a
    ReLU: the same values, two rules. The image keeps its whole range (its max); the ReLU gets TensorRT's
    entropy threshold, below the max but above the 99.99th percentile (ln 10^4 = 9.21: the 0.01 % bound)."""
    image = tf.keras.Input([100, 500, 1], name="image")
    direct = tf.keras.layers.Conv2D(1, 1, name="direct")(image)
    rectified = tf.keras.layers.Conv2D(1, 1, name="rectified")(tf.keras.layers.ReLU(name="relu")(image))
    float_model = tf.keras.Model(image, [direct, rectified])
    values = np.random.default_rng(0).exponential(1.0, [2, 100, 500, 1]).astype(np.float32)
    qat, ranges = quantize.quantize_model(float_model, {}, [values[:1], values[1:]])  # two batches
    image_range, relu = ranges["image_quantize"], ranges["relu_quantize"]
    assert image_range.method == "max" and image_range.amax == values.max() and image_range.clipped == 0.0
    assert relu.method == "entropy" and relu.max == values.max() and np.log(1e4) < relu.amax < values.max()
    assert 0 < relu.clipped <= 1e-4
    histogram = calibrators.AbsHistogram()
    histogram.update(values[0])
    histogram.update(values[1])
    assert relu.amax == calibrators.amax_of(histogram, "entropy")
    trained = {"image_quantize": image_range.amax, "relu_quantize": float(np.float32(relu.amax))}  # float32 variables
    assert quantize.activation_quantizers(qat) == trained
    qat(values * 3, training=True)  # training keeps the calibrated ranges
    assert quantize.activation_quantizers(qat) == trained
    with pytest.raises(FrcnnError, match="no images to calibrate the QAT model's activation ranges"):
        quantize.quantize_model(float_model, {}, [])


def test_ranges_are_measured_in_the_calibration_model_and_the_weights_kept_are_the_models():
    """The calibration model has the same layers with the first conv's kernel doubled: the ReLU after it
    takes twice the values, so its range (bounded entropy of a histogram scaled by 2, bins and all) doubles."""
    def two_convs(scale):
        image = tf.keras.Input([20, 20, 1], name="image")
        first = tf.keras.layers.Conv2D(1, 1, use_bias=False, name="first")
        output = tf.keras.layers.Conv2D(1, 1, name="second")(tf.keras.layers.ReLU(name="relu")(first(image)))
        model = tf.keras.Model(image, output)
        first.set_weights([np.full([1, 1, 1, 1], scale, np.float32)])
        return model
    values = np.random.default_rng(4).normal(0, 1, [3, 20, 20, 1]).astype(np.float32)
    _, own = quantize.quantize_model(two_convs(1.0), {}, [values])
    qat, measured = quantize.quantize_model(two_convs(1.0), {}, [values], calibration_model=two_convs(2.0))
    assert measured["relu_quantize"].amax == 2 * own["relu_quantize"].amax > 0
    assert measured["image_quantize"] == own["image_quantize"]
    np.testing.assert_array_equal(quantize.folded_kernel(qat.get_layer("quant_first")), [[[[1.0]]]])


def test_the_exported_qdq_graph_computes_what_training_computed_bit_for_bit():
    images = _images(2, 8)
    qat, _ = quantize.quantize_model(_conv_bn_model(), {}, [images])
    deployable, trained_scales = quantize.deployable_model(qat, {})
    trained_integers, trained_scale = quantize.weight_integers(quantize.folded_kernel(qat.get_layer("quant_conv")))
    kernel, _ = deployable.get_layer("conv").get_weights()
    np.testing.assert_array_equal(kernel, trained_integers * trained_scale)  # the trained INT8 weights, exactly

    proto, _ = tf2onnx.convert.from_keras(deployable, input_signature=(tf.TensorSpec([None, 6, 6, 3], tf.float32,
                                                                                     name="image"),), opset=17)
    quantized, scales = onnx_graph.qat_to_qdq(proto, trained_scales.weights, trained_scales.activations)
    assert tensorrt_rules.check(quantized) == []
    onnx.checker.check_model(quantized)
    initializers = {i.name: numpy_helper.to_array(i) for i in quantized.graph.initializer}
    nodes = quantized.graph.node
    assert not [n for n in nodes if n.op_type == "Round"]
    for node in nodes:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero = initializers[node.input[2]]
            assert zero.dtype == np.int8 and not zero.any()
    activation_scales = {float(initializers[n.input[1]]) for n in nodes if n.op_type == "QuantizeLinear"}
    trained = {float(quantize.activation_scale(layer.amax)) for layer in qat.layers
               if isinstance(layer, quantize.TensorQuantize)}
    assert activation_scales == trained == {float(s) for s in scales.values()}  # the trained scales, unchanged
    weights = [n for n in nodes if n.op_type == "DequantizeLinear" and n.input[0] in initializers]
    assert all(initializers[n.input[0]].dtype == np.int8 and initializers[n.input[1]].ndim == 1 for n in weights)
    assert len(weights) == 3
    conv_weight = next(initializers[n.input[0]] for n in weights if initializers[n.input[0]].shape == (4, 3, 3, 3))
    np.testing.assert_array_equal(conv_weight, trained_integers.transpose(3, 2, 0, 1))
    # onnxruntime as frcnn_tf runs Q/DQ graphs (no QDQ fusion) and the Keras QAT model: the same float32
    # numbers, bit for bit (with scales that are not powers of two, 2e-5 apart and diverging with depth)
    trained_output = qat(images, training=False).numpy() + np.float32(0)  # -0.0 -> +0.0
    deployed = onnx_session(quantized.SerializeToString()).run(None, {"image": images})[0]
    np.testing.assert_array_equal(deployed.view(np.uint32), trained_output.view(np.uint32))


def test_a_quantizer_scale_that_is_not_a_trained_one_is_refused():
    image = tf.keras.Input([4], name="x")
    model = tf.keras.Model(image, tf.keras.layers.Lambda(lambda t: quantize.export_quantize(t, 0.5))(image))
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=(tf.TensorSpec([None, 4], tf.float32, name="x"),),
                                          opset=17)
    assert onnx_graph.qat_to_qdq(proto, {}, [0.5])[1] == {"x": 0.5}
    with pytest.raises(FrcnnError, match="quantizes with scale 0.5, not a trained one"):
        onnx_graph.qat_to_qdq(proto, {}, [np.nextafter(np.float32(0.5), np.float32(1))])


def test_tfmot_default_scheme_is_refused():
    import tensorflow_model_optimization as tfmot

    legacy = tfmot.quantization.keras.quantize_model(_conv_bn_model())
    with pytest.raises(FrcnnError, match="m.hdf5: a QAT model of tfmot's default 8-bit scheme"):
        quantize.check_scheme(legacy, "m.hdf5")
    quantize.check_scheme(quantize.quantize_model(_conv_bn_model(), {}, [_images()])[0], "m.hdf5")


def test_a_qat_model_with_batch_norm_multiplied_into_its_kernels_is_refused():
    config = quantize.quantize_model(_conv_bn_model(), {}, [_images()])[0].get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "TensorRTQuantizeWrapper":
            layer["config"]["quantize_config"]["config"] = {}  # stop 24's checkpoints: no channel_scale
    with quantize.quantize_scope({}):
        earlier = tf.keras.Model.from_config(config)
    assert "kernel_channel_scale" not in quantize._variables(earlier.get_layer("quant_conv"))
    with pytest.raises(FrcnnError, match="m.hdf5: a QAT model of an earlier frcnn_tf scheme .BatchNorm multiplied"):
        quantize.check_scheme(earlier, "m.hdf5")
