"""get_config / from_config round trips for every custom Keras class in frcnn_tf.

Models are saved as HDF5 (configs + weights) and QAT clones every layer with
`cls.from_config(layer.get_config())`, so a constructor argument missing from
get_config silently falls back to its default after a reload. Each custom layer,
regulariser and learning-rate schedule gets a case below built with non-default
arguments; the classes are discovered by walking the package, so a new class
without a case fails `test_every_custom_class_has_a_case`.
"""
import importlib
import inspect
import pkgutil

import numpy as np
import pytest

import frcnn_tf  # selects tf_keras before TensorFlow is imported
import tensorflow as tf

from frcnn_tf.model import frcnn, layers
from frcnn_tf import quantize, schedules
from frcnn_tf.model import checkpoints

BASES = (tf.keras.layers.Layer, tf.keras.regularizers.Regularizer, tf.keras.optimizers.schedules.LearningRateSchedule)
# The CLI modules only define absl flags (several share names, so they cannot all be imported in one process).
SKIPPED_PACKAGES = ("frcnn_tf.cli",)


def _custom_classes():
    for module in pkgutil.walk_packages(frcnn_tf.__path__, prefix="frcnn_tf."):
        if not module.name.startswith(SKIPPED_PACKAGES):
            importlib.import_module(module.name)
    found, pending = set(), list(BASES)
    while pending:
        for subclass in pending.pop().__subclasses__():
            pending.append(subclass)
            if subclass.__module__.split(".")[0] == "frcnn_tf":
                found.add(subclass)
    return found


def _random(seed, *shape):
    return tf.constant(np.random.default_rng(seed).uniform(-1.0, 1.0, shape).astype(np.float32))


def _boxes(seed, count, height, width):
    """[1, count, 4] boxes (y1 x1 y2 x2, pixels) inside a height x width image, each at least 4 px."""
    rng = np.random.default_rng(seed)
    y1, x1 = rng.uniform(0, height - 8, count), rng.uniform(0, width - 8, count)
    y2, x2 = y1 + rng.uniform(4, 8, count), x1 + rng.uniform(4, 8, count)
    return tf.constant(np.stack([y1, x1, y2, x2], axis=-1)[np.newaxis].astype(np.float32))


# Proposal's settings in one place: update these (and nothing else) when the layer's arguments change.
# Every argument with a default must differ from it (test_cases_use_non_default_arguments).
PROPOSAL_ARGS = dict(anchor_scales=[8.0, 24.0], anchor_ratios=[0.5, 1.0, 2.0], stride=8, pre_nms_top_n=40,
                     post_nms_top_n=9, nms_iou=0.55, std_scaling=2.5)
PROPOSAL_MAP = (6, 7)  # RPN feature map h, w; the image is stride times larger
PROPOSAL_ANCHORS = len(PROPOSAL_ARGS["anchor_scales"]) * len(PROPOSAL_ARGS["anchor_ratios"])


def _proposal():
    h, w = PROPOSAL_MAP
    stride = PROPOSAL_ARGS["stride"]
    inputs = [_random(1, 2, h, w, PROPOSAL_ANCHORS), 0.3 * _random(2, 2, h, w, 4 * PROPOSAL_ANCHORS),
              tf.zeros([2, h * stride, w * stride, 3])]
    return layers.Proposal(**PROPOSAL_ARGS, name="proposal_case", trainable=False), inputs


def _roi_crop():
    features = _random(3, 2, 6, 7, 5)
    rois = tf.concat([_boxes(4, 3, 48, 56), _boxes(5, 3, 48, 56)], axis=0)
    return layers.RoiCrop(stride=8, pool_size=3, name="crop_case"), [features, rois]


def _per_roi():
    return layers.PerRoi(name="per_roi_case"), [_random(6, 6, 3, 3, 4), tf.tile(_boxes(7, 3, 48, 56), [2, 1, 1])]


def _detection_output():
    logits = 3.0 * _random(8, 1, 6, 4)
    inputs = [_boxes(9, 6, 64, 80), tf.nn.softmax(logits), 0.2 * _random(10, 1, 6, 12), tf.zeros([1, 64, 80, 3])]
    layer = layers.DetectionOutput(regression_weights=[10.0, 10.0, 5.0, 5.0], score_threshold=0.05, nms_iou=0.45,
                                   max_boxes=7, name="detection_case")
    return layer, inputs


def _gamma_polarization():
    return frcnn.GammaPolarization(0.003, polarization=0.7), _random(11, 16)


def _soft_start():
    schedule = schedules.SoftStartAnnealing(base_lr=0.02, start_lr=0.001, soft_start=0.3, annealing_points=[0.5, 0.8],
                                            annealing_divider=5.0, total_steps=100)
    return schedule, [0, 10, 30, 60, 95]


def _continuous_step():
    return schedules.ContinuousStep(base_lr=0.01, gamma=0.5, step_size=25.0, total_steps=200), [0, 49, 150]


def _tensor_quantize():
    # the exported form (QuantizeAndDequantizeV2) over a trained range of 0.8
    return quantize.TensorQuantize(for_export=True, name="quantize_case"), _random(12, 2, 5, 3), \
        lambda layer: layer.amax.assign(0.8)


def _quantize_wrapper():
    def kernel(layer):
        layer.weights[0].assign(_random(13, 4, 3))
    wrapper = quantize.TensorRTQuantizeWrapper(tf.keras.layers.Dense(3, use_bias=False, name="dense_case"),
                                               quantize.TensorRTWeightQuantization())
    return wrapper, _random(14, 2, 4), kernel


# class -> () -> (instance, input[, setup]). Add a case here for every new custom Keras class. A layer with
# state gets `setup(layer)` after it is built, for the original and the restored instance alike.
CASES = {
    layers.Proposal: _proposal,
    layers.RoiCrop: _roi_crop,
    layers.PerRoi: _per_roi,
    layers.DetectionOutput: _detection_output,
    frcnn.GammaPolarization: _gamma_polarization,
    schedules.SoftStartAnnealing: _soft_start,
    schedules.ContinuousStep: _continuous_step,
    quantize.TensorQuantize: _tensor_quantize,
    quantize.TensorRTQuantizeWrapper: _quantize_wrapper,
}
IDS = [cls.__name__ for cls in CASES]


def _outputs(obj, inputs, setup=None):
    if isinstance(obj, tf.keras.optimizers.schedules.LearningRateSchedule):
        result = [obj(step) for step in inputs]  # one global step at a time
    else:
        if setup:
            obj(inputs)
            setup(obj)
        result = obj(inputs)
    return [np.asarray(value) for value in tf.nest.flatten(result)]


def _constructor_parameters(cls):
    """The arguments of the nearest __init__ frcnn_tf defines (Keras' own base arguments are Keras' job)."""
    owner = next(klass for klass in cls.__mro__ if "__init__" in vars(klass))
    if owner.__module__.split(".")[0] != "frcnn_tf":
        return {}
    return {name: parameter for name, parameter in inspect.signature(cls.__init__).parameters.items()
            if name != "self" and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)}


def test_every_custom_class_has_a_case():
    names = lambda classes: sorted(f"{cls.__module__}.{cls.__qualname__}" for cls in classes)  # noqa: E731
    assert names(_custom_classes() - set(CASES)) == [], "add a case to CASES in tests/test_keras_config.py"
    assert names(set(CASES) - _custom_classes()) == []


@pytest.mark.parametrize("cls", CASES, ids=IDS)
def test_get_config_names_every_constructor_argument(cls):
    obj = CASES[cls]()[0]
    missing = set(_constructor_parameters(cls)) - set(obj.get_config())
    assert not missing, f"{cls.__name__}.get_config() lacks {sorted(missing)}"


@pytest.mark.parametrize("cls", CASES, ids=IDS)
def test_cases_use_non_default_arguments(cls):
    """A round trip of a default value proves nothing: each case sets every argument off its default."""
    config = CASES[cls]()[0].get_config()
    same = [name for name, parameter in _constructor_parameters(cls).items()
            if parameter.default is not inspect.Parameter.empty and config[name] == parameter.default]
    assert not same, f"the {cls.__name__} case leaves {same} at the default"


@pytest.mark.parametrize("cls", CASES, ids=IDS)
def test_from_config_round_trip(cls):
    obj, inputs, *setup = CASES[cls]()
    config = obj.get_config()
    with quantize.quantize_scope(checkpoints.CUSTOM_OBJECTS):  # as checkpoints.load_model reads configs
        restored = cls.from_config(config)
    assert type(restored) is cls
    assert restored.get_config() == config
    expected = _outputs(obj, inputs, *setup)
    assert any(value.size and np.any(value) for value in expected), "the case's output is all zeros: a weak check"
    for before, after in zip(expected, _outputs(restored, inputs, *setup), strict=True):
        np.testing.assert_array_equal(after, before)


@pytest.mark.parametrize("cls", CASES, ids=IDS)
def test_keras_deserialize_with_checkpoint_custom_objects(cls):
    """The path HDF5 loading takes: Keras' serialised form, resolved with checkpoints.CUSTOM_OBJECTS."""
    obj = CASES[cls]()[0]
    with quantize.quantize_scope(checkpoints.CUSTOM_OBJECTS):
        restored = tf.keras.utils.deserialize_keras_object(tf.keras.utils.serialize_keras_object(obj),
                                                           custom_objects=checkpoints.CUSTOM_OBJECTS)
    assert type(restored) is cls
    assert restored.get_config() == obj.get_config()
