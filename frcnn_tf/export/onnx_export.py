"""Keras detection graph -> ONNX (tf2onnx), with a dynamic batch dimension.

Input `input_image` [N, H, W, C] float32: the preprocessed image exactly as the
input pipeline makes it (channel order, mean subtraction, scaling, letterbox).
Outputs: `boxes` [N, K, 4] (y1, x1, y2, x2 in input pixels), `scores` [N, K],
`classes` [N, K] int32 (index into the `class_names` metadata), `num_detections`
[N] int32. Preprocessing settings, class names and the precision are stored as ONNX metadata.

Precisions: `fp32`; `fp16` (the convolutional body in FP16, see onnx_graph); `int8`:
explicit Q/DQ quantization plus a TensorRT calibration cache, the ranges calibrated
on images for a float model or read from a QAT model's fake-quant ops.
"""
import dataclasses
import hashlib
import json
import os
import re

import numpy as np
import onnx
import tensorflow as tf
from onnx import numpy_helper
import tf2onnx
from tf2onnx import optimizer as tf2onnx_optimizers
from absl import logging
from tqdm import tqdm

from frcnn_tf.data.images import image_dataset, list_images
from frcnn_tf.data.pipeline import InputPipeline, image_problem
from frcnn_tf.detectors import KerasDetector, onnx_session, split_detections
from frcnn_tf import calibrators, metrics, quantize
from frcnn_tf.errors import FrcnnError, Int8Diverges
from frcnn_tf.export import calibration, onnx_graph, tensorrt_rules, tf2onnx_handlers
from frcnn_tf.io_utils import atomic_write_bytes, refuse_to_overwrite
from frcnn_tf.model import checkpoints
from frcnn_tf.model.frcnn import FasterRCNN
from frcnn_tf.settings import DetectionSettings
from frcnn_tf.spec import parse_experiment_spec
from frcnn_tf.spec.derived import class_names, deployed_section_name, object_class_names, regression_weights
from frcnn_tf.spec.validate import require_section
from frcnn_tf.tensorrt_limits import INT8_MAX, MAX_TOP_K, NMS_MAX_BOXES

OPSET = 17
OUTPUT_NAMES = ("boxes", "scores", "classes", "num_detections")
# tf2onnx's graph optimizers less merge_duplication, which keeps one of two identical nodes (with
# its name) in an order that varies between processes: tensor names must not (calibration caches).
STABLE_OPTIMIZERS = {name: optimizer for name, optimizer in tf2onnx_optimizers._get_optimizers().items()
                     if name != "merge_duplication"}
CONFIDENT = 0.5  # share of the best score from which reference detections must be found again (check_int8)
AGREEMENT_MIN = 0.5  # PTQ whose mAP against FP32's strong detections is lower is refused
TRUSTED_SCORE = 0.5  # ... unless FP32's best detection scores lower (an untrained model: the check cannot judge)
QAT_MATCH_MIN = 0.95  # QAT: share of the Keras QAT model's detections (and back) the INT8 graph must reproduce
GENERATED_NAME = re.compile(r"__(\d+)(?=:\d+$|$|/)")  # tf2onnx's make_name suffix


def check_for_tensorrt(model, path):
    """Raises FrcnnError listing every TensorRT rule the graph breaks, one `PATH: node N (Op): rule` per line."""
    violations = tensorrt_rules.check(model)
    if violations:
        raise FrcnnError("\n".join(f"{path}: {violation}" for violation in violations))


def _check_tensorrt_limits(section, section_name, source):
    """Refuses NMS box counts TensorRT's TopK cannot keep, naming the spec field; warns where
    TensorRT's NMS layer will see fewer boxes than the spec asks for."""
    for field in ("rpn_nms_max_boxes", "classifier_nms_max_boxes"):
        if getattr(section, field) > MAX_TOP_K:
            raise source.error(f"{section_name}.{field}", f"{getattr(section, field)} boxes after NMS: TensorRT's "
                                                          f"TopK keeps at most {MAX_TOP_K}; lower it to export")
    if section.rpn_pre_nms_top_N > NMS_MAX_BOXES:
        logging.warning("%s.rpn_pre_nms_top_N is %d: TensorRT's NMS layer considers only the %d highest-scoring "
                        "boxes of an image (NvInfer.h INMSLayer), so the lowest-scoring proposals never take part "
                        "there (onnxruntime and Keras use all of them)", section_name, section.rpn_pre_nms_top_N,
                        NMS_MAX_BOXES)


def _stable_generated_names(model):
    """Renames tf2onnx's generated names (`NAME__N`) after what they compute: `OP__<hash>`.

    tf2onnx numbers the names it makes with a process-wide counter, and which of two merged
    duplicate nodes survives (with its name) varies between processes, so the same model
    exported twice had different tensor names, and a calibration cache (which names tensors)
    fitted only the graph exported in the same run. The hash covers the producing op, its
    attributes and the hashes (or stable TensorFlow names) of its inputs, or an initializer's
    value: names now depend on the graph alone. Identical computations share a hash and are
    told apart by a count.
    """
    graph = model.graph
    digests, names, counts = {}, {}, {}

    def digest_of(name):
        return digests.get(name, name)

    def unique(base):
        counts[base] = counts.get(base, -1) + 1
        return base if not counts[base] else f"{base}_{counts[base]}"

    def assign(old, kind, digest):
        digests[old] = digest
        names[old] = unique(f"{kind}__{digest[:10]}") + old[GENERATED_NAME.search(old).end():]

    for initializer in graph.initializer:
        if GENERATED_NAME.search(initializer.name):
            value = numpy_helper.to_array(initializer)
            assign(initializer.name, "const", hashlib.sha1(repr((value.dtype, value.shape)).encode()
                                                           + value.tobytes()).hexdigest())
    for node in graph.node:  # graph order is topological: inputs have their digests first
        recipe = repr((node.op_type, node.domain, [digest_of(n) for n in node.input],
                       sorted(a.SerializeToString() for a in node.attribute)))
        digest = hashlib.sha1(recipe.encode()).hexdigest()
        for index, output in enumerate(node.output):
            if GENERATED_NAME.search(output):
                assign(output, node.op_type, f"{digest}{index}")
        if GENERATED_NAME.search(node.name):
            node.name = unique(f"{node.op_type}__{digest[:10]}_node")
    for node in graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    for value in (*graph.initializer, *graph.input, *graph.output, *graph.value_info):
        value.name = names.get(value.name, value.name)


def _drop_unused_domains(model):
    """Removes opset imports of domains no node uses (tf2onnx always adds ai.onnx.ml)."""
    used = {node.domain for node in model.graph.node} | {"", "ai.onnx"}
    kept = [opset for opset in model.opset_import if opset.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)


def _rename_outputs(model):
    """Gives the graph outputs stable names (tf2onnx names them after Keras tensors)."""
    renames = {output.name: name for output, name in zip(model.graph.output, OUTPUT_NAMES)}
    for node in model.graph.node:
        node.output[:] = [renames.get(n, n) for n in node.output]
        node.input[:] = [renames.get(n, n) for n in node.input]
    for output in model.graph.output:
        output.name = renames[output.name]


def preprocessing_metadata(spec):
    image = spec.model_config.input_image_config
    return {"image_channel_order": image.image_channel_order, "image_channel_mean": dict(image.image_channel_mean),
            "image_scaling_factor": image.image_scaling_factor,
            "resize": "stretch" if spec.augmentation_config.preprocessing.enable_auto_resize else "letterbox"}


@dataclasses.dataclass(frozen=True)
class Int8Options:
    """INT8 calibration (TLT's export flags); the cache defaults to <output>.cal.bin."""

    cal_cache_file: str = None
    cal_image_dir: str = None
    batch_size: int = 8
    batches: int = 10
    calibrator: str = "entropy"
    percentile: float = calibrators.DEFAULT_PERCENTILE
    trt_version: str = None  # TensorRT version written in the cache header (calibration.write_cache)
    target: str = "tensorrt"  # or "onnxruntime": the Q/DQ layout onnxruntime's CPU fusion runs (for_onnxruntime)


TARGETS = ("tensorrt", "onnxruntime")


def _names_and_weights(metadata, spec):
    """The model's class names (background last) and box regression weights: its file's, else the spec's."""
    return (metadata.get("class_names") or class_names(spec.dataset_config),
            metadata.get("regression_weights") or regression_weights(spec.training_config))


def export_graph(model, metadata, spec, section):
    """(onnx.ModelProto, metadata, quantize.TrainedScales or None) of the detection graph of a loaded model.

    A QAT model is exported as quantize.deployable_model makes it (BatchNorm folded, kernels INT8 x
    scale, each TensorQuantize a Q/DQ pair with its trained scale); its scales go to onnx_graph.qat_to_qdq."""
    names, weights = _names_and_weights(metadata, spec)
    trained = None
    if quantize.is_quantized(model):
        empty = sorted(name for name, amax in quantize.activation_quantizers(model).items() if amax <= 0)
        if empty:
            raise FrcnnError(f"the QAT model has empty quantization ranges ({', '.join(empty[:3])}...): train it "
                             "for at least one step before export")
        model, trained = quantize.deployable_model(model, checkpoints.CUSTOM_OBJECTS)
    detector = FasterRCNN(model).detection_model(DetectionSettings.from_section(section, weights))
    signature = (tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name="input_image"),)
    proto, _ = tf2onnx.convert.from_keras(detector, input_signature=signature, opset=OPSET,
                                          custom_op_handlers=dict(tf2onnx_handlers.HANDLERS),
                                          optimizers=STABLE_OPTIMIZERS)
    unconverted = sorted({n.op_type for n in proto.graph.node if n.domain not in ("", "ai.onnx")})
    if unconverted:  # tf2onnx logs a failed lowering and leaves the TensorFlow op in place
        raise FrcnnError(f"tf2onnx could not lower {', '.join(unconverted)} to ONNX (see its log above)")
    _rename_outputs(proto)
    _drop_unused_domains(proto)
    _stable_generated_names(proto)
    info = {"class_names": object_class_names(names), "input_shape": list(model.input_shape[1:]),
            "qat": bool(metadata.get("qat")), **preprocessing_metadata(spec)}
    return proto, info, trained


def calibration_images(options):
    """The --cal_image_dir files export reads: the first (batches + 1) x batch_size that decode (the
    last batch is held back to check the INT8 model); the others are named in a warning. A folder
    without any is a FrcnnError."""
    wanted, paths = (options.batches + 1) * options.batch_size, []
    for path in list_images(options.cal_image_dir):
        problem = image_problem(path)
        if problem:
            logging.warning("%s; not used for calibration", problem)
            continue
        paths.append(path)
        if len(paths) == wanted:
            break
    if not paths:
        raise FrcnnError(f"{options.cal_image_dir}: no calibration image decodes")
    if len(paths) < wanted:
        logging.warning("%d images from %s, fewer than (--batches %d + 1 held back) x --batch_size %d",
                        len(paths), options.cal_image_dir, options.batches, options.batch_size)
    return paths


def calibration_batches(spec, options, image_paths=None):
    """(calibration batches, held-back batch or None) of network inputs (NumPy): up to options.batches
    batches and one more, from `image_paths` (see calibration_images) or else the training folds
    (augmented, as TLT calibrates)."""
    pipeline = InputPipeline(spec)
    if image_paths:
        data = image_dataset(pipeline, image_paths, options.batch_size).map(lambda images, scale, size: images)
    else:
        data = pipeline.dataset(training=True, batch_size=options.batch_size).map(lambda batch: batch["images"])
    batches = [images.numpy() for images in data.take(options.batches + 1)]
    if len(batches) <= options.batches:
        return batches, None
    return batches[:-1], batches[-1]


def calibrate(proto, batches):
    """{tensor: calibrators.AbsHistogram} of the body's activation tensors of a float graph over the batches."""
    names = onnx_graph.body_tensors(proto.graph)
    session = onnx_session(onnx_graph.with_outputs(proto, names).SerializeToString())
    histograms = {name: calibrators.AbsHistogram() for name in names}
    seen = 0
    for images in tqdm(batches, desc="calibration", unit="batch", disable=None):
        calibrators.update_histograms(histograms, zip(names, session.run(names, {"input_image": images})))
        seen += len(images)
    if not seen:
        raise FrcnnError("no calibration images: pass --cal_image_dir or check the spec's training tfrecords")
    logging.info("calibrated %d tensors on %d images", len(names), seen)
    return histograms


def divergence_report(proto, quantized, images, count=3):
    """Lines naming the `count` body tensors whose values in the INT8 graph differ most from the FP32
    graph's on `images` (relative RMS error, errors accumulated from the input on)."""
    names = [name for name in onnx_graph.body_tensors(proto.graph) if name != "input_image"]
    values = []
    for graph in (proto, quantized):
        session = onnx_session(onnx_graph.with_outputs(graph, names).SerializeToString())
        values.append(session.run(names, {"input_image": np.asarray(images, np.float32)}))
    errors = {name: float(np.linalg.norm(int8 - fp32) / max(np.linalg.norm(fp32), 1e-12))
              for name, fp32, int8 in zip(names, *values)}
    return [f"{name}: {100 * error:.1f}% relative error" for name, error in
            sorted(errors.items(), key=lambda item: -item[1])[:count]]


def _onnx_detections(proto, images, fused_int8=False):
    session = onnx_session(proto.SerializeToString(), fused_int8)
    return split_detections(*session.run(None, {"input_image": np.asarray(images, np.float32)}))


def _count(detections):
    return sum(len(found["scores"]) for found in detections)


def _best_score(detections):
    return max((float(found["scores"].max()) for found in detections if len(found["scores"])), default=0.0)


def agreement(reference, candidate, class_count):
    """How well `candidate`'s detections reproduce `reference`'s on the same images: mAP (IoU 0.5) of
    the candidate against the reference's strong detections (score at least CONFIDENT x its best
    score on these images) taken as ground truth, or None when the reference has no detection."""
    best = _best_score(reference)
    if best <= 0.0:
        return None
    strong = [found["scores"] >= CONFIDENT * best for found in reference]
    truths = [{"boxes": found["boxes"][keep], "classes": found["classes"][keep],
               "difficult": np.zeros(int(keep.sum()), bool)} for found, keep in zip(reference, strong)]
    return metrics.evaluate(candidate, truths, [str(i) for i in range(class_count)])["map"]


def check_int8(expected, int8_proto, held_back, class_count, label, nms_iou=None, fused_int8=False):
    """Summary of how the INT8 graph's detections on the held-back images reproduce `expected`, the
    reference's on them (FP32 ONNX detections for PTQ, the Keras QAT model's for QAT), logged.
    nms_iou: compare only the detections whose survival the scores decide (metrics.decided_by_scores
    at this NMS IoU threshold), on both sides.
    fused_int8: run the INT8 graph with onnxruntime's QDQ fusion (the onnxruntime target)."""
    found = _onnx_detections(int8_proto, held_back, fused_int8)
    if nms_iou is not None:
        before = _count(expected), _count(found)
        expected, found = metrics.decided_by_scores(expected, found, nms_iou)
        if (_count(expected), _count(found)) != before:
            logging.info("INT8 vs %s: %d of %d detections (%d of %d back) left out of the comparison: NMS chose "
                         "among equal scores by its own order", label, before[0] - _count(expected), before[0],
                         before[1] - _count(found), before[1])
    score = agreement(expected, found, class_count)
    summary = {"images": len(held_back), "reference_best_score": round(_best_score(expected), 4),
               "matched": round(metrics.matched_share(expected, found), 4),
               "matched_back": round(metrics.matched_share(found, expected), 4),
               "map_vs_reference": None if score is None else round(score, 4)}
    logging.info("INT8 vs %s on %d held-back images: %.1f%% of its detections reproduced (%.1f%% back; same class, "
                 "box within 1 px, score within 0.02); mAP against its strong detections: %s", label,
                 len(held_back), 100 * summary["matched"], 100 * summary["matched_back"],
                 "n/a (none)" if score is None else f"{score:.4f}")
    return summary


def _calibrated_int8(proto, batches, held_back, class_count, options):
    """(Q/DQ ONNX, {tensor: scale}, calibrator, check summary) of the first calibrator, starting with
    options.calibrator and falling back to percentile then max (saying so), whose INT8 detections
    agree with FP32's on the held-back images (mAP against FP32's strong detections >= AGREEMENT_MIN).
    None agreeing is a FrcnnError naming the most clipped and diverging tensors (the model and cache
    would not detect what the float model detects), unless FP32's best detection scores below
    TRUSTED_SCORE: then the best calibration is written with a warning."""
    histograms = calibrate(proto, batches)
    if held_back is None:
        logging.warning("no image left to check the INT8 model on (all went to calibration)")
    expected = None if held_back is None else _onnx_detections(proto, held_back)  # FP32, once for every try
    attempts, tries = [], []

    def chosen(quantized, scales, method, summary):
        return quantized, scales, method, {**summary, "fallback_from": attempts} if summary else {}

    full_range = {graph_input.name for graph_input in proto.graph.input}  # the image, as QAT calibrates it
    for method in dict.fromkeys((options.calibrator, "percentile", "max")):
        ranges = calibrators.ranges_of(histograms, method, options.percentile, full_range)
        for line in calibrators.clipping_report(ranges):
            logging.info("%s calibration, most clipped: %s", method, line)
        scales = calibration.scales_of({name: r.amax for name, r in ranges.items()})
        quantized = onnx_graph.quantize_for_tensorrt(proto, scales)
        summary = {} if held_back is None else check_int8(expected, quantized, held_back, class_count, "FP32")
        score = summary.get("map_vs_reference")
        if score is None or score >= AGREEMENT_MIN:
            if attempts:
                logging.warning("INT8 with %s calibration diverged from FP32 (%s); using %s calibration, whose "
                                "mAP against FP32 is %.4f", options.calibrator, "; ".join(attempts), method, score)
            return chosen(quantized, scales, method, summary)
        worst = divergence_report(proto, quantized, held_back)
        logging.warning("%s calibration: INT8 diverges from FP32 (mAP %.4f against its strong detections); most "
                        "diverging tensors: %s", method, score, "; ".join(worst))
        attempts.append(f"{method}: mAP {score:.4f}, most clipped {calibrators.clipping_report(ranges, 1)[0]}, "
                        f"most diverging {worst[0]}")
        tries.append((score, quantized, scales, method, summary))
    if summary["reference_best_score"] < TRUSTED_SCORE:  # an untrained model's detections are noise
        score, quantized, scales, method, summary = max(tries, key=lambda attempt: attempt[0])
        logging.warning("FP32's best detection on the held-back images scores %.3f (< %.1f): the model looks "
                        "untrained, so the INT8 check cannot judge the calibration; writing the %s calibration "
                        "(mAP %.4f against FP32)", summary["reference_best_score"], TRUSTED_SCORE, method, score)
        return chosen(quantized, scales, method, summary)
    raise Int8Diverges(f"INT8 calibration diverges from FP32: on {len(held_back)} held-back images the INT8 model "
                       f"finds FP32's strong detections with mAP below {AGREEMENT_MIN} with every calibrator "
                       f"({'; '.join(attempts)}); nothing is written. Calibrate on more or more typical images "
                       "(--cal_image_dir, --batches) or keep this model in FP16")


def quantize_int8(proto, class_count, spec, options, image_paths=None, trained=None, qat_detector=None):
    """(Q/DQ ONNX, {tensor: scale}, cache method, check summary, held-back images or None) for a QAT
    graph (`trained`: its quantize.TrainedScales from export_graph; `qat_detector` runs the Keras QAT
    model) or a float graph (calibrated on images). The INT8 graph is checked against its reference on
    the held-back images."""
    if trained is not None:
        quantized, scales = onnx_graph.qat_to_qdq(proto, trained.weights, trained.activations)
        try:
            held_back = calibration_batches(spec, dataclasses.replace(options, batches=0), image_paths)[1]
        except (FrcnnError, OSError, tf.errors.OpError) as err:  # the data may live elsewhere: a report only
            logging.warning("not checking the INT8 model against the Keras QAT model (no images: %s)", err)
            return quantized, scales, "qat", {}, None
        if held_back is None:
            logging.warning("not checking the INT8 model against the Keras QAT model (no images)")
            return quantized, scales, "qat", {}, None
        summary = check_int8(qat_detector(held_back), quantized, held_back, class_count, "the Keras QAT model",
                             nms_iou=qat_detector.settings.nms_iou)
        if min(summary["matched"], summary["matched_back"]) < QAT_MATCH_MIN:  # the same arithmetic: a defect
            raise Int8Diverges(f"the INT8 graph reproduces {100 * summary['matched']:.1f}% of the Keras QAT model's "
                               f"detections on {len(held_back)} held-back images "
                               f"({100 * summary['matched_back']:.1f}% back), below {100 * QAT_MATCH_MIN:.0f}%: it "
                               "does not compute what QAT trained; nothing is written. Please report this with the "
                               "model")
        return quantized, scales, "qat", summary, held_back
    batches, held_back = calibration_batches(spec, options, image_paths)
    return (*_calibrated_int8(proto, batches, held_back, class_count, options), held_back)


SATURATED_SHARE_MAX = 1e-3  # ten times what the calibrators clip (calibrators.amax_of)


def saturated_activations(quantized, images):
    """{tensor: share of its values beyond 127 steps (that INT8 clips)} on `images` of the ReLU outputs of the
    TensorRT-form INT8 graph that reach 127 steps more often than SATURATED_SHARE_MAX. Calibration
    clips at most 0.01 %, but QAT keeps training once its ranges are fixed and the weights can carry a
    tensor beyond its range: the main job's first ReLU saturated 14 % of its values after one QAT
    epoch, and TensorRT's clip at 127 steps became part of what the model computes."""
    candidates = onnx_graph.never_negative_activations(quantized)
    if not candidates:
        return {}
    names = list(candidates)
    session = onnx_session(onnx_graph.with_outputs(quantized, names).SerializeToString())
    values = session.run(names, {quantized.graph.input[0].name: np.asarray(images, np.float32)})
    shares = {name: float(np.mean(value >= (INT8_MAX + 0.5) * candidates[name]))  # rounds to 128 or more
              for name, value in zip(names, values)}
    return {name: share for name, share in shares.items() if share > SATURATED_SHARE_MAX}


def onnxruntime_int8(quantized, scales, trained, held_back, class_count):
    """(INT8 graph for onnxruntime's fused kernels, check summary): onnx_graph.for_onnxruntime of the
    TensorRT-form graph `quantized` with the same scales (PTQ: every calibrated tensor's scale may
    quantize a conv's output; QAT: the trained scales only), the ReLU outputs that saturate on the
    held-back images (saturated_activations) kept at INT8's clip, checked against the TensorRT-form
    graph on the held-back images quantize_int8 checked it on (None: not checked). A FrcnnError when
    its detections diverge, unless that graph's best detection scores below TRUSTED_SCORE (an
    untrained model: a warning, as for PTQ)."""
    if held_back is None:
        logging.warning("not checking the onnxruntime INT8 graph (no held-back images)")
        return onnx_graph.for_onnxruntime(quantized, None if trained is not None else scales), {}
    saturated = saturated_activations(quantized, held_back)
    for name, share in saturated.items():
        logging.info("%s saturates %.2f%% of its values at 127 steps: INT8 zero point kept (its conv runs unfused)",
                     name, 100 * share)
    layout = onnx_graph.for_onnxruntime(quantized, None if trained is not None else scales, saturated)
    summary = check_int8(_onnx_detections(quantized, held_back), layout, held_back, class_count,
                         "the TensorRT-form INT8 graph", fused_int8=True)
    score = summary["map_vs_reference"]
    if score is not None and score < AGREEMENT_MIN and summary["reference_best_score"] < TRUSTED_SCORE:
        logging.warning("the TensorRT-form graph's best detection scores %.3f (< %.1f): the model looks untrained, "
                        "so the check cannot judge the onnxruntime graph (mAP %.4f against it); writing it",
                        summary["reference_best_score"], TRUSTED_SCORE, score)
    elif score is not None and score < AGREEMENT_MIN:
        raise Int8Diverges(f"the onnxruntime INT8 graph diverges from the TensorRT-form one (mAP {score:.4f} "
                           f"against its strong detections on {len(held_back)} images); nothing is written. Export "
                           "with --target tensorrt")
    return layout, {**summary, "int8_clamped": {name: round(share, 5) for name, share in saturated.items()}}


def run_export(spec_path, model_path, output_path, data_type="fp32", overwrite=False, key=None,
               int8=Int8Options()):
    """Exports a model file to ONNX at output_path (+ the calibration cache for int8) and checks
    the graph against TensorRT's rules first; returns the metadata written with it (and, for
    int8, the cache header)."""
    cache_path = (int8.cal_cache_file or f"{os.path.splitext(output_path)[0]}.cal.bin") \
        if data_type == "int8" and int8.target == "tensorrt" else None
    refuse_to_overwrite([output_path, cache_path], overwrite)
    spec, source = parse_experiment_spec(spec_path)
    section_name = deployed_section_name(spec)
    section = require_section(spec, source, section_name)
    _check_tensorrt_limits(section, section_name, source)
    if int8.calibrator not in calibrators.CALIBRATORS:
        raise FrcnnError(f"--calibrator {int8.calibrator}: choose one of {', '.join(calibrators.CALIBRATORS)}")
    for flag, value in (("--batch_size", int8.batch_size), ("--batches", int8.batches)):
        if data_type == "int8" and value < 1:
            raise FrcnnError(f"{flag} {value}: calibration needs at least 1")
    if int8.target not in TARGETS:
        raise FrcnnError(f"--target {int8.target}: choose one of {', '.join(TARGETS)}")
    if int8.target == "onnxruntime" and int8.cal_cache_file:
        raise FrcnnError("--cal_cache_file: the onnxruntime target carries its scales in the graph and writes no "
                         "TensorRT cache; drop the flag (or export with --target tensorrt)")
    if int8.target != "tensorrt" and data_type != "int8":
        raise FrcnnError(f"--target {int8.target} lays out INT8 graphs; {data_type} graphs are the same for every "
                         "runtime: drop --target")
    if data_type == "int8" and not 0 < int8.percentile <= 100:
        raise FrcnnError(f"--percentile {int8.percentile}: choose a value in (0, 100]")
    model, metadata = checkpoints.load_model(model_path, key=checkpoints.model_key(spec, key))
    quantize.check_scheme(model, model_path)
    image_paths = calibration_images(int8) if data_type == "int8" and int8.cal_image_dir else None  # before the
    # conversion, which takes minutes
    if None in model.input_shape[1:3]:
        raise FrcnnError(f"{model_path}: export needs a fixed input size (size_height_width in the spec)")
    if metadata.get("qat") and data_type == "fp16":
        raise FrcnnError(f"{model_path}: a QAT model exports as int8 (its ranges become the Q/DQ nodes) or fp32")
    proto, info, trained = export_graph(model, metadata, spec, section)
    if data_type == "fp16":
        proto = onnx_graph.to_float16(proto)
    elif data_type == "int8":
        names, weights = _names_and_weights(metadata, spec)
        qat_detector = KerasDetector(FasterRCNN(model), names, DetectionSettings.from_section(section, weights)) \
            if trained is not None else None
        proto, scales, method, info["int8_check"], held_back = quantize_int8(
            proto, len(info["class_names"]), spec, int8, image_paths, trained, qat_detector)
        info["calibrator"] = method
        if int8.target == "onnxruntime":
            proto, info["onnxruntime_check"] = onnxruntime_int8(proto, scales, trained, held_back,
                                                                len(info["class_names"]))
        else:
            info["cal_cache_file"] = os.path.basename(cache_path)
    info["data_type"] = data_type
    info["target"] = int8.target
    onnx.helper.set_model_props(proto, {"frcnn_tf": json.dumps(info)})
    onnx.checker.check_model(proto)
    if int8.target == "tensorrt":
        check_for_tensorrt(proto, output_path)
    if data_type == "int8" and int8.target == "tensorrt":
        info["cal_cache_header"] = calibration.write_cache(cache_path, scales, method, int8.trt_version)
        info["cal_cache_path"] = cache_path
    atomic_write_bytes(output_path, proto.SerializeToString())
    return info
