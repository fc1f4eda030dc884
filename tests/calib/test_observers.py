"""Observers: the entropy method against a plain reimplementation, ranges, constant state."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgekit.calib.observers import (
    EMPTY_BIN_COUNT,
    OBSERVERS,
    AbsHistogram,
    EntropyObserver,
    MinMaxObserver,
    MseObserver,
    NonFiniteValuesError,
    PercentileObserver,
    entropy_threshold,
    kl_divergences,
    make_observer,
    mse_threshold,
    weight_ranges,
)
from edgekit.errors import EdgekitError


def plain_kl(hist: np.ndarray, i: int, quant_bins: int = 128) -> float:
    """KL(P || Q) for one candidate, built step by step as the GTC 2017 pseudo-code reads."""
    hist = np.asarray(hist, dtype=np.float64)
    p = hist[:i].copy()
    p[i - 1] += hist[i:].sum()  # outliers into the last kept bin
    group = np.array([k * quant_bins // i for k in range(i)])
    merged = np.zeros(quant_bins)
    np.add.at(merged, group, hist[:i])  # Q is quantized from the bins without the outliers
    members = np.zeros(quant_bins)
    np.add.at(members, group[p > 0], 1)
    nz = p > 0
    q = np.zeros(i)
    q[nz] = merged[group[nz]] / members[group[nz]]  # each group spread over its bins where P > 0
    if q.sum() == 0:
        return math.inf
    q[(p > 0) & (q == 0)] = EMPTY_BIN_COUNT
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(p[nz] * np.log(p[nz] / q[nz])))


def plain_threshold(hist: np.ndarray, width: float) -> tuple[float, list[float]]:
    divergences = [plain_kl(hist, i) for i in range(128, len(hist))]
    best = min(range(len(divergences)), key=lambda j: (divergences[j], j))
    return (128 + best + 0.5) * width, divergences


def _histograms() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    sparse = rng.integers(0, 60, 512) * (rng.random(512) > 0.4)
    half_normal = np.histogram(np.abs(rng.standard_normal(200_000)), bins=512, range=(0, 5))[0]
    tail = np.histogram(rng.exponential(1.0, 50_000), bins=384, range=(0, 14))[0]  # sparse long tail
    outliers = np.histogram(np.abs(np.r_[rng.standard_normal(100_000), np.full(30, 40.0)]), bins=448, range=(0, 40.01))[0]
    relu = np.histogram(np.maximum(rng.standard_normal(100_000), 0), bins=320, range=(0, 4.5))[0]
    relu[0] = 0  # the observer discards the zero bin before searching
    high = np.r_[np.zeros(200, np.int64), rng.integers(1, 9, 200)]  # nothing below bin 200: candidates <= 200 are inf
    return {"sparse": sparse, "half_normal": half_normal, "tail": tail, "outliers": outliers, "relu": relu,
            "high": high}


@pytest.mark.parametrize("name", list(_histograms()))
def test_entropy_matches_plain_reimplementation(name: str) -> None:
    hist = _histograms()[name]
    fast = kl_divergences(hist)
    expected_threshold, slow = plain_threshold(hist, 0.01)
    slow = np.array(slow)
    assert fast.shape == slow.shape
    assert np.array_equal(np.isinf(fast), np.isinf(slow))
    assert np.isinf(slow).sum() == (73 if name == "high" else 0)
    finite = np.isfinite(slow)
    np.testing.assert_allclose(fast[finite], slow[finite], rtol=1e-9, atol=1e-12)
    assert entropy_threshold(hist, 0.01) == pytest.approx(expected_threshold, abs=1e-12)


def test_entropy_matches_plain_on_full_2048_bin_histogram() -> None:
    rng = np.random.default_rng(3)
    observer = EntropyObserver(discard_zero_bin=False)
    for scale in (1.0, 1.5, 0.5):
        observer.update(rng.laplace(scale=scale, size=20_000).astype(np.float32))
    hist = observer.histogram.magnitude_counts()
    assert hist.size == 2048
    expected, slow = plain_threshold(hist, observer.histogram.bin_width)
    np.testing.assert_allclose(kl_divergences(hist), slow, rtol=1e-9, atol=1e-12)
    assert observer.compute_range()[1] == pytest.approx(min(expected, observer.histogram.max), rel=1e-12)


def test_entropy_keeps_the_max_of_a_uniform_distribution() -> None:
    rng = np.random.default_rng(0)
    observer = EntropyObserver()
    for _ in range(5):
        observer.update(rng.uniform(-2.0, 2.0, 50_000).astype(np.float32))
    rmin, rmax = observer.compute_range()
    amax = max(-observer.histogram.min, observer.histogram.max)
    assert max(-rmin, rmax) >= 0.99 * amax


@pytest.mark.parametrize("late", [False, True], ids=["outliers-first", "outliers-in-a-later-batch"])
def test_entropy_clips_planted_outliers(late: bool) -> None:
    rng = np.random.default_rng(1)
    observer = EntropyObserver()
    for batch in range(10):
        x = rng.standard_normal(100_000).astype(np.float32)
        if batch == (9 if late else 0) or not late:
            x[: 10 if not late else 100] = 100.0  # 0.01 % of all values
        observer.update(x)
    rmin, rmax = observer.compute_range()
    assert observer.histogram.max == 100.0
    assert 3.0 < rmax < 20.0
    assert rmin == max(observer.histogram.min, -rmax)  # symmetric threshold, clipped to what was seen


def test_entropy_discards_the_zero_bin_of_relu_outputs() -> None:
    rng = np.random.default_rng(2)
    x = np.maximum(rng.standard_normal(500_000), 0).astype(np.float32)
    kept, discarded = EntropyObserver(discard_zero_bin=False), EntropyObserver()
    kept.update(x)
    discarded.update(x)
    assert discarded.compute_range()[0] == 0.0
    # the exact zeros would dominate P and drag the threshold down
    assert discarded.compute_range()[1] > 1.5 * kept.compute_range()[1]


def test_histogram_growth_is_exact_rebinning() -> None:
    rng = np.random.default_rng(4)
    first, second = rng.uniform(-1, 1, 10_000), rng.uniform(-3.7, 3.7, 10_000)
    hist = AbsHistogram()
    hist.update(first)
    hist.update(second)
    limit = np.abs(first).max() * 4  # doubled twice to cover 3.7
    assert hist.limit == pytest.approx(limit, rel=1e-15)
    direct = np.histogram(np.abs(np.r_[first, second]), bins=2048, range=(0, limit))[0]
    # the first batch's max sat in its last bin (the range is closed at the max), so after
    # the merge it stays in bin 511, where a fresh histogram puts the edge value in bin 512
    direct[511] += 1
    direct[512] -= 1
    np.testing.assert_array_equal(hist.magnitude_counts(), direct)
    assert hist.counts[0].sum() == (np.r_[first, second] < 0).sum()


def test_histogram_counts_zeros_before_the_range_is_known() -> None:
    hist = AbsHistogram()
    hist.update(np.zeros(10))
    hist.update(np.array([0.0, 2.0, -1.0]))
    assert hist.total == 13 and hist.magnitude_counts()[0] == 11 and hist.limit == 2.0


def test_observer_state_does_not_grow_with_batches() -> None:
    rng = np.random.default_rng(5)
    for name in OBSERVERS:
        observer = make_observer(name)
        sizes = []
        for batch in range(60):
            observer.update(rng.standard_normal(2_000).astype(np.float32) * (1 + batch))  # range keeps growing
            if batch in (1, 59):
                sizes.append(observer.state_nbytes)
        assert sizes[0] == sizes[1] <= 2 * 2048 * 8 + 64, name
        lo, hi = observer.compute_range()
        assert lo < 0 < hi


def test_percentile_on_magnitude_and_two_sided() -> None:
    rng = np.random.default_rng(6)
    x = np.r_[rng.normal(1.0, 1.0, 400_000), rng.uniform(-3, -2, 1000)]
    sym, two = PercentileObserver(percentile=99.0), PercentileObserver(percentile=99.0, two_sided=True)
    sym.update(x)
    two.update(x)
    width = sym.histogram.bin_width
    t = np.percentile(np.abs(x), 99.0)
    assert sym.compute_range()[1] == pytest.approx(t, abs=width)
    assert sym.compute_range()[0] == pytest.approx(-t, abs=width)
    lo, hi = np.percentile(x, [1.0, 99.0])
    assert two.compute_range() == pytest.approx((lo, hi), abs=width)


def test_percentile_100_is_the_observed_range() -> None:
    observer = PercentileObserver(percentile=100.0, two_sided=True)
    observer.update(np.array([-1.5, 0.25, 3.0]))
    assert observer.compute_range() == (-1.5, 3.0)


def test_mse_threshold_matches_brute_force() -> None:
    rng = np.random.default_rng(8)
    hist = np.histogram(np.abs(rng.laplace(size=100_000)), bins=2048, range=(0, 12))[0].astype(float)
    width = 12 / 2048
    centres = (np.arange(2048) + 0.5) * width

    def expected_mse(t: float) -> float:
        inside = centres <= t
        return float((hist[inside].sum() * (t / 127) ** 2 / 12) + (hist[~inside] * (centres[~inside] - t) ** 2).sum())

    brute = min((i * width for i in range(1, 2049)), key=expected_mse)
    assert mse_threshold(hist, width) == pytest.approx(brute, rel=1e-12)
    # Banner et al. 2019 (ACIQ): the 8-bit MSE-optimal clip of a Laplace(b=1) is 9.89 b
    assert 8.5 < brute < 11.0


def test_mse_keeps_the_max_of_a_uniform_distribution() -> None:
    observer = MseObserver()
    observer.update(np.random.default_rng(9).uniform(-1, 1, 100_000))
    assert observer.compute_range()[1] > 0.97


def test_minmax_and_non_finite_values() -> None:
    observer = MinMaxObserver()
    observer.update(np.array([[1.0, -2.0], [0.5, 4.0]]))
    observer.update(np.array([3.0]))
    assert observer.compute_range() == (-2.0, 4.0)
    for obs in (MinMaxObserver(), EntropyObserver()):
        with pytest.raises(NonFiniteValuesError, match="1 NaN and 1 Inf"):
            obs.update(np.array([1.0, np.nan, np.inf]))
    with pytest.raises(ValueError, match="seen no values"):
        EntropyObserver().compute_range()


def test_unknown_observer_suggests_the_closest() -> None:
    with pytest.raises(EdgekitError, match="Did you mean 'entropy'"):
        make_observer("entrop")


def test_weight_ranges_per_output_channel() -> None:
    w = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2) - 10
    lo, hi = weight_ranges(w, 0)
    np.testing.assert_array_equal(lo, [-10, 2])
    np.testing.assert_array_equal(hi, [1, 13])
    lo, hi = weight_ranges(w, 1)  # ConvTranspose layout [C_in, C_out, k, k]
    np.testing.assert_array_equal(lo, [-10, -6, -2])
    np.testing.assert_array_equal(hi, [5, 9, 13])
