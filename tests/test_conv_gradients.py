"""The input gradient of a 'same' convolution computed as a forward convolution (model/conv_gradients)."""
import numpy as np
import pytest
import tensorflow as tf

from frcnn_tf.model import conv_gradients


def _gradients(layer, inputs, upstream):
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        outputs = layer(inputs)
        loss = tf.reduce_sum(tf.cast(outputs, tf.float32) * upstream)
    return tape.gradient(loss, [inputs, layer.kernel])


def test_input_gradient_by_hand():
    # y[p] = sum_d x[p + d] K[1 + d] for d in {-1, 0, 1}^2 (zero padding), so with the upstream gradient 1
    # at p = (0, 0) only, dx[q] = K[1 + q]: the kernel's lower-right 2 x 2 corner for a 2 x 2 input.
    layer = tf.keras.layers.Conv2D(1, 3, padding="same", use_bias=False,
                                   kernel_initializer=tf.constant_initializer(np.arange(1.0, 10.0)))
    layer.build([1, 2, 2, 1])
    assert conv_gradients.use_forward_input_gradients(tf.keras.Sequential([layer])) == 1
    inputs = tf.constant([[1.0, 2.0], [3.0, 4.0]])[tf.newaxis, ..., tf.newaxis]
    upstream = tf.constant([[1.0, 0.0], [0.0, 0.0]])[tf.newaxis, ..., tf.newaxis]
    input_gradient, kernel_gradient = _gradients(layer, inputs, upstream)
    np.testing.assert_array_equal(input_gradient[0, ..., 0], [[5.0, 6.0], [8.0, 9.0]])
    # dK[1 + d] = x[(0, 0) + d]: x's 2 x 2 in the kernel's lower-right corner, zeros elsewhere.
    np.testing.assert_array_equal(kernel_gradient[..., 0, 0], [[0, 0, 0], [0, 1, 2], [0, 3, 4]])


@pytest.mark.parametrize("kernel_size, channels, filters, size", [(3, 5, 7, (4, 6)), (1, 4, 3, (5, 5)),
                                                                  (5, 2, 3, (6, 3))])
def test_same_gradients_as_tensorflow(kernel_size, channels, filters, size):
    rng = np.random.default_rng(kernel_size)
    inputs = tf.constant(rng.normal(size=(2, *size, channels)), tf.float32)
    upstream = tf.constant(rng.normal(size=(2, *size, filters)), tf.float32)
    reference = tf.keras.layers.Conv2D(filters, kernel_size, padding="same")
    reference.build(inputs.shape)
    fast = tf.keras.layers.Conv2D(filters, kernel_size, padding="same")
    fast.build(inputs.shape)
    fast.set_weights(reference.get_weights())
    assert conv_gradients.use_forward_input_gradients(tf.keras.Sequential([fast])) == 1
    np.testing.assert_allclose(fast(inputs), reference(inputs), rtol=0, atol=0)  # the forward is untouched
    for ours, theirs in zip(_gradients(fast, inputs, upstream), _gradients(reference, inputs, upstream)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_only_eligible_convolutions_change_and_bfloat16_trains():
    policy = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        inputs = tf.keras.Input([8, 8, 3])
        strided = tf.keras.layers.Conv2D(4, 3, strides=2, padding="same")(inputs)
        valid = tf.keras.layers.Conv2D(4, 3, padding="valid")(strided)
        same = tf.keras.layers.Conv2D(4, 3, padding="same")(valid)
        model = tf.keras.Model(inputs, tf.keras.layers.Conv2D(2, 1)(same))
        assert conv_gradients.use_forward_input_gradients(model) == 2  # the 3 x 3 'same' and the 1 x 1
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.cast(model(tf.ones([1, 8, 8, 3])), tf.float32))
        gradients = tape.gradient(loss, model.trainable_variables)
        assert all(g is not None and g.dtype == tf.float32 for g in gradients)
    finally:
        tf.keras.mixed_precision.set_global_policy(policy)
