#!/usr/bin/env python3
"""INT8 quality: what a float model and its QAT retraining keep when deployed as INT8 ONNX.

  python bench/int8_quality.py -e TRAIN_SPEC -m FLOAT_MODEL.hdf5 -o OUT_DIR [--qat_epochs 2] [--batches 10]
Evaluates on the spec's validation split: the Keras float model, its ONNX FP32 and its PTQ INT8
export (entropy calibration on --batches x 8 training images); then converts the float model to
QAT, retrains it for --qat_epochs at a tenth of the spec's learning rate, and evaluates the Keras
QAT model and its INT8 ONNX. Besides each mAP it reports the share of detections the INT8 model
reproduces (same class, box within 1 px, score within 0.02) against its reference, both ways.
Prints one JSON object.
"""
import json
import os
import platform
import time

from absl import app, flags, logging
from google.protobuf import text_format

from frcnn_tf import metrics
from frcnn_tf.detectors import KerasDetector, OnnxDetector
from frcnn_tf.evaluation import evaluate_detector
from frcnn_tf.export.onnx_export import Int8Options, run_export
from frcnn_tf.spec import load_experiment_spec
from frcnn_tf.train.trainer import train

flags.DEFINE_string("experiment_spec", None, "The float model's training spec.", short_name="e")
flags.DEFINE_string("model", None, "The trained float model (.hdf5).", short_name="m")
flags.DEFINE_string("output_dir", None, "Where the QAT model and the ONNX files go.", short_name="o")
flags.DEFINE_integer("qat_epochs", 2, "QAT retraining epochs.")
flags.DEFINE_integer("batches", 10, "PTQ calibration batches of 8 images.")
flags.DEFINE_integer("max_steps_per_epoch", None, "Cap on QAT steps per epoch (smoke runs).")
flags.mark_flags_as_required(["experiment_spec", "model", "output_dir"])
FLAGS = flags.FLAGS


def _evaluate(spec, detector):
    result = evaluate_detector(spec, detector)
    return round(result["map"], 4), result["detections"]


def _agreement(reference, candidate):
    return {"matched": round(metrics.matched_share(reference, candidate), 4),
            "matched_back": round(metrics.matched_share(candidate, reference), 4)}


def _qat_spec(spec, model_path, output_dir, epochs):
    """The spec retraining `model_path` with QAT for `epochs` at a tenth of its learning rate."""
    qat = type(spec)()
    qat.CopyFrom(spec)
    training = qat.training_config
    training.enable_qat = True
    training.retrain_pruned_model, training.resume_from_model, training.pretrained_weights = model_path, "", ""
    training.regularizer.ClearField("bn_gamma_l1_weight")
    training.regularizer.ClearField("bn_gamma_polarization")
    rates = getattr(training.learning_rate, training.learning_rate.WhichOneof("lr_config"))
    for field in ("base_lr", "start_lr"):
        if hasattr(rates, field):
            setattr(rates, field, getattr(rates, field) / 10)
    optimizer = getattr(training.optimizer, training.optimizer.WhichOneof("optim"))
    optimizer.lr /= 10
    training.num_epochs = qat.evaluation_config.validation_period_during_training = epochs
    training.output_model = os.path.join(output_dir, "qat.hdf5")
    return qat


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    spec = load_experiment_spec(FLAGS.experiment_spec)
    section = spec.evaluation_config
    started = time.perf_counter()
    report = {"benchmark": "int8_quality", "model": FLAGS.model, "cpu": platform.processor() or platform.machine()}
    report["keras_fp32"], float_detections = _evaluate(spec, KerasDetector.from_file(FLAGS.model, spec, section))
    paths = {name: os.path.join(FLAGS.output_dir, f"{name}.onnx") for name in ("fp32", "ptq_int8", "qat_int8")}
    run_export(FLAGS.experiment_spec, FLAGS.model, paths["fp32"], "fp32", overwrite=True)
    report["onnx_fp32"], fp32_detections = _evaluate(spec, OnnxDetector(paths["fp32"]))
    info = run_export(FLAGS.experiment_spec, FLAGS.model, paths["ptq_int8"], "int8", overwrite=True,
                      int8=Int8Options(batches=FLAGS.batches))
    report["onnx_ptq_int8"], ptq_detections = _evaluate(spec, OnnxDetector(paths["ptq_int8"]))
    report["ptq"] = {"calibrator": info["calibrator"], "export_check": info.get("int8_check"),
                     "vs_onnx_fp32": _agreement(fp32_detections, ptq_detections)}

    qat_spec = _qat_spec(spec, FLAGS.model, FLAGS.output_dir, FLAGS.qat_epochs)
    spec_path = os.path.join(FLAGS.output_dir, "qat_spec.txt")
    with open(spec_path, "w", encoding="utf-8") as handle:
        handle.write(text_format.MessageToString(qat_spec))
    qat_model = train(qat_spec, max_steps_per_epoch=FLAGS.max_steps_per_epoch, overwrite=True)["checkpoints"][-1]
    report["keras_qat"], qat_detections = _evaluate(qat_spec, KerasDetector.from_file(qat_model, qat_spec, section))
    info = run_export(spec_path, qat_model, paths["qat_int8"], "int8", overwrite=True)
    report["onnx_qat_int8"], qat_int8_detections = _evaluate(qat_spec, OnnxDetector(paths["qat_int8"]))
    report["qat"] = {"epochs": FLAGS.qat_epochs, "export_check": info.get("int8_check"),
                     "vs_keras_qat": _agreement(qat_detections, qat_int8_detections),
                     "keras_qat_vs_keras_fp32": _agreement(float_detections, qat_detections)}
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    app.run(main)
