"""INT8 calibration: activation histograms, TensorRT's calibrators, the calibration cache file.

Pure NumPy. A tensor's range is `amax` (symmetric: [-amax, amax]); its INT8 scale is
amax / 127, the number TensorRT's calibration cache stores.
"""
import dataclasses
import importlib.metadata
import struct

import numpy as np

from frcnn_tf.errors import FrcnnError
from frcnn_tf.io_utils import atomic_write_text
from frcnn_tf.tensorrt_limits import INT8_MAX, MIN_SCALE

CALIBRATORS = ("entropy", "percentile", "max")
CACHE_ALGORITHMS = {"entropy": "EntropyCalibration2", "percentile": "MinMaxCalibration",
                    "max": "MinMaxCalibration", "qat": "MinMaxCalibration"}


class AbsHistogram:
    """Histogram of |x| over [0, range) in `bins` bins; the range doubles (pairs of bins merge)
    when a batch exceeds it, so one pass over the data suffices."""

    def __init__(self, bins=2048):
        self.counts = np.zeros(bins, np.int64)
        self.range = 0.0
        self.max = 0.0
        self.negative = False  # whether any value was below 0 (not a ReLU output)

    def update(self, values):
        values = np.asarray(values, np.float32).ravel()
        if not values.size:
            return
        self.negative = self.negative or bool(values.min() < 0)
        values = np.abs(values)
        top = float(values.max())
        self.max = max(self.max, top)
        if top <= 0.0:
            self.counts[0] += values.size
            return
        if self.range == 0.0:
            self.range = top
        while top > self.range:
            merged = self.counts.reshape(-1, 2).sum(axis=1)
            self.counts[:] = 0
            self.counts[:merged.size] = merged
            self.range *= 2.0
        self.counts += np.histogram(values, bins=self.counts.size, range=(0.0, self.range))[0]

    @property
    def edges(self):
        return np.linspace(0.0, self.range, self.counts.size + 1)


def max_amax(histogram):
    return histogram.max


def percentile_amax(histogram, percentile=99.99):
    """The upper edge of the bin where the cumulative count reaches `percentile` % of |x|."""
    cumulative = np.cumsum(histogram.counts)
    if not cumulative[-1]:
        return 0.0
    index = int(np.searchsorted(cumulative, cumulative[-1] * percentile / 100.0))
    return float(min(histogram.edges[index + 1], histogram.max))


def entropy_amax(histogram, start_bin=128, quantized_bins=128):
    """TensorRT's entropy calibration (EntropyCalibration2), unbounded (amax_of bounds it): the clipping
    threshold whose 128-level quantization of the |x| histogram has the least KL divergence from the
    clipped histogram (values above the threshold folded into the last bin). Ties go to the larger
    threshold."""
    counts = histogram.counts.astype(np.float64)
    if histogram.max == 0.0 or counts.sum() == 0:
        return 0.0
    counts[0] = counts[1]  # the zero bin is dominated by ReLU zeros; TensorRT ignores it this way
    total_bins = counts.size
    best, best_divergence = total_bins, np.inf
    for stop in range(start_bin, total_bins + 1):
        reference = counts[:stop].copy()
        reference[-1] += counts[stop:].sum()
        chunk = np.floor(np.arange(stop) * quantized_bins / stop).astype(np.int64)
        occupied = counts[:stop] > 0
        chunk_sum = np.bincount(chunk, weights=counts[:stop], minlength=quantized_bins)
        chunk_occupied = np.bincount(chunk, weights=occupied, minlength=quantized_bins)
        expanded = np.where(occupied, chunk_sum[chunk] / np.maximum(chunk_occupied[chunk], 1), 0.0)
        divergence = _kl_divergence(reference, expanded)
        if divergence <= best_divergence:
            best, best_divergence = stop, divergence
    return float(min(histogram.edges[best], histogram.max))


def _kl_divergence(reference, candidate):
    """KL(reference || candidate) of two unnormalised histograms (inf where the candidate is 0 but
    the reference is not)."""
    if not candidate.sum():
        return np.inf
    p = reference / reference.sum()
    q = candidate / candidate.sum()
    support = p > 0
    if np.any(q[support] == 0):
        return np.inf
    return float(np.sum(p[support] * np.log(p[support] / q[support])))


def clipped_share(histogram, amax):
    """Share of the values with |x| above amax, at bin resolution (bins starting above amax)."""
    total = histogram.counts.sum()
    return float(histogram.counts[histogram.edges[:-1] > amax].sum() / total) if total else 0.0


def amax_of(histogram, method, percentile=99.99):
    """amax of `method`. `entropy` is TensorRT's threshold raised, where it clips more, to the
    `percentile` one: it never clips more than (100 - percentile) % of a tensor's values. KL divergence
    over the whole histogram weighs the rare large values by their count, and in a detector of small
    bright objects they are the objects: on traffic_lights, three calibration samples, entropy clipped
    up to 0.28 % of an early ReLU output's values and lost 1.9-4.4 mAP points, bounded 0.7-1.2 (its
    FP32 0.4049); on the sample data both stayed within 0.5 points."""
    if method == "entropy":
        return max(entropy_amax(histogram), percentile_amax(histogram, percentile))
    if method == "percentile":
        return percentile_amax(histogram, percentile)
    if method == "max":
        return max_amax(histogram)
    raise ValueError(f"unknown calibrator {method!r}; choose one of {', '.join(CALIBRATORS)}")


# ---- TensorRT calibration cache -----------------------------------------------------------
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
