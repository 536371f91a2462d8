"""TensorRT's INT8 calibration cache file: a header naming the TensorRT version and calibrator, then
each tensor's scale (amax / 127 of its range [-amax, amax], `frcnn_tf.calibrators`) as IEEE-754 hex."""
import dataclasses
import importlib.metadata
import struct

import numpy as np

from frcnn_tf.errors import FrcnnError
from frcnn_tf.io_utils import atomic_write_text
from frcnn_tf.tensorrt_limits import INT8_MAX, MIN_SCALE

CACHE_ALGORITHMS = {"entropy": "EntropyCalibration2", "percentile": "MinMaxCalibration",
                    "max": "MinMaxCalibration", "qat": "MinMaxCalibration"}

# The header is `TRT-<NV_TENSORRT_VERSION>-<algorithm>`; TensorRT skips a cache whose version is not
# its own and then calibrates from nothing, which a cache-only calibrator cannot do. 8.x numbers
# its version major*1000+minor*100+patch (8.6.1 -> 8601, NvInferRuntimeBase.h), 10.x and 11.x
# major*10000+minor*100+patch (10.3.0 -> 100300, NV_TENSORRT_VERSION_INT).
DEFAULT_TRT_VERSION = "10.3.0"  # DeepStream 7.1 / JetPack 6's TensorRT, when none is installed here


@dataclasses.dataclass(frozen=True)
class CalibrationCache:
    """A parsed cache: the TensorRT version number of its header, the calibrator algorithm and
    {tensor name: float32 scale}."""

    version: int
    algorithm: str
    scales: dict


def tensorrt_version_number(version):
    """'10.3.0' (or '10.3.0.26') -> 100300; '8.6.1' -> 8601: the number TensorRT writes in cache headers."""
    try:
        major, minor, patch = (int(part) for part in (str(version).split(".") + ["0", "0"])[:3])
    except ValueError:
        raise FrcnnError(f"--trt_version {version}: expected MAJOR.MINOR.PATCH, e.g. 10.3.0") from None
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def installed_tensorrt_version():
    """The installed tensorrt package's version, read without importing it, or None."""
    try:
        return importlib.metadata.version("tensorrt")
    except importlib.metadata.PackageNotFoundError:
        return None


def scale_hex(scale):
    """float32 scale -> TensorRT's cache form: the IEEE-754 bits as 8 hex digits (big-endian)."""
    return struct.pack(">f", scale).hex()


def format_cache(scales, algorithm, trt_version=DEFAULT_TRT_VERSION):
    """Cache text: `TRT-<version number>-<algorithm>` then `tensor: hexscale` lines, names sorted."""
    lines = [f"TRT-{tensorrt_version_number(trt_version)}-{algorithm}"]
    lines += [f"{name}: {scale_hex(scale)}" for name, scale in sorted(scales.items())]
    return "\n".join(lines) + "\n"


def scales_of(amax_by_tensor):
    """{tensor: float32 scale amax / 127} of symmetric ranges [-amax, amax] (at least MIN_SCALE / 127)."""
    return {name: np.float32(max(amax, MIN_SCALE) / INT8_MAX) for name, amax in amax_by_tensor.items()}


def write_cache(path, scales, method, trt_version=None):
    """Writes the cache of per-tensor INT8 scales found by `method` (a calibrator or 'qat'), for
    `trt_version` (default: the installed TensorRT's, else DEFAULT_TRT_VERSION); returns its header."""
    text = format_cache(scales, CACHE_ALGORITHMS[method],
                        trt_version or installed_tensorrt_version() or DEFAULT_TRT_VERSION)
    atomic_write_text(path, text)
    return text.split("\n", 1)[0]


def parse_cache(text, path="<cache>"):
    """CalibrationCache from cache text; a malformed line is a FrcnnError naming it."""
    lines = text.splitlines()
    header = lines[0].split("-", 2) if lines else []
    if len(header) != 3 or header[0] != "TRT" or not header[1].isdigit():
        raise FrcnnError(f"{path}:1: not a TensorRT calibration cache (the first line should be "
                         f"TRT-<version>-<algorithm>)")
    scales = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, value = line.rpartition(": ")
        try:
            if not sep or not name:
                raise ValueError
            scales[name] = struct.unpack(">f", bytes.fromhex(value.strip()))[0]
        except (ValueError, struct.error):
            raise FrcnnError(f"{path}:{number}: expected `tensor_name: 8 hex digits`, got {line!r}") from None
    return CalibrationCache(int(header[1]), header[2], scales)


def with_version(text, trt_version):
    """Cache text with its header rewritten for `trt_version` (the scales are version-independent)."""
    header, _, body = text.partition("\n")
    _, _, algorithm = header.split("-", 2)
    return f"TRT-{tensorrt_version_number(trt_version)}-{algorithm}\n{body}"


def read_cache(path):
    with open(path, encoding="utf-8") as handle:
        return parse_cache(handle.read(), path)
