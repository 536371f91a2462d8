#!/usr/bin/env python3
"""All benchmarks in one command; prints one JSON object with every result.

  python bench/run_all.py [--workdir workdir] [--quick]
Uses the models of a main-job run in --workdir (`bin/quickstart.py --workdir DIR`), running
the main job first if that folder has none. Benchmarks: dataset_convert images/s (on the
workdir's data), training s/image and inference s/image at 384x1248 (train_step, fp32 and
bf16, beside the torch peer when PEER_PYTHON is set), inference ms/image of the Keras model and
its ONNX FP32/FP16/INT8 exports (onnxruntime), and pruning parameters/MACs/speedups. --quick runs
fewer steps.
"""
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

from absl import app, flags, logging

from frcnn_tf.quickstart import QuickstartOptions, run_name
from frcnn_tf.spec import load_conversion_spec

REPO = pathlib.Path(__file__).resolve().parents[1]
flags.DEFINE_string("workdir", "workdir", "A main-job run's folder (created by running the main job if needed).")
flags.DEFINE_bool("quick", False, "Fewer timed steps (a smoke run of the benchmarks).")
FLAGS = flags.FLAGS


def _run(script, *args):
    logging.info("running %s %s", script, " ".join(args))
    result = subprocess.run([sys.executable, str(REPO / script), *args], capture_output=True, text=True)
    if result.returncode:
        return {"benchmark": script, "error": result.stderr.strip().splitlines()[-1:]}
    return json.loads(result.stdout[result.stdout.index("{"):])


def main(argv):
    del argv
    workdir = pathlib.Path(FLAGS.workdir).resolve()
    specs, export = workdir / "specs", workdir / "export"
    stem = run_name(QuickstartOptions.arch)  # the main job's file names
    if not (export / f"{stem}_int8.onnx").exists():
        logging.info("no main-job models in %s: running the main job first", workdir)
        subprocess.run([sys.executable, str(REPO / "bin" / "quickstart.py"), "--workdir", str(workdir)], check=True)
    train_spec = str(specs / f"{stem}_train.txt")
    models = sorted((workdir / "models").glob(f"{stem}.epoch*.hdf5"),
                    key=lambda p: int(p.name.split("epoch")[1].split(".")[0]))
    data_dir = load_conversion_spec(str(specs / "kitti_convert.txt")).kitti_config.root_directory_path
    steps = ["--steps", "1"] if FLAGS.quick else []
    started = time.perf_counter()
    results = [
        _run("bench/dataset_convert.py", "--data_dir", data_dir),
        _run("bench/train_step.py", *steps, "--batch_sizes", "1"),
        _run("bench/inference_speed.py", "-e", train_spec, "-m", str(models[-1]),
             *[arg for precision in ("fp32", "fp16", "int8", "qat_int8")
               for arg in ("-m", str(export / f"{stem}_{precision}.onnx"))],
             "--batches", "2" if FLAGS.quick else "4"),
        _run("bench/prune_speed.py", "-m", str(models[-1]), "-e", train_spec, "--runs", "2" if FLAGS.quick else "5"),
    ]
    print(json.dumps({"benchmarks": results, "machine": platform.machine(), "cpus": os.cpu_count(),
                      "python": platform.python_version(), "seconds": round(time.perf_counter() - started, 1)},
                     indent=2))


if __name__ == "__main__":
    app.run(main)
