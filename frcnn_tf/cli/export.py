"""export: a trained model to ONNX (FP32, FP16, INT8 + calibration cache) for TensorRT / onnxruntime."""
from absl import flags

from frcnn_tf.calibrators import CALIBRATORS, DEFAULT_PERCENTILE
from frcnn_tf.cli import run_main
from frcnn_tf.errors import FrcnnError

flags.DEFINE_string("model", None, "Trained model (.hdf5 / .tlt).", short_name="m")
flags.DEFINE_string("output_file", None, "ONNX file to write.", short_name="o")
flags.DEFINE_string("experiment_spec", None, "Spec (inference_config sets proposals and NMS).", short_name="e")
flags.DEFINE_enum("data_type", "fp32", ["fp32", "fp16", "int8"], "Precision of the exported graph.")
flags.DEFINE_string("cal_cache_file", None, "INT8: calibration cache to write (default <output>.cal.bin).")
flags.DEFINE_string("cal_image_dir", None, "INT8: calibration images (default: the spec's training folds).")
flags.DEFINE_integer("batch_size", 8, "INT8: images per calibration batch.")
flags.DEFINE_integer("batches", 10, "INT8: calibration batches.")
flags.DEFINE_enum("calibrator", "entropy", list(CALIBRATORS), "INT8: how ranges are chosen.")
flags.DEFINE_float("percentile", DEFAULT_PERCENTILE, "INT8: percentile of |activation| for --calibrator "
                   "percentile, and the least range --calibrator entropy keeps (it clips at most 100 - this % of "
                   "values).")
flags.DEFINE_string("trt_version", None, "INT8: TensorRT version the calibration cache is for, e.g. 10.3.0 "
                    "(default: the installed TensorRT's, else 10.3.0).")
flags.DEFINE_enum("target", "tensorrt", ["tensorrt", "onnxruntime"],
                  "INT8: the runtime the Q/DQ graph is laid out for: tensorrt (explicit INT8 by TensorRT's rules, "
                  "plus the calibration cache) or onnxruntime (UINT8 activations and INT32 biases that "
                  "onnxruntime's CPU kernels fuse; fast on CPUs with VNNI/AMX; no cache, no engine).")
flags.DEFINE_string("engine_file", None, "Also build a TensorRT engine here (needs TensorRT).")
flags.DEFINE_integer("max_batch_size", 1, "Engine: largest batch of the optimization profile.")
flags.DEFINE_bool("overwrite", False, "Replace existing output files.")
flags.DEFINE_string("key", None, "Key of .tlt model files (default: the spec's enc_key).", short_name="k")
flags.mark_flags_as_required(["model", "output_file", "experiment_spec"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from frcnn_tf.export.onnx_export import OUTPUT_NAMES, Int8Options, run_export

    int8 = Int8Options(cal_cache_file=FLAGS.cal_cache_file, cal_image_dir=FLAGS.cal_image_dir,
                       batch_size=FLAGS.batch_size, batches=FLAGS.batches, calibrator=FLAGS.calibrator,
                       percentile=FLAGS.percentile, trt_version=FLAGS.trt_version, target=FLAGS.target)
    if FLAGS.engine_file and FLAGS.target != "tensorrt":
        raise FrcnnError(f"--engine_file: the {FLAGS.target} target is not for TensorRT; drop one of the two")
    info = run_export(FLAGS.experiment_spec, FLAGS.model, FLAGS.output_file, FLAGS.data_type, FLAGS.overwrite,
                      FLAGS.key, int8)
    if info.get("cal_cache_header"):
        print(f"wrote {info['cal_cache_path']} ({info['cal_cache_header']}, {info['calibrator']})")
    check = info.get("int8_check")
    if check and "images" in check:
        print(f"INT8 vs {'the Keras QAT model' if info['qat'] else 'FP32'} on {check['images']} held-back images: "
              f"{100 * check['matched']:.1f}% of its detections reproduced, {100 * check['matched_back']:.1f}% "
              f"back (same class, box within 1 px, score within 0.02); mAP against its strong detections: "
              f"{check['map_vs_reference']}")
    check = info.get("onnxruntime_check")
    if check:
        print(f"onnxruntime INT8 (fused) vs the TensorRT-form INT8 graph on {check['images']} images: "
              f"{100 * check['matched']:.1f}% of its detections reproduced, {100 * check['matched_back']:.1f}% back; "
              f"mAP against its strong detections: {check['map_vs_reference']}")
    layout = "TensorRT 10/11 parser rules: 0 problems" if FLAGS.target == "tensorrt" else \
        "laid out for onnxruntime's fused INT8 kernels, not for TensorRT"
    print(f"wrote {FLAGS.output_file} ({FLAGS.data_type}; input input_image {['N', *info['input_shape']]}; outputs "
          f"{', '.join(OUTPUT_NAMES)}; {layout})")
    if FLAGS.engine_file:
        from frcnn_tf.cli.build_engine import describe
        from frcnn_tf.export.tensorrt_engine import EngineOptions, build_engine

        print(describe(build_engine(FLAGS.output_file, FLAGS.engine_file,
                                    EngineOptions(max_batch_size=FLAGS.max_batch_size,
                                                  opt_batch_size=FLAGS.max_batch_size), FLAGS.overwrite)))
    return 0


def run():
    run_main(main)
