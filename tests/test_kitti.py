"""KITTI label parsing: located problems, TLT's lower-casing, box checks by hand."""
import pytest

from frcnn_tf.data import kitti

LINE = "Car 0.50 1 -1.57 10.0 20.0 110.0 220.0 1.5 1.6 3.9 1.0 2.0 30.0 -1.5"


def test_parse_line_fields():
    obj = kitti.parse_line(LINE)
    assert obj.label_class == "Car" and obj.object_class == "car"
    assert obj.truncation == 0.5 and obj.occlusion == 1 and obj.alpha == -1.57
    assert obj.box == (10.0, 20.0, 110.0, 220.0)
    assert obj.dimensions == (1.5, 1.6, 3.9) and obj.location == (1.0, 2.0, 30.0) and obj.rotation_y == -1.5


@pytest.mark.parametrize("text,message", [
    ("Car 0 0 0 1 2 3", "expected 15 fields, found 7"),
    (LINE.replace("110.0", "1l0"), "field '1l0' is not a number"),
    (LINE.replace("110.0", "nan"), "fields must be finite numbers"),
])
def test_parse_line_errors(text, message):
    with pytest.raises(ValueError, match=message):
        kitti.parse_line(text)


@pytest.mark.parametrize("box,expected,message", [
    ((10, 20, 110, 220), (10, 20, 110, 220), None),
    ((110, 20, 10, 220), None, "x2 <= x1 or y2 <= y1; object dropped"),
    ((10, 20, 10, 220), None, "x2 <= x1 or y2 <= y1; object dropped"),
    ((-5, 20, 110, 300), (0, 20, 110, 240), "reaches outside the 320x240 image; clipped"),
    ((330, 20, 400, 30), None, "lies outside the 320x240 image; object dropped"),
])
def test_check_box_against_a_320x240_image(box, expected, message):
    obj = kitti.parse_line(LINE).with_box(box)
    kept, problem = kitti.check_box(obj, 320, 240, clip=True)
    assert (kept.box if kept else None) == (tuple(float(v) for v in expected) if expected else None)
    assert (problem is None) == (message is None)
    if message:
        assert problem.endswith(message)


def test_outside_box_dropped_without_clip():
    obj = kitti.parse_line(LINE).with_box((-5, 20, 110, 300))
    kept, problem = kitti.check_box(obj, 320, 240, clip=False)
    assert kept is None and problem.endswith("object dropped")


def test_read_label_file_reports_lines(tmp_path):
    path = tmp_path / "000001.txt"
    path.write_text("\n".join([LINE, "Car 0 0", "", LINE.replace("110.0", "x"), LINE.replace("Car", "Van")]) + "\n")
    objects, problems = kitti.read_label_file(str(path), 320, 240)
    assert [o.object_class for o in objects] == ["car", "van"]
    assert [str(p) for p in problems] == [
        f"{path}:2: expected 15 fields, found 3; line skipped",
        f"{path}:4: field 'x' is not a number; line skipped",
    ]


def test_empty_and_unreadable_label_files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    objects, problems = kitti.read_label_file(str(empty), 10, 10)
    assert objects == [] and str(problems[0]) == f"{empty}: empty label file; the image is kept with no objects"
    objects, problems = kitti.read_label_file(str(tmp_path / "missing.txt"), 10, 10)
    assert objects is None and "cannot read the label file" in str(problems[0])
