"""mAP by hand, and against pycocotools' evaluator configured to the same definition."""
import contextlib
import io

import numpy as np
import pytest

from frcnn_tf import metrics

A, B, C = [0, 0, 10, 10], [20, 20, 30, 30], [40, 0, 50, 10]


def _det(boxes, scores, classes=None):
    return {"boxes": np.array(boxes, np.float64).reshape(-1, 4), "scores": np.array(scores, np.float64),
            "classes": np.array(classes if classes is not None else [0] * len(scores))}


def _gt(boxes, classes=None, difficult=None):
    n = len(boxes)
    return {"boxes": np.array(boxes, np.float64).reshape(-1, 4),
            "classes": np.array(classes if classes is not None else [0] * n),
            "difficult": np.array(difficult if difficult is not None else [False] * n)}


def _ap(dets, gts, method):
    return metrics.evaluate(dets, gts, ["thing"], method=method)["ap"]["thing"]


@pytest.mark.parametrize("method", ["voc07", "area", "coco101"])
def test_perfect_detections(method):
    assert _ap([_det([A, B], [0.9, 0.8]), _det([C], [0.7])], [_gt([A, B]), _gt([C])], method) == 1.0


def test_half_the_boxes_missed():
    dets, gts = [_det([A], [0.9]), _det([C], [0.8])], [_gt([A, B]), _gt([C, [60, 60, 70, 70]])]
    assert _ap(dets, gts, "area") == pytest.approx(0.5)
    assert _ap(dets, gts, "voc07") == pytest.approx(6 / 11)  # recall thresholds 0..0.5 reach precision 1


def test_duplicates_are_false_positives():
    # a1 (TP), a2 duplicate of A (FP), b (TP): recall .5 .5 1, precision 1 .5 .667.
    dets, gts = [_det([A, A, B], [0.9, 0.8, 0.7])], [_gt([A, B])]
    assert _ap(dets, gts, "area") == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert _ap(dets, gts, "voc07") == pytest.approx((6 + 5 * 2 / 3) / 11)


def test_difficult_boxes_are_neither_required_nor_false_positives():
    assert _ap([_det([B], [0.8])], [_gt([A, B], difficult=[True, False])], "area") == 1.0
    assert _ap([_det([A, B], [0.9, 0.8])], [_gt([A, B], difficult=[True, False])], "area") == 1.0
    assert _ap([_det([B], [0.8])], [_gt([A, B])], "area") == 0.5


def test_below_threshold_is_false_positive_and_classes_are_separate():
    shifted = [0, 4, 10, 14]  # IoU with A = 60 / 140
    dets = [_det([shifted, A, B], [0.9, 0.8, 0.7], classes=[0, 0, 1])]
    gts = [_gt([A, B, C], classes=[0, 1, 2])]
    result = metrics.evaluate(dets, gts, ["a", "b", "c", "none"], method="area")
    assert result["ap"]["a"] == pytest.approx(0.5)  # FP then TP: precision .5 at recall 1
    assert result["ap"]["b"] == 1.0 and result["ap"]["c"] == 0.0 and result["ap"]["none"] is None
    assert result["map"] == pytest.approx(0.5)
    at_04 = metrics.evaluate(dets, gts, ["a", "b", "c"], iou_thresholds=(0.4,), method="area")
    assert at_04["ap"]["a"] == 1.0  # IoU 60/140 >= 0.4: TP at recall 1; the exact box after it is a duplicate
    both = metrics.evaluate(dets, gts, ["a"], iou_thresholds=(0.4, 0.5), method="area")
    assert both["ap"]["a"] == pytest.approx(0.75)  # mean over the thresholds


def _random_scene(rng, num_images=25, num_classes=3):
    dets, gts = [], []
    for _ in range(num_images):
        cells = rng.choice(36, size=rng.integers(1, 8), replace=False)
        boxes = np.array([[(c // 6) * 60, (c % 6) * 60, (c // 6) * 60 + rng.uniform(15, 45),
                           (c % 6) * 60 + rng.uniform(15, 45)] for c in cells])
        classes = rng.integers(0, num_classes, len(boxes))
        gts.append({"boxes": boxes, "classes": classes, "difficult": np.zeros(len(boxes), bool)})
        found = rng.random(len(boxes)) < 0.8
        det_boxes = boxes[found] + rng.normal(0, 4, (found.sum(), 4))
        det_classes = np.where(rng.random(found.sum()) < 0.9, classes[found], rng.integers(0, num_classes,
                                                                                            found.sum()))
        extra = rng.integers(0, 4)  # false positives in empty cells' corners
        fp = np.array([[370 + 10 * i, 370, 390 + 10 * i, 392] for i in range(extra)]).reshape(-1, 4)
        dets.append({"boxes": np.concatenate([det_boxes, fp]), "classes": np.concatenate(
            [det_classes, rng.integers(0, num_classes, extra)]), "scores": rng.random(len(det_boxes) + extra)})
    return dets, gts


def test_matches_pycocotools_101_point_ap():
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(3)
    dets, gts = _random_scene(rng)
    names = ["a", "b", "c"]
    ours = metrics.evaluate(dets, gts, names, iou_thresholds=(0.5,), method="coco101")

    def xywh(box):
        return [float(box[1]), float(box[0]), float(box[3] - box[1]), float(box[2] - box[0])]

    images = [{"id": i} for i in range(len(gts))]
    annotations = [{"id": len(images) * 100 + i * 100 + j, "image_id": i, "category_id": int(c), "bbox": xywh(b),
                    "area": xywh(b)[2] * xywh(b)[3], "iscrowd": 0}
                   for i, g in enumerate(gts) for j, (b, c) in enumerate(zip(g["boxes"], g["classes"]))]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": images, "annotations": annotations,
                        "categories": [{"id": k, "name": n} for k, n in enumerate(names)]}
        coco.createIndex()
        results = coco.loadRes([{"image_id": i, "category_id": int(c), "bbox": xywh(b), "score": float(s)}
                                for i, d in enumerate(dets)
                                for b, c, s in zip(d["boxes"], d["classes"], d["scores"])])
        evaluator = COCOeval(coco, results, "bbox")
        evaluator.params.iouThrs = np.array([0.5])
        evaluator.params.maxDets = [1000]
        evaluator.params.areaRng = [[0, 1e10]]
        evaluator.params.areaRngLbl = ["all"]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]
    for k, name in enumerate(names):
        theirs = float(np.mean(precision[0, :, k, 0, 0]))
        assert ours["ap"][name] == pytest.approx(theirs, abs=1e-6), name
    assert 0.3 < ours["map"] < 0.95


def test_matched_share_by_hand():
    reference = [{"boxes": np.array([[0, 0, 10, 10], [5, 5, 20, 20], [0, 0, 4, 4.]]), "scores": np.array([.9, .8, .3]),
                  "classes": np.array([0, 1, 0])}]
    candidate = [{"boxes": np.array([[0.5, 0, 10, 10.9], [5, 5, 20, 22.], [0, 0, 4, 4.]]),
                  "scores": np.array([.91, .8, .35]), "classes": np.array([0, 1, 0])}]
    # the first matches (0.9 px, score 0.01); the second is 2 px off; the third's score is 0.05 off
    assert metrics.matched_share(reference, candidate) == pytest.approx(1 / 3)
    assert metrics.matched_share(reference, candidate, box_tolerance=2.0, score_tolerance=0.05) == 1.0
    # one candidate matches one reference detection only
    twice = [{"boxes": np.array([[0, 0, 10, 10.]] * 2), "scores": np.array([.9, .9]), "classes": np.array([0, 0])}]
    assert metrics.matched_share(twice, [{k: v[:1] for k, v in twice[0].items()}]) == 0.5
    assert metrics.matched_share([{"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "classes": np.zeros(0)}],
                                 candidate) == 1.0


def _detections(rows):
    """rows: (class, score, box) -> one image's detections."""
    return {"classes": np.array([row[0] for row in rows]), "scores": np.float32([row[1] for row in rows]),
            "boxes": np.float32([row[2] for row in rows])}


def test_detections_whose_survival_hangs_on_a_score_tie_are_left_out_of_the_comparison():
    # Class 0 ties at 0.5 on both sides; the reference kept T1 and T3, the candidate T2 and T3. F (0.3)
    # overlaps T1 (IoU 80 / 120 = 0.67 > 0.3): the reference's T1 suppressed it. G (0.2) overlaps F
    # (IoU 60 / 140 = 0.43) but no tied box (T1: 40 / 160 = 0.25): the candidate's F suppressed it, so it
    # goes too. H (class 1, overlapping T1) and U (far away) are decided by the scores and stay.
    t1, t2, t3 = [0, 0, 10, 10], [0, 20, 10, 30], [0, 40, 10, 50]
    f, g, h, u = [0, 2, 10, 12], [0, 6, 10, 16], [0, 2, 10, 12], [50, 50, 60, 60]
    reference = _detections([(0, 0.5, t1), (0, 0.5, t3), (0, 0.2, g), (1, 0.4, h), (0, 0.1, u)])
    candidate = _detections([(0, 0.5, t2), (0, 0.5, t3), (0, 0.3, f), (1, 0.4, h), (0, 0.1, u)])
    assert metrics.matched_share([reference], [candidate]) == pytest.approx(3 / 5)  # T3, H, U
    (kept_reference,), (kept_candidate,) = metrics.decided_by_scores([reference], [candidate], nms_iou=0.3)
    for kept in (kept_reference, kept_candidate):
        np.testing.assert_array_equal(kept["classes"], [1, 0])
        np.testing.assert_array_equal(kept["scores"], np.float32([0.4, 0.1]))
        np.testing.assert_array_equal(kept["boxes"], np.float32([h, u]))
    # at a threshold above 0.67 only the tied boxes go
    (kept_reference,), _ = metrics.decided_by_scores([reference], [candidate], nms_iou=0.7)
    np.testing.assert_array_equal(kept_reference["scores"], np.float32([0.2, 0.4, 0.1]))
