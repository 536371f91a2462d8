"""Weight files of other frameworks, read with NumPy only: {tensor name: numpy array}.

- safetensors (Hugging Face, timm): 8-byte little-endian header length, a JSON header naming each
  tensor's dtype, shape and byte range, then the raw little-endian data.
- PyTorch's zip checkpoints (`torch.save`, PyTorch 1.6 and later; torchvision's `.pth`), read
  without torch: `<archive>/data.pkl` is a pickle of the state dict whose tensors are
  `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` over storages kept as raw
  records `<archive>/data/<key>`. The unpickler builds nothing but ordered dicts, tensors and
  storages; a pickle asking for any other class or function is refused.
- Keras HDF5 weight files (`model.save_weights`, Keras applications' downloads): each layer group's
  `weight_names` attribute lists its datasets; names are kept (`conv1_conv/kernel:0`).

Every problem with a file is one FrcnnError line naming it.
"""
import collections
import io
import json
import math
import pickle
import pickletools
import struct
import zipfile
import zlib

import h5py
import numpy as np

from frcnn_tf.errors import FrcnnError

ZIP_MAGIC = b"PK\x03\x04"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# torch.save's format before PyTorch 1.6: a pickled magic number (protocol 2, LONG1 of 10 bytes).
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a"
BFLOAT16 = "bfloat16"  # no NumPy dtype: read as uint16 and widened to float32
SAFETENSORS_DTYPES = {"F64": "f8", "F32": "f4", "F16": "f2", "BF16": BFLOAT16, "I64": "i8", "I32": "i4",
                      "I16": "i2", "I8": "i1", "U8": "u1", "BOOL": "?"}
TORCH_STORAGE_DTYPES = {"DoubleStorage": "f8", "FloatStorage": "f4", "HalfStorage": "f2", "BFloat16Storage": BFLOAT16,
                        "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
                        "ByteStorage": "u1", "BoolStorage": "?"}
MAX_SAFETENSORS_HEADER = 100 * 2 ** 20  # the format's own limit
MAX_PICKLE_PROTOCOL = 4  # torch.save writes 2 (pickle_protocol=4 is allowed); 5 adds out-of-band buffers


def _damaged(path, kind, what):
    return FrcnnError(f"{path}: {what}; the file is damaged or not a {kind} file (download it again)")


def _dtype(name, byteorder="<"):
    """The NumPy dtype of a stored element: bfloat16 is stored as uint16."""
    return np.dtype(f"{byteorder}u2" if name == BFLOAT16 else f"{byteorder}{name}")


def _widened(array, name):
    """Native-order values; bfloat16 bit patterns become float32 (the upper half of a float32)."""
    if name == BFLOAT16:
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(array.dtype.newbyteorder("="))


def read_safetensors(path):
    kind = "safetensors"
    with open(path, "rb") as handle:
        data = handle.read()
    if len(data) < 8:
        raise _damaged(path, kind, f"{len(data)} bytes, shorter than the 8-byte header length")
    header_size = int.from_bytes(data[:8], "little")
    if header_size > min(len(data) - 8, MAX_SAFETENSORS_HEADER):
        raise _damaged(path, kind, f"the header says it is {header_size} bytes, the file has {len(data) - 8} after "
                                   "the length")
    try:
        header = json.loads(data[8:8 + header_size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _damaged(path, kind, f"the header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise _damaged(path, kind, "the header is not a JSON object")
    body = memoryview(data)[8 + header_size:]
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype_name = SAFETENSORS_DTYPES[entry["dtype"]]
            shape, (begin, end) = list(entry["shape"]), entry["data_offsets"]
            if not all(type(number) is int for number in [*shape, begin, end]):
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise _damaged(path, kind, f"tensor '{name}': header entry {entry!r} is not "
                                       f"{{dtype ({'/'.join(SAFETENSORS_DTYPES)}), shape, data_offsets}}") from None
        dtype = _dtype(dtype_name)
        expected = math.prod(shape) * dtype.itemsize
        if min(shape, default=0) < 0 or not 0 <= begin <= end <= len(body) or end - begin != expected:
            raise _damaged(path, kind, f"tensor '{name}': bytes {begin}-{end} of {len(body)} do not hold "
                                       f"{entry['dtype']} {shape} ({expected} bytes)")
        tensors[name] = _widened(np.frombuffer(body[begin:end], dtype).reshape(shape), dtype_name)
    return tensors


class _StorageType:
    """What the unpickler returns for `torch.FloatStorage` and the other typed storages."""

    def __init__(self, name):
        self.dtype_name = TORCH_STORAGE_DTYPES[name]


class _Storage:
    def __init__(self, values, dtype_name):
        self.values, self.dtype_name = values, dtype_name


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    """torch._utils._rebuild_tensor_v2: the strided view `size`/`stride` of `storage` from `storage_offset`."""
    del requires_grad, backward_hooks, metadata
    if not isinstance(storage, _Storage):
        raise ValueError("a tensor without a storage")
    size, stride, offset = [int(s) for s in size], [int(s) for s in stride], int(storage_offset)
    if len(size) != len(stride) or min(size + stride + [offset], default=0) < 0:
        raise ValueError(f"a tensor of size {size}, stride {stride} and offset {offset}")
    values = storage.values
    if 0 in size:
        return np.zeros(size, values.dtype)
    last = offset + sum((s - 1) * t for s, t in zip(size, stride))
    if last >= len(values):
        raise ValueError(f"a tensor reaching element {last} of a storage of {len(values)}")
    view = np.lib.stride_tricks.as_strided(values[offset:], size, [t * values.itemsize for t in stride],
                                           writeable=False)
    return _widened(np.array(view), storage.dtype_name)


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a torch.save state dict and nothing else (no other class or function is ever created)."""

    def __init__(self, data, archive, prefix, byteorder, path):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.byteorder, self.path = archive, prefix, byteorder, path
        self.storages = {}

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in TORCH_STORAGE_DTYPES:
            return _StorageType(name)
        raise FrcnnError(f"{self.path}: data.pkl asks for {module}.{name}, which a state dict of tensors does not "
                         "need; only plain state dicts (torch.save(model.state_dict())) are read")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise ValueError(f"unknown persistent id {pid!r}")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        if key not in self.storages:
            dtype = _dtype(storage_type.dtype_name, "<" if self.byteorder == "little" else ">")
            record = self.archive.read(f"{self.prefix}data/{key}")
            if len(record) < numel * dtype.itemsize:
                raise ValueError(f"storage {key} has {len(record)} bytes, {numel} elements need "
                                 f"{numel * dtype.itemsize}")
            self.storages[key] = _Storage(np.frombuffer(record, dtype, numel), storage_type.dtype_name)
        return self.storages[key]


def _check_opcodes(pickled, path):
    """Parses the pickle without running it, so that a malformed stream fails before the unpickler
    allocates for it: a length beyond the end or an unknown opcode (ValueError), a memo index
    beyond the number of opcodes (a pickler numbers its memo entries from 0). Protocol 5's
    out-of-band buffers, which torch.save never writes, are refused."""
    opcodes = list(pickletools.genops(pickled))
    for opcode, argument, _ in opcodes:
        if opcode.proto > MAX_PICKLE_PROTOCOL:
            raise FrcnnError(f"{path}: data.pkl uses pickle protocol {opcode.proto} ({opcode.name}); torch.save "
                             f"writes protocol 2 (re-save it with torch.save(state_dict, path))")
        if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and argument >= len(opcodes):
            raise ValueError(f"memo index {argument} in a pickle of {len(opcodes)} opcodes")


def read_torch_zip(path):
    kind = "PyTorch (torch.save)"
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [name for name in archive.namelist() if name.rpartition("/")[2] == "data.pkl"]
            if len(pickles) != 1:
                raise _damaged(path, kind, f"{len(pickles)} data.pkl records in the zip archive, expected 1")
            prefix = pickles[0][:-len("data.pkl")]
            names = set(archive.namelist())
            byteorder = archive.read(f"{prefix}byteorder").decode() if f"{prefix}byteorder" in names else "little"
            pickled = archive.read(pickles[0])
            _check_opcodes(pickled, path)
            state = _StateDictUnpickler(pickled, archive, prefix, byteorder, path).load()
    except FrcnnError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, KeyError, pickle.UnpicklingError, ValueError, TypeError,
            IndexError, AttributeError, OverflowError, UnicodeDecodeError, struct.error) as err:
        raise _damaged(path, kind, f"cannot read the checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, np.ndarray)
                                              for k, v in state.items()):
        raise FrcnnError(f"{path}: data.pkl holds no state dict (a dict of tensor names to tensors); save the "
                         "weights with torch.save(model.state_dict(), path)")
    return dict(state)


def read_keras_h5(path):
    kind = "Keras HDF5"
    try:
        with h5py.File(path, "r") as h5:
            group = h5["model_weights"] if "model_weights" in h5 else h5
            tensors = {}
            for layer in group.values():
                for name in layer.attrs.get("weight_names", []):
                    name = name.decode() if isinstance(name, bytes) else name
                    tensors[name] = np.asarray(layer[name][()])
    except (OSError, KeyError) as err:
        raise _damaged(path, kind, f"cannot read it ({err})") from None
    return tensors


def read_weights(path):
    """(format name, {tensor name: array}) of a safetensors, torch.save zip or Keras HDF5 file."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError as err:
        raise FrcnnError(f"{path}: cannot read the weights ({err.strerror or err})") from None
    if head.startswith(ZIP_MAGIC):
        return "torch", read_torch_zip(path)
    if head.startswith(HDF5_MAGIC):
        return "keras", read_keras_h5(path)
    if head.startswith(LEGACY_TORCH_MAGIC):
        raise FrcnnError(f"{path}: saved in PyTorch's format before 1.6, which is not read; download the current "
                         "file or re-save it with torch.save(torch.load(path), path)")
    if head[8:9] == b"{":
        return "safetensors", read_safetensors(path)
    raise FrcnnError(f"{path}: not a weight file frcnn_tf reads (safetensors, a torch.save .pth zip archive, "
                     "or Keras HDF5)")
