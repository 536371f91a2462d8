"""KITTI label files: parsing with located problem reports (no TensorFlow).

A KITTI line has 15 fields: class, truncation, occlusion, alpha, x1 y1 x2 y2
(pixels), h w l (3D size), x y z (location), rotation_y.
"""
import dataclasses
import math

NUM_FIELDS = 15


@dataclasses.dataclass(frozen=True)
class KittiObject:
    """One labelled object; box in pixels (x1, y1, x2, y2), class lower-cased as TLT stores it."""

    label_class: str  # as written in the label file
    object_class: str
    truncation: float
    occlusion: int
    alpha: float
    box: tuple
    dimensions: tuple  # h, w, l
    location: tuple  # x, y, z
    rotation_y: float

    def with_box(self, box):
        return dataclasses.replace(self, box=tuple(box))


@dataclasses.dataclass(frozen=True)
class Problem:
    """A defect in the input, located as `path:line` (line 0: the whole file)."""

    path: str
    line: int
    message: str

    def __str__(self):
        return f"{self.path}:{self.line}: {self.message}" if self.line else f"{self.path}: {self.message}"


def parse_line(text):
    """Parses one KITTI line; returns a KittiObject or raises ValueError with the reason."""
    fields = text.split()
    if len(fields) != NUM_FIELDS:
        raise ValueError(f"expected {NUM_FIELDS} fields, found {len(fields)}")
    try:
        values = [float(v) for v in fields[1:]]
    except ValueError:
        bad = next(v for v in fields[1:] if not _is_float(v))
        raise ValueError(f"field '{bad}' is not a number") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError("fields must be finite numbers")
    return KittiObject(
        label_class=fields[0], object_class=fields[0].lower(), truncation=values[0], occlusion=int(values[1]),
        alpha=values[2], box=tuple(values[3:7]), dimensions=tuple(values[7:10]), location=tuple(values[10:13]),
        rotation_y=values[13])


def _is_float(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def check_box(obj, width, height, clip):
    """Returns (object or None, problem message or None) for an image of width x height.

    Inverted or empty boxes are dropped. Boxes reaching outside the image are
    clipped (`clip`) or dropped; boxes entirely outside are dropped.
    """
    x1, y1, x2, y2 = obj.box
    if not (x1 < x2 and y1 < y2):
        return None, f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) has x2 <= x1 or y2 <= y1; object dropped"
    inside = (max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height)))
    if inside == (x1, y1, x2, y2):
        return obj, None
    if not (inside[0] < inside[2] and inside[1] < inside[3]):
        return None, f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) lies outside the {width}x{height} image; object dropped"
    if clip:
        return obj.with_box(inside), (f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) reaches outside the {width}x{height} "
                                      "image; clipped")
    return None, f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) reaches outside the {width}x{height} image; object dropped"


def read_label_file(path, width, height, clip=True):
    """Objects of a label file for a width x height image (None if unreadable), and the problems found."""
    objects, problems = [], []
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        return None, [Problem(path, 0, f"cannot read the label file ({err}); image skipped")]
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            obj = parse_line(text)
        except ValueError as err:
            problems.append(Problem(path, number, f"{err}; line skipped"))
            continue
        obj, message = check_box(obj, width, height, clip)
        if message:
            problems.append(Problem(path, number, message))
        if obj is not None:
            objects.append(obj)
    if not any(text.strip() for text in lines):
        problems.append(Problem(path, 0, "empty label file; the image is kept with no objects"))
    return objects, problems
