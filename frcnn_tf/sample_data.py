"""A synthetic KITTI-layout detection dataset, deterministic by seed (no downloads).

Classes circle, square and triangle, 16-72 px, over textured backgrounds
(gradients, stripes, blotches, noise) with unlabelled distractor shapes. Each
class leans to its own hue (red, green, blue, +-40 degrees, random saturation and
brightness) so that a short CPU training learns something; shape, small sizes,
blurred round blotches and occlusion keep it from being easy. Objects may
overlap: a box more than 30 % covered by later objects is marked occluded (KITTI
occlusion 1), and TLT counts occluded boxes as difficult.
"""
import colorsys
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

CLASSES = ("circle", "square", "triangle")
CLASS_HUES = {"circle": 0.0, "square": 1 / 3, "triangle": 2 / 3}  # fractions of the hue circle
HUE_JITTER = 40 / 360


def _class_color(rng, name):
    hue = (CLASS_HUES[name] + rng.uniform(-HUE_JITTER, HUE_JITTER)) % 1.0
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.4, 1.0), rng.uniform(0.35, 1.0))
    return tuple(int(255 * c) for c in rgb)


def _background(rng, width, height):
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, 3)
    gradient = rng.uniform(-0.3, 0.3, (2, 3))
    image = base + (x[..., None] * gradient[0] + y[..., None] * gradient[1])
    period, angle = rng.uniform(8, 40), rng.uniform(0, np.pi)
    stripes = np.sin((x * np.cos(angle) + y * np.sin(angle)) / period * 2 * np.pi)
    image += stripes[..., None] * rng.uniform(0, 30, 3)
    image += rng.normal(0, rng.uniform(3, 15), image.shape)
    picture = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for _ in range(rng.integers(3, 9)):  # blotches
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(30, 90)
        draw.ellipse([cx - r, cy - r * rng.uniform(0.3, 1), cx + r, cy + r], fill=tuple(rng.integers(0, 256, 3)))
    return picture.filter(ImageFilter.GaussianBlur(rng.uniform(3, 6)))


def _polygon(name, cx, cy, size, rng):
    half = size / 2
    if name == "square":
        return [(cx - half, cy - half), (cx + half, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    if name == "triangle":
        return [(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    raise ValueError(name)


def _draw_object(draw, mask_draw, name, cx, cy, size, color, rng):
    half = size / 2
    if name == "circle":
        for target, fill in ((draw, color), (mask_draw, 1)):
            target.ellipse([cx - half, cy - half, cx + half, cy + half], fill=fill)
    else:
        points = _polygon(name, cx, cy, size, rng)
        for target, fill in ((draw, color), (mask_draw, 1)):
            target.polygon(points, fill=fill)
    return (cx - half, cy - half, cx + half, cy + half)


def _distractor(draw, rng, width, height):
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    color = tuple(int(c) for c in rng.integers(0, 256, 3))
    if rng.random() < 0.5:
        draw.line([(cx, cy), (cx + rng.uniform(-60, 60), cy + rng.uniform(-60, 60))], fill=color,
                  width=int(rng.integers(1, 5)))
    else:
        r = rng.uniform(5, 30)
        draw.rectangle([cx - r, cy - r / 4, cx + r, cy + r / 4], fill=color)  # thin bars, not squares


def make_image(rng, width, height, max_objects=6):
    """(PIL image, [(class, (x1, y1, x2, y2), occluded)])."""
    image = _background(rng, width, height)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(0, 4)):
        _distractor(draw, rng, width, height)
    objects, masks = [], []
    for _ in range(rng.integers(1, max_objects + 1)):
        name = CLASSES[rng.integers(len(CLASSES))]
        size = float(np.exp(rng.uniform(np.log(16), np.log(72))))
        cx, cy = rng.uniform(size / 2, width - size / 2), rng.uniform(size / 2, height - size / 2)
        color = _class_color(rng, name)
        mask = Image.new("L", (width, height), 0)
        box = _draw_object(draw, ImageDraw.Draw(mask), name, cx, cy, size, color, rng)
        current = np.asarray(mask, bool)
        masks = [m & ~current for m in masks]  # later objects cover earlier ones
        full = [m.sum() for m in masks]
        masks.append(current)
        objects.append([name, box, current.sum(), full])
    labels = []
    for index, (name, box, area, _) in enumerate(objects):
        visible = masks[index].sum()
        if visible < 0.2 * area:
            continue  # almost hidden: not labelled
        labels.append((name, box, visible < 0.7 * area))
    return image, labels


def kitti_line(name, box, occluded):
    x1, y1, x2, y2 = box
    return f"{name} 0.00 {int(occluded)} 0.00 {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f} 0 0 0 0 0 0 0"


def generate(output_dir, num_images=300, width=320, height=192, seed=0):
    """Writes images/<id>.jpg and labels/<id>.txt under output_dir; returns the object count per class."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(output_dir, "images"), exist_ok=True)
    os.makedirs(os.path.join(output_dir, "labels"), exist_ok=True)
    counts = dict.fromkeys(CLASSES, 0)
    for index in tqdm(range(num_images), desc="sample data", unit="img", disable=None):
        image, labels = make_image(rng, width, height)
        stem = f"{index:06d}"
        image.save(os.path.join(output_dir, "images", f"{stem}.jpg"), quality=90)
        with open(os.path.join(output_dir, "labels", f"{stem}.txt"), "w", encoding="utf-8") as handle:
            handle.write("".join(kitti_line(*label) + "\n" for label in labels))
        for name, _, _ in labels:
            counts[name] += 1
    return counts
