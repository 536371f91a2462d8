"""The main job: the whole workflow on the project's own sample data.

Stages run in order and each reports what it produced. Stages that are not
built yet are listed as such rather than skipped silently.
"""
import pathlib

from absl import logging

from frcnn_tf.spec.summary import validate_spec_file

SPECS_DIR = pathlib.Path(__file__).resolve().parents[1] / "specs"
DEFAULT_SPECS = ("kitti_convert.txt", "frcnn_resnet18_train.txt", "frcnn_resnet18_retrain_qat.txt",
                 "frcnn_resnet18_grayscale.txt")
PENDING_STAGES = ("generate sample data", "dataset_convert", "train", "evaluate", "prune",
                  "retrain with QAT", "export FP32/FP16/INT8", "evaluate exported models", "inference")


def run_quickstart(specs_dir=SPECS_DIR):
    """Runs every built stage; returns the summary lines printed at the end."""
    summary = []
    for name in DEFAULT_SPECS:
        path = pathlib.Path(specs_dir) / name
        lines = validate_spec_file(str(path))
        logging.info("validated %s", path)
        summary.append(f"spec {name}: valid ({'; '.join(lines[1:3])})")
    summary.append(f"not built yet: {', '.join(PENDING_STAGES)}")
    return summary
