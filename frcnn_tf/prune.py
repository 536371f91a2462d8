"""Structured magnitude pruning (TLT's `prune`): removes whole conv/dense filters.

Each Conv2D/Dense output filter is scored by the L2 norm of its kernel slice
(score `kernel`, TLT's), or — the default, score `bn_folded` — of the kernel
slice with the following BatchNorm folded in, ||W_j|| * |gamma_j| / sqrt(var_j + eps):
a conv followed by a trainable BN is scale-invariant, so only the folded filter,
the one that runs after export, says how much channel j contributes. The score is
normalised per layer (`max`: divide by the layer's largest norm; `L2`: divide by
the norm of all scores times their count; `off`). A layer keeps the filters
scoring above `threshold`, at least min(`min_filters`, depth), rounded up to a
multiple of `granularity`. Layers whose outputs meet in an Add (ResNet
shortcuts) form one group: their scores are merged by `equalization`
(union = max, intersection = min, arithmetic_mean, geometric_mean) and all
keep the same filters. The result is a smaller dense model: the Keras config is
rebuilt with fewer filters, and BatchNorm and downstream input channels follow.
"""
import dataclasses

import numpy as np
import tensorflow as tf
from absl import logging

from frcnn_tf import quantize
from frcnn_tf.errors import FrcnnError
from frcnn_tf.io_utils import refuse_to_overwrite
from frcnn_tf.model import checkpoints

EQUALIZATIONS = {"union": np.max, "intersection": np.min, "arithmetic_mean": np.mean,
                 "geometric_mean": lambda stats, axis: np.exp(np.mean(np.log(np.maximum(stats, 1e-12)), axis=axis))}
NORMALIZERS = ("max", "L2", "off")
SCORES = ("bn_folded", "kernel")
# TLT always keeps the Faster R-CNN output layers whole.
ALWAYS_EXCLUDED = ("rpn_out_class", "rpn_out_regress", "dense_class_td", "dense_regress_td")
PRUNABLE = (tf.keras.layers.Conv2D, tf.keras.layers.Dense)
CHANNEL_PRESERVING = (tf.keras.layers.BatchNormalization, tf.keras.layers.ReLU, tf.keras.layers.Activation,
                      tf.keras.layers.MaxPooling2D, tf.keras.layers.AveragePooling2D,
                      tf.keras.layers.GlobalAveragePooling2D, tf.keras.layers.Dropout)


@dataclasses.dataclass(frozen=True)
class PruneOptions:
    threshold: float = 0.1
    equalization: str = "union"
    granularity: int = 8
    min_filters: int = 16
    normalizer: str = "max"
    excluded: tuple = ()
    score: str = "bn_folded"


def filter_norms(layer):
    """L2 norm of each output filter of a Conv2D ([k, k, in, out]) or Dense ([in, out]) kernel."""
    kernel = layer.kernel.numpy()
    return np.sqrt(np.sum(kernel.reshape(-1, kernel.shape[-1]) ** 2, axis=0))


def filter_scores(layer, consumers, score):
    """Per-filter score of `layer`: its kernel norms, times |k| of BN(x) = k x + shift (the factor BN
    folds into the kernel) when score is bn_folded and the layer's only consumer is a BatchNormalization."""
    norms = filter_norms(layer)
    if score == "bn_folded" and len(consumers) == 1 and isinstance(consumers[0], tf.keras.layers.BatchNormalization):
        return norms * np.abs(quantize.batch_norm_factors(consumers[0])[0])
    return norms


def normalise(stats, normalizer):
    if normalizer == "max":
        return stats / max(stats.max(), 1e-12)
    if normalizer == "L2":
        return stats / max(np.linalg.norm(stats), 1e-12) * len(stats)
    return stats


def retained_indices(stats, threshold, min_filters, granularity):
    """Sorted indices of the filters to keep (see the module docstring)."""
    depth = len(stats)
    count = max(int(np.sum(stats > threshold)), min(min_filters, depth))
    count = min(int(np.ceil(count / granularity) * granularity), depth)
    return np.sort(np.argsort(-stats, kind="stable")[:count])


def _parents(layer):
    nodes = layer.inbound_nodes
    if not nodes:
        return []
    inbound = nodes[0].inbound_layers
    return list(inbound) if isinstance(inbound, (list, tuple)) else [inbound]


def _producers(layer):
    """The Conv/Dense layers whose filters make up `layer`'s output channels."""
    if isinstance(layer, PRUNABLE):
        return {layer.name}
    if isinstance(layer, tf.keras.layers.Add):
        return set().union(*(_producers(p) for p in _parents(layer)))
    if isinstance(layer, CHANNEL_PRESERVING):
        return _producers(_parents(layer)[0])
    return set()  # the input image and layers that make new channels are not pruned


def _consumers(model):
    """{layer name: layers that take its output}."""
    consumers = {layer.name: [] for layer in model.layers}
    for layer in model.layers:
        for parent in _parents(layer):
            consumers[parent.name].append(layer)
    return consumers


def equalization_groups(model):
    """Lists of layer names that must keep the same filters (joined through Add layers)."""
    parent = {}

    def find(name):
        while parent.setdefault(name, name) != name:
            name = parent[name]
        return name

    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.Add):
            members = sorted(_producers(layer))
            for name in members[1:]:
                parent[find(name)] = find(members[0])
    groups = {}
    for layer in model.layers:
        if isinstance(layer, PRUNABLE):
            groups.setdefault(find(layer.name), []).append(layer.name)
    return list(groups.values())


def plan(model, options):
    """{layer name: retained output indices} for every Conv/Dense layer."""
    if options.equalization not in EQUALIZATIONS:
        raise FrcnnError(f"unknown equalization '{options.equalization}'; use one of {', '.join(EQUALIZATIONS)}")
    if options.normalizer not in NORMALIZERS:
        raise FrcnnError(f"unknown normalizer '{options.normalizer}'; use one of {', '.join(NORMALIZERS)}")
    if options.score not in SCORES:
        raise FrcnnError(f"unknown score '{options.score}'; use one of {', '.join(SCORES)}")
    highest = 1.0 if options.normalizer == "max" else float("inf")  # max-normalised scores lie in [0, 1]
    if not 0.0 <= options.threshold <= highest:
        raise FrcnnError(f"pruning threshold (-pth) {options.threshold:g} is outside [0, {highest:g}] for "
                         f"normalizer {options.normalizer}: it would prune nothing or everything")
    for name, flag, value in (("pruning granularity", "-pg", options.granularity),
                              ("minimum number of filters", "-nf", options.min_filters)):
        if value < 1:
            raise FrcnnError(f"{name} ({flag}) must be at least 1, got {value}")
    names = {layer.name for layer in model.layers}
    unknown = sorted(set(options.excluded) - names)
    if unknown:
        raise FrcnnError(f"excluded layers not in the model: {', '.join(unknown)}")
    excluded = set(options.excluded) | set(ALWAYS_EXCLUDED)
    consumers = _consumers(model)
    kept = {}
    for group in equalization_groups(model):
        depth = model.get_layer(group[0]).kernel.shape[-1]
        if excluded & set(group):
            indices = np.arange(depth)
        else:
            stats = np.stack([normalise(filter_scores(model.get_layer(n), consumers[n], options.score),
                                        options.normalizer) for n in group])
            merged = EQUALIZATIONS[options.equalization](stats, axis=0)
            indices = retained_indices(merged, options.threshold, options.min_filters, options.granularity)
        for name in group:
            kept[name] = indices
    return kept


def _channel_indices(model, kept):
    """{layer name: indices of the original output channels that survive}, None for non-channel outputs."""
    channels = {}
    for layer in model.layers:
        parents = _parents(layer)
        if isinstance(layer, PRUNABLE):
            channels[layer.name] = kept[layer.name]
        elif not parents:
            channels[layer.name] = np.arange(layer.output.shape[-1])  # the input image
        else:
            channels[layer.name] = channels[parents[0].name]
    return channels


def _slice_weights(layer, old_weights, in_indices, out_indices):
    if isinstance(layer, tf.keras.layers.Conv2D):
        kernel = old_weights[0][:, :, in_indices][..., out_indices]
        return [kernel] + [b[out_indices] for b in old_weights[1:]]
    if isinstance(layer, tf.keras.layers.Dense):
        return [old_weights[0][in_indices][:, out_indices]] + [b[out_indices] for b in old_weights[1:]]
    if isinstance(layer, tf.keras.layers.BatchNormalization):
        return [w[in_indices] for w in old_weights]
    raise FrcnnError(f"layer {layer.name} ({type(layer).__name__}) has weights the pruner cannot slice")


def prune_model(model, options, custom_objects):
    """A new, smaller Keras model and a per-layer table of filters/parameters before and after."""
    if quantize.is_quantized(model):
        raise FrcnnError("this is a QAT model: prune the float model, then retrain it with enable_qat")
    kept = plan(model, options)
    channels = _channel_indices(model, kept)
    config = model.get_config()
    for layer_config in config["layers"]:
        name = layer_config["config"]["name"]
        if name in kept:
            key = "filters" if "filters" in layer_config["config"] else "units"
            layer_config["config"][key] = int(len(kept[name]))
    pruned = tf.keras.Model.from_config(config, custom_objects=custom_objects)
    table = []
    for layer in model.layers:
        if not layer.weights:
            continue
        parents = _parents(layer)
        in_indices = channels[parents[0].name] if parents else None
        out_indices = kept.get(layer.name, in_indices)
        new_layer = pruned.get_layer(layer.name)
        new_layer.set_weights(_slice_weights(layer, layer.get_weights(), in_indices, out_indices))
        if isinstance(layer, PRUNABLE):
            table.append({"layer": layer.name, "filters_before": int(layer.kernel.shape[-1]),
                          "filters_after": int(len(out_indices)), "params_before": int(layer.count_params()),
                          "params_after": int(new_layer.count_params())})
    return pruned, table


def format_table(table, params_before, params_after):
    width = max(len(row["layer"]) for row in table) + 2
    lines = [f"{'layer':<{width}}{'filters':>16}{'parameters':>24}"]
    for row in table:
        lines.append(f"{row['layer']:<{width}}{row['filters_before']:>7} -> {row['filters_after']:<5}"
                     f"{row['params_before']:>11} -> {row['params_after']:<9}")
    lines.append(f"total parameters: {params_before} -> {params_after} "
                 f"({params_after / params_before:.3f} of the original)")
    return lines


def run_prune(model_path, output_path, options, overwrite=False, key=None):
    """Prunes a model file into `output_path` (HDF5, metadata includes the table).

    key: for .tlt input/output files. Returns {'table': per-layer rows, 'params_before', 'params_after'}."""
    refuse_to_overwrite([output_path], overwrite, "another -o")
    model, metadata = checkpoints.load_model(model_path, key=key)
    pruned, table = prune_model(model, options, checkpoints.CUSTOM_OBJECTS)
    before, after = model.count_params(), pruned.count_params()
    metadata = {**metadata, "pruning": {"source": model_path, "options": dataclasses.asdict(options),
                                        "params_before": before, "params_after": after, "layers": table}}
    checkpoints.save_model(pruned, output_path, metadata, include_optimizer=False, key=key)
    logging.info("wrote %s", output_path)
    return {"table": table, "params_before": before, "params_after": after}
