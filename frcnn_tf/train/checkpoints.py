"""Model files: HDF5 Keras models (with optimizer state) plus frcnn_tf metadata, written atomically.

Checkpoints are named like TLT 3.0: `<stem>.epoch<N><ext>` beside `output_model`.
"""
import json
import os
import re
import tempfile
import warnings

import h5py
import tensorflow as tf

from frcnn_tf import quantize
from frcnn_tf.errors import FrcnnError

from frcnn_tf.model import layers
from frcnn_tf.train import schedules

_EPOCH = re.compile(r"\.epoch_?([0-9]+)\.[^./]+$")
METADATA_KEY = "frcnn_tf"
MODEL_EXTENSIONS = (".hdf5", ".h5")
# Registered classes load by their package name; HDF5 optimizer configs name schedules bare.
CUSTOM_OBJECTS = {cls.__name__: cls for cls in (layers.Proposal, layers.RoiCrop, layers.PerRoi, layers.DetectionOutput,
                                                schedules.SoftStartAnnealing, schedules.ContinuousStep)}


def checkpoint_path(output_model, epoch):
    stem, ext = os.path.splitext(output_model)
    return f"{stem}.epoch{epoch}{ext}"


def epoch_of(path):
    """The epoch number in a checkpoint name (`x.epoch12.hdf5` or TAO's `x.epoch_12.hdf5`)."""
    found = _EPOCH.search(path)
    if not found:
        raise FrcnnError(f"{path}: not a checkpoint name (<stem>.epoch<N>.hdf5)")
    return int(found.group(1))


def check_model_path(path, purpose):
    if os.path.splitext(path)[1] not in MODEL_EXTENSIONS:
        raise FrcnnError(f"{path}: {purpose} must be a Keras HDF5 file (.hdf5 or .h5); encrypted .tlt files "
                         "are not supported")


def save_model(model, path, metadata, include_optimizer=True):
    """Saves model (+ optimizer) and metadata JSON to `path` via a temporary file and rename."""
    check_model_path(path, "the model file")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temp_path = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    os.close(handle)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "HDF5 is legacy": it is TLT's format
            model.save(temp_path, save_format="h5", include_optimizer=include_optimizer)
        with h5py.File(temp_path, "a") as h5:
            h5.attrs[METADATA_KEY] = json.dumps(metadata)
        os.replace(temp_path, path)
    finally:
        if os.path.exists(temp_path):
            os.remove(temp_path)


def load_model(path, purpose="model"):
    """(Keras model with its optimizer if saved, metadata dict)."""
    check_model_path(path, purpose)
    if not os.path.isfile(path):
        raise FrcnnError(f"{path}: {purpose} not found")
    try:
        with h5py.File(path, "r") as h5:
            metadata = json.loads(h5.attrs.get(METADATA_KEY, "{}"))
        with quantize.quantize_scope(CUSTOM_OBJECTS):  # QAT models need tfmot's classes
            model = tf.keras.models.load_model(path, custom_objects=CUSTOM_OBJECTS, compile=True)
    except (OSError, ValueError, KeyError) as err:
        raise FrcnnError(f"{path}: cannot load the {purpose} ({err})") from None
    return model, metadata


def load_matching_weights(model, path):
    """Copies weights from an HDF5 model/weights file into layers with the same name and shapes.

    Returns {layer name: 'loaded' | 'shape mismatch' | 'not in file'} for layers with weights.
    """
    check_model_path(path, "pretrained_weights")
    if not os.path.isfile(path):
        raise FrcnnError(f"{path}: pretrained_weights not found")
    status = {}
    with h5py.File(path, "r") as h5:
        group = h5["model_weights"] if "model_weights" in h5 else h5
        for layer in model.layers:
            if not layer.weights:
                continue
            if layer.name not in group:
                status[layer.name] = "not in file"
                continue
            stored = group[layer.name]
            names = [n.decode() if isinstance(n, bytes) else n for n in stored.attrs.get("weight_names", [])]
            values = [stored[n][()] for n in names]
            if [v.shape for v in values] != [tuple(w.shape) for w in layer.weights]:
                status[layer.name] = "shape mismatch"
                continue
            layer.set_weights(values)
            status[layer.name] = "loaded"
    return status
