"""TFRecord example layout: TLT's KITTI converter feature keys and dtypes.

Records written here read in TLT and the other way round. `frame/encoded` and
`frame/format` are frcnn_tf additions (optional embedded image bytes).
"""
import os
import struct

import tensorflow as tf

FRAME_ID = "frame/id"
WIDTH = "frame/width"
HEIGHT = "frame/height"
ENCODED = "frame/encoded"
FORMAT = "frame/format"
OBJECT_CLASS = "target/object_class"
TRUNCATION = "target/truncation"
OCCLUSION = "target/occlusion"
ALPHA = "target/observation_angle"
X1, Y1, X2, Y2 = (f"target/coordinates_{c}" for c in ("x1", "y1", "x2", "y2"))
WORLD_KEYS = tuple(f"target/world_bbox_{c}" for c in ("h", "w", "l", "x", "y", "z", "rot_y"))


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def make_example(frame_id, width, height, objects, encoded=None, image_format=None):
    """A tf.train.Example for one frame; `objects` are kitti.KittiObject."""
    feature = {
        FRAME_ID: _bytes([frame_id.encode("utf-8")]),
        WIDTH: _ints([width]),
        HEIGHT: _ints([height]),
        OBJECT_CLASS: _bytes([o.object_class.encode("utf-8") for o in objects]),
        TRUNCATION: _floats([o.truncation for o in objects]),
        OCCLUSION: _ints([o.occlusion for o in objects]),
        ALPHA: _floats([o.alpha for o in objects]),
    }
    for index, key in enumerate((X1, Y1, X2, Y2)):
        feature[key] = _floats([o.box[index] for o in objects])
    world = [o.dimensions + o.location + (o.rotation_y,) for o in objects]
    for index, key in enumerate(WORLD_KEYS):
        feature[key] = _floats([w[index] for w in world])
    if encoded is not None:
        feature[ENCODED] = _bytes([encoded])
        feature[FORMAT] = _bytes([image_format.encode("utf-8")])
    return tf.train.Example(features=tf.train.Features(feature=feature))


PARSE_SPEC = {
    FRAME_ID: tf.io.FixedLenFeature([], tf.string),
    WIDTH: tf.io.FixedLenFeature([], tf.int64),
    HEIGHT: tf.io.FixedLenFeature([], tf.int64),
    ENCODED: tf.io.FixedLenFeature([], tf.string, default_value=""),
    OBJECT_CLASS: tf.io.VarLenFeature(tf.string),
    OCCLUSION: tf.io.VarLenFeature(tf.int64),
    X1: tf.io.VarLenFeature(tf.float32),
    Y1: tf.io.VarLenFeature(tf.float32),
    X2: tf.io.VarLenFeature(tf.float32),
    Y2: tf.io.VarLenFeature(tf.float32),
}


def parse_example(serialized):
    """Parses one serialized example into dense tensors (what the input pipeline needs)."""
    parsed = tf.io.parse_single_example(serialized, PARSE_SPEC)
    dense = {key: tf.sparse.to_dense(value) if isinstance(value, tf.sparse.SparseTensor) else value
             for key, value in parsed.items()}
    return dense


def _crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def is_tfrecord_file(path):
    """True for a regular file in TFRecord framing: empty, or starting with a length whose masked CRC-32C matches."""
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as handle:
        head = handle.read(12)
    if not head:
        return True
    if len(head) < 12:
        return False
    crc = _crc32c(head[:8])
    masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    return struct.unpack("<I", head[8:])[0] == masked
