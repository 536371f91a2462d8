"""Image folders as network input: listing image files and decoding them in batches like training data."""
import os

import tensorflow as tf

from frcnn_tf.data.pipeline import decode_image, without_autotune
from frcnn_tf.errors import FrcnnError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def list_images(images_dir):
    """The sorted .jpg/.jpeg/.png files of a folder (FrcnnError when there is none or no folder)."""
    if not os.path.isdir(images_dir):
        raise FrcnnError(f"{images_dir}: images directory not found")
    paths = sorted(os.path.join(images_dir, n) for n in os.listdir(images_dir) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise FrcnnError(f"{images_dir}: no .jpg/.jpeg/.png images")
    return paths


def _load(pipeline, path):
    image = decode_image(tf.io.read_file(path))
    placed, scale = pipeline.place(image)
    return placed, scale, tf.shape(image)[:2]


def images_with_paths(pipeline, paths, batch_size):
    """Batches of (path, network input, scale, file size (h, w)) for image files, preprocessed like training
    data; files that do not decode are left out."""
    data = tf.data.Dataset.from_tensor_slices(paths)
    data = data.map(lambda path: (path, *_load(pipeline, path)), num_parallel_calls=tf.data.AUTOTUNE)
    return without_autotune(data.ignore_errors().batch(batch_size).prefetch(tf.data.AUTOTUNE))


def image_dataset(pipeline, paths, batch_size):
    """Batches of (network input, scale, file size (h, w)) for the image files that decode."""
    return images_with_paths(pipeline, paths, batch_size).map(lambda path, images, scale, size: (images, scale,
                                                                                                   size))
