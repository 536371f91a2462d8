"""Small synthetic KITTI folders and specs for tests (PIL-drawn images)."""
import pathlib

from PIL import Image, ImageDraw

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
