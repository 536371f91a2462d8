"""build_engine: a TensorRT engine from an exported ONNX model (TLT's tlt-converter step)."""
from absl import flags

from frcnn_tf.cli import run_main

flags.DEFINE_string("model", None, "ONNX model written by export.", short_name="m")
flags.DEFINE_string("engine_file", None, "Serialized TensorRT engine to write.", short_name="o")
flags.DEFINE_enum("data_type", None, ["fp32", "fp16", "int8"], "Precision (default: the ONNX model's own).")
flags.DEFINE_string("cal_cache_file", None, "Calibration cache (default: the one export wrote beside the ONNX).")
flags.DEFINE_integer("min_batch_size", 1, "Smallest batch of the optimization profile.")
flags.DEFINE_integer("opt_batch_size", 1, "Batch the engine is tuned for.")
flags.DEFINE_integer("max_batch_size", 1, "Largest batch of the optimization profile.")
flags.DEFINE_integer("workspace_size", 1024, "Builder workspace in MiB.", short_name="w")
flags.DEFINE_bool("strongly_typed", None, "Strongly typed network (default: yes, but for INT8 from a calibration "
                  "cache with an FP32 ONNX, TensorRT 10 only).")
flags.DEFINE_bool("rewrite_cache_version", False, "Use a calibration cache written for another TensorRT version "
                  "(its header is rewritten in memory; the scales do not depend on the version).")
flags.DEFINE_bool("overwrite", False, "Replace an existing engine file.")
flags.mark_flags_as_required(["model", "engine_file"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from frcnn_tf.export.tensorrt_engine import EngineOptions, build_engine

    print(describe(build_engine(FLAGS.model, FLAGS.engine_file, EngineOptions(
        min_batch_size=FLAGS.min_batch_size, opt_batch_size=FLAGS.opt_batch_size, max_batch_size=FLAGS.max_batch_size,
        workspace_mib=FLAGS.workspace_size, data_type=FLAGS.data_type, cal_cache_file=FLAGS.cal_cache_file,
        strongly_typed=FLAGS.strongly_typed, rewrite_cache_version=FLAGS.rewrite_cache_version), FLAGS.overwrite)))
    return 0


def describe(result):
    """One line for a build_engine result."""
    return f"wrote {result['engine']} (TensorRT {result['tensorrt']}, {result['data_type']}, {result['mode']})"


def run():
    run_main(main)
