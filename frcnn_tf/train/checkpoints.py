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
from frcnn_tf.io_utils import apply_umask

from frcnn_tf.model import layers
from frcnn_tf.model.frcnn import GammaPolarization
from frcnn_tf.train import schedules

_EPOCH = re.compile(r"\.epoch_?([0-9]+)\.[^./]+$")
METADATA_KEY = "frcnn_tf"
MODEL_EXTENSIONS = (".hdf5", ".h5", ".tlt")
ENCRYPTED_EXTENSION = ".tlt"
_MAGIC = b"FRCNNTF1"
# Registered classes load by their package name; HDF5 optimizer configs name schedules bare.
CUSTOM_OBJECTS = {cls.__name__: cls for cls in (layers.Proposal, layers.RoiCrop, layers.PerRoi, layers.DetectionOutput,
                                                schedules.SoftStartAnnealing, schedules.ContinuousStep,
                                                GammaPolarization)}


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
        raise FrcnnError(f"{path}: {purpose} must be .hdf5/.h5 (Keras HDF5) or .tlt (HDF5 encrypted with a key)")


def _cipher_key(key, salt):
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return Scrypt(salt=salt, length=32, n=2 ** 14, r=8, p=1).derive(key.encode("utf-8"))


def encrypt(data, key):
    """AES-256-GCM with a scrypt-derived key: magic, 16-byte salt, 12-byte nonce, ciphertext + tag."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    salt, nonce = os.urandom(16), os.urandom(12)
    return _MAGIC + salt + nonce + AESGCM(_cipher_key(key, salt)).encrypt(nonce, data, _MAGIC)


def decrypt(data, key, path):
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not data.startswith(_MAGIC):
        raise FrcnnError(f"{path}: not an frcnn_tf encrypted model (TLT's own .tlt format cannot be read)")
    salt, nonce, body = data[8:24], data[24:36], data[36:]
    try:
        return AESGCM(_cipher_key(key, salt)).decrypt(nonce, body, _MAGIC)
    except InvalidTag:
        raise FrcnnError(f"{path}: wrong key (enc_key in the spec or -k), or the file is damaged") from None


def model_key(spec, override=None):
    """The key for .tlt files: -k, else the spec's enc_key (an unexpanded `$VAR` counts as none)."""
    if override:
        return override
    return spec.enc_key if spec.enc_key and not spec.enc_key.startswith("$") else None


def _require_key(path, key):
    if path.endswith(ENCRYPTED_EXTENSION) and not key:
        raise FrcnnError(f"{path}: .tlt model files are encrypted; set enc_key in the spec or pass -k")


def save_model(model, path, metadata, include_optimizer=True, key=None):
    """Saves model (+ optimizer) and metadata JSON to `path` via a temporary file and rename.

    A `.tlt` path is encrypted with `key`.
    """
    check_model_path(path, "the model file")
    _require_key(path, key)
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
            config = h5.attrs["model_config"]
            h5.attrs["model_config"] = json.dumps(_float32_compute(json.loads(config)))
        if path.endswith(ENCRYPTED_EXTENSION):
            with open(temp_path, "rb") as plain:
                data = encrypt(plain.read(), key)
            with open(temp_path, "wb") as sealed:
                sealed.write(data)
        apply_umask(temp_path)
        os.replace(temp_path, path)
    finally:
        if os.path.exists(temp_path):
            os.remove(temp_path)


def _float32_compute(config):
    """A Keras model config with mixed-precision layer policies (--use_amp) set to float32: model
    files always compute in float32 (their variables are float32 in any case)."""
    if isinstance(config, dict):
        if config.get("class_name") in ("Policy", "DTypePolicy") and "mixed" in str(config.get("config")):
            return "float32"
        return {k: _float32_compute(v) for k, v in config.items()}
    if isinstance(config, list):
        return [_float32_compute(v) for v in config]
    return config


def load_model(path, purpose="model", key=None):
    """(Keras model with its optimizer if saved, metadata dict); `.tlt` files are decrypted with `key`."""
    check_model_path(path, purpose)
    if not os.path.isfile(path):
        raise FrcnnError(f"{path}: {purpose} not found")
    _require_key(path, key)
    plain_path = path
    try:
        if path.endswith(ENCRYPTED_EXTENSION):
            with open(path, "rb") as sealed:
                data = decrypt(sealed.read(), key, path)
            handle, plain_path = tempfile.mkstemp(suffix=".hdf5")
            with os.fdopen(handle, "wb") as plain:
                plain.write(data)
        with h5py.File(plain_path, "r") as h5:
            metadata = json.loads(h5.attrs.get(METADATA_KEY, "{}"))
        with quantize.quantize_scope(CUSTOM_OBJECTS):  # QAT models need tfmot's classes
            model = tf.keras.models.load_model(plain_path, custom_objects=CUSTOM_OBJECTS, compile=True)
    except (OSError, ValueError, KeyError) as err:
        raise FrcnnError(f"{path}: cannot load the {purpose} ({err})") from None
    finally:
        if plain_path != path and os.path.exists(plain_path):
            os.remove(plain_path)
    return model, metadata


def load_matching_weights(model, path, key=None):
    """Copies weights from an HDF5 model/weights file into layers with the same name and shapes.

    Returns {layer name: 'loaded' | 'shape mismatch' | 'not in file'} for layers with weights.
    """
    check_model_path(path, "pretrained_weights")
    if not os.path.isfile(path):
        raise FrcnnError(f"{path}: pretrained_weights not found")
    if path.endswith(ENCRYPTED_EXTENSION):
        source, _ = load_model(path, "pretrained_weights", key)
        handle, plain = tempfile.mkstemp(suffix=".hdf5")
        os.close(handle)
        try:
            save_model(source, plain, {}, include_optimizer=False)
            return load_matching_weights(model, plain)
        finally:
            os.remove(plain)
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
