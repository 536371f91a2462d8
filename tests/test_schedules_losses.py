"""Learning-rate schedules and losses with hand-computed numbers."""
import math

import numpy as np
import pytest
import tensorflow as tf

from frcnn_tf import losses
from frcnn_tf.schedules import ContinuousStep, SoftStartAnnealing


@pytest.mark.parametrize("step,expected", [(0, 0.002), (5, 0.011), (10, 0.02), (80, 0.02), (81, 0.002),
                                           (90, 0.002), (95, 0.0002)])
def test_soft_start_annealing(step, expected):
    schedule = SoftStartAnnealing(0.02, 0.002, 0.1, [0.8, 0.9], 10.0, total_steps=100)
    assert float(schedule(step)) == pytest.approx(expected, rel=1e-5)


def test_continuous_step_schedule():
    schedule = ContinuousStep(1.0, 0.5, 50, total_steps=100)  # halves every 50 steps, continuously
    assert float(schedule(0)) == 1.0 and float(schedule(50)) == pytest.approx(0.5)
    assert float(schedule(25)) == pytest.approx(math.sqrt(0.5))
    assert SoftStartAnnealing.from_config(SoftStartAnnealing(1, 0.1, 0.2, [0.5], 10, 7).get_config()).total_steps == 7


def test_smooth_l1():
    values = losses.smooth_l1(tf.constant([0.05, -1.0, 0.5]), 3.0).numpy()
    np.testing.assert_allclose(values, [0.5 * 9 * 0.0025, 1 - 0.5 / 9, 0.5 - 0.5 / 9], rtol=1e-6)
    np.testing.assert_allclose(losses.smooth_l1(tf.constant([0.5, 2.0]), 1.0).numpy(), [0.125, 1.5])


def test_rpn_losses_by_hand():
    labels = tf.constant([[1, 0, -1, 1]])
    logits = tf.constant([[0.0, 0.0, 5.0, 0.0]])
    assert float(losses.rpn_class_loss(labels, logits, 4)) == pytest.approx(3 * math.log(2) / 4, rel=1e-6)
    targets = tf.constant([[[0.0, 0, 0, 0], [9, 9, 9, 9], [9, 9, 9, 9], [1.0, 0, 0, 0]]])
    predicted = tf.zeros([1, 4, 4])
    # Only positives count: anchor 3 has |diff| 1 in one coordinate -> 1 - 0.5/9.
    assert float(losses.rpn_regression_loss(labels, targets, predicted, 4)) == pytest.approx((1 - 0.5 / 9) / 4)


def test_rcnn_losses_by_hand():
    labels = tf.constant([[1, 2, -1]])  # 3 classes, background = 2; one padding row
    logits = tf.constant([[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [9.0, 0.0, 0.0]]])
    assert float(losses.rcnn_class_loss(labels, logits, 4)) == pytest.approx(2 * math.log(3) / 4, rel=1e-6)
    deltas = tf.constant([[[0.0, 0, 0, 0, 2.0, 0, 0, 0], [5.0] * 8, [5.0] * 8]])  # class 1 slot of row 0: (2,0,0,0)
    targets = tf.zeros([1, 3, 4])
    # Row 0 (class 1) uses its own slot: smooth_l1(2) = 1.5; background and padding rows add nothing.
    assert float(losses.rcnn_regression_loss(labels, targets, deltas, 3, 4)) == pytest.approx(1.5 / 4)
