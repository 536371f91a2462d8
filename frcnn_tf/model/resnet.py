"""ResNet blocks with TLT's layer names (channels last).

Names: conv1/bn_conv1, then per sub-block `block_<i><letter>_conv_<k>`, `..._bn_<k>`,
`..._relu_<k>`, `..._conv_shortcut`, `..._bn_shortcut`, `..._add`, `..._relu`.
Blocks 1-3 form the stride-16 backbone; block 4 is the second-stage head.
"""
import string

import tensorflow as tf

REPEATS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
WIDTHS = (64, 128, 256, 512)


def is_bottleneck(nlayers):
    """ResNet50 and deeper use bottleneck sub-blocks (1x1, 3x3, 1x1 convs); shallower ones two 3x3 convs."""
    return nlayers >= 50


class LayerFactory:
    """Makes conv/BN layers with the spec's bias, regularisers and freezing rules."""

    def __init__(self, use_bias, regularizer, freeze_bn, freeze_blocks=(), gamma_regularizer=None):
        self.use_bias = use_bias
        self.regularizer = regularizer
        self.gamma_regularizer = gamma_regularizer
        self.freeze_bn = freeze_bn
        self.freeze_blocks = set(freeze_blocks)

    def conv(self, filters, kernel, strides, name, block):
        return tf.keras.layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=self.use_bias,
                                      kernel_regularizer=self.regularizer, name=name,
                                      trainable=block not in self.freeze_blocks)

    def bn(self, name, block):
        # A BN layer with trainable=False also runs in inference mode (Keras 2 semantics).
        return tf.keras.layers.BatchNormalization(
            name=name, gamma_regularizer=self.gamma_regularizer,
            trainable=not self.freeze_bn and block not in self.freeze_blocks)


def sub_block_name(index, repeat):
    """`block_<index><letter>`: the name prefix of sub-block `repeat` (0-based) of block `index`."""
    return f"block_{index}{string.ascii_lowercase[repeat]}"


def _sub_block(x, factory, block, prefix, filters, strides, bottleneck, projection):
    shortcut = x
    kernels = [(1, filters), (3, filters), (1, 4 * filters)] if bottleneck else [(3, filters), (3, filters)]
    for k, (kernel, width) in enumerate(kernels, 1):
        x = factory.conv(width, kernel, strides if k == 1 else 1, f"{prefix}_conv_{k}", block)(x)
        x = factory.bn(f"{prefix}_bn_{k}", block)(x)
        if k < len(kernels):
            x = tf.keras.layers.ReLU(name=f"{prefix}_relu_{k}")(x)
    if projection:
        shortcut = factory.conv(kernels[-1][1], 1, strides, f"{prefix}_conv_shortcut", block)(shortcut)
        shortcut = factory.bn(f"{prefix}_bn_shortcut", block)(shortcut)
    x = tf.keras.layers.Add(name=f"{prefix}_add")([x, shortcut])
    return tf.keras.layers.ReLU(name=f"{prefix}_relu")(x)


def block(x, factory, nlayers, index, strides, all_projections):
    """ResNet block `index` (1-4): its repeated sub-blocks; the first one carries the stride."""
    bottleneck = is_bottleneck(nlayers)
    for repeat in range(REPEATS[nlayers][index - 1]):
        x = _sub_block(x, factory, index, sub_block_name(index, repeat), WIDTHS[index - 1],
                       strides if repeat == 0 else 1, bottleneck, projection=all_projections or repeat == 0)
    return x


def backbone(image, factory, nlayers, use_pooling, all_projections):
    """conv1 + blocks 1-3: [B, H, W, C] -> [B, H/16, W/16, 256 (1024 for 50/101)]."""
    x = factory.conv(64, 7, 2, "conv1", 0)(image)
    x = factory.bn("bn_conv1", 0)(x)
    x = tf.keras.layers.ReLU(name="conv1_relu")(x)
    if use_pooling:
        x = tf.keras.layers.MaxPooling2D(3, 2, padding="same", name="pool1")(x)
    x = block(x, factory, nlayers, 1, 1 if use_pooling else 2, all_projections)
    x = block(x, factory, nlayers, 2, 2, all_projections)
    return block(x, factory, nlayers, 3, 2, all_projections)
