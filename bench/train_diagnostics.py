#!/usr/bin/env python3
"""Why a model learns slowly: its proposals' recall and the RoIs its second stage trains on.

  python bench/train_diagnostics.py -e TRAIN_SPEC -m CHECKPOINT [-m CHECKPOINT ...] [--batches 20]
For each checkpoint (e.g. every epoch of a run), over --batches training batches of the spec
(the training stream: shuffled and augmented as in training, without updates, BatchNorm in
inference mode): the share of ground-truth boxes a training proposal (rpn_nms_max_boxes of them)
covers at IoU >= 0.5, the foreground RoIs sampled per image (of roi_mini_batch, at most a quarter)
and the losses. Prints one JSON object.
"""
import json
import platform

import tensorflow as tf
from absl import app, flags

from frcnn_tf.data.pipeline import InputPipeline
from frcnn_tf.model import checkpoints
from frcnn_tf.spec import load_experiment_spec
from frcnn_tf.train.trainer import TrainStep, training_frcnn

flags.DEFINE_string("experiment_spec", None, "The training spec.", short_name="e")
flags.DEFINE_multi_string("model", None, "Checkpoints (.hdf5) to measure.", short_name="m")
flags.DEFINE_integer("batches", 20, "Training batches per checkpoint.")
flags.mark_flags_as_required(["experiment_spec", "model"])
FLAGS = flags.FLAGS


def measure(spec, path, batches):
    """{name: mean over the batches} of TrainStep.loss_values for the checkpoint at path."""
    model, _ = checkpoints.load_model(path, "model")
    step = TrainStep(spec, training_frcnn(model, spec), optimizer=None, strategy=tf.distribute.get_strategy())
    data = InputPipeline(spec).dataset(training=True, batch_size=spec.training_config.batch_size_per_gpu,
                                       repeat=True)
    sums = {}
    for index, batch in enumerate(data.take(batches)):
        seed = tf.constant([spec.random_seed, index], tf.int64)
        for name, value in step.losses(batch, seed).items():
            sums[name] = sums.get(name, 0.0) + float(value)
    return {name: round(total / batches, 4) for name, total in sums.items()}


def main(argv):
    del argv
    spec = load_experiment_spec(FLAGS.experiment_spec)
    tf.keras.utils.set_random_seed(spec.random_seed)
    results = {path: measure(spec, path, FLAGS.batches) for path in FLAGS.model}
    print(json.dumps({"cpu": platform.processor() or platform.machine(), "batches": FLAGS.batches,
                      "rpn_nms_max_boxes": spec.training_config.rpn_nms_max_boxes,
                      "roi_mini_batch": spec.model_config.roi_mini_batch, "checkpoints": results}, indent=1))
    return 0


if __name__ == "__main__":
    app.run(main)
