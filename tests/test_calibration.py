"""INT8 calibration math and TensorRT's calibration cache format (pure NumPy, hand-known answers)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from frcnn_tf.errors import FrcnnError
from frcnn_tf import calibrators
from frcnn_tf.calibrators import AbsHistogram, entropy_amax, percentile_amax
from frcnn_tf.export import calibration


def _histogram(values):
    histogram = AbsHistogram()
    histogram.update(values)
    return histogram


def reference_entropy_amax(counts, edges, start_bin=128, levels=128):
    """A direct, loop-by-loop transcription of TensorRT's EntropyCalibration2 threshold search
    (as NVIDIA's pytorch-quantization documents it), independent of the vectorised one."""
    bins = counts.astype(np.float64).copy()
    bins[0] = bins[1]
    best, best_kl = None, np.inf
    for i in range(start_bin, len(bins) + 1):
        reference = list(bins[:i])
        reference[-1] += bins[i:].sum()
        space = np.linspace(0, i, levels + 1)
        chunk_of = [int(np.digitize(j, space)) - 1 for j in range(i)]
        sums, occupied = [0.0] * levels, [0] * levels
        for j in range(i):
            if bins[j] > 0:
                sums[chunk_of[j]] += bins[j]
                occupied[chunk_of[j]] += 1
        candidate = [sums[chunk_of[j]] / occupied[chunk_of[j]] if bins[j] > 0 else 0.0 for j in range(i)]
        p, q = np.array(reference) / sum(reference), np.array(candidate) / sum(candidate)
        if np.any((p > 0) & (q == 0)):
            kl = np.inf
        else:
            kl = sum(pi * np.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)
        if kl <= best_kl:
            best, best_kl = i, kl
    return edges[best]


def test_histograms_filled_across_cores_equal_numpys_one_tensor_at_a_time():
    rng = np.random.default_rng(5)
    tensors = {f"t{i}": rng.normal(0, i + 1, [4, 50, 60]).astype(np.float32) for i in range(5)}
    together = {name: AbsHistogram() for name in tensors}
    calibrators.update_histograms(together, tensors.items())
    for name, values in tensors.items():
        alone = _histogram(values)
        np.testing.assert_array_equal(together[name].counts, alone.counts)
        assert together[name].max == alone.max == together[name].range == np.abs(values).max()
        reference = np.histogram(np.abs(values), bins=2048, range=(0.0, alone.range))[0]
        assert np.abs(alone.counts - reference).sum() <= 2  # a value on a bin edge may fall either side


def test_histogram_range_doubles_and_keeps_counts():
    histogram = AbsHistogram(bins=8)
    histogram.update([0.1, -0.5, 0.9, 1.0])
    assert histogram.range == 1.0 and histogram.counts.sum() == 4
    histogram.update([3.5, -0.2])  # range 1 -> 2 -> 4: pairs of bins merge twice
    assert histogram.range == 4.0 and histogram.max == 3.5 and histogram.counts.sum() == 6
    # [0, 0.5): 0.1, 0.2 ; [0.5, 1]: 0.5, 0.9, 1.0 (the old top bin is closed) ; [3.5, 4): 3.5
    np.testing.assert_array_equal(histogram.counts, [2, 3, 0, 0, 0, 0, 0, 1])


def test_max_and_percentile():
    values = np.linspace(-1.0, 1.0, 200001)
    histogram = _histogram(values)
    assert calibrators.max_amax(histogram) == 1.0
    assert percentile_amax(histogram, 99.0) == pytest.approx(0.99, abs=1e-3)
    assert percentile_amax(histogram, 100.0) == pytest.approx(1.0)


def test_entropy_keeps_the_whole_range_of_a_uniform_distribution():
    values = np.random.default_rng(0).uniform(-1.0, 1.0, 1_000_000)
    assert entropy_amax(_histogram(values)) == pytest.approx(1.0, rel=0.02)


def test_entropy_clips_rare_outliers():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.uniform(0.0, 1.0, 1_000_000), [8.0, 9.0, -10.0]])
    histogram = _histogram(values)
    assert histogram.max == 10.0
    assert entropy_amax(histogram) == pytest.approx(1.0, rel=0.02)


def test_entropy_never_clips_more_than_the_percentile_allows():
    """|x| ~ lognormal(0, 1): TensorRT's KL threshold clips ~0.05 % of the values; amax_of's entropy is
    raised to the 99.99th percentile, exp(3.719) = 41.2 (3.719: the standard normal's 99.99 % point),
    and then clips at most 0.01 %."""
    histogram = _histogram(np.random.default_rng(8).lognormal(0.0, 1.0, 1_000_000))
    assert calibrators.clipped_share(histogram, entropy_amax(histogram)) > 3e-4
    amax = calibrators.amax_of(histogram, "entropy")
    assert amax == percentile_amax(histogram, 99.99) == pytest.approx(np.exp(3.719), rel=0.05)
    assert calibrators.clipped_share(histogram, amax) <= 1e-4
    uniform = _histogram(np.random.default_rng(0).uniform(-1.0, 1.0, 1_000_000))  # entropy clips nothing: kept
    assert calibrators.amax_of(uniform, "entropy") == entropy_amax(uniform)


def test_ranges_keep_the_network_input_whole_and_calibrate_the_rest():
    """Two tensors of the same values: 10000 spread evenly over [0, 1) in 0.0001 steps and 1 of them
    moved to 5: the input (named in full_range) keeps 5; percentile 99.99 of the other clips the 5 at the
    upper edge of the bin where the 9999th value lies (0.9998 in a bin of 5 / 2048)."""
    values = np.arange(10000, dtype=np.float32) / 10000
    values[-1] = 5.0
    histograms = {}
    for name in ("input_image", "relu"):
        histograms[name] = calibrators.AbsHistogram()
        histograms[name].update(values)
    ranges = calibrators.ranges_of(histograms, "percentile", full_range={"input_image"})
    assert ranges["input_image"] == calibrators.TensorRange(5.0, "max", 5.0, 0.0)
    assert ranges["relu"].method == "percentile" and ranges["relu"].clipped == 1e-4
    assert ranges["relu"].amax == pytest.approx(410 * 5 / 2048)  # 0.9998 lies in bin 409: [0.99854, 1.00098)
    assert calibrators.clipping_report(ranges, 1) == ["relu: amax 1.001 of max 5 (percentile), 0.010% clipped"]


@pytest.mark.slow
@pytest.mark.parametrize("draw", [lambda rng: rng.normal(0, 1, 500_000), lambda rng: rng.laplace(0, 1, 500_000),
                                  lambda rng: np.maximum(rng.normal(0.5, 1, 500_000), 0)])
def test_entropy_matches_a_reference_transcription(draw):
    histogram = _histogram(draw(np.random.default_rng(2)))
    expected = reference_entropy_amax(histogram.counts, histogram.edges)
    assert entropy_amax(histogram) == pytest.approx(expected, rel=0.02)


def test_entropy_clips_heavy_tails_harder_than_gaussian_tails():
    rng = np.random.default_rng(3)
    gaussian, laplace = _histogram(rng.normal(0, 1, 500_000)), _histogram(rng.laplace(0, 1, 500_000))
    assert entropy_amax(laplace) / laplace.max < entropy_amax(gaussian) / gaussian.max < 1.0


def test_cache_format_golden(tmp_path):
    path = tmp_path / "cal.bin"
    scales = calibration.scales_of({"input_image": 127.0, "conv1/Relu:0": 2.54})
    header = calibration.write_cache(str(path), scales, "entropy", "10.3.0")
    assert path.read_text() == ("TRT-100300-EntropyCalibration2\n"  # 10*10000 + 3*100 + 0
                                "conv1/Relu:0: 3ca3d70a\n"  # 2.54 / 127 = 0.02 -> 0x3ca3d70a
                                "input_image: 3f800000\n")  # 127 / 127 = 1.0
    assert header == "TRT-100300-EntropyCalibration2"
    cache = calibration.read_cache(str(path))
    assert (cache.version, cache.algorithm) == (100300, "EntropyCalibration2")
    assert cache.scales == {"input_image": 1.0, "conv1/Relu:0": np.float32(0.02)}


@pytest.mark.parametrize("version,number", [("8.6.1", 8601), ("10.3.0", 100300), ("10.16.1.11", 101601),
                                            ("11.4.0.106", 110400), ("10", 100000)])
def test_tensorrt_version_numbers_of_cache_headers(version, number):
    assert calibration.tensorrt_version_number(version) == number


def test_cache_version_default_and_rewrite(tmp_path, monkeypatch):
    monkeypatch.setattr(calibration, "installed_tensorrt_version", lambda: None)
    assert calibration.write_cache(str(tmp_path / "a.bin"), {"x": 1 / 127}, "qat") == "TRT-100300-MinMaxCalibration"
    monkeypatch.setattr(calibration, "installed_tensorrt_version", lambda: "11.4.0.106")
    assert calibration.write_cache(str(tmp_path / "b.bin"), {"x": 1 / 127}, "qat") == "TRT-110400-MinMaxCalibration"
    rewritten = calibration.with_version((tmp_path / "a.bin").read_text(), "10.16.0")
    assert rewritten == "TRT-101600-MinMaxCalibration\nx: 3c010204\n"
    with pytest.raises(FrcnnError, match="--trt_version ten: expected MAJOR.MINOR.PATCH"):
        calibration.tensorrt_version_number("ten")


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1).filter(
    lambda s: s.strip() == s), st.floats(2.0 ** -20, 2.0 ** 20, width=32), max_size=8))
def test_cache_round_trip(scales):
    text = calibration.format_cache(scales, "MinMaxCalibration", "8.6.1")
    cache = calibration.parse_cache(text)
    assert (cache.version, cache.algorithm, cache.scales) == (8601, "MinMaxCalibration", scales)


def test_malformed_cache_names_the_line(tmp_path):
    path = tmp_path / "cal.bin"
    path.write_text("TRT-8601-EntropyCalibration2\na: 3f800000\nb 3f80\n")
    with pytest.raises(FrcnnError, match=r"cal.bin:3: expected `tensor_name: 8 hex digits`"):
        calibration.read_cache(str(path))
    path.write_text("conv: 3f800000\n")
    with pytest.raises(FrcnnError, match=r"cal.bin:1: not a TensorRT calibration cache"):
        calibration.read_cache(str(path))


def test_histograms_of_magnitudes_and_clipped_shares():
    histogram = calibrators.AbsHistogram()
    histogram.update(np.array([0.5, 1.0, 2.0], np.float32))
    histogram.update(np.array([-3.0], np.float32))  # |x| 0.5, 1, 2, 3; the range doubled to 4 (bins of 1 / 512)
    assert histogram.max == 3.0 and histogram.range == 4.0
    assert calibrators.clipped_share(histogram, 2.5) == 0.25  # only 3 lies above
    assert calibrators.clipped_share(histogram, 0.25) == 1.0 and calibrators.clipped_share(histogram, 3.0) == 0.0
