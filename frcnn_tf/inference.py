"""inference: annotated images and KITTI label files for a folder of images."""
import os

from absl import logging
from tqdm import tqdm

from frcnn_tf.data.images import images_with_paths, list_images
from frcnn_tf.data.pipeline import InputPipeline, image_problem
from frcnn_tf.detectors import load_detector, to_file_pixels
from frcnn_tf.drawing import annotate
from frcnn_tf.errors import FrcnnError
from frcnn_tf.io_utils import atomic_write_bytes, atomic_write_text, refuse_to_overwrite
from frcnn_tf.spec import parse_experiment_spec
from frcnn_tf.spec.validate import require_section


def kitti_lines(found, names, threshold):
    """TLT's KITTI dump: `class 0 0 0 x1 y1 x2 y2 0 0 0 0 0 0 0 score` for scores >= threshold."""
    lines = []
    for (y1, x1, y2, x2), score, cls in zip(found["boxes"], found["scores"], found["classes"]):
        if score >= threshold:
            lines.append(f"{names[cls]} 0 0 0 {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f} 0 0 0 0 0 0 0 {score:.7f}")
    return lines


def _skip_until(remaining, path, skipped):
    """Advances `remaining` to `path`, warning about (and collecting) the unreadable images passed over."""
    for expected in remaining:
        if expected == path:
            return
        logging.warning("%s; skipped", image_problem(expected) or f"{expected}: unreadable image")
        skipped.append(expected)


def infer_folder(spec, detector, paths, image_out, labels_out, config):
    """Runs the detector on image files; writes annotated images and label files.

    Returns (detections per path, unreadable paths skipped with a warning)."""
    results, skipped = {}, []
    names = detector.class_names
    bar = tqdm(total=len(paths), desc="inference", unit="img", disable=None)
    remaining = iter(paths)
    for batch_paths, images, scales, sizes in images_with_paths(InputPipeline(spec), paths, config.batch_size):
        for path, found, scale, size in zip(batch_paths.numpy(), detector(images), scales.numpy(), sizes.numpy()):
            path = path.decode()
            _skip_until(remaining, path, skipped)
            found = to_file_pixels(found, scale, size)
            if labels_out:
                text = "\n".join(kitti_lines(found, names, config.bbox_visualize_threshold))
                atomic_write_text(os.path.join(labels_out, f"{_stem(path)}.txt"), text + "\n" if text else "")
            if image_out:
                atomic_write_bytes(os.path.join(image_out, os.path.basename(path)),
                                   annotate(path, found, names, config.bbox_visualize_threshold,
                                            config.bbox_caption_on))
            results[path] = found
            bar.update(1)
    _skip_until(remaining, None, skipped)
    bar.close()
    return results, skipped


def _check_outputs(paths, image_out, labels_out, overwrite):
    """Refuses existing outputs (unless overwrite) and images whose outputs would collide (a.jpg, a.png)."""
    planned, sources = [], []
    for folder, name in ((image_out, os.path.basename), (labels_out, lambda p: _stem(p) + ".txt")):
        if folder:
            planned += [os.path.join(folder, name(p)) for p in paths]
            sources += paths
    refuse_to_overwrite(planned, overwrite, "other output folders", sources)


def _stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def run_inference(spec_path, model_path=None, images_dir=None, image_out=None, labels_out=None, overwrite=False,
                  key=None):
    """Inference per the spec's inference_config, with command-line overrides.

    Returns {'detections': {path: detections}, 'skipped': [unreadable paths], 'image_out', 'labels_out'}.
    """
    spec, source = parse_experiment_spec(spec_path)
    config = require_section(spec, source, "inference_config")
    model_path = model_path or config.model
    images_dir = images_dir or config.images_dir
    image_out = image_out or config.detection_image_output_dir
    labels_out = labels_out or config.labels_dump_dir
    if not model_path or not images_dir:
        raise source.error("inference_config", "inference needs a model (-m or inference_config.model) and "
                                               "images (-i or inference_config.images_dir)")
    if images_dir and os.path.abspath(images_dir) == os.path.abspath(image_out or ""):
        raise FrcnnError(f"{image_out}: the annotated-image folder is the input folder; choose another -o")
    paths = list_images(images_dir)
    _check_outputs(paths, image_out, labels_out, overwrite)
    detector = load_detector(model_path, spec, config, key)
    results, skipped = infer_folder(spec, detector, paths, image_out, labels_out, config)
    return {"detections": results, "skipped": skipped, "image_out": image_out, "labels_out": labels_out}
