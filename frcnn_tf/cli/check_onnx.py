"""check_onnx: any ONNX model against the TensorRT 10.x/11.x parser and builder rules export applies."""
import sys

from absl import flags

from frcnn_tf.cli import run_main

flags.DEFINE_string("model", None, "ONNX model to check.", short_name="m")
FLAGS = flags.FLAGS


def main(argv):
    models = ([FLAGS.model] if FLAGS.model else []) + argv[1:]
    if not models:
        print("error: name an ONNX model: bin/check_onnx.py MODEL.onnx [MORE.onnx ...]", file=sys.stderr)
        return 1
    from frcnn_tf.export.tensorrt_rules import check_file

    problems = 0
    for path in models:
        violations = check_file(path)
        for violation in violations:
            print(f"error: {path}: {violation}", file=sys.stderr)
        print(f"{path}: {len(violations)} problem(s) with TensorRT 10.x/11.x's ONNX parser rules")
        problems += len(violations)
    return 1 if problems else 0


def run():
    run_main(main)
