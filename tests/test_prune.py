"""Structured pruning: hand-checked filter choices per equalization mode, exactness, Faster R-CNN."""
import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO
from frcnn_tf.model.frcnn import build_model
from frcnn_tf.prune import PruneOptions, prune_model, retained_indices
from frcnn_tf.spec import load_experiment_spec
from frcnn_tf.model import checkpoints

# Per-filter L2 norms of the two convs that meet in the Add (normalised by their max: the same values).
NORMS_A = [1.0, 0.2, 0.5, 0.05]
NORMS_B = [0.1, 1.0, 0.3, 0.4]


def _tiny_model():
    image = tf.keras.Input([6, 6, 2])
    a = tf.keras.layers.Conv2D(4, 1, use_bias=False, name="conv_a")(image)
    b = tf.keras.layers.Conv2D(4, 1, use_bias=False, name="conv_b")(image)
    x = tf.keras.layers.ReLU(name="relu")(tf.keras.layers.Add(name="add")([a, b]))
    out = tf.keras.layers.Conv2D(3, 1, use_bias=False, name="conv_c")(x)
    model = tf.keras.Model(image, out)
    for name, norms in (("conv_a", NORMS_A), ("conv_b", NORMS_B)):
        kernel = np.zeros([1, 1, 2, 4], np.float32)
        kernel[0, 0, 0] = norms  # one non-zero input weight per filter: its L2 norm
        model.get_layer(name).set_weights([kernel])
    model.get_layer("conv_c").set_weights([np.ones([1, 1, 4, 3], np.float32) * [[[[1.0], [2.0], [3.0], [4.0]]]]])
    return model


@pytest.mark.parametrize("equalization,kept", [
    ("union", [0, 1, 2, 3]),  # max: 1, 1, .5, .4 -> all above 0.35
    ("intersection", [2]),  # min: .1, .2, .3, .05 -> none above; keep min_filters = 1: the best, filter 2
    ("arithmetic_mean", [0, 1, 2]),  # .55, .6, .4, .225
    ("geometric_mean", [1, 2]),  # .316, .447, .387, .141
])
def test_equalization_modes_by_hand(equalization, kept):
    model = _tiny_model()
    pruned, table = prune_model(model, PruneOptions(0.35, equalization, granularity=1, min_filters=1), {})
    rows = {row["layer"]: row for row in table}
    assert rows["conv_a"]["filters_after"] == rows["conv_b"]["filters_after"] == len(kept)
    np.testing.assert_array_equal(pruned.get_layer("conv_a").kernel.numpy()[0, 0, 0],
                                  np.array(NORMS_A, np.float32)[kept])
    np.testing.assert_array_equal(pruned.get_layer("conv_b").kernel.numpy()[0, 0, 0],
                                  np.array(NORMS_B, np.float32)[kept])
    # The consumer's input channels follow: conv_c input weights were 1, 2, 3, 4 per channel.
    np.testing.assert_array_equal(pruned.get_layer("conv_c").kernel.numpy()[0, 0, :, 0], np.array([1, 2, 3, 4.0])[kept])
    assert rows["conv_c"]["filters_after"] == 3  # the model output keeps its depth (min_filters 1 < 3 > 0.35 all)


def test_granularity_and_min_filters():
    stats = np.array([0.1, 0.2, 0.3, 0.05, 0.9, 0.8])
    assert retained_indices(stats, 0.5, min_filters=1, granularity=1).tolist() == [4, 5]
    assert retained_indices(stats, 0.5, min_filters=1, granularity=4).tolist() == [1, 2, 4, 5]
    assert retained_indices(stats, 0.95, min_filters=3, granularity=1).tolist() == [2, 4, 5]
    assert retained_indices(stats, 0.0, min_filters=1, granularity=4).tolist() == [0, 1, 2, 3, 4, 5]
    model = _tiny_model()
    pruned, _ = prune_model(model, PruneOptions(0.35, "intersection", granularity=2, min_filters=1), {})
    assert pruned.get_layer("conv_a").filters == 2  # filter 2 rounded up with the next best, filter 1


def test_excluded_layer_keeps_its_whole_group():
    pruned, _ = prune_model(_tiny_model(), PruneOptions(0.35, "intersection", 1, 1, excluded=("conv_b",)), {})
    assert pruned.get_layer("conv_a").filters == 4 and pruned.get_layer("conv_b").filters == 4


def _spec(tmp_path):
    text = (REPO / "specs" / "frcnn_resnet18_train.txt").read_text()
    for old, new in (("height: 384", "height: 64"), ("width: 1248", "width: 96"),
                     ("output_image_width: 1248", "output_image_width: 96"),
                     ("output_image_height: 384", "output_image_height: 64"),
                     ("rpn_nms_max_boxes: 2000", "rpn_nms_max_boxes: 16"),
                     ("rpn_pre_nms_top_N: 12000", "rpn_pre_nms_top_N: 100")):
        text = text.replace(old, new)
    (tmp_path / "s.txt").write_text(text)
    return load_experiment_spec(str(tmp_path / "s.txt"))


def test_removing_zero_filters_keeps_outputs_exact(tmp_path):
    model = build_model(_spec(tmp_path))
    rng = np.random.default_rng(0)
    for layer in model.layers:  # random BN statistics so that every channel matters
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                               rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 1.5, var.shape)])
    # Zero half the filters of block_2a_conv_1 and make its BN output exactly 0 on them.
    dead = np.arange(0, 128, 2)
    conv, bn = model.get_layer("block_2a_conv_1"), model.get_layer("block_2a_bn_1")
    kernel = conv.get_weights()[0]
    kernel[..., dead] = 0.0
    conv.set_weights([kernel])
    gamma, beta, mean, var = bn.get_weights()
    beta[dead], mean[dead] = 0.0, 0.0
    bn.set_weights([gamma, beta, mean, var])
    pruned, table = prune_model(model, PruneOptions(threshold=1e-6, granularity=1, min_filters=1), {
        **checkpoints.CUSTOM_OBJECTS})
    rows = {row["layer"]: row for row in table}
    assert rows["block_2a_conv_1"]["filters_after"] == 64
    assert all(row["filters_after"] == row["filters_before"] for row in table if row["layer"] != "block_2a_conv_1")
    image = tf.constant(rng.normal(0, 50, [1, 64, 96, 3]), tf.float32)
    # Fewer channels change oneDNN's summation order, so the last float bits differ; box corners
    # (pixels, through exp in the decode) agree to a thousandth of a pixel, probabilities to 1e-4.
    for before, after, atol in zip(model(image), pruned(image), (1e-3, 1e-4, 1e-4)):
        np.testing.assert_allclose(after.numpy(), before.numpy(), rtol=1e-4, atol=atol)


def test_pruned_faster_rcnn_is_smaller_keeps_shapes_and_trains(tmp_path):
    spec = _spec(tmp_path)
    model = build_model(spec)
    rng = np.random.default_rng(1)
    for layer in model.layers:  # trained-looking filters: norms spread over two orders of magnitude
        if isinstance(layer, tf.keras.layers.Conv2D) and layer.name not in ("rpn_out_class", "rpn_out_regress"):
            kernel = layer.get_weights()[0]
            kernel *= rng.lognormal(0, 1.2, kernel.shape[-1]).astype(np.float32)
            layer.set_weights([kernel] + layer.get_weights()[1:])
    pruned, table = prune_model(model, PruneOptions(threshold=0.2), checkpoints.CUSTOM_OBJECTS)
    assert pruned.count_params() < 0.8 * model.count_params()
    assert all(row["filters_after"] % 8 == 0 and row["filters_after"] >= 16 for row in table
               if row["filters_after"] < row["filters_before"])
    image = tf.zeros([2, 64, 96, 3])
    assert [o.shape for o in pruned(image)] == [o.shape for o in model(image)]
    path = str(tmp_path / "pruned.hdf5")
    checkpoints.save_model(pruned, path, {"class_names": ["circle", "square", "triangle", "background"]},
                           include_optimizer=False)
    from frcnn_tf import schedules
    from frcnn_tf.train.trainer import TrainStep, training_frcnn

    reloaded, metadata = checkpoints.load_model(path)
    frcnn = training_frcnn(reloaded, spec)
    assert frcnn.backbone_rpn.output_shape[0][-1] == pruned.get_layer("block_3b_relu").output.shape[-1]
    optimizer = schedules.build_optimizer(spec.training_config.optimizer,
                                          schedules.build_schedule(spec.training_config.learning_rate, 10))
    step = TrainStep(spec, frcnn, optimizer, tf.distribute.get_strategy())
    batch = {"images": tf.constant(rng.normal(0, 50, [2, 64, 96, 3]), tf.float32),
             "boxes": tf.constant([[[8.0, 8.0, 40.0, 56.0]] + [[0.0] * 4] * 3] * 2),
             "classes": tf.constant([[0, -1, -1, -1]] * 2)}
    losses = [float(step.step(batch, tf.constant([0, i], tf.int64))["total"]) for i in range(4)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_bn_folded_score_by_hand():
    image = tf.keras.Input([4, 4, 1])
    x = tf.keras.layers.Conv2D(3, 1, use_bias=False, name="conv")(image)
    x = tf.keras.layers.BatchNormalization(epsilon=1e-3, name="bn")(x)
    out = tf.keras.layers.Conv2D(2, 1, name="out")(tf.keras.layers.ReLU()(x))
    model = tf.keras.Model(image, out)
    model.get_layer("conv").set_weights([np.array([[[[3.0, 4.0, 2.0]]]], np.float32)])
    bn = model.get_layer("bn")
    # gamma 1, 0.1, -2 and variance + eps 1, 4, 0.25: folded norms 3*1/1, 4*0.1/2, 2*2/0.5 = 3, 0.2, 8,
    # normalised by the max: 0.375, 0.025, 1. The kernel norms alone, 3, 4, 2, give 0.75, 1, 0.5.
    bn.set_weights([np.array([1.0, 0.1, -2.0]), np.zeros(3), np.zeros(3), np.array([1.0, 4.0, 0.25]) - 1e-3])
    folded, _ = prune_model(model, PruneOptions(0.3, granularity=1, min_filters=1), {})
    np.testing.assert_array_equal(folded.get_layer("conv").kernel.numpy().ravel(), [3.0, 2.0])
    np.testing.assert_allclose(folded.get_layer("bn").gamma.numpy(), [1.0, -2.0])
    kernel_only, _ = prune_model(model, PruneOptions(0.6, granularity=1, min_filters=1, score="kernel"), {})
    np.testing.assert_array_equal(kernel_only.get_layer("conv").kernel.numpy().ravel(), [3.0, 4.0])
    assert prune_model(model, PruneOptions(0.3, granularity=1, min_filters=1, score="kernel"), {})[0].get_layer(
        "conv").filters == 3
