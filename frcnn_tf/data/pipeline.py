"""tf.data input pipeline driven by the experiment spec.

Each batch is a dict:
  images       float32 [B, H, W, C]  normalised: (pixel*1 in 0..255 - mean) / scaling, 0 = mean pixel
  boxes        float32 [B, M, 4]     (y1, x1, y2, x2) in network-input pixels, zero padded
  classes      int32   [B, M]        model class ids (sorted target names), -1 = padding
  occlusion    int32   [B, M]        KITTI occlusion (>= 1 counts as difficult in evaluation)
  num_boxes    int32   [B]
  frame_id     string  [B]
  scale        float32 [B, 2]        (sy, sx): network pixel = original pixel * scale
  original_size int32  [B, 2]        (height, width) of the image file
M is `max_objects_num_per_image`. Images are placed on the H x W canvas by
keeping their aspect ratio and padding bottom/right (`enable_auto_resize`
stretches instead), so training, evaluation and inference share one geometry.
"""
import contextlib
import dataclasses
import glob
import itertools
import os

import numpy as np
import tensorflow as tf
from absl import logging

from frcnn_tf.data import augment, records
from frcnn_tf.errors import FrcnnError
from frcnn_tf.spec.derived import class_ids, input_channels


# Formats tf.io.decode_image reads (PIL's names, lower case).
DECODABLE_FORMATS = ("jpeg", "png", "gif", "bmp", "webp")


def decode_image(data):
    """Encoded JPEG/PNG bytes -> RGB float32 [h, w, 3] in [0, 1]."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    return tf.image.convert_image_dtype(image, tf.float32)


def image_problem(path, data=None):
    """`PATH: unreadable image (why)` when the file (or its embedded bytes `data`) does not decode, else None."""
    try:
        decode_image(tf.io.read_file(path) if data is None else data)
    except tf.errors.OpError as err:
        return f"{path}: unreadable image ({err.message.splitlines()[0]})"
    return None


def _glob(pattern):
    """The TFRecord files matching `pattern`; other files (dataset_convert's JSON beside its shards, which
    TLT-style globs such as `dir/*` match) are ignored with a warning."""
    files = []
    for path in sorted(glob.glob(pattern)):
        if records.is_tfrecord_file(path):
            files.append(path)
        else:
            logging.warning("%s: not a TFRecord file; ignored (it matches tfrecords_path %s)", path, pattern)
    if not files:
        raise FrcnnError(f"{pattern}: no TFRecord file matches this tfrecords_path; run dataset_convert first")
    return files


def without_autotune(data):
    """`data` with tf.data's autotuner off. A pipeline read once beside the model (evaluate, inference) shares
    the cores with it: the autotuner, tuning while the model runs, made evaluate wait ~300 ms per image (1.75x
    the forward; 1.1x without)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return data.with_options(options)


def shard_sources(dataset_config, training):
    """[(tfrecord files, image directory)] for the training or validation split."""
    if dataset_config.HasField("validation_data_source"):
        sources = dataset_config.data_sources if training else [dataset_config.validation_data_source]
        return [(_glob(s.tfrecords_path), s.image_directory_path) for s in sources]
    marker = f"fold-{dataset_config.validation_fold:03d}-of-"
    result = []
    for source in dataset_config.data_sources:
        files = [f for f in _glob(source.tfrecords_path) if (marker in os.path.basename(f)) != training]
        if files:
            result.append((files, source.image_directory_path))
    if not result:
        split = "training" if training else "validation"
        raise FrcnnError(f"{dataset_config.data_sources[0].tfrecords_path}: no {split} shards (validation_fold "
                         f"{dataset_config.validation_fold} selects files containing '{marker}')")
    return result


@dataclasses.dataclass(frozen=True)
class WorkerShard:
    """One worker's part of the training stream in a multi-worker run.

    index: this worker (0 .. count - 1); count: the number of workers; batch: the examples this
    worker takes per step (its replicas x batch_size_per_gpu). With at least `count` files each
    worker reads its own files (file i goes to worker i % count); with fewer, every worker reads
    the whole stream and keeps its `batch` consecutive examples of every global batch (worker w
    the w-th), so the workers' slices of a step together are the global batch one worker would take.
    """

    index: int
    count: int
    batch: int

    def by_files(self, num_files):
        return num_files >= self.count


class InputPipeline:
    """Builds datasets for one experiment spec (model input, dataset and augmentation configs)."""

    def __init__(self, spec):
        """Needs model_config; dataset_config/augmentation/training sections where datasets are built."""
        self.image_config = spec.model_config.input_image_config
        self.dataset_config = spec.dataset_config
        self.augmentation = spec.augmentation_config
        self.augment = spec.training_config.enable_augmentation
        self.seed = spec.random_seed
        self.max_objects = self.image_config.max_objects_num_per_image
        self.channels = input_channels(self.image_config)
        order = self.image_config.image_channel_order
        self.mean = tf.constant([self.image_config.image_channel_mean[c] for c in order], tf.float32)
        if self.image_config.WhichOneof("image_size_config") == "size_height_width":
            size = self.image_config.size_height_width
            self.canvas = (size.height, size.width)
        else:
            self.canvas = None
        mapping = class_ids(self.dataset_config)
        self.class_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(list(mapping), list(mapping.values()), tf.string, tf.int32),
            -1) if mapping else None

    # ---- per-example steps -------------------------------------------------------------
    def _decode(self, example, image_directory):
        extension = self.dataset_config.image_extension
        path = tf.strings.join([image_directory, "/", example[records.FRAME_ID], ".", extension])
        data = tf.cond(tf.strings.length(example[records.ENCODED]) > 0,
                       lambda: example[records.ENCODED], lambda: tf.io.read_file(path))
        return decode_image(data)

    def _normalise(self, image):
        if self.channels == 1:
            image = tf.image.rgb_to_grayscale(image)
        elif self.image_config.image_channel_order == "bgr":
            image = tf.reverse(image, axis=[-1])
        return (image * 255.0 - self.mean) / self.image_config.image_scaling_factor

    def _target_size(self, height, width):
        """Resized (height, width) before padding, as float32 scalars."""
        if self.canvas is None:
            scale = self.image_config.size_min.min / tf.minimum(height, width)
            return tf.round(height * scale), tf.round(width * scale)
        canvas_h, canvas_w = float(self.canvas[0]), float(self.canvas[1])
        if self.augmentation.preprocessing.enable_auto_resize:
            return tf.constant(canvas_h), tf.constant(canvas_w)
        scale = tf.minimum(canvas_h / height, canvas_w / width)
        return (tf.minimum(tf.round(height * scale), canvas_h), tf.minimum(tf.round(width * scale), canvas_w))

    def place(self, image):
        """RGB image in [0, 1], [h, w, 3] -> (normalised network input, scale (sy, sx) from file to input px)."""
        image = self._normalise(image)
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        new_h, new_w = self._target_size(shape[0], shape[1])
        image = tf.image.resize(image, tf.cast(tf.stack([new_h, new_w]), tf.int32), antialias=True)
        if self.canvas is not None:
            image = tf.image.pad_to_bounding_box(image, 0, 0, self.canvas[0], self.canvas[1])
        return image, tf.stack([new_h / shape[0], new_w / shape[1]])

    def _trainable(self, boxes, classes):
        """bool [N]: boxes [N, 4] (input pixels) of a mapped class and at least the preprocessing's
        min_bbox_width x min_bbox_height."""
        pre = self.augmentation.preprocessing
        return ((classes >= 0) & (boxes[:, 3] - boxes[:, 1] >= max(pre.min_bbox_width, 1e-3))
                & (boxes[:, 2] - boxes[:, 0] >= max(pre.min_bbox_height, 1e-3)))

    def _example(self, index, serialized, image_directory, training):
        example = records.parse_example(serialized)
        image = self._decode(example, image_directory)
        original_size = tf.shape(image)[:2]
        seed = tf.stack([tf.cast(self.seed, tf.int64), index])
        if training and self.augment:
            image = augment.color(image, seed, self.augmentation.color_augmentation)
        image, scale = self.place(image)
        boxes = tf.stack([example[records.Y1], example[records.X1], example[records.Y2], example[records.X2]], -1)
        boxes = tf.reshape(boxes, [-1, 4]) * tf.tile(scale, [2])
        if training and self.augment:
            image, boxes = augment.spatial(image, boxes, seed, self.augmentation.spatial_augmentation)
        classes = self.class_table.lookup(example[records.OBJECT_CLASS])
        keep = self._trainable(boxes, classes)
        boxes = tf.boolean_mask(boxes, keep)[: self.max_objects]
        classes = tf.boolean_mask(classes, keep)[: self.max_objects]
        occlusion = tf.cast(tf.boolean_mask(example[records.OCCLUSION], keep)[: self.max_objects], tf.int32)
        count = tf.shape(boxes)[0]
        pad = self.max_objects - count
        return {
            "images": image,
            "boxes": tf.pad(boxes, [[0, pad], [0, 0]]),
            "classes": tf.pad(classes, [[0, pad]], constant_values=-1),
            "occlusion": tf.pad(occlusion, [[0, pad]]),
            "num_boxes": count,
            "frame_id": example[records.FRAME_ID],
            "scale": scale,
            "original_size": original_size,
        }

    def split_boxes(self, training):
        """The split's ground-truth boxes as the model sees them without augmentation.

        Returns (boxes float32 [N, 4] in input pixels y1 x1 y2 x2, sizes int [N, 2]: (height, width)
        of the network input each box lies in: the canvas, or the resized image without one). Boxes of
        unmapped classes or under the preprocessing's min_bbox size are left out, as in training
        (_trainable). Reads no image.
        """
        keys = {key: records.PARSE_SPEC[key] for key in (records.WIDTH, records.HEIGHT, records.OBJECT_CLASS,
                                                          records.X1, records.Y1, records.X2, records.Y2)}
        boxes, sizes = [], []
        for files, _ in shard_sources(self.dataset_config, training):
            for serialized in tf.data.TFRecordDataset(files):
                example = tf.io.parse_single_example(serialized, keys)
                height, width = (tf.cast(example[key], tf.float32) for key in (records.HEIGHT, records.WIDTH))
                new_h, new_w = self._target_size(height, width)
                scale = tf.stack([new_h / height, new_w / width] * 2)
                corners = tf.stack([tf.sparse.to_dense(example[key]) for key in
                                    (records.Y1, records.X1, records.Y2, records.X2)], axis=-1) * scale
                classes = self.class_table.lookup(tf.sparse.to_dense(example[records.OBJECT_CLASS]))
                kept = tf.boolean_mask(corners, self._trainable(corners, classes)).numpy()
                boxes.append(kept)
                size = self.canvas or (int(new_h), int(new_w))
                sizes.append(np.tile([size], (len(kept), 1)))
        if not boxes:
            return np.zeros((0, 4), np.float32), np.zeros((0, 2), np.int64)
        return np.concatenate(boxes).astype(np.float32), np.concatenate(sizes)

    # ---- checks of the image files -----------------------------------------------------
    def split_images(self, training):
        """(image path, embedded bytes or b"") of every record of the split; a corrupt shard is an FrcnnError."""
        extension = self.dataset_config.image_extension
        keys = {records.FRAME_ID: records.PARSE_SPEC[records.FRAME_ID],
                records.ENCODED: records.PARSE_SPEC[records.ENCODED]}
        for files, image_directory in shard_sources(self.dataset_config, training):
            for path in files:
                try:
                    for batch in tf.data.TFRecordDataset(path).batch(1024).map(
                            lambda s: tf.io.parse_example(s, keys)):
                        for frame_id, encoded in zip(batch[records.FRAME_ID].numpy(),
                                                     batch[records.ENCODED].numpy()):
                            yield os.path.join(image_directory, f"{frame_id.decode()}.{extension}"), encoded
                except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as err:
                    raise FrcnnError(f"{path}: damaged TFRecord file ({err.message.splitlines()[0]}); "
                                     "rerun dataset_convert") from None

    def check_images(self, training):
        """FrcnnError naming the first missing image file of the split (records without embedded images)."""
        total, missing = 0, []
        for path, encoded in self.split_images(training):
            total += 1
            if not encoded and not os.path.isfile(path):
                missing.append(path)
        if missing:
            split = "training" if training else "validation"
            raise FrcnnError(f"{missing[0]}: image not found ({len(missing)} of the {total} {split} images are "
                             "missing); check dataset_config image_directory_path and image_extension")

    @contextlib.contextmanager
    def naming_bad_input(self, training):
        """Turns a TensorFlow error while the split is read into an FrcnnError naming the file at fault.

        The file is found by decoding the split's images one by one, only once reading has failed;
        errors no file explains are raised unchanged.
        """
        try:
            yield
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.DataLossError):
            for path, encoded in self.split_images(training):
                problem = image_problem(path, encoded or None)
                if problem:
                    raise FrcnnError(f"{problem}; fix or remove it, then rerun dataset_convert") from None
            raise

    # ---- datasets ----------------------------------------------------------------------
    def dataset(self, training, batch_size, repeat=False, shuffle_buffer=256, start=0, shard=None):
        """Batched dataset of the training or validation split.

        Training data is shuffled (seeded, reshuffled each pass) and, if `repeat`,
        repeated forever; augmentation seeds come from the running example index,
        so every pass differs and the whole stream is reproducible. `start` skips that
        many examples of the stream (a resumed run continues where the first one stopped).
        shard (WorkerShard): this worker's part of a multi-worker stream; `start` counts the
        examples of all workers, and the example indices (augmentation seeds) stay distinct
        across workers: the global stream's index when sharded by record, local index x
        workers + worker when sharded by file.
        """
        pairs = [(path, image_directory) for files, image_directory in shard_sources(self.dataset_config, training)
                 for path in files]
        sharded = shard is not None and shard.count > 1
        by_files, by_records = sharded and shard.by_files(len(pairs)), sharded and not shard.by_files(len(pairs))
        stride, offset = (shard.count, shard.index) if by_files else (1, 0)
        if by_files:
            start //= shard.count
            logging.info("input: worker %d of %d reads %d of the %d files (sharded by file)", shard.index,
                         shard.count, len(pairs[shard.index::shard.count]), len(pairs))
            pairs = pairs[shard.index::shard.count]
        elif by_records:
            logging.info("input: worker %d of %d reads all %d files and takes examples %d-%d of every %d (fewer "
                         "files than workers: sharded by record)", shard.index, shard.count, len(pairs),
                         shard.index * shard.batch, (shard.index + 1) * shard.batch - 1, shard.count * shard.batch)
        parts = [tf.data.TFRecordDataset([path for path, _ in group]).map(lambda s, d=image_directory: (s, d))
                 for image_directory, group in itertools.groupby(pairs, key=lambda pair: pair[1])]
        data = parts[0]
        for part in parts[1:]:
            data = data.concatenate(part)
        if training:
            data = data.shuffle(shuffle_buffer, seed=self.seed, reshuffle_each_iteration=True)
        if repeat:
            data = data.repeat()
        data = data.skip(start).enumerate(start)
        if by_records:
            data = data.batch(shard.batch, drop_remainder=True).shard(shard.count, shard.index).unbatch()
        data = data.map(lambda index, item: self._example(index * stride + offset, item[0], item[1], training),
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if self.canvas is None:
            data = data.padded_batch(batch_size, drop_remainder=training)
        else:
            data = data.batch(batch_size, drop_remainder=training)
        data = data.prefetch(tf.data.AUTOTUNE)
        return data if training else without_autotune(data)
