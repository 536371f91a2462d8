"""Detection mAP, pure NumPy. Boxes are (y1, x1, y2, x2), continuous coordinates.

Per class: detections of all images sorted by score; each is a true positive if
its best-overlapping ground-truth box (IoU >= threshold) is not yet taken,
otherwise a false positive (duplicates count as false positives). Detections
whose best match is a `difficult` box are ignored, as are those boxes in the
recall denominator (PASCAL VOC and TLT). AP methods:
  voc07   mean of the interpolated precision at recall 0, 0.1, ..., 1
  area    area under the interpolated precision-recall curve (VOC 2010+)
  coco101 mean of the interpolated precision at recall 0, 0.01, ..., 1 (COCO)
"""
import collections

import numpy as np

AP_METHODS = ("voc07", "area", "coco101")


def box_iou(boxes_a, boxes_b):
    """[N, 4] x [M, 4] -> [N, M]."""
    a, b = boxes_a[:, None, :], boxes_b[None, :, :]
    inter = (np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
             * np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None))
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_image(det_boxes, det_scores, gt_boxes, gt_difficult, iou_threshold):
    """Greedy matching in one image and class -> labels per detection: 1 TP, 0 FP, -1 ignored (difficult)."""
    order = np.argsort(-det_scores, kind="stable")
    labels = np.zeros(len(det_boxes), np.int8)
    if len(gt_boxes) == 0:
        return labels
    overlaps = box_iou(det_boxes[order], gt_boxes)
    taken = np.zeros(len(gt_boxes), bool)
    for rank, index in enumerate(order):
        best = int(np.argmax(overlaps[rank]))
        if overlaps[rank, best] < iou_threshold:
            continue
        if gt_difficult[best]:
            labels[index] = -1
        elif not taken[best]:
            labels[index] = 1
            taken[best] = True
    return labels


def average_precision(recall, precision, method):
    """AP from cumulative recall/precision (detections in descending score order)."""
    if method not in AP_METHODS:
        raise ValueError(f"unknown AP method {method!r}; use one of {AP_METHODS}")
    if len(recall) == 0:
        return 0.0
    if method == "voc07":
        return float(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0
                              for t in np.linspace(0, 1, 11)]))
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    if method == "coco101":
        index = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
        return float(np.mean(np.where(index < len(envelope), envelope[np.minimum(index, len(envelope) - 1)], 0.0)))
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(steps * envelope))


def class_pr(detections, ground_truths, class_id, iou_threshold):
    """Scores, TP/FP labels (ignored removed) and positive count for one class over all images."""
    scores, labels, positives = [], [], 0
    for det, gt in zip(detections, ground_truths):
        keep_det, keep_gt = det["classes"] == class_id, gt["classes"] == class_id
        difficult = gt["difficult"][keep_gt]
        positives += int((~difficult).sum())
        image_labels = match_image(det["boxes"][keep_det], det["scores"][keep_det], gt["boxes"][keep_gt],
                                   difficult, iou_threshold)
        scores.append(det["scores"][keep_det])
        labels.append(image_labels)
    scores, labels = np.concatenate(scores or [[]]), np.concatenate(labels or [[]])
    kept = labels >= 0
    order = np.argsort(-scores[kept], kind="stable")
    return scores[kept][order], labels[kept][order], positives


def evaluate(detections, ground_truths, class_names, iou_thresholds=(0.5,), method="area"):
    """Per-class AP (averaged over IoU thresholds) and mAP.

    detections: per image {'boxes' [D, 4], 'scores' [D], 'classes' [D] int};
    ground_truths: per image {'boxes' [G, 4], 'classes' [G] int, 'difficult' [G] bool};
    class ids index class_names. Classes without non-difficult ground truth get
    AP None and are left out of the mean. Returns {'ap': {name: ap}, 'map': float,
    'pr': {name: (recall, precision) at the first threshold}}.
    """
    result = {"ap": {}, "pr": {}}
    for class_id, name in enumerate(class_names):
        values = []
        for threshold in iou_thresholds:
            _, labels, positives = class_pr(detections, ground_truths, class_id, threshold)
            if positives == 0:
                break
            tp = np.cumsum(labels == 1)
            recall = tp / positives
            precision = tp / np.arange(1, len(labels) + 1)
            values.append(average_precision(recall, precision, method))
            if threshold == iou_thresholds[0]:
                result["pr"][name] = (recall, precision)
        result["ap"][name] = float(np.mean(values)) if values else None
    scored = [v for v in result["ap"].values() if v is not None]
    result["map"] = float(np.mean(scored)) if scored else 0.0
    return result


def matched_share(reference, candidate, box_tolerance=1.0, score_tolerance=0.02):
    """Share of `reference`'s detections that `candidate` reproduces: per image, a reference detection
    is matched by an unused candidate detection of the same class whose four box coordinates are each
    within `box_tolerance` (pixels) and whose score is within `score_tolerance` (greedy, reference
    in descending score order). reference, candidate: per-image dicts of 'boxes' [k, 4], 'scores' [k],
    'classes' [k]. 1.0 when the reference has no detection."""
    matched = total = 0
    for expected, found in zip(reference, candidate):
        used = np.zeros(len(found["scores"]), bool)
        for index in np.argsort(-np.asarray(expected["scores"]), kind="stable"):
            total += 1
            close = ((np.asarray(found["classes"]) == expected["classes"][index]) & ~used
                     & (np.abs(np.asarray(found["boxes"]) - expected["boxes"][index]).max(axis=1, initial=0)
                        <= box_tolerance)
                     & (np.abs(np.asarray(found["scores"]) - expected["scores"][index]) <= score_tolerance))
            if close.any():
                used[np.argmax(close)] = True
                matched += 1
    return matched / total if total else 1.0


def decided_by_scores(reference, candidate, nms_iou):
    """(reference, candidate) per-image detections without those whose survival NMS leaves to its own
    order rather than to the scores: a detection whose class and float32 score equal another's on its
    side (NMS keeps one of equally scored boxes by an order TensorFlow and onnxruntime do not share),
    and, going down the scores of both sides together, every detection of the same class overlapping
    one of those (IoU > nms_iou) with at least its score: which of them suppresses it depends on the
    tie. Seen on an untrained QAT model: 12 detections on tied saturated scores (four boxes per class)
    and 3 below them that the kept tie suppressed on one side only, every score equal to 7 digits."""
    kept = ([], [])
    for sides in zip(reference, candidate):
        undecided = [_score_ties(found) for found in sides]
        pool = sorted(((float(found["scores"][i]), side, i) for side, found in enumerate(sides)
                       for i in range(len(found["scores"]))), key=lambda item: -item[0])
        followers = []  # (class, box) of the undecided detections so far, both sides
        for _, side, index in pool:
            found = sides[side]
            label, box = found["classes"][index], np.asarray(found["boxes"][index], np.float64)
            if not undecided[side][index]:
                overlaps = [box_iou(box[None], other[None])[0, 0] for cls, other in followers if cls == label]
                undecided[side][index] = max(overlaps, default=0.0) > nms_iou
            if undecided[side][index]:
                followers.append((label, box))
        for side, found in enumerate(sides):
            kept[side].append({name: np.asarray(values)[~undecided[side]] for name, values in found.items()})
    return kept


def _score_ties(found):
    """[k] bool: the detections whose (class, float32 score) another detection of the image shares."""
    keys = list(zip(np.asarray(found["classes"]).tolist(), np.asarray(found["scores"], np.float32).tolist()))
    counts = collections.Counter(keys)
    return np.array([counts[key] > 1 for key in keys], bool).reshape(-1)
