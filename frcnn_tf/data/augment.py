"""Random photometric and geometric augmentation of (image, boxes), stateless and seeded.

Images are HWC float32; boxes are (y1, x1, y2, x2) pixels of the same image.
`seed` is a shape-[2] int tensor; each op derives its own seed from it, so the
result depends only on the seed (deterministic across runs and workers).
"""

import tensorflow as tf


def _uniform(seed, salt, low, high):
    return tf.random.stateless_uniform([], seed=seed + [0, salt], minval=low, maxval=high)


def color(image, seed, config):
    """Hue rotation, saturation shift and contrast scaling of an RGB image in [0, 1]."""
    if config.hue_rotation_max > 0:
        degrees = _uniform(seed, 1, -config.hue_rotation_max, config.hue_rotation_max)
        image = tf.image.adjust_hue(image, degrees / 360.0)
    if config.saturation_shift_max > 0:
        image = tf.image.adjust_saturation(
            image, 1.0 + _uniform(seed, 2, -config.saturation_shift_max, config.saturation_shift_max))
    if config.contrast_scale_max > 0:
        center = config.contrast_center or 0.5
        scale = 1.0 + _uniform(seed, 3, -config.contrast_scale_max, config.contrast_scale_max)
        image = (image - center) * scale + center
    if config.color_shift_stddev > 0:
        shift = tf.random.stateless_normal([3], seed=seed + [0, 4], stddev=config.color_shift_stddev)
        image = image + shift
    return tf.clip_by_value(image, 0.0, 1.0)


def affine_parameters(seed, config):
    """Zoom z, translation (ty, tx) and flips; the map is p' = z * (p - c) + c + t, then flips."""
    zoom_min, zoom_max = config.zoom_min or 1.0, config.zoom_max or 1.0
    zoom = _uniform(seed, 5, zoom_min, zoom_max) if zoom_max > zoom_min else tf.constant(zoom_min)
    ty = _uniform(seed, 6, -config.translate_max_y, config.translate_max_y) if config.translate_max_y else 0.0
    tx = _uniform(seed, 7, -config.translate_max_x, config.translate_max_x) if config.translate_max_x else 0.0
    hflip = _uniform(seed, 8, 0.0, 1.0) < config.hflip_probability
    vflip = _uniform(seed, 9, 0.0, 1.0) < config.vflip_probability
    return zoom, tf.cast(ty, tf.float32), tf.cast(tx, tf.float32), hflip, vflip


def transform_boxes(boxes, zoom, ty, tx, hflip, vflip, height, width):
    """Applies the affine map and flips to (y1, x1, y2, x2) boxes; clips to the canvas."""
    cy, cx = height / 2.0, width / 2.0
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    y1, y2 = zoom * (y1 - cy) + cy + ty, zoom * (y2 - cy) + cy + ty
    x1, x2 = zoom * (x1 - cx) + cx + tx, zoom * (x2 - cx) + cx + tx
    x1, x2 = tf.where(hflip, width - x2, x1), tf.where(hflip, width - x1, x2)
    y1, y2 = tf.where(vflip, height - y2, y1), tf.where(vflip, height - y1, y2)
    boxes = tf.stack([y1, x1, y2, x2], axis=-1)
    return tf.clip_by_value(boxes, 0.0, tf.cast(tf.stack([height, width, height, width]), tf.float32))


def transform_image(image, zoom, ty, tx, hflip, vflip):
    """Resamples an HWC image under the same map (bilinear, zero fill outside)."""
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    cy, cx = height / 2.0, width / 2.0
    # Output pixel p' samples input p = (p' - c - t) / z + c.
    transform = tf.stack([1.0 / zoom, 0.0, cx - (cx + tx) / zoom,
                          0.0, 1.0 / zoom, cy - (cy + ty) / zoom, 0.0, 0.0])
    image = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis], transforms=transform[tf.newaxis], output_shape=shape[:2],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")[0]
    image = tf.cond(hflip, lambda: tf.reverse(image, [1]), lambda: image)
    return tf.cond(vflip, lambda: tf.reverse(image, [0]), lambda: image)


def spatial(image, boxes, seed, config):
    """Random zoom, translation and flips of a normalised image (0 = mean pixel) and its boxes."""
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    zoom, ty, tx, hflip, vflip = affine_parameters(seed, config)
    image = transform_image(image, zoom, ty, tx, hflip, vflip)
    return image, transform_boxes(boxes, zoom, ty, tx, hflip, vflip, height, width)


