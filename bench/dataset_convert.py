#!/usr/bin/env python3
"""Benchmark dataset_convert: images/s on a KITTI folder with 1 and 2 worker processes.

Prints one JSON object. Default data: the shared real dataset beside the checkout.
  python bench/dataset_convert.py [--data_dir DIR] [--extension .jpg] [--embed_images]
"""
import json
import os
import pathlib
import platform
import tempfile
import time

from absl import app, flags, logging

from frcnn_tf.data import convert
from frcnn_tf.proto import dataset_export_config_pb2

REPO = pathlib.Path(__file__).resolve().parents[1]
flags.DEFINE_string("data_dir", str(REPO.parent / "shared" / "data" / "traffic_lights"),
                    "KITTI folder with images/ and labels/.")
flags.DEFINE_string("extension", ".jpg", "Image extension, with the dot.")
flags.DEFINE_bool("embed_images", False, "Embed encoded images in the records.")
flags.DEFINE_multi_integer("workers", [1, 2], "Worker counts to time.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)
    spec = dataset_export_config_pb2.DatasetExportConfig()
    kitti = spec.kitti_config
    kitti.root_directory_path, kitti.image_dir_name, kitti.label_dir_name = FLAGS.data_dir, "images", "labels"
    kitti.image_extension, kitti.partition_mode, kitti.num_partitions = FLAGS.extension, "random", 2
    kitti.val_split, kitti.num_shards = 20, 4
    runs = []
    for workers in FLAGS.workers:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            summary = convert.convert(spec, os.path.join(out, "bench"), workers=workers,
                                      embed_images=FLAGS.embed_images)
            seconds = time.perf_counter() - start
        runs.append({"workers": workers, "images": summary["total_images"], "seconds": round(seconds, 2),
                     "images_per_s": round(summary["total_images"] / seconds, 1),
                     "scan_s": summary["seconds"]["scan"], "write_s": summary["seconds"]["write"]})
    print(json.dumps({"benchmark": "dataset_convert", "data_dir": FLAGS.data_dir, "embed_images": FLAGS.embed_images,
                      "cpus": os.cpu_count(), "machine": platform.machine(), "runs": runs}, indent=2))


if __name__ == "__main__":
    app.run(main)
