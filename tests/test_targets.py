"""RPN labels and proposal-target sampling on hand-made boxes."""
import numpy as np
import tensorflow as tf

from frcnn_tf import boxes, targets
from frcnn_tf.settings import RoiSampling, RpnSampling

SEED = tf.constant([1, 2], tf.int64)


def _rpn(anchors, gt, classes, mini_batch=4):
    return targets.rpn_targets(tf.constant(anchors, tf.float32), tf.constant([gt], tf.float32),
                               tf.constant([classes], tf.int32), 100, 100,
                               RpnSampling(min_overlap=0.3, max_overlap=0.7, mini_batch=mini_batch), SEED)


def test_rpn_labels_by_hand():
    anchors = [
        [0, 0, 10, 10],  # IoU 1 with gt 0 -> positive
        [0, 0, 10, 20],  # IoU 0.5 -> ignored (between 0.3 and 0.7)
        [50, 50, 60, 60],  # IoU 0 -> negative
        [-5, 0, 5, 10],  # crosses the border -> ignored
        [30, 30, 40, 40],  # IoU 0 -> negative
        [80, 80, 90, 90],  # IoU 0.25 with gt 1, its best anchor -> forced positive
    ]
    gt = [[0, 0, 10, 10], [80, 80, 100, 100], [0, 0, 0, 0]]
    labels, deltas = _rpn(anchors, gt, [0, 1, -1], mini_batch=6)
    assert labels.numpy().tolist() == [[1, -1, 0, -1, 0, 1]]
    np.testing.assert_allclose(deltas.numpy()[0, 0], [0, 0, 0, 0])
    # Anchor 5 (centre 85,85 size 10) regresses to gt 1 (centre 90,90 size 20).
    np.testing.assert_allclose(deltas.numpy()[0, 5], [0.5, 0.5, np.log(2), np.log(2)], rtol=1e-6)
    np.testing.assert_allclose(deltas.numpy()[0, [1, 2, 3, 4]], 0.0)


def test_rpn_sampling_counts():
    # 10 anchors on the gt box (positives), 30 far away (negatives); mini batch 8.
    anchors = [[0, 0, 10, 10]] * 10 + [[50 + i % 5, 50, 60 + i % 5, 60] for i in range(30)]
    labels, _ = _rpn(anchors, [[0, 0, 10, 10]], [0], mini_batch=8)
    labels = labels.numpy()[0]
    assert (labels == 1).sum() == 4 and (labels == 0).sum() == 4  # at most half positive
    assert set(np.nonzero(labels == 1)[0]) <= set(range(10))
    # Few positives: negatives fill the mini batch.
    labels, _ = _rpn(anchors[8:], [[0, 0, 10, 10]], [0], mini_batch=8)
    assert (labels.numpy() == 1).sum() == 2 and (labels.numpy() == 0).sum() == 6
    # Different seeds pick different negatives, the same seed the same ones.
    again, _ = _rpn(anchors[8:], [[0, 0, 10, 10]], [0], mini_batch=8)
    np.testing.assert_array_equal(labels.numpy(), again.numpy())


def test_rpn_without_ground_truth_is_all_negative_samples():
    anchors = [[50 + i, 50, 60 + i, 60] for i in range(6)]
    labels, deltas = _rpn(anchors, [[0, 0, 0, 0]], [-1], mini_batch=4)
    assert (labels.numpy() == 0).sum() == 4 and (labels.numpy() == 1).sum() == 0
    assert not deltas.numpy().any()


def test_proposal_target_sampling_by_hand():
    gt = tf.constant([[[0, 0, 10, 10], [0, 0, 0, 0]]], tf.float32)
    classes = tf.constant([[2, -1]])
    proposals = tf.constant([[[0, 0, 10, 10],  # IoU 1 -> foreground
                              [0, 0, 10, 11],  # IoU 0.909 -> foreground
                              [0, 0, 10, 25],  # IoU 0.4 -> background
                              [0, 5, 10, 15],  # IoU 1/3 -> background
                              [0, 0, 0, 0],  # padding
                              [40, 40, 50, 50]]], tf.float32)  # IoU 0 -> below min_overlap 0.1: ignored
    valid = tf.constant([[True, True, True, True, False, True]])
    sampling = RoiSampling(min_overlap=0.1, max_overlap=0.5, mini_batch=4, positive_fraction=0.25, gt_as_roi=False,
                           box_weights=(10.0, 10.0, 5.0, 5.0))
    rois, labels, deltas = targets.proposal_targets(proposals, valid, gt, classes, num_classes=4, sampling=sampling,
                                                    seed=SEED)
    labels = labels.numpy()[0].tolist()
    # int(4 * 0.25) = 1 foreground (class 2), then both backgrounds (id 3), then padding.
    assert labels == [2, 3, 3, -1]
    rois = rois.numpy()[0]
    assert rois[0].tolist() in ([0, 0, 10, 10], [0, 0, 10, 11])
    assert sorted(map(tuple, rois[1:3].tolist())) == [(0, 0, 10, 25), (0, 5, 10, 15)]
    assert rois[3].tolist() == [0, 0, 0, 0]
    expected = boxes.encode(gt[0, :1], tf.constant(rois[:1]), (10.0, 10.0, 5.0, 5.0)).numpy()
    np.testing.assert_allclose(deltas.numpy()[0, :1], expected, atol=1e-6)
    assert not deltas.numpy()[0, 1:].any()


def test_gt_as_roi_adds_ground_truth_candidates():
    gt = tf.constant([[[0, 0, 10, 10]]], tf.float32)
    proposals = tf.constant([[[60, 60, 70, 70]]], tf.float32)  # IoU 0: ignored with min_overlap 0.1
    sampling = RoiSampling(min_overlap=0.1, max_overlap=0.5, mini_batch=2, positive_fraction=0.5, gt_as_roi=True)
    rois, labels, _ = targets.proposal_targets(proposals, tf.constant([[True]]), gt, tf.constant([[0]]), 2,
                                               sampling=sampling, seed=SEED)
    assert labels.numpy().tolist() == [[0, -1]] and rois.numpy()[0, 0].tolist() == [0, 0, 10, 10]


def test_gt_recall_counts_covered_valid_ground_truth():
    # gt 0 [0,0,10,10]: candidate [0,0,10,5] has IoU 0.5 (covered at 0.5, not at 0.6).
    # gt 1 [20,20,30,30]: only the invalid candidate matches it exactly; IoU with the others 0.
    # gt 2 is padding. Image 2: one gt, candidate identical -> covered.
    candidates = tf.constant([[[0, 0, 10, 5], [20, 20, 30, 30]], [[5, 5, 9, 9], [0, 0, 0, 0]]], tf.float32)
    candidate_valid = tf.constant([[True, False], [True, False]])
    gt = tf.constant([[[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 0, 0]], [[5, 5, 9, 9], [0, 0, 0, 0], [0, 0, 0, 0]]],
                     tf.float32)
    gt_valid = tf.constant([[True, True, False], [True, False, False]])
    covered, total = targets.gt_recall(candidates, candidate_valid, gt, gt_valid, 0.5)
    assert (float(covered), float(total)) == (2.0, 3.0)
    covered, _ = targets.gt_recall(candidates, candidate_valid, gt, gt_valid, 0.6)
    assert float(covered) == 1.0


def test_a_replica_samples_its_images_as_the_whole_global_batch_would():
    """Data-parallel replicas each hold a slice of the global batch (`rows`): every image's sampled
    anchors and RoIs equal those of the undivided batch, whichever slice it is in."""
    anchors = tf.constant([[0, 0, 10, 10]] * 10 + [[50 + i % 5, 50, 60 + i % 5, 60] for i in range(30)], tf.float32)
    gt = tf.constant([[[0, 0, 10, 10]]] * 4, tf.float32)
    classes = tf.constant([[0]] * 4)
    rpn = RpnSampling(min_overlap=0.3, max_overlap=0.7, mini_batch=8)
    whole, _ = targets.rpn_targets(anchors, gt, classes, 100, 100, rpn, SEED)
    halves = [targets.rpn_targets(anchors, gt[i:i + 2], classes[i:i + 2], 100, 100, rpn, SEED, rows=(i, 4))[0]
              for i in (0, 2)]
    np.testing.assert_array_equal(tf.concat(halves, 0).numpy(), whole.numpy())
    alone, _ = targets.rpn_targets(anchors, gt[2:], classes[2:], 100, 100, rpn, SEED)  # without rows: rows 0-1
    assert (alone.numpy() != whole.numpy()[2:]).any()

    proposals = tf.tile(anchors[tf.newaxis], [4, 1, 1])
    roi = RoiSampling(min_overlap=0.0, max_overlap=0.5, mini_batch=6, positive_fraction=0.5)
    whole = targets.proposal_targets(proposals, tf.ones([4, 40], tf.bool), gt, classes, 2, roi, SEED)[0]
    halves = [targets.proposal_targets(proposals[i:i + 2], tf.ones([2, 40], tf.bool), gt[i:i + 2], classes[i:i + 2], 2,
                                       roi, SEED, rows=(i, 4))[0] for i in (0, 2)]
    np.testing.assert_array_equal(tf.concat(halves, 0).numpy(), whole.numpy())
