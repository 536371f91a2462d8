"""Test helpers: random torchvision-layout ResNet weights, writers of safetensors and torch.save zip
files (without torch), and an independent NumPy float64 forward of torchvision's ResNet (NCHW,
OIHW kernels, the state dict's own names)."""
import collections
import io
import json
import math
import pickle
import zipfile

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

STAGES = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
          101: ("bottleneck", (3, 4, 23, 3))}
TORCHVISION_MEAN = np.array([0.485, 0.456, 0.406]) * 255  # RGB, 0-255 pixels
TORCHVISION_STD = np.array([0.229, 0.224, 0.225]) * 255


# ---- random weights in torchvision's names and layout ------------------------------------------
def _bn(state, prefix, channels, rng):
    state[f"{prefix}.weight"] = rng.uniform(0.5, 1.5, channels)
    state[f"{prefix}.bias"] = rng.normal(0, 0.1, channels)
    state[f"{prefix}.running_mean"] = rng.normal(0, 0.1, channels)
    variance = rng.uniform(0.5, 1.5, channels)
    tiny = rng.random(channels) < 0.1  # where BN's epsilon matters (1e-5 in torch, 1e-3 in Keras)
    variance[tiny] = 1e-4
    state[f"{prefix}.weight"][tiny] *= 0.01  # keeps those channels from dominating
    state[f"{prefix}.running_var"] = variance
    state[f"{prefix}.num_batches_tracked"] = np.array(1000, np.int64)


def _conv(state, name, out_channels, in_channels, kernel, rng):
    std = math.sqrt(2.0 / (in_channels * kernel * kernel))
    state[name] = rng.normal(0, std, (out_channels, in_channels, kernel, kernel))


def torchvision_resnet(depth, seed=0, classes=1000):
    """A torchvision ResNet state dict of random float32 weights (what resnetXX().state_dict() holds)."""
    rng = np.random.default_rng(seed)
    kind, repeats = STAGES[depth]
    expansion = 4 if kind == "bottleneck" else 1
    state = {}
    _conv(state, "conv1.weight", 64, 3, 7, rng)
    _bn(state, "bn1", 64, rng)
    channels = 64
    for stage, (width, count) in enumerate(zip((64, 128, 256, 512), repeats), 1):
        for j in range(count):
            prefix = f"layer{stage}.{j}"
            shape = [(width, channels if k == 1 else width, 3) for k in (1, 2)] if kind == "basic" else \
                [(width, channels, 1), (width, width, 3), (width * 4, width, 1)]
            for k, (out_c, in_c, kernel) in enumerate(shape, 1):
                _conv(state, f"{prefix}.conv{k}.weight", out_c, in_c, kernel, rng)
                _bn(state, f"{prefix}.bn{k}", out_c, rng)
            stride = 2 if stage > 1 and j == 0 else 1
            if stride != 1 or channels != width * expansion:
                _conv(state, f"{prefix}.downsample.0.weight", width * expansion, channels, 1, rng)
                _bn(state, f"{prefix}.downsample.1", width * expansion, rng)
            channels = width * expansion
    state["fc.weight"] = rng.normal(0, 0.01, (classes, channels))
    state["fc.bias"] = np.zeros(classes)
    return {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in state.items()}


# ---- writers ---------------------------------------------------------------------------------------
SAFETENSORS_DTYPE = {np.dtype("float32"): "F32", np.dtype("float64"): "F64", np.dtype("int64"): "I64",
                     np.dtype("float16"): "F16"}


def safetensors_bytes(tensors, metadata=None):
    header, chunks, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, value in tensors.items():
        data = np.ascontiguousarray(value).astype(value.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": SAFETENSORS_DTYPE[value.dtype], "shape": list(value.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    encoded = json.dumps(header).encode()
    return len(encoded).to_bytes(8, "little") + encoded + b"".join(chunks)


class Global:
    """A GLOBAL opcode for a module torch would provide (not importable here)."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle's save_reduce wants a callable
        raise NotImplementedError


class StorageRef:
    def __init__(self, type_name, key, numel):
        self.type_name, self.key, self.numel = type_name, key, numel


class TensorRef:
    """Pickles as torch does: _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        return Global("torch._utils", "_rebuild_tensor_v2"), self.args


class TorchPickler(pickle._Pickler):
    """Protocol 2, storages as persistent ids ('storage', torch.<Type>Storage, key, 'cpu', numel)."""

    def __init__(self, file):
        super().__init__(file, protocol=2)

    def persistent_id(self, obj):
        if isinstance(obj, StorageRef):
            return "storage", Global("torch", obj.type_name), obj.key, "cpu", obj.numel
        return None

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            return
        super().save(obj, save_persistent_id)


STORAGE_TYPES = {np.dtype("float32"): "FloatStorage", np.dtype("int64"): "LongStorage",
                 np.dtype("float64"): "DoubleStorage"}


def torch_zip_bytes(state, prefix="archive", pickled=None):
    """A torch.save zip of `state`. Exercises the reader's strides and offsets: 4-D tensors are stored
    transposed (channels last, as a permuted tensor would be), and each BN layer's four vectors share
    one storage at offsets. `pickled`, when given, replaces data.pkl."""
    records, tensors = {}, collections.OrderedDict()
    shared = {}
    for name, value in state.items():
        type_name = STORAGE_TYPES[value.dtype]
        layer, _, field = name.rpartition(".")
        if value.ndim == 4:
            key = str(len(records))
            stored = np.ascontiguousarray(value.transpose(0, 2, 3, 1))  # O, H, W, I in memory
            records[key] = stored.tobytes()
            o, i, h, w = value.shape
            tensors[name] = TensorRef(StorageRef(type_name, key, stored.size), 0, value.shape, (h * w * i, 1, w * i, i))
        elif value.ndim == 1 and field in ("weight", "bias", "running_mean", "running_var") and \
                f"{layer}.running_var" in state:
            if layer not in shared:
                vectors = [state[f"{layer}.{f}"] for f in ("weight", "bias", "running_mean", "running_var")]
                shared[layer] = str(len(records))
                records[shared[layer]] = np.concatenate(vectors).astype(np.float32).tobytes()
            offset = ("weight", "bias", "running_mean", "running_var").index(field) * len(value)
            tensors[name] = TensorRef(StorageRef(type_name, shared[layer], 4 * len(value)), offset, value.shape, (1,))
        else:
            key = str(len(records))
            records[key] = np.ascontiguousarray(value).tobytes()
            strides = [int(np.prod(value.shape[d + 1:])) for d in range(value.ndim)]
            tensors[name] = TensorRef(StorageRef(type_name, key, max(value.size, 1)), 0, value.shape, strides)
    if pickled is None:
        buffer = io.BytesIO()
        TorchPickler(buffer).dump(tensors)
        pickled = buffer.getvalue()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{prefix}/data.pkl", pickled)
        archive.writestr(f"{prefix}/byteorder", "little")
        for key, data in records.items():
            archive.writestr(f"{prefix}/data/{key}", data)
        archive.writestr(f"{prefix}/version", "3\n")
    return out.getvalue()


# ---- NumPy float64 forward of torchvision's ResNet ---------------------------------------------------
def _pads(size, kernel, stride, padding):
    """(before, after) zero padding: torch's symmetric kernel // 2, or TensorFlow's 'same'."""
    if padding == "torch":
        return kernel // 2, kernel // 2
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv2d(x, weight, stride, padding):
    """x [C, H, W], weight [O, I, kh, kw] (torch layout)."""
    kernel = weight.shape[2]
    x = np.pad(x, ((0, 0), _pads(x.shape[1], kernel, stride, padding), _pads(x.shape[2], kernel, stride, padding)))
    windows = sliding_window_view(x, (kernel, kernel), axis=(1, 2))[:, ::stride, ::stride]
    return np.einsum("chwij,ocij->ohw", windows, weight, optimize=True)


def max_pool(x, padding):
    x = np.pad(x, ((0, 0), _pads(x.shape[1], 3, 2, padding), _pads(x.shape[2], 3, 2, padding)),
               constant_values=-np.inf)
    return sliding_window_view(x, (3, 3), axis=(1, 2))[:, ::2, ::2].max(axis=(3, 4))


def batch_norm(x, state, prefix, eps=1e-5):
    g, b, m, v = (state[f"{prefix}.{f}"].astype(np.float64)[:, None, None]
                  for f in ("weight", "bias", "running_mean", "running_var"))
    return (x - m) / np.sqrt(v + eps) * g + b


def _relu(x):
    return np.maximum(x, 0)


def _block(x, state, prefix, stride, bottleneck, stride_in_1x1, padding):
    def conv_bn(y, k, conv_stride):
        return batch_norm(conv2d(y, state[f"{prefix}.conv{k}.weight"].astype(np.float64), conv_stride, padding),
                          state, f"{prefix}.bn{k}")

    if bottleneck:  # torchvision v1.5 strides in conv2 (3x3); v1 (stride_in_1x1) in conv1
        out = _relu(conv_bn(x, 1, stride if stride_in_1x1 else 1))
        out = _relu(conv_bn(out, 2, 1 if stride_in_1x1 else stride))
        out = conv_bn(out, 3, 1)
    else:
        out = conv_bn(_relu(conv_bn(x, 1, stride)), 2, 1)
    if f"{prefix}.downsample.0.weight" in state:
        shortcut = batch_norm(conv2d(x, state[f"{prefix}.downsample.0.weight"].astype(np.float64), stride, padding),
                              state, f"{prefix}.downsample.1")
    else:
        shortcut = x
    return _relu(out + shortcut)


def stage(x, state, index, stride, padding="torch", stride_in_1x1=False):
    """torchvision's layer<index> on x [C, H, W]; the first block carries `stride`."""
    bottleneck = f"layer{index}.0.conv3.weight" in state
    j = 0
    while f"layer{index}.{j}.conv1.weight" in state:
        x = _block(x, state, f"layer{index}.{j}", stride if j == 0 else 1, bottleneck, stride_in_1x1, padding)
        j += 1
    return x


def features(image, state, padding="torch", stride_in_1x1=False):
    """torchvision ResNet's layer3 output [C, H/16, W/16] for a normalised RGB image [3, H, W]."""
    x = _relu(batch_norm(conv2d(image, state["conv1.weight"].astype(np.float64), 2, padding), state, "bn1"))
    x = max_pool(x, padding)
    x = stage(x, state, 1, 1, padding, stride_in_1x1)
    x = stage(x, state, 2, 2, padding, stride_in_1x1)
    return stage(x, state, 3, 2, padding, stride_in_1x1)
