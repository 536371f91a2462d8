"""QAT: TensorRT's INT8 scheme on every conv/dense of the backbone and heads, float custom layers, training,
files, and the export of the trained scales as Q/DQ."""
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from frcnn_tf import quantize, schedules
from frcnn_tf.detectors import KerasDetector
from frcnn_tf.errors import FrcnnError
from frcnn_tf.evaluation import evaluate_detector
from frcnn_tf.model import checkpoints
from frcnn_tf.model.frcnn import FasterRCNN, build_model
from frcnn_tf.prune import PruneOptions, prune_model
from frcnn_tf.settings import DetectionSettings
from frcnn_tf.spec import load_experiment_spec
from frcnn_tf.train.trainer import TrainStep, train, training_frcnn
from kitti_fixtures import small_training_spec
from test_prune import _spec as tiny_spec

pytestmark = pytest.mark.slow  # QAT conversion and training runs


def test_qat_model_structure_and_training(tmp_path):
    spec = tiny_spec(tmp_path)
    spec.training_config.enable_qat = True
    model = build_model(spec)
    convs = [layer.name for layer in model.layers if isinstance(layer, (tf.keras.layers.Conv2D, tf.keras.layers.Dense))]
    assert len(convs) == 30  # 20 backbone + 3 RPN + 5 block-4 convs, 2 dense heads (all_projections)
    images = np.random.default_rng(1).normal(0, 50, [2, 64, 96, 3]).astype(np.float32)
    qat, _ = quantize.quantize_model(model, checkpoints.CUSTOM_OBJECTS, [images])
    assert sorted(quantize.fake_quant_layers(qat)) == sorted(convs)
    for name in ("proposal", "roi_pooling", "rcnn_class", "rcnn_regress"):
        assert not isinstance(qat.get_layer(name), quantize.tfmot.quantization.keras.QuantizeWrapperV2)
    assert not [layer for layer in qat.layers if isinstance(layer, tf.keras.layers.BatchNormalization)]
    for name, batch_norm in (("conv1", "bn_conv1"), ("block_4b_conv_2", "block_4b_bn_2")):  # BN folded in
        gamma, _, _, variance = model.get_layer(batch_norm).get_weights()
        np.testing.assert_allclose(quantize.folded_kernel(qat.get_layer(f"quant_{name}")),
                                   model.get_layer(name).kernel.numpy() * gamma / np.sqrt(variance + 1e-3), rtol=1e-6)
    np.testing.assert_array_equal(quantize.folded_kernel(qat.get_layer("quant_dense_class_td")),
                                  model.get_layer("dense_class_td").kernel.numpy())  # float weights carried over
    # one activation quantizer per tensor a conv/dense or a residual add reads: the image, 8 x 4 per
    # sub-block (conv_2's input, both add inputs, the output), the RPN conv's output, the crop, the pooled features
    quantizers = quantize.activation_quantizers(qat)
    assert len(quantizers) == 36 and {"input_image_quantize", "roi_pooling_quantize", "rpn_conv1_quantize",
                                      "avg_pool_quantize", "block_2a_bn_shortcut_quantize"} < set(quantizers)
    assert qat.get_layer("roi_pooling_quantize").input is qat.get_layer("roi_pooling").output
    frozen = {v.name for layer in ("conv1", "block_1a_conv_1") for v in qat.get_layer(f"quant_{layer}").weights}
    assert not frozen & {v.name for v in qat.trainable_weights}  # freeze_blocks 0 1 hold in QAT too
    with pytest.raises(FrcnnError, match="QAT model: prune the float model"):
        prune_model(qat, PruneOptions(), checkpoints.CUSTOM_OBJECTS)

    frcnn = training_frcnn(qat, spec)
    optimizer = schedules.build_optimizer(spec.training_config.optimizer,
                                          schedules.build_schedule(spec.training_config.learning_rate, 10))
    step = TrainStep(spec, frcnn, optimizer, tf.distribute.get_strategy())
    rng = np.random.default_rng(2)
    batch = {"images": tf.constant(rng.normal(0, 50, [2, 64, 96, 3]), tf.float32),
             "boxes": tf.constant([[[8.0, 8.0, 40.0, 56.0]] + [[0.0] * 4] * 3] * 2),
             "classes": tf.constant([[0, -1, -1, -1]] * 2)}
    losses = [float(step.step(batch, tf.constant([0, i], tf.int64))["total"]) for i in range(5)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_qat_training_checkpoint_and_evaluation(tmp_path, traffic_light_records, traffic_lights, monkeypatch):
    path = small_training_spec(tmp_path / "qat.txt", traffic_light_records, traffic_lights,
                               tmp_path / "m" / "qat.hdf5", extra=[("enable_qat: false", "enable_qat: true"),
                                                                   ("validation_period_during_training: 1",
                                                                    "validation_period_during_training: 5")])
    spec = load_experiment_spec(path)
    calibrated_with, convert = [], quantize.quantize_model

    def calibration_proposals(model, custom_objects, batches, calibration_model=None):
        calibrated_with.append(calibration_model.get_layer("proposal").post_nms_top_n)
        return convert(model, custom_objects, batches, calibration_model=calibration_model)
    monkeypatch.setattr(quantize, "quantize_model", calibration_proposals)
    result = train(spec, max_steps_per_epoch=3)
    assert calibrated_with == [32]  # ranges measured on the exported graph's RoIs (inference_config), not 200
    model, metadata = checkpoints.load_model(result["checkpoints"][0])
    assert quantize.is_quantized(model) and metadata["qat"] is True
    spec.evaluation_config.rpn_nms_max_boxes = 16
    report = evaluate_detector(spec, KerasDetector(FasterRCNN(model), metadata["class_names"],
                                                   DetectionSettings.from_section(spec.evaluation_config,
                                                                                  metadata["regression_weights"])))
    assert report["images"] == 77 and 0.0 <= report["map"] <= 1.0
    spec.training_config.enable_qat = False
    spec.training_config.resume_from_model = result["checkpoints"][0]
    with pytest.raises(FrcnnError, match="is a QAT model but training_config.enable_qat is false"):
        train(spec, max_steps_per_epoch=3)
    _check_qat_int8_export(path, result["checkpoints"][0], tmp_path)
    # a QAT checkpoint resumes as QAT, its calibrated ranges kept
    spec.training_config.enable_qat, spec.training_config.num_epochs = True, 2
    ranges = quantize.activation_quantizers(model)
    resumed = train(spec, max_steps_per_epoch=1)["checkpoints"]
    assert [pathlib.Path(p).name for p in resumed] == ["qat.epoch2.hdf5"]
    after = quantize.activation_quantizers(checkpoints.load_model(resumed[0])[0])
    assert after == ranges and all(amax > 0 for amax in ranges.values())  # not recalibrated, not trained


def _check_qat_int8_export(spec_path, checkpoint, tmp_path):
    """A QAT model exports to INT8 with its trained scales: symmetric Q/DQ, a cache, onnxruntime runs it."""
    import onnx

    from frcnn_tf.export import calibration, tensorrt_rules
    from frcnn_tf.export.onnx_export import run_export
    from frcnn_tf.detectors import OnnxDetector

    with pytest.raises(FrcnnError, match="a QAT model exports as int8"):
        run_export(spec_path, checkpoint, str(tmp_path / "qat_fp16.onnx"), "fp16")
    output = str(tmp_path / "qat_int8.onnx")
    info = run_export(spec_path, checkpoint, output, "int8")
    assert info["calibrator"] == "qat"
    model = onnx.load(output)
    initializers = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    quantize_nodes = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert all(initializers[n.input[2]].dtype == np.int8 and not initializers[n.input[2]].any() for n in quantize_nodes)
    activations = {n.input[0]: initializers[n.input[1]] for n in quantize_nodes if n.input[0] not in initializers}
    weights = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in initializers]
    assert len(weights) == 30  # every conv and dense kernel: INT8 constants, a scale per output channel
    assert all(initializers[n.input[0]].dtype == np.int8 and initializers[n.input[1]].ndim == 1 for n in weights)
    cache = calibration.read_cache(str(tmp_path / "qat_int8.cal.bin"))
    assert cache.algorithm == "MinMaxCalibration" and cache.scales == activations and len(activations) == 36
    keras_model, _ = checkpoints.load_model(checkpoint)
    trained = sorted(float(quantize.activation_scale(layer.amax)) for layer in keras_model.layers
                     if isinstance(layer, quantize.TensorQuantize))
    assert sorted(float(scale) for scale in activations.values()) == trained  # the trained scales, unchanged
    assert tensorrt_rules.check(model) == []
    view = tensorrt_rules.GraphView(model)
    sources = [view.source(n.input[0], tensorrt_rules.QDQ_TRANSPARENT) for n in quantize_nodes]
    crops = [s for s in sources if s is not None and s.op_type == "MatMul" and "roi_pooling" in s.name]
    assert len(crops) == 1, [s.name for s in sources if s is not None]
    found = OnnxDetector(output)(np.zeros([2, *info["input_shape"]], np.float32))
    assert len(found) == 2
