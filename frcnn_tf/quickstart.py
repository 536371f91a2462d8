"""The main job: the whole workflow on generated sample data (or any KITTI folder).

generate -> dataset_convert -> fit anchors -> train -> evaluate -> prune -> retrain with QAT ->
evaluate -> export ONNX FP32 / FP16 / INT8 (calibrated) and the QAT model's INT8 ->
evaluate each ONNX model (onnxruntime) -> TensorRT engine (where installed) -> inference.
Every stage calls the same function as its bin/ script; the specs it derives
from specs/ are written to <workdir>/specs so each stage can be rerun by hand.
"""
import dataclasses
import fnmatch
import importlib.resources
import os
import pathlib
import time

from absl import logging
from google.protobuf import text_format

from frcnn_tf import anchor_coverage, metrics, sample_data
from frcnn_tf.data.convert import run_dataset_convert
from frcnn_tf.deployed import TensorRTMissing
from frcnn_tf.errors import Int8Diverges
from frcnn_tf.evaluate import run_evaluate
from frcnn_tf.export.onnx_export import Int8Options, run_export
from frcnn_tf.export.tensorrt_engine import build_engine
from frcnn_tf.inference import run_inference
from frcnn_tf.machine import native_bfloat16
from frcnn_tf.model.checkpoints import load_model
from frcnn_tf.proto import experiment_pb2
from frcnn_tf.prune import PruneOptions, run_prune
from frcnn_tf.spec import load_conversion_spec, load_experiment_spec
from frcnn_tf.train.trainer import run_train

# The default specs are package data (specs/ at the top of the checkout is a symlink to frcnn_tf/specs).
SPECS_DIR = importlib.resources.files("frcnn_tf") / "specs"


def _load_default_spec(load, name):
    with importlib.resources.as_file(SPECS_DIR / name) as path:  # a real file even from a zipped install
        return load(str(path))


@dataclasses.dataclass(frozen=True)
class QuickstartOptions:
    """Sizes of the run; the defaults took 10.6 minutes on 2 CPU cores with native bfloat16 and 17 with
    float32 training on AVX2 (AMD EPYC, oneDNN held to AVX2; README "The main job").

    ResNet10, as block 4 runs on every RoI: ResNet18's two 512-channel blocks there are ~88 % of a
    training step, ResNet10's one halves the step (ResNet18: mAP 0.798 in 21.5 minutes with bfloat16,
    ~50 on an AVX2-only CPU; ResNet10: 0.764 and 0.786). The recipe trains from scratch (README "The
    main job", "The recipe"): one image per step with 32 RoIs (ResNet18 with 16: mAP 0.671, with 32:
    0.798 at 1.4x the training time), ground-truth boxes added to the proposals (TLT's gt_as_roi) so
    that the second stage sees foreground from the first step, and a weak BN-gamma sparsity term so
    that pruning finds weak channels. The float training uses bfloat16 compute (TLT's --use_amp) when
    use_amp; None: where the CPU has native bfloat16 (native_bfloat16)."""

    num_images: int = 300
    arch: str = "resnet:10"
    image_height: int = 192
    image_width: int = 320
    epochs: int = 12
    qat_epochs: int = 1
    batch_size: int = 1
    roi_mini_batch: int = 32
    gt_as_roi: bool = True
    eval_rois: int = 100
    prune_threshold: float = 0.2
    # BN gamma sparsity (polarization 1) in the float training, so that pruning finds weak channels.
    # Per step, as the loss is the mean over the batch. At 0.002 (batch 1, 6 epochs) the weaker half of
    # the gammas went from 1 to ~0.58, none below 0.2 of its layer's largest: pruning removed nothing.
    sparsity_weight: float = 0.002
    max_steps_per_epoch: int = None
    use_amp: bool = None
    calibration_batches: int = 10  # of 8 images, as TLT's export defaults
    # Anchor scales from the training boxes (anchor_coverage: the spec's, or the best-fitting set).
    fit_anchors: bool = True
    # --data_dir only: (fnmatch pattern, class) pairs folding the labels' classes, first match wins
    # (e.g. (("red*", "red"), ("green*", "green"))); a class no pattern matches keeps its name.
    class_map: tuple = ()
    seed: int = 0


def parse_class_map(text):
    """'red*=red,green*=green' -> (('red*', 'red'), ('green*', 'green')) (patterns lower-cased, as the
    labels' classes are); raises ValueError naming the bad item."""
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        pattern, equals, target = (part.strip() for part in item.partition("="))
        if not equals or not pattern or not target:
            raise ValueError(f"class map item {item!r} is not PATTERN=CLASS (e.g. 'red*=red')")
        pairs.append((pattern.lower(), target.lower()))
    return tuple(pairs)


def fold_classes(classes, class_map):
    """{label class: training class}: each class goes to the first pattern of class_map it matches."""
    return {name: next((target for pattern, target in class_map if fnmatch.fnmatchcase(name, pattern)), name)
            for name in classes}


def _fit_anchors(*spec_paths):
    """Sets the anchor scales of the specs (the first is the training spec) to the best fit of its
    training boxes (anchor_coverage: the spec's, an octave apart, or half an octave apart); returns it."""
    report = anchor_coverage.run_anchor_report(spec_paths[0])
    fit = anchor_coverage.best(report[name] for name in ("spec", "best", "dense"))
    for path in spec_paths:
        spec = text_format.Parse(pathlib.Path(path).read_text(), experiment_pb2.Experiment())  # as written
        del spec.model_config.anchor_box_config.scale[:]
        spec.model_config.anchor_box_config.scale.extend(fit.scales)
        _write_spec(spec, path)
    return fit


def _write_spec(message, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pathlib.Path(path).write_text(text_format.MessageToString(message))
    return str(path)


def run_name(arch):
    """'resnet:10' -> 'frcnn_resnet10': the stem of the run's spec, model and ONNX file names."""
    return "frcnn_" + arch.replace(":", "")


def derive_specs(workdir, data_dir, options, classes):
    """Writes the conversion, training and QAT-retraining specs for this run; returns their paths."""
    name = run_name(options.arch)
    conversion = _load_default_spec(load_conversion_spec, "kitti_convert.txt")
    conversion.kitti_config.root_directory_path = data_dir
    conversion.image_directory_path = data_dir
    conversion.kitti_config.num_shards = 2

    train = _load_default_spec(load_experiment_spec, "frcnn_resnet18_train.txt")
    train.random_seed = options.seed
    model = train.model_config
    model.arch = options.arch
    size = model.input_image_config.size_height_width
    size.height, size.width = options.image_height, options.image_width
    pre = train.augmentation_config.preprocessing
    pre.output_image_height, pre.output_image_width = options.image_height, options.image_width
    del model.anchor_box_config.scale[:]
    model.anchor_box_config.scale.extend([16.0, 32.0, 64.0])
    model.freeze_bn = False  # training from scratch: no pretrained weights to keep
    del model.freeze_blocks[:]
    model.roi_mini_batch = options.roi_mini_batch
    source = train.dataset_config.data_sources[0]
    source.tfrecords_path = os.path.join(workdir, "tfrecords", "sample-fold-*")
    source.image_directory_path = data_dir
    train.dataset_config.target_class_mapping.clear()
    train.dataset_config.target_class_mapping.update(fold_classes(classes, options.class_map))
    training = train.training_config
    training.num_epochs, training.batch_size_per_gpu = options.epochs, options.batch_size
    training.gt_as_roi = options.gt_as_roi
    training.rpn_mini_batch, training.rpn_pre_nms_top_N, training.rpn_nms_max_boxes = 128, 2000, 300
    training.output_model = os.path.join(workdir, "models", f"{name}.hdf5")
    training.optimizer.sgd.lr = training.learning_rate.soft_start.base_lr = 0.01
    training.regularizer.bn_gamma_l1_weight = options.sparsity_weight
    training.regularizer.bn_gamma_polarization = 1.0
    training.learning_rate.soft_start.start_lr = 0.001
    for section in (train.evaluation_config, train.inference_config):
        section.rpn_pre_nms_top_N, section.rpn_nms_max_boxes = 1000, options.eval_rois
    train.evaluation_config.validation_period_during_training = options.epochs
    train.evaluation_config.model = checkpoint = f"{training.output_model[:-5]}.epoch{options.epochs}.hdf5"
    train.inference_config.model = checkpoint
    train.inference_config.images_dir = os.path.join(data_dir, "images")
    train.inference_config.detection_image_output_dir = os.path.join(workdir, "inference", "images")
    train.inference_config.labels_dump_dir = os.path.join(workdir, "inference", "labels")

    qat = type(train)()
    qat.CopyFrom(train)
    qat.training_config.enable_qat = True
    qat.training_config.regularizer.ClearField("bn_gamma_l1_weight")  # retrain the pruned model without it
    qat.training_config.regularizer.ClearField("bn_gamma_polarization")
    # QAT fine-tunes a trained model at a tenth of the learning rate its float training ended with
    # (0.00001). Its ranges are calibrated at conversion and the first step already scores within a
    # point of the float model; what the epoch adds is drift. traffic_lights (pruned model 0.4643):
    # at 0.0001 six runs ended -1.22 points on average (+0.32 to -2.44), at 0.00001 three ended -0.38
    # (-0.99, -0.33, +0.19); the main job's QAT model scored 0.7979 against 0.7931 (both 2026-11-29).
    # At 0.001 the main job's model lost 11.6 points (2026-11-28).
    schedule = training.learning_rate.soft_start
    qat_lr = schedule.base_lr / schedule.annealing_divider ** len(schedule.annealing_points) / 10
    qat.training_config.optimizer.sgd.lr = qat.training_config.learning_rate.soft_start.base_lr = qat_lr
    qat.training_config.learning_rate.soft_start.start_lr = qat_lr / 10
    qat.training_config.num_epochs = qat.evaluation_config.validation_period_during_training = options.qat_epochs
    qat.training_config.retrain_pruned_model = os.path.join(workdir, "models", f"{name}_pruned.hdf5")
    qat.training_config.output_model = os.path.join(workdir, "models", f"{name}_qat.hdf5")
    qat.evaluation_config.model = qat.inference_config.model = (
        f"{qat.training_config.output_model[:-5]}.epoch{options.qat_epochs}.hdf5")
    specs = os.path.join(workdir, "specs")
    return (_write_spec(conversion, os.path.join(specs, "kitti_convert.txt")),
            _write_spec(train, os.path.join(specs, f"{name}_train.txt")),
            _write_spec(qat, os.path.join(specs, f"{name}_retrain_qat.txt")))


class _Stages:
    """Runs stages in order, timing each, and collects the summary rows."""

    def __init__(self):
        self.rows = []

    def run(self, name, function, *args, **kwargs):
        logging.info("==== %s", name)
        row = {"stage": name}
        self.rows.append(row)
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            row["seconds"] = round(time.perf_counter() - start, 1)

    def note(self, **values):
        self.rows[-1].update(values)


def _ms_per_image(stages, result):
    return round(1000 * stages.rows[-1]["seconds"] / max(result["images"], 1), 1)


def run_quickstart(workdir, data_dir=None, options=QuickstartOptions()):
    """Runs the workflow; returns (summary rows, artifact paths)."""
    workdir = os.path.abspath(workdir)
    stages = _Stages()
    classes = sample_data.CLASSES
    if data_dir is None:
        data_dir = os.path.join(workdir, "sample_data")
        counts = stages.run("generate sample data", sample_data.generate, data_dir, options.num_images,
                            options.image_width, options.image_height, options.seed)
        stages.note(detail=", ".join(f"{k} {v}" for k, v in counts.items()))
    else:
        data_dir = os.path.abspath(data_dir)
        classes = sorted({line.split()[0].lower() for name in os.listdir(os.path.join(data_dir, "labels"))
                          for line in open(os.path.join(data_dir, "labels", name)) if line.strip()})
    convert_spec, train_spec, qat_spec = derive_specs(workdir, data_dir, options, classes)
    prefix = os.path.join(workdir, "tfrecords", "sample")
    summary = stages.run("dataset_convert", run_dataset_convert, convert_spec, prefix, overwrite=True)
    stages.note(detail=f"{summary['total_images']} images, {len(summary['shards'])} shards")

    if options.fit_anchors:
        fit = stages.run("fit anchors", _fit_anchors, train_spec, qat_spec)
        stages.note(detail=f"scales {' '.join(f'{v:.4g}' for v in fit.scales)}: boxes with an anchor at IoU "
                           + ", ".join(f">= {t}: {100 * fit.shares[t]:.1f}%" for t in anchor_coverage.THRESHOLDS))

    model_path = stages.run("train", run_train, train_spec, max_steps_per_epoch=options.max_steps_per_epoch,
                            use_amp=native_bfloat16() if options.use_amp is None else options.use_amp,
                            overwrite=True, validate=False)["checkpoints"][-1]  # evaluated next
    stages.note(params=load_model(model_path)[0].count_params())
    result = stages.run("evaluate (Keras FP32)", run_evaluate, train_spec, model_path)
    stages.note(map=round(result["map"], 4), ms_per_image=_ms_per_image(stages, result))

    pruned = load_experiment_spec(qat_spec).training_config.retrain_pruned_model
    stages.run("prune", run_prune, model_path, pruned,
               PruneOptions(threshold=options.prune_threshold), overwrite=True)
    stages.note(params=load_model(pruned)[0].count_params())
    qat_path = stages.run("retrain pruned model with QAT", run_train, qat_spec,
                          max_steps_per_epoch=options.max_steps_per_epoch, overwrite=True,
                          validate=False)["checkpoints"][-1]
    result = stages.run("evaluate (Keras QAT)", run_evaluate, qat_spec, qat_path)
    stages.note(map=round(result["map"], 4), ms_per_image=_ms_per_image(stages, result),
                params=load_model(qat_path)[0].count_params())
    references = {"QAT INT8": ("Keras QAT", result["detections"])}

    exports = {}
    for label, spec, source, data_type, target in (("FP32", train_spec, model_path, "fp32", "tensorrt"),
                                                   ("FP16", train_spec, model_path, "fp16", "tensorrt"),
                                                   ("INT8", train_spec, model_path, "int8", "tensorrt"),
                                                   ("QAT INT8", qat_spec, qat_path, "int8", "tensorrt"),
                                                   ("QAT INT8 CPU", qat_spec, qat_path, "int8", "onnxruntime")):
        path = os.path.join(workdir, "export", f"{run_name(options.arch)}_{label.lower().replace(' ', '_')}.onnx")
        try:
            info = stages.run(f"export ONNX {label}", run_export, spec, source, path, data_type, overwrite=True,
                              int8=Int8Options(batches=options.calibration_batches, target=target))
        except Int8Diverges as refused:
            if target != "onnxruntime":  # the TensorRT-form graphs are what the workflow deploys
                raise
            stages.note(detail=f"refused: {refused}")  # the optional CPU layout; nothing was written
            continue
        if info.get("cal_cache_file"):
            stages.note(detail=f"cache {info['cal_cache_file']} ({info['cal_cache_header']})")
        elif target == "onnxruntime":
            stages.note(detail="for onnxruntime's fused INT8 kernels (UINT8 activations, INT32 biases; not for "
                               "TensorRT)")
        result = stages.run(f"evaluate (onnxruntime {label})", run_evaluate, spec, path)
        stages.note(map=round(result["map"], 4), ms_per_image=_ms_per_image(stages, result))
        if label in references:
            reference, expected = references[label]
            stages.note(detail=f"vs {reference}: {_matched(expected, result['detections'])}")
        references.setdefault("INT8", ("ONNX FP32", result["detections"]))  # the first export is FP32
        if label == "QAT INT8":
            references["QAT INT8 CPU"] = ("ONNX QAT INT8", result["detections"])
        exports[f"ONNX {label}"] = path
    try:
        stages.run("TensorRT engine (INT8)", build_engine, exports["ONNX INT8"],
                   exports["ONNX INT8"][:-len(".onnx")] + ".engine", overwrite=True)
    except TensorRTMissing as missing:
        stages.note(detail=f"skipped: {missing}")
    images = os.path.join(workdir, "inference", "input")
    os.makedirs(images, exist_ok=True)
    for name in sorted(os.listdir(os.path.join(data_dir, "images")))[:8]:
        pathlib.Path(images, name).write_bytes(pathlib.Path(data_dir, "images", name).read_bytes())
    stages.run("inference", run_inference, train_spec, exports["ONNX INT8"], images, overwrite=True)
    artifacts = {"sample data": data_dir, "specs": os.path.dirname(train_spec), "tfrecords": prefix + "-*",
                 "model": model_path, "pruned model": pruned, "QAT model": qat_path, **exports,
                 "calibration caches": os.path.join(workdir, "export", "*.cal.bin"),
                 "inference": os.path.join(workdir, "inference"), "evaluation reports": os.path.dirname(model_path)}
    return stages.rows, artifacts


def _matched(reference, candidate):
    """'a% / b% of detections match' (same class, box within 1 px, score within 0.02; each way)."""
    return (f"{100 * metrics.matched_share(reference, candidate):.1f}% / "
            f"{100 * metrics.matched_share(candidate, reference):.1f}% of detections match")


def format_summary(rows, artifacts):
    lines = [f"{'stage':<32}{'seconds':>9}{'mAP':>9}{'params':>12}{'ms/image':>10}  detail"]
    for row in rows:
        lines.append(f"{row['stage']:<32}{row['seconds']:>9}{row.get('map', ''):>9}{row.get('params', ''):>12}"
                     f"{row.get('ms_per_image', ''):>10}  {row.get('detail', '')}")
    lines.append("artifacts:")
    lines += [f"  {name}: {path}" for name, path in artifacts.items()]
    return lines
