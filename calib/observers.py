"""Range observers: streaming statistics of one tensor, turned into a calibrated range.

Each observer takes batches with ``update(x)`` and keeps a fixed-size state (a running
min/max, or a 2048-bin histogram whose range doubles when a batch exceeds it), so memory
does not grow with the number of calibration samples. ``compute_range()`` returns the
calibrated ``(rmin, rmax)``:

- ``minmax``: the observed minimum and maximum.
- ``percentile``: the given percentile of ``|x|`` (default, TensorRT/pytorch-quantization
  style: the range is ``[-t, t]`` clipped to what was observed), or with ``two_sided=True``
  the ``100 - p`` and ``p`` percentiles of ``x`` itself.
- ``entropy``: TensorRT's EntropyCalibration2 KL-divergence threshold on the ``|x|``
  histogram (see ``kl_divergences``); not onnxruntime's "Entropy", which uses a 128-bin
  two-sided histogram.
- ``mse``: the clipping threshold that minimises the expected symmetric int8 quantization
  error over the ``|x|`` histogram.

Thresholds ``t`` on ``|x|`` become ``(max(min, -t), min(max, t))``: the symmetric range a
TensorRT-style profile reads back through ``amax``, and a tight one-sided range for a
non-negative tensor (a ReLU output) that an asymmetric profile can use whole.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from edgekit.errors import EdgekitError, suggest

NUM_BINS = 2048  # TensorRT's histogram size (GTC 2017, "8-bit Inference with TensorRT")
NUM_QUANT_BINS = 128  # int8 magnitudes 0..127: symmetric quantization of |x|
START_BIN = 128
EMPTY_BIN_COUNT = 1e-4  # see kl_divergences


class NonFiniteValuesError(ValueError):
    """A batch with NaN or Inf values; the caller names the tensor and the sample."""


class Observer(Protocol):
    """What the statistics pass needs from an observer."""

    def update(self, x: np.ndarray) -> None:
        """Merge one batch of the tensor's values into the state."""

    def compute_range(self) -> tuple[float, float]:
        """The calibrated ``(rmin, rmax)`` of everything seen so far."""

    @property
    def state_nbytes(self) -> int:
        """Bytes of state held (constant in the number of batches)."""


def finite_extrema(x: np.ndarray) -> tuple[float, float]:
    """``(min, max)`` of ``x``; raises NonFiniteValuesError when it holds NaN or Inf."""
    lo, hi = float(np.min(x)), float(np.max(x))
    if not (math.isfinite(lo) and math.isfinite(hi)):  # NaN propagates through min/max
        nan = int(np.isnan(x).sum())
        inf = int(np.isinf(x).sum())
        raise NonFiniteValuesError(f"{nan} NaN and {inf} Inf value(s) among {x.size}")
    return lo, hi


@dataclass
class MinMaxObserver:
    """Running minimum and maximum."""

    min: float = math.inf
    max: float = -math.inf

    def update(self, x: np.ndarray) -> None:
        """Merge one batch."""
        if x.size == 0:
            return
        lo, hi = finite_extrema(x)
        self.min, self.max = min(self.min, lo), max(self.max, hi)

    def compute_range(self) -> tuple[float, float]:
        """The observed ``(min, max)``."""
        _require_data(self.max >= self.min)
        return self.min, self.max

    @property
    def state_nbytes(self) -> int:
        return 16


@dataclass
class AbsHistogram:
    """Histogram of ``|x|`` over ``[0, limit)`` in ``num_bins`` equal bins, kept per sign.

    The limit is the first non-zero batch's ``max |x|``. A later batch that exceeds it
    doubles the limit as often as needed and merges neighbouring bins pairwise, which is
    exact (old edges are new edges), so the bin count and memory stay fixed. Others keep the
    first batch's bin width and add bins instead (pytorch-quantization and onnxruntime append
    them; TensorRT doubles the count, per NVIDIA's MLPerf v0.5 calibration notes): finer, but
    the histogram grows with the range. Here it stays at the 2048 bins the entropy method is
    defined on, and its candidate thresholds span the grown range.

    Row 0 counts negative values, row 1 zero and positive ones; ``counts.sum(0)`` is the
    ``|x|`` histogram, and the rows together give two-sided percentiles.
    """

    num_bins: int = NUM_BINS
    counts: np.ndarray = field(init=False, repr=False)
    limit: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    pending_zeros: int = field(default=0, repr=False)  # exact zeros seen before the limit is known

    def __post_init__(self) -> None:
        if self.num_bins < 2 or self.num_bins & (self.num_bins - 1):
            raise ValueError(f"num_bins must be a power of two, got {self.num_bins}")
        self.counts = np.zeros((2, self.num_bins), dtype=np.int64)

    @property
    def bin_width(self) -> float:
        return self.limit / self.num_bins

    @property
    def total(self) -> int:
        return int(self.counts.sum()) + self.pending_zeros

    def update(self, x: np.ndarray) -> None:
        """Merge one batch."""
        if x.size == 0:
            return
        lo, hi = finite_extrema(x)
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        amax = max(-lo, hi)
        if amax == 0.0:
            if self.limit == 0.0:
                self.pending_zeros += x.size
            else:
                self.counts[1, 0] += x.size
            return
        if self.limit == 0.0:
            self.limit = amax
            self.counts[1, 0] += self.pending_zeros
            self.pending_zeros = 0
        elif amax > self.limit:
            self._grow(amax)
        flat = x.reshape(-1)
        index = (np.abs(flat) * (self.num_bins / self.limit)).astype(np.int64)
        np.minimum(index, self.num_bins - 1, out=index)  # max |x| itself lands in the last bin
        index += self.num_bins * (flat >= 0)
        self.counts += np.bincount(index, minlength=2 * self.num_bins).reshape(2, self.num_bins)

    def _grow(self, amax: float) -> None:
        factor = 1
        while self.limit * factor < amax:
            factor *= 2
        merged = self.counts.reshape(2, -1, min(factor, self.num_bins)).sum(axis=2)
        self.counts = np.zeros_like(self.counts)
        self.counts[:, : merged.shape[1]] = merged
        self.limit *= factor

    def magnitude_counts(self) -> np.ndarray:
        """The ``|x|`` histogram (``num_bins`` counts, bin ``k`` = ``[k, k+1) * bin_width``)."""
        out = self.counts.sum(axis=0)
        out[0] += self.pending_zeros
        return out

    @property
    def nbytes(self) -> int:
        return self.counts.nbytes + 48


@dataclass
class _HistogramObserver:
    """Shared state of the histogram-based observers."""

    histogram: AbsHistogram = field(default_factory=AbsHistogram)

    def update(self, x: np.ndarray) -> None:
        """Merge one batch."""
        self.histogram.update(x)

    @property
    def state_nbytes(self) -> int:
        return self.histogram.nbytes

    def _clip(self, threshold: float) -> tuple[float, float]:
        h = self.histogram
        _require_data(h.total > 0)
        return max(h.min, -threshold), min(h.max, threshold)


@dataclass
class PercentileObserver(_HistogramObserver):
    """Range that keeps ``percentile`` % of the values (of ``|x|``, or of each tail of ``x``).

    Args:
        percentile: in (0, 100]; 99.99 keeps all but one value in 10,000.
        two_sided: clip each tail of ``x`` at ``100 - percentile`` / ``percentile`` instead
            of ``|x|`` at ``percentile``.
    """

    percentile: float = 99.99
    two_sided: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {self.percentile}")

    def compute_range(self) -> tuple[float, float]:
        """Percentile range, each bound rounded outwards to a bin edge."""
        h = self.histogram
        _require_data(h.total > 0)
        if h.limit == 0.0:
            return 0.0, 0.0
        width, q = h.bin_width, self.percentile / 100.0
        if not self.two_sided:
            cdf = np.cumsum(h.magnitude_counts()) / h.total
            return self._clip((_first_at_least(cdf, q) + 1) * width)
        # signed bins, most negative first: bin s covers [(s - N) * w, (s - N + 1) * w)
        signed = np.concatenate([h.counts[0, ::-1], h.counts[1]]).astype(np.float64)
        signed[h.num_bins] += h.pending_zeros
        cdf = np.cumsum(signed) / h.total
        lower = (_first_at_least(cdf, 1.0 - q) - h.num_bins) * width
        upper = (_first_at_least(cdf, q) - h.num_bins + 1) * width
        return max(h.min, lower), min(h.max, upper)


@dataclass
class EntropyObserver(_HistogramObserver):
    """TensorRT's EntropyCalibration2 threshold: the KL-divergence argmin over the ``|x|`` histogram.

    Args:
        discard_zero_bin: empty the first bin before searching. NVIDIA's description of
            its TensorRT calibration (MLPerf Inference v0.5, "AlibabaCloud_GPU_calibration.md"
            in mlcommons/inference_results_v0.5) discards it because it "typically contains
            a huge number of noise activations": after a ReLU the exact zeros would
            otherwise dominate P and pull the threshold down.
    """

    discard_zero_bin: bool = True

    def compute_range(self) -> tuple[float, float]:
        """``[-t, t]`` clipped to the observed range, ``t = (i + 0.5) * bin_width``."""
        h = self.histogram
        _require_data(h.total > 0)
        hist = h.magnitude_counts()
        if self.discard_zero_bin:
            hist[0] = 0
        if h.limit == 0.0 or not hist.any():
            return self._clip(h.limit)
        return self._clip(entropy_threshold(hist, h.bin_width))


@dataclass
class MseObserver(_HistogramObserver):
    """Clipping threshold minimising the expected symmetric quantization MSE.

    Args:
        qmax: largest integer magnitude (127 for symmetric int8).
    """

    qmax: int = 127

    def compute_range(self) -> tuple[float, float]:
        """``[-t, t]`` clipped to the observed range, ``t`` a bin edge."""
        h = self.histogram
        _require_data(h.total > 0)
        if h.limit == 0.0:
            return 0.0, 0.0
        return self._clip(mse_threshold(h.magnitude_counts(), h.bin_width, self.qmax))


def kl_divergences(hist: np.ndarray, *, num_quant_bins: int = NUM_QUANT_BINS, start_bin: int = START_BIN,
                   empty_count: float = EMPTY_BIN_COUNT) -> np.ndarray:
    """KL(P || Q) for each candidate bin count ``i`` in ``start_bin .. len(hist) - 1``.

    The TensorRT method (Migacz, "8-bit Inference with TensorRT", GTC 2017)::

        P = hist[:i], with the outliers sum(hist[i:]) added to P[i-1]
        Q = hist[:i] (without the outliers) merged into num_quant_bins groups, each
            group's count spread evenly over the bins of the group where P is non-zero
        divergence[i] = KL(P / sum P || Q / sum Q)

    Source bin ``k`` belongs to group ``k * num_quant_bins // i`` (NVIDIA's
    pytorch-quantization ``_compute_amax_entropy`` groups the same way, by ``np.digitize``
    on ``linspace(0, i, num_quant_bins + 1)``).

    Empty bins: ``Q = 0 < P`` happens only at ``P[i-1]``, when the last group holds nothing
    but the clipped outliers (planted outliers far above the bulk). Plain KL is infinite
    there, so such a tensor could never be clipped; TensorRT treats empty bins specially
    (NVIDIA's MLPerf v0.5 calibration notes) without saying how. That bin gets
    ``empty_count`` (1e-4) counts, the smoothing constant of MXNet's public port of this
    method, so clipping into an empty region costs about ``P log(P sum(Q) / 1e-4)``. A
    candidate with no count at all below it stays infinite.

    All candidates are computed at once from prefix sums: each group's sum, non-zero count
    and ``sum p log p`` are differences of cumulative sums at the group edges
    ``ceil(g * i / num_quant_bins)``.
    """
    hist = np.asarray(hist, dtype=np.float64)
    n = hist.size
    if n <= start_bin or start_bin < num_quant_bins:
        raise ValueError(f"need start_bin >= num_quant_bins and more than start_bin bins, got {n} bins")
    total = hist.sum()
    cum = np.concatenate([[0.0], np.cumsum(hist)])
    cum_nonzero = np.concatenate([[0], np.cumsum(hist > 0)])
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(hist > 0, hist * np.log(hist), 0.0)
    cum_plogp = np.concatenate([[0.0], np.cumsum(plogp)])

    i = np.arange(start_bin, n)
    edges = _group_edges(n, num_quant_bins, start_bin)
    qsum = np.diff(cum[edges], axis=1)
    nonzero = np.diff(cum_nonzero[edges], axis=1).astype(np.float64)

    outliers = total - cum[i]
    last = hist[i - 1] + outliers  # P[i-1]
    pmass = qsum.copy()
    pmass[:, -1] += outliers
    # P[i-1] may be non-zero only through the outliers: one more bin to spread Q over
    nonzero[:, -1] += (hist[i - 1] == 0) & (outliers > 0)
    empty = (qsum[:, -1] == 0) & (pmass[:, -1] > 0)  # then P[i-1] is the group's only P > 0
    q_total = cum[i] + empty * empty_count

    with np.errstate(divide="ignore", invalid="ignore"):
        last_plogp = np.where(last > 0, last * np.log(last), 0.0)
        p_log_p = (cum_plogp[i - 1] + last_plogp) / total - math.log(total)
        log_q = np.log(qsum) - np.log(nonzero)
        log_q[:, -1] = np.where(empty, math.log(empty_count), log_q[:, -1])
        log_q -= np.log(q_total)[:, None]
        cross = np.where(pmass > 0, pmass * log_q, 0.0).sum(axis=1) / total
    kl = np.where(cum[i] > 0, p_log_p - cross, np.inf)
    return np.where(np.isnan(kl), np.inf, kl)


@functools.lru_cache(maxsize=4)
def _group_edges(n: int, num_quant_bins: int, start_bin: int) -> np.ndarray:
    """``ceil(g * i / num_quant_bins)`` for candidates ``i`` (rows) and ``g = 0..num_quant_bins``."""
    i = np.arange(start_bin, n)[:, None]
    g = np.arange(num_quant_bins + 1)[None, :]
    edges = -(-(g * i) // num_quant_bins)
    edges.flags.writeable = False
    return edges


def entropy_threshold(hist: np.ndarray, bin_width: float, *, num_quant_bins: int = NUM_QUANT_BINS,
                      start_bin: int = START_BIN) -> float:
    """The EntropyCalibration2 threshold of an ``|x|`` histogram: ``(m + 0.5) * bin_width``.

    ``m`` is the candidate bin count with the smallest divergence (the first on a tie).
    ``(m + 0.5) * width`` is the GTC 2017 pseudo-code's rule; pytorch-quantization returns
    the edge ``m * width`` instead, half a bin (1/4096 of the range) lower.
    """
    kl = kl_divergences(hist, num_quant_bins=num_quant_bins, start_bin=start_bin)
    if not np.isfinite(kl).any():
        return len(hist) * bin_width
    return (start_bin + int(np.argmin(kl)) + 0.5) * bin_width


def mse_threshold(hist: np.ndarray, bin_width: float, qmax: int = 127) -> float:
    """Clipping threshold ``t = i * bin_width`` (``i`` in 1..N) minimising expected MSE.

    With values at bin centres ``c``: those below ``t`` cost the rounding noise of a uniform
    quantizer, ``(t / qmax)^2 / 12``; those above are clipped to ``t`` and cost ``(c - t)^2``.
    The clipped part is evaluated for every ``t`` at once from suffix sums of ``n``, ``n c``
    and ``n c^2``.
    """
    n = np.asarray(hist, dtype=np.float64)
    centres = (np.arange(n.size) + 0.5) * bin_width

    def suffix(values: np.ndarray) -> np.ndarray:
        return np.concatenate([np.cumsum(values[::-1])[::-1], [0.0]])

    s0, s1, s2 = suffix(n), suffix(n * centres), suffix(n * centres**2)
    i = np.arange(1, n.size + 1)
    t = i * bin_width
    clipped = s2[i] - 2 * t * s1[i] + t**2 * s0[i]
    rounding = (t / qmax) ** 2 / 12 * (s0[0] - s0[i])
    return float(t[int(np.argmin(clipped + rounding))])


def weight_ranges(weight: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(min, max)`` of a weight along ``axis`` (0 for Conv, 1 for ConvTranspose)."""
    per_channel = np.moveaxis(np.asarray(weight), axis, 0).reshape(weight.shape[axis], -1)
    finite_extrema(per_channel)
    return per_channel.min(axis=1), per_channel.max(axis=1)


_FACTORIES: dict[str, Callable[[float], Observer]] = {
    "minmax": lambda p: MinMaxObserver(),
    "percentile": lambda p: PercentileObserver(percentile=p),
    "entropy": lambda p: EntropyObserver(),
    "mse": lambda p: MseObserver(),
}
OBSERVERS: tuple[str, ...] = tuple(_FACTORIES)


def make_observer(name: str, *, percentile: float = 99.99) -> Observer:
    """A fresh observer by name (``minmax``, ``percentile``, ``entropy``, ``mse``)."""
    factory = _FACTORIES.get(name)
    if factory is None:
        raise EdgekitError(f"observer '{name}' is not known. Available: {', '.join(OBSERVERS)}.{suggest(name, OBSERVERS)}")
    return factory(percentile)


def _first_at_least(cdf: np.ndarray, q: float) -> int:
    # rounding can leave the last cdf value a hair under 1.0
    return min(int(np.searchsorted(cdf, q - 1e-12, side="left")), cdf.size - 1)


def _require_data(seen: bool) -> None:
    if not seen:
        raise ValueError("the observer has seen no values; update() it with at least one non-empty batch")
