"""Model files: HDF5 Keras models (with optimizer state) plus frcnn_tf metadata, written atomically.

Checkpoints are named like TLT 3.0: `<stem>.epoch<N><ext>` beside `output_model`.
"""
import contextlib
import io
import json
import os
import warnings

import h5py
import tensorflow as tf

from frcnn_tf import quantize
from frcnn_tf.errors import FrcnnError
from frcnn_tf.io_utils import atomic_write_bytes
from frcnn_tf.model.frcnn import CUSTOM_OBJECTS
from frcnn_tf.spec.derived import CHECKPOINT_NAME
METADATA_KEY = "frcnn_tf"
MODEL_EXTENSIONS = (".hdf5", ".h5", ".tlt")
ENCRYPTED_EXTENSION = ".tlt"
_MAGIC = b"FRCNNTF1"


def checkpoint_path(output_model, epoch):
    stem, ext = os.path.splitext(output_model)
    return f"{stem}.epoch{epoch}{ext}"


def epoch_of(path):
    """The epoch number in a checkpoint name (`x.epoch12.hdf5` or TAO's `x.epoch_12.hdf5`)."""
    found = CHECKPOINT_NAME.search(path)
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
    """Saves model (+ optimizer) and metadata JSON to `path` atomically (io_utils.atomic_output).

    A `.tlt` path is encrypted with `key`.
    """
    check_model_path(path, "the model file")
    _require_key(path, key)
    # The HDF5 file is built in memory: a .tlt's plaintext never reaches the disk, and a full disk
    # fails in one plain write (h5py left with a file it cannot close crashes the process at exit).
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "HDF5 is legacy": it is TLT's format
            model.save(h5, save_format="h5", include_optimizer=include_optimizer)
        h5.attrs[METADATA_KEY] = json.dumps(metadata)
        config = h5.attrs["model_config"]
        h5.attrs["model_config"] = json.dumps(_float32_compute(json.loads(config)))
    data = buffer.getvalue()
    atomic_write_bytes(path, encrypt(data, key) if path.endswith(ENCRYPTED_EXTENSION) else data)


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


@contextlib.contextmanager
def open_model_file(path, purpose="model", key=None):
    """The model file as an open h5py.File; a `.tlt` file is decrypted in memory (no plaintext on disk)."""
    check_model_path(path, purpose)
    if not os.path.isfile(path):
        raise FrcnnError(f"{path}: {purpose} not found")
    _require_key(path, key)
    try:
        if path.endswith(ENCRYPTED_EXTENSION):
            with open(path, "rb") as sealed:
                h5 = h5py.File(io.BytesIO(decrypt(sealed.read(), key, path)), "r")
        else:
            h5 = h5py.File(path, "r")
    except OSError as err:
        raise FrcnnError(f"{path}: cannot read the {purpose} ({err})") from None
    with h5:
        yield h5


def load_model(path, purpose="model", key=None):
    """(Keras model with its optimizer if saved, metadata dict); `.tlt` files are decrypted with `key`.

    Only files written by frcnn_tf (train, prune) load: they carry the frcnn_tf metadata.
    """
    with open_model_file(path, purpose, key) as h5:
        if METADATA_KEY not in h5.attrs:
            raise FrcnnError(f"{path}: not an frcnn_tf model (no {METADATA_KEY} metadata); the {purpose} must be "
                             "a file written by frcnn_tf train or prune")
        try:
            metadata = json.loads(h5.attrs[METADATA_KEY])
            with quantize.quantize_scope(CUSTOM_OBJECTS):  # QAT models need tfmot's classes
                model = tf.keras.models.load_model(h5, custom_objects=CUSTOM_OBJECTS, compile=True)
        except (OSError, ValueError, KeyError) as err:
            raise FrcnnError(f"{path}: cannot load the {purpose} ({err})") from None
    return model, metadata


def load_matching_weights(model, path, key=None):
    """Copies weights from an HDF5 model/weights file into layers with the same name and shapes.

    Returns {layer name: 'loaded' | 'shape mismatch' | 'not in file'} for layers with weights.
    """
    status = {}
    with open_model_file(path, "pretrained_weights", key) as h5:
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
