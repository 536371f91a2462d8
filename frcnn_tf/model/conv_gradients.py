"""Training speed: the input gradient of a stride-1 'same' convolution computed as a forward convolution.

TensorFlow's CPU kernel for Conv2DBackpropInput runs several times slower than its forward Conv2D on
the same sizes: measured on AMD EPYC (AVX2, 2 cores, oneDNN on), 16 RoIs x 4 x 4 x 512 -> 512 with a
3 x 3 kernel (the RoI head's block 4): forward 11.6 ms, Conv2DBackpropInput 60.5 ms, the same gradient
as a forward convolution 12.4 ms. For stride 1, dilation 1 and 'same' padding with an odd kernel,
the input gradient of y = conv(x, K) is exactly conv(dy, K') with K'[i, j, o, c] = K[k-1-i, k-1-j, c, o]
(the kernel flipped in space, input and output channels swapped), padded the same way. The values
are the same sums in another order (equal to ~1e-6 relative in float32).

`use_forward_input_gradients(model)` makes every eligible Conv2D of a Keras model compute its input
gradient that way; the forward and the saved model are unchanged.

In bfloat16 TensorFlow's Conv2DBackpropFilter is the slow one: on AMD EPYC (AVX512_BF16, 2 cores), 256
RoIs x 7 x 7 x 512 -> 512, 3 x 3 (block 4 per RoI, training), forward 118 ms, input gradient 122 ms,
Conv2DBackpropFilter 312 ms, slower than its float32 254 ms; the same kernel gradient as k x k matrix
products, dK[i, j] = X_ij^T dY with X_ij the input shifted by (i, j) and both flattened over batch and
space, 164 ms (120.9 -> 86.3 ms for 256 -> 512 channels). In float32 and on the backbone's few large
images the products are no faster (286 against 254 ms; 25.7 against 25.0 ms at 48 x 156 x 256), so
`use_matmul_kernel_gradients(head)` takes that route for the RoI head's convolutions under bfloat16 only.
"""
import tensorflow as tf


def kernel_gradient_by_matmuls(inputs, upstream, kernel_size):
    """The kernel gradient [k, k, Cin, Cout] of a stride-1 'same' conv with an odd k x k kernel, from its
    inputs [B, H, W, Cin] and upstream gradient [B, H, W, Cout] (static shapes): for each kernel offset
    (i, j), the input shifted by (i - k // 2, j - k // 2) (zeros outside) times the upstream gradient,
    both flattened to rows over B x H x W."""
    pad = kernel_size // 2
    padded = tf.pad(inputs, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    height, width, channels = inputs.shape[1], inputs.shape[2], inputs.shape[3]
    rows = tf.reshape(upstream, [-1, upstream.shape[-1]])
    products = [tf.matmul(tf.reshape(padded[:, i:i + height, j:j + width, :], [-1, channels]), rows, transpose_a=True)
                for i in range(kernel_size) for j in range(kernel_size)]
    return tf.reshape(tf.stack(products), [kernel_size, kernel_size, channels, -1])


def _same_conv_with(kernel_gradient_by_matmul):
    """conv2d(inputs [B, H, W, Cin], kernel [k, k, Cin, Cout]), stride 1, 'same' padding, odd k, whose input
    gradient is a forward conv and whose kernel gradient is kernel_gradient_by_matmuls when
    `kernel_gradient_by_matmul` and the inputs are bfloat16, else Conv2DBackpropFilter."""
    @tf.custom_gradient
    def same_conv(inputs, kernel):
        outputs = tf.nn.conv2d(inputs, kernel, strides=1, padding="SAME")

        def gradient(upstream):
            flipped = tf.reverse(tf.transpose(kernel, [0, 1, 3, 2]), axis=[0, 1])
            input_gradient = tf.nn.conv2d(upstream, flipped, strides=1, padding="SAME")
            if kernel_gradient_by_matmul and inputs.dtype == tf.bfloat16:
                kernel_gradient = kernel_gradient_by_matmuls(inputs, upstream, kernel.shape[0])
            else:
                kernel_gradient = tf.raw_ops.Conv2DBackpropFilter(
                    input=inputs, filter_sizes=tf.shape(kernel), out_backprop=upstream, strides=[1, 1, 1, 1],
                    padding="SAME")
            return input_gradient, kernel_gradient

        return outputs, gradient
    return same_conv


_same_conv, _same_conv_matmul_kernel_gradient = _same_conv_with(False), _same_conv_with(True)


def _convolution(inputs, kernel):
    """Conv2D.convolution_op for eligible layers: the kernel (a variable, or a mixed-precision policy's
    cast of one) is read first, so that its gradient flows through the read."""
    return _same_conv(inputs, tf.convert_to_tensor(kernel))


def _convolution_matmul_kernel_gradient(inputs, kernel):
    """_convolution, the kernel gradient by matrix products under bfloat16."""
    return _same_conv_matmul_kernel_gradient(inputs, tf.convert_to_tensor(kernel))


def _eligible(layer):
    return (type(layer) is tf.keras.layers.Conv2D and layer.groups == 1
            and tuple(layer.strides) == (1, 1) and tuple(layer.dilation_rate) == (1, 1)
            and layer.data_format == "channels_last"
            and all(size % 2 == 1 for size in layer.kernel_size)
            and (layer.padding == "same" or tuple(layer.kernel_size) == (1, 1)))


def _inner_layers(model):
    for layer in model.layers:
        if isinstance(layer, tf.keras.Model):
            yield from _inner_layers(layer)
        else:
            yield getattr(layer, "layer", layer)  # the layer a QAT wrapper wraps


def _use(model, convolution):
    count = 0
    for layer in _inner_layers(model):
        if _eligible(layer):
            layer.convolution_op = convolution
            count += 1
    return count


def use_forward_input_gradients(model):
    """Sets the convolution of each eligible Conv2D of model (and of its nested models and QAT
    wrappers) to _convolution; returns how many. Only these layer objects change: a copy of the
    model, or one loaded from its file, computes its gradients as TensorFlow does."""
    return _use(model, _convolution)


def use_matmul_kernel_gradients(model):
    """use_forward_input_gradients, and under bfloat16 the kernel gradients by matrix products: for a
    model run on a batch of RoIs (the Faster R-CNN head); returns how many convolutions."""
    return _use(model, _convolution_matmul_kernel_gradient)
