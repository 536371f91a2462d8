"""inference: annotated images and KITTI label files for a folder of images."""
import io
import os

import tensorflow as tf
from PIL import Image, ImageDraw
from tqdm import tqdm

from frcnn_tf.data.pipeline import InputPipeline, decode_image
from frcnn_tf.errors import FrcnnError
from frcnn_tf.evaluate import PLOT_COLORS
from frcnn_tf.io_utils import atomic_write_bytes, atomic_write_text
from frcnn_tf.predict import to_file_pixels

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def kitti_lines(found, names, threshold):
    """TLT's KITTI dump: `class 0 0 0 x1 y1 x2 y2 0 0 0 0 0 0 0 score` for scores >= threshold."""
    lines = []
    for (y1, x1, y2, x2), score, cls in zip(found["boxes"], found["scores"], found["classes"]):
        if score >= threshold:
            lines.append(f"{names[cls]} 0 0 0 {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f} 0 0 0 0 0 0 0 {score:.7f}")
    return lines


def annotate(path, found, names, threshold, captions):
    """The image at `path` with boxes (and `class: score` captions) drawn, as encoded bytes."""
    with Image.open(path) as source:
        image = source.convert("RGB")
    draw = ImageDraw.Draw(image)
    for (y1, x1, y2, x2), score, cls in zip(found["boxes"], found["scores"], found["classes"]):
        if score < threshold:
            continue
        color = PLOT_COLORS[cls % len(PLOT_COLORS)]
        draw.rectangle([x1, y1, x2, y2], outline=color, width=2)
        if captions:
            draw.text((x1 + 2, max(y1 - 12, 0)), f"{names[cls]}: {score:.2f}", fill=color)
    out = io.BytesIO()
    image.save(out, format="PNG" if path.lower().endswith(".png") else "JPEG", quality=95)
    return out.getvalue()


def list_images(images_dir):
    if not os.path.isdir(images_dir):
        raise FrcnnError(f"{images_dir}: images directory not found")
    paths = sorted(os.path.join(images_dir, n) for n in os.listdir(images_dir) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise FrcnnError(f"{images_dir}: no .jpg/.jpeg/.png images")
    return paths


def _load(pipeline, path):
    image = decode_image(tf.io.read_file(path))
    placed, scale = pipeline.place(image)
    return placed, scale, tf.shape(image)[:2]


def image_dataset(pipeline, paths, batch_size):
    """Batches of (network input, scale, file size (h, w)) for image files, preprocessed like training data."""
    data = tf.data.Dataset.from_tensor_slices(paths)
    data = data.map(lambda path: _load(pipeline, path), num_parallel_calls=tf.data.AUTOTUNE)
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def infer_folder(spec, detector, paths, image_out, labels_out, config):
    """Runs the detector on image files; writes annotated images and label files; returns detections."""
    results = {}
    names = detector.class_names
    bar = tqdm(total=len(paths), desc="inference", unit="img", disable=None)
    remaining = iter(paths)
    for images, scales, sizes in image_dataset(InputPipeline(spec), paths, config.batch_size):
        for found, scale, size in zip(detector(images), scales.numpy(), sizes.numpy()):
            path = next(remaining)
            found = to_file_pixels(found, scale, size)
            stem = os.path.splitext(os.path.basename(path))[0]
            if labels_out:
                text = "\n".join(kitti_lines(found, names, config.bbox_visualize_threshold))
                atomic_write_text(os.path.join(labels_out, f"{stem}.txt"), text + "\n" if text else "")
            if image_out:
                atomic_write_bytes(os.path.join(image_out, os.path.basename(path)),
                                   annotate(path, found, names, config.bbox_visualize_threshold,
                                            config.bbox_caption_on))
            results[path] = found
            bar.update(1)
    bar.close()
    return results


def _check_outputs(paths, image_out, labels_out, overwrite):
    planned = [os.path.join(image_out, os.path.basename(p)) for p in paths] if image_out else []
    planned += [os.path.join(labels_out, os.path.splitext(os.path.basename(p))[0] + ".txt")
                for p in paths] if labels_out else []
    existing = [p for p in planned if os.path.exists(p)]
    if existing and not overwrite:
        raise FrcnnError(f"{existing[0]}: exists ({len(existing)} output files would be replaced); "
                         "choose other output folders or pass --overwrite")


def run_inference(spec_path, model_path=None, images_dir=None, image_out=None, labels_out=None, overwrite=False,
                  key=None):
    """Inference per the spec's inference_config, with command-line overrides; returns detections."""
    from frcnn_tf.predict import load_detector
    from frcnn_tf.spec import parse_experiment_spec
    from frcnn_tf.spec.validate import require_section

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
    results = infer_folder(spec, detector, paths, image_out, labels_out, config)
    print(f"{len(results)} images; annotated images: {image_out or '-'}; labels: {labels_out or '-'}")
    return results
