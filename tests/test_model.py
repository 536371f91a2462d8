"""Model structure: TLT layer names, options, output shapes."""
import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO
from frcnn_tf.errors import FrcnnError
from frcnn_tf.model.frcnn import FasterRCNN, build_model
from frcnn_tf.spec import load_experiment_spec


def _spec(tmp_path, replace=()):
    text = (REPO / "specs" / "frcnn_resnet18_train.txt").read_text()
    text = text.replace("height: 384", "height: 64").replace("width: 1248", "width: 96")
    text = text.replace("output_image_width: 1248", "output_image_width: 96").replace(
        "output_image_height: 384", "output_image_height: 64")
    text = text.replace("rpn_nms_max_boxes: 2000", "rpn_nms_max_boxes: 20").replace(
        "rpn_pre_nms_top_N: 12000", "rpn_pre_nms_top_N: 100")
    for old, new in replace:
        assert old in text, old
        text = text.replace(old, new)
    (tmp_path / "s.txt").write_text(text)
    return load_experiment_spec(str(tmp_path / "s.txt"))


def test_resnet18_names_shapes_and_freezing(tmp_path):
    model = build_model(_spec(tmp_path))
    names = {layer.name for layer in model.layers}
    for name in ("conv1", "bn_conv1", "block_1a_conv_1", "block_1a_bn_1", "block_1b_conv_shortcut", "block_3b_relu",
                 "rpn_conv1", "rpn_out_class", "rpn_out_regress", "proposal", "roi_pooling", "block_4a_conv_1",
                 "block_4b_conv_2", "avg_pool", "dense_class_td", "dense_regress_td"):
        assert name in names, name
    assert "block_4c_conv_1" not in names and "pool1" not in names
    rois, probabilities, deltas = model(tf.zeros([2, 64, 96, 3]))
    assert rois.shape == (2, 20, 4) and probabilities.shape == (2, 20, 4) and deltas.shape == (2, 20, 12)
    frozen = {layer.name for layer in model.layers if layer.weights and not layer.trainable}
    assert {"conv1", "block_1a_conv_1", "block_1b_bn_2"} <= frozen  # freeze_blocks 0, 1
    assert "block_2a_conv_1" not in frozen and "block_2a_bn_1" in frozen  # freeze_bn
    frcnn = FasterRCNN(model)
    features, logits, rpn_deltas = frcnn.backbone_rpn(tf.zeros([1, 64, 96, 3]))
    assert features.shape == (1, 4, 6, 256) and logits.shape == (1, 4, 6, 9) and rpn_deltas.shape == (1, 4, 6, 36)
    assert frcnn.num_classes == 4 and frcnn.crop.pool_size == 7


def test_architecture_options(tmp_path):
    model = build_model(_spec(tmp_path, [
        ('arch: "resnet:18"', 'arch: "resnet:10"'), ("all_projections: true", "all_projections: false"),
        ("use_pooling: false", "use_pooling: true"), ("pool_size_2x: false", "pool_size_2x: true"),
        ("image_type: RGB", "image_type: GRAY_SCALE"), ("image_channel_order: 'bgr'", "image_channel_order: 'l'"),
        ("    image_channel_mean { key: 'b' value: 103.939 }\n    image_channel_mean { key: 'g' value: 116.779 }\n"
         "    image_channel_mean { key: 'r' value: 123.68 }\n", "    image_channel_mean { key: 'l' value: 127.5 }\n"),
        ("output_image_channel: 3", "output_image_channel: 1"), ("freeze_bn: true", "freeze_bn: false")]))
    names = {layer.name for layer in model.layers}
    assert "pool1" in names and "block_1b_conv_1" not in names  # resnet10: one sub-block per block
    assert model.get_layer("roi_pooling").pool_size == 14 and model.get_layer("block_4a_conv_1").strides == (2, 2)
    assert model.input_shape == (None, 64, 96, 1)
    assert model.get_layer("block_2a_bn_1").trainable
    rois, probabilities, _ = model(tf.zeros([1, 64, 96, 1]))
    assert probabilities.shape == (1, 20, 4)


def test_no_projection_shortcut_after_first_sub_block(tmp_path):
    names = {layer.name for layer in build_model(_spec(tmp_path, [("all_projections: true",
                                                                   "all_projections: false")])).layers}
    assert "block_1a_conv_shortcut" in names and "block_1b_conv_shortcut" not in names


def test_unimplemented_backbone_is_a_clear_error(tmp_path):
    with pytest.raises(FrcnnError, match="'vgg:16' is a TLT backbone frcnn_tf does not build yet"):
        build_model(_spec(tmp_path, [('arch: "resnet:18"', 'arch: "vgg:16"'),
                                     ("freeze_blocks: 0\n", "")]))


def test_bn_gamma_l1_and_regulariser_override_for_retraining(tmp_path):
    from frcnn_tf.model.frcnn import override_regularizers
    from frcnn_tf.model import checkpoints

    sparse = _spec(tmp_path, [("freeze_bn: true", "freeze_bn: false"),
                              ("weight: 1e-4",
                               "weight: 1e-4\n      bn_gamma_l1_weight: 0.01\n      bn_gamma_polarization: 1.0")])
    model = build_model(sparse)
    # gamma starts at 1 (no spread from the mean): a BN's loss is 0.01 * its channel count.
    for name, channels in (("bn_conv1", 64), ("block_2a_bn_shortcut", 128), ("block_4b_bn_2", 512)):
        assert [float(loss) for loss in model.get_layer(name).losses] == [pytest.approx(0.01 * channels)]
    path = str(tmp_path / "sparse.hdf5")
    checkpoints.save_model(model, path, {}, include_optimizer=False)
    assert checkpoints.load_model(path)[0].get_layer("bn_conv1").gamma_regularizer.get_config() == {
        "weight": pytest.approx(0.01), "polarization": 1.0}
    plain = _spec(tmp_path, [("type: L2", "type: L1"), ("weight: 1e-4", "weight: 0.5")])
    rebuilt = override_regularizers(model, plain.training_config.regularizer)
    assert all(bn.gamma_regularizer is None for bn in rebuilt.layers
               if isinstance(bn, tf.keras.layers.BatchNormalization))
    assert rebuilt.get_layer("block_4a_conv_1").kernel_regularizer.get_config() == {"l1": 0.5}
    for before, after in zip(model.get_weights(), rebuilt.get_weights()):
        assert (before == after).all()
    kept = _spec(tmp_path, [("type: L2", "type: NO_REG"), ("weight: 1e-4", "weight: 0")])
    assert override_regularizers(model, kept.training_config.regularizer).get_layer(
        "block_4a_conv_1").kernel_regularizer.get_config()["l2"] == pytest.approx(1e-4)


def test_gamma_polarization_by_hand():
    from frcnn_tf.model.frcnn import GammaPolarization

    gamma = tf.Variable([1.0, 3.0, -2.0, 0.0])
    # |gamma| = 1, 3, 2, 0: sum 6, mean 1.5, spread 0.5 + 1.5 + 0.5 + 1.5 = 4.
    assert float(GammaPolarization(0.1)(gamma)) == pytest.approx(0.6)
    with tf.GradientTape() as tape:
        loss = GammaPolarization(0.1, polarization=1.0)(gamma)
    assert float(loss) == pytest.approx(0.1 * (6 - 4))
    # Below the mean: pushed to zero at twice the weight; above it: no pressure.
    np.testing.assert_allclose(tape.gradient(loss, gamma).numpy(), [0.2, 0.0, 0.0, 0.0], atol=1e-7)


def test_detection_model_uses_its_own_proposals_and_leaves_the_model_unchanged(tmp_path):
    from frcnn_tf.settings import DetectionSettings, ProposalSettings

    model = build_model(_spec(tmp_path))
    before = model.get_layer("proposal").get_config()
    settings = DetectionSettings(proposals=ProposalSettings(pre_nms_top_n=50, post_nms_top_n=7, nms_iou=0.5),
                                 score_threshold=0.0, nms_iou=0.5, max_boxes=5, box_weights=(10.0, 10.0, 5.0, 5.0))
    detector = FasterRCNN(model).detection_model(settings)
    assert model.get_layer("proposal").get_config() == before  # the trained model is not reconfigured
    assert detector.get_layer("proposal").post_nms_top_n == 7
    assert detector.get_layer("proposal") is not model.get_layer("proposal")
    boxes, scores, classes, valid = detector(tf.random.uniform([1, 64, 96, 3], 0, 255, seed=1))
    assert boxes.shape == (1, 5, 4) and scores.shape == (1, 5)
    for old, new in zip(model.weights, detector.weights):  # the same weights, copied
        np.testing.assert_array_equal(old.numpy(), new.numpy())


def test_the_keras_detector_traces_once_for_every_batch_size_and_input_type(tmp_path):
    from frcnn_tf.detectors import KerasDetector
    from frcnn_tf.settings import DetectionSettings, ProposalSettings

    settings = DetectionSettings(proposals=ProposalSettings(pre_nms_top_n=50, post_nms_top_n=7, nms_iou=0.5),
                                 score_threshold=0.0, nms_iou=0.5, max_boxes=5, box_weights=(10.0, 10.0, 5.0, 5.0))
    detector = KerasDetector(FasterRCNN(build_model(_spec(tmp_path))), ["a", "background"], settings)
    images = np.random.default_rng(0).uniform(0, 255, [3, 64, 96, 3])
    found = [detector(images[:2]), detector(tf.constant(images[:1], tf.float32)), detector(images.astype(np.float32))]
    assert [len(f) for f in found] == [2, 1, 3]
    assert detector._run.experimental_get_tracing_count() == 1  # a retrace costs seconds per evaluate batch


def test_train_outputs_shapes_and_targets(tmp_path):
    from frcnn_tf.settings import ProposalSettings, RoiSampling, RpnSampling

    small_anchors = ("scale: 64.0\n    scale: 128.0\n    scale: 256.0", "scale: 8.0\n    scale: 16.0\n    scale: 32.0")
    frcnn = FasterRCNN(build_model(_spec(tmp_path, [small_anchors])), train_proposals=ProposalSettings(
        pre_nms_top_n=100, post_nms_top_n=20, nms_iou=0.7), rpn_sampling=RpnSampling(
        min_overlap=0.3, max_overlap=0.7, mini_batch=16), roi_sampling=RoiSampling(
        min_overlap=0.0, max_overlap=0.5, mini_batch=8, gt_as_roi=True))
    gt_boxes = tf.constant([[[8.0, 8.0, 40.0, 56.0], [0.0, 0.0, 0.0, 0.0]]] * 2)
    gt_classes = tf.constant([[1, -1]] * 2)
    out = frcnn.train_outputs(tf.zeros([2, 64, 96, 3]), gt_boxes, gt_classes, tf.constant([1, 2], tf.int64))
    anchors = 4 * 6 * 9
    assert out.rpn_logits.shape == (2, anchors) and out.rpn_deltas.shape == (2, anchors, 4)
    assert out.rpn_labels.shape == (2, anchors) and int(tf.reduce_sum(tf.cast(out.rpn_labels >= 0, tf.int32))) == 32
    assert out.class_logits.shape == (2, 8, 4) and out.deltas.shape == (2, 8, 12)
    assert (out.roi_labels.numpy() == 1).any(axis=1).all()  # gt_as_roi: the ground-truth box is a foreground RoI


def test_multiply_accumulates_equal_the_torch_peers_count():
    """The default spec at 384x1248 with 300 RoIs, against ../shared/peer's independent count (forward hooks
    on the torchvision model built layer for layer): backbone 13.89 + RPN 2.25 GMAC, 0.424 GMAC per RoI,
    143.3 GMAC per image."""
    frcnn = FasterRCNN(build_model(load_experiment_spec(str(REPO / "specs" / "frcnn_resnet18_train.txt"))))
    macs = frcnn.multiply_accumulates(300)
    assert macs["backbone_rpn"] / 1e9 == pytest.approx(13.89 + 2.25, abs=0.01)
    assert macs["head_per_roi"] / 1e9 == pytest.approx(0.424, abs=0.001)
    assert macs["total"] == macs["backbone_rpn"] + 300 * macs["head_per_roi"]
    assert macs["total"] / 1e9 == pytest.approx(143.3, abs=0.05)
    # The RPN by hand (stride 16: 24 x 78 positions): a 3 x 3 conv 256 -> 512, then 1 x 1 convs to 9 scores and
    # 36 deltas (3 scales x 3 ratios) = 2.2514 GMAC; the rest is the backbone, 13.89 in the peer's count.
    rpn = 24 * 78 * (512 * 9 * 256 + 512 * (9 + 36))
    assert rpn == 2_251_431_936
    assert (macs["backbone_rpn"] - rpn) / 1e9 == pytest.approx(13.89, abs=0.005)
