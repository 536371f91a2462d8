"""Pictures: detections drawn on an image file, precision-recall curves (PIL only)."""
import io

import numpy as np
from PIL import Image, ImageDraw

PLOT_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
               (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


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


def pr_curve_png(result, size=(640, 480)):
    """A precision-recall plot of every class, as PNG bytes."""
    width, height = size
    left, right, top, bottom = 60, 20, 20, 50
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")

    def point(recall, precision):
        return (left + recall * (width - left - right), height - bottom - precision * (height - top - bottom))

    for tick in np.linspace(0, 1, 6):
        draw.text((point(tick, 0)[0] - 8, height - bottom + 5), f"{tick:.1f}", fill="black")
        draw.text((left - 30, point(0, tick)[1] - 6), f"{tick:.1f}", fill="black")
    draw.text((width / 2 - 20, height - 20), "recall", fill="black")
    draw.text((5, top), "precision", fill="black")
    for index, (name, (recall, precision)) in enumerate(result["pr"].items()):
        color = PLOT_COLORS[index % len(PLOT_COLORS)]
        points = [point(0, 1)] + [point(r, p) for r, p in zip(recall, precision)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        ap = result["ap"][name]
        draw.text((width - right - 170, top + 8 + 14 * index), f"{name}: AP {ap:.3f}", fill=color)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
