"""Small synthetic KITTI folders and specs for tests (PIL-drawn images)."""
import pathlib

from PIL import Image, ImageDraw

from frcnn_tf.data import convert
from frcnn_tf.spec import load_conversion_spec

CONVERSION_SPEC = """kitti_config {{
  root_directory_path: "{root}"
  image_dir_name: "images"
  label_dir_name: "labels"
  image_extension: "{extension}"
  partition_mode: "{mode}"
  num_partitions: {folds}
  val_split: {val_split}
  num_shards: {shards}
  {extra}
}}
"""


def kitti_line(name, box, occlusion=0):
    x1, y1, x2, y2 = box
    return f"{name} 0.00 {occlusion} 0.00 {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f} 0 0 0 0 0 0 0"


def make_kitti(root, frames, extension=".png", size=(64, 48)):
    """frames: {stem: [kitti lines] or None (no label file)}; draws each box on a grey image."""
    root = pathlib.Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for index, (stem, lines) in enumerate(frames.items()):
        image = Image.new("RGB", size, (90 + index % 50, 100, 110))
        draw = ImageDraw.Draw(image)
        for line in lines or []:
            fields = line.split()
            if len(fields) == 15:
                try:
                    draw.rectangle([float(v) for v in fields[4:8]], fill=(250, 30, 30))
                except ValueError:
                    pass
        image.save(root / "images" / f"{stem}{extension}")
        if lines is not None:
            (root / "labels" / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    return root


def write_conversion_spec(path, root, mode="random", folds=2, val_split=25, shards=2, extension=".png", extra=""):
    path = pathlib.Path(path)
    path.write_text(CONVERSION_SPEC.format(root=root, mode=mode, folds=folds, val_split=val_split, shards=shards,
                                           extension=extension, extra=extra))
    return str(path)


def write_experiment_spec(path, tfrecords, image_dir, mapping, height=128, width=192, extension="jpg",
                          replace=()):
    """The project's default training spec pointed at test data, at a small input size."""
    text = (pathlib.Path(__file__).resolve().parents[1] / "specs" / "frcnn_resnet18_train.txt").read_text()
    start, end = text.index("  target_class_mapping"), text.index("  validation_fold")
    text = text[:start] + "".join(f"  target_class_mapping {{ key: '{k}' value: '{v}' }}\n"
                                  for k, v in mapping.items()) + text[end:]
    text = (text.replace('"../workdir/tfrecords/sample-fold-*"', f'"{tfrecords}"')
            .replace('image_directory_path: "../workdir/sample_data"', f'image_directory_path: "{image_dir}"')
            .replace("image_extension: 'jpg'", f"image_extension: '{extension}'")
            .replace("height: 384", f"height: {height}").replace("width: 1248", f"width: {width}")
            .replace("output_image_width: 1248", f"output_image_width: {width}")
            .replace("output_image_height: 384", f"output_image_height: {height}"))
    for old, new in replace:
        assert old in text, old
        text = text.replace(old, new)
    path = pathlib.Path(path)
    path.write_text(text)
    return str(path)


TRAFFIC_LIGHT_CLASSES = {name: ("red" if name.startswith("red") else "green" if name.startswith("green")
                                else "yellow")
                         for name in ("green greenleft greenpeople greenstraight greentime red redleft redpeople "
                                      "redstraight redtime yellow yellowleft yellowstraight yellowtime").split()}


def small_training_spec(path, records_dir, image_dir, output_model, epochs=1, extra=()):
    """A quick spec on the converted real dataset: 128x192, small anchors, mini-batches and RoI counts."""
    return write_experiment_spec(path, f"{records_dir}/tl-fold-*", image_dir, TRAFFIC_LIGHT_CLASSES, replace=[
        ('output_model: "../workdir/models/frcnn_resnet18.hdf5"', f'output_model: "{output_model}"'),
        ("batch_size_per_gpu: 8", "batch_size_per_gpu: 2"), ("num_epochs: 12", f"num_epochs: {epochs}"),
        ("rpn_mini_batch: 256", "rpn_mini_batch: 64"), ("roi_mini_batch: 256", "roi_mini_batch: 32"),
        ("rpn_pre_nms_top_N: 12000", "rpn_pre_nms_top_N: 1000"), ("rpn_nms_max_boxes: 2000", "rpn_nms_max_boxes: 200"),
        ("rpn_pre_nms_top_N: 6000\n  rpn_nms_max_boxes: 300", "rpn_pre_nms_top_N: 500\n  rpn_nms_max_boxes: 32"),
        ("scale: 64.0\n    scale: 128.0\n    scale: 256.0", "scale: 16.0\n    scale: 32.0\n    scale: 64.0"),
        *extra])


def tiny_dataset(root, count=12, size=(64, 48)):
    """`count` PNG frames with one 'car' box each (placed by index) under root/images, root/labels."""
    frames = {f"{i:06d}": [kitti_line("car", (4 + i % 5 * 4, 4 + i % 3 * 3, 36 + i % 5 * 4, 30 + i % 3 * 3))]
              for i in range(count)}
    return make_kitti(root, frames, size=size)


def tiny_training_spec(path, tfrecords, image_dir, output_model, epochs=1, extra=()):
    """ResNet10 at 32x48 on tiny_dataset records: the fastest spec that trains, evaluates and infers."""
    return write_experiment_spec(path, tfrecords, image_dir, {"car": "car"}, height=32, width=48, extension="png",
                                 replace=[
        ('output_model: "../workdir/models/frcnn_resnet18.hdf5"', f'output_model: "{output_model}"'),
        ('arch: "resnet:18"', 'arch: "resnet:10"'), ("freeze_blocks: 0\n  freeze_blocks: 1\n", ""),
        ("batch_size_per_gpu: 8", "batch_size_per_gpu: 2"), ("num_epochs: 12", f"num_epochs: {epochs}"),
        ("rpn_mini_batch: 256", "rpn_mini_batch: 16"), ("roi_mini_batch: 256", "roi_mini_batch: 8"),
        ("rpn_pre_nms_top_N: 12000", "rpn_pre_nms_top_N: 100"), ("rpn_nms_max_boxes: 2000", "rpn_nms_max_boxes: 16"),
        ("rpn_pre_nms_top_N: 6000\n  rpn_nms_max_boxes: 300", "rpn_pre_nms_top_N: 100\n  rpn_nms_max_boxes: 16"),
        ("scale: 64.0\n    scale: 128.0\n    scale: 256.0", "scale: 16.0\n    scale: 32.0"),
        *extra])


def converted_tiny_dataset(folder):
    """(KITTI root, shard glob) of tiny_dataset under `folder` converted with 3 validation frames
    (val_split 25) and one shard per fold."""
    root = tiny_dataset(folder / "kitti")
    spec = load_conversion_spec(write_conversion_spec(folder / "convert.txt", root, val_split=25, shards=1))
    convert.convert(spec, str(folder / "tfr" / "t"), workers=1)
    return root, str(folder / "tfr" / "t-fold-*")
