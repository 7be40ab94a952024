"""Streamed activation calibration: ranges of many tensors from batched onnxruntime runs
(the ``calib`` ranges of rule 3 and the channel maxima of rule 7).

Collection rules:

- Every tensor to calibrate becomes an extra output of ONE onnxruntime session of the model
  (never one session per tensor; the outputs are added to the given model only while the
  session opens, so no copy of the model is made); the calibration rows run through it in
  batches.
- Each batch runs in pieces whose exposed activations stay near ``run_bytes`` (64 MB): the
  first run takes one row, and every later run as many rows as the bytes per row seen so far
  allow (at least one, at most the batch; a model with a fixed batch dim runs whole batches).
  A BERT-base batch of 16 x 128 tokens exposes about 500 MB of MatMul inputs; in pieces the
  peak stays at one piece whatever the batch size.
- Per tensor the state is fixed-size: exact min and max, and a histogram of ``BINS`` bins
  over a symmetric range ``[-R, R]``. ``R`` starts at the first batch's largest magnitude;
  when a later batch exceeds it, ``R`` doubles as often as needed and every ``2**k``
  adjacent bins merge into one (exact re-binning: old bin edges are new bin edges). The
  state therefore does not grow with the number of samples: peak memory is the model's
  session, the state and one piece of a batch's activations.
- The model may be a graph (the pass's own; ``graphc.runtime.tap_graph`` writes it to a
  temporary file with external weights) or a file: then only its skeleton (no weights) is
  loaded to add the exposed outputs, and the caller holds no in-memory copy of the weights
  while onnxruntime holds its own (BERT-base: one copy of 440 MB less at the peak).
- A NaN or infinite activation stops calibration with an error naming the tensor.
- ``channel_names`` (optional) are tensors whose per-channel ``|x|`` maximum along the LAST
  axis is kept (one float per channel, merged with ``max`` batch by batch: fixed size too);
  they need no histogram unless also listed in ``names``. A tensor whose last axis changes
  size between batches is an error. ``graphc.passes.int8.smoothing`` reads these.

Range rules (all from the same streamed state; ``|x|`` histogram = the two halves folded):

- ``minmax``: the exact [min, max] seen.
- ``percentile``: ``T`` = the ``p``-th percentile of ``|x|`` (bin upper edge).
- ``entropy``: TensorRT's KL rule on the ``|x|`` histogram (``BINS / 2`` bins): for every
  candidate threshold bin ``i >= 128``, ``P`` = bins below ``i`` with the mass above folded
  into the last one, ``Q`` = ``P``'s bins merged into 128 levels and spread back evenly over
  the non-empty bins; ``T`` = the edge whose KL(P || Q) is smallest.
- ``mse``: ``T`` minimising the expected squared error of quantizing with ``levels`` steps
  (127; 255 for a one-sided u8 tensor): clipping error ``sum n (c - T)^2`` above ``T`` plus
  rounding noise ``(T / levels)^2 / 12`` per value below it (bin centres ``c``).

Symmetric targets (s8, zero point 0) take one threshold ``T`` from the ``|x|`` histogram.
Asymmetric targets (u8 with a zero point) take one per side, ``T+`` from the histogram of
``x > 0`` and ``T-`` from that of ``-x`` for ``x < 0``: folding a lopsided distribution
(normalised pixels: a spike at the background value) into ``|x|`` would clip its long side
at the short side's spike. Exact zeros (a ReLU's clamped half) are left out of the ``|x|`` histogram: the zero point
represents them exactly, and their spike would otherwise drive the entropy threshold down
to the first 128 bins. Every method but ``minmax`` clips to ``[max(min, -T-), min(max, T+)]`` (``T+ = T- = T``
when symmetric), so a ReLU output keeps 0 as its lower end.

What the pass calibrates on (``calibration_data``): ``samples`` rows of ``--data``, else
synthetic inputs (seed 0); ``calibrate`` writes the graph to a temporary file (tensor by
tensor, no proto of the weights) and collects from it.

Why hand-written: onnxruntime's calibrators keep every batch's activations of every tensor
in memory until the end (entropy calibration of BERT-base at 128 tokens: 10.3 GB RSS with 32
samples, out of memory with 256); this module keeps a few KB per tensor.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphc.data import Dataset, synthetic_dataset
from graphc.errors import GraphcError
from graphc.runtime import RUN_BYTES, Piece, tap, tap_graph

if TYPE_CHECKING:
    from graphc.context import Context
    from graphc.passes.int8 import Int8Options

BINS = 4096  # signed bins; the |x| histogram has BINS // 2 = 2048, TensorRT's count
ENTROPY_LEVELS = 128
METHODS = ("minmax", "percentile", "entropy", "mse")


class StreamingHistogram:
    """Fixed-size running statistics of one tensor: min, max and a re-binned histogram."""

    def __init__(self, bins: int = BINS):
        if bins % 2 or bins < 4:
            raise ValueError("bins must be even and at least 4")
        self.counts = np.zeros(bins, dtype=np.float64)
        self.radius = 0.0  # R: the histogram covers [-R, R]; 0 until the first update
        self.min = np.inf
        self.max = -np.inf
        self.seen = 0
        self.zeros = 0  # values exactly 0: the zero point represents them exactly

    @property
    def bins(self) -> int:
        return self.counts.size

    def state_bytes(self) -> int:
        """Bytes of state kept for this tensor (constant: independent of the samples seen)."""
        return self.counts.nbytes + 5 * 8

    def update(self, values: np.ndarray) -> None:
        x = np.asarray(values, dtype=np.float32).ravel()
        if x.size == 0:
            return
        low, high = float(x.min()), float(x.max())
        self.min, self.max = min(self.min, low), max(self.max, high)
        self.seen += x.size
        self.zeros += int(np.count_nonzero(x == 0))
        peak = max(abs(low), abs(high))
        if self.radius == 0.0:
            self.radius = peak if peak > 0 else 1e-12
        elif peak > self.radius:
            self._grow(int(np.ceil(np.log2(peak / self.radius))))
        half = self.bins // 2
        index = np.floor(x.astype(np.float64) * (half / self.radius)).astype(np.int64) + half
        np.clip(index, 0, self.bins - 1, out=index)
        self.counts += np.bincount(index, minlength=self.bins)

    def _grow(self, doublings: int) -> None:
        """Multiply R by 2**doublings; old bins merge exactly into the new, wider ones."""
        factor = 2 ** doublings
        half = self.bins // 2
        old = np.arange(self.bins)
        if factor <= half:
            target = half - half // factor + old // factor
        else:  # everything seen so far lies within the two central bins
            target = np.where(old < half, half - 1, half)
        counts = np.zeros_like(self.counts)
        np.add.at(counts, target, self.counts)
        self.counts = counts
        self.radius *= factor

    def sides(self) -> tuple[np.ndarray, np.ndarray, float]:
        """Histograms of ``x > 0`` and of ``-x`` for ``x < 0`` (BINS // 2 bins each over
        [0, R], exact zeros left out), and their bin width."""
        half = self.bins // 2
        positive = self.counts[half:].copy()
        positive[0] = max(positive[0] - self.zeros, 0.0)
        return positive, self.counts[:half][::-1].copy(), self.radius / half

    def magnitudes(self) -> tuple[np.ndarray, float]:
        """The ``|x|`` histogram (BINS // 2 bins over [0, R]) without the exact zeros, and
        its bin width."""
        half = self.bins // 2
        folded = self.counts[half:] + self.counts[:half][::-1]
        folded[0] = max(folded[0] - self.zeros, 0.0)
        return folded, self.radius / half


def _percentile_threshold(hist: np.ndarray, width: float, percentile: float) -> float:
    cumulative = np.cumsum(hist)
    if cumulative[-1] == 0:
        return 0.0
    index = int(np.searchsorted(cumulative, cumulative[-1] * percentile / 100.0))
    return (min(index, hist.size - 1) + 1) * width


def _entropy_threshold(hist: np.ndarray, width: float, levels: int = ENTROPY_LEVELS) -> float:
    """TensorRT-style KL-divergence threshold on a magnitude histogram."""
    if hist.sum() == 0:
        return 0.0
    best_kl, best_i = np.inf, hist.size
    tail = np.cumsum(hist[::-1])[::-1]  # tail[i] = sum(hist[i:])
    for i in range(levels, hist.size + 1):
        kept = hist[:i]
        reference = kept.copy()
        if i < hist.size:
            reference[-1] += tail[i]
        if reference[-1] == 0 and i < hist.size:
            continue  # same distribution as a smaller threshold
        group = (np.arange(i) * levels) // i
        nonzero = kept > 0
        sums = np.bincount(group, weights=kept, minlength=levels)
        counts = np.bincount(group, weights=nonzero, minlength=levels)
        spread = np.divide(sums, counts, out=np.zeros(levels), where=counts > 0)
        candidate = np.where(nonzero, spread[group], 0.0)
        p = reference / reference.sum()
        q_total = candidate.sum()
        if q_total == 0:
            continue
        q = candidate / q_total
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return best_i * width


def _mse_threshold(hist: np.ndarray, width: float, levels: int) -> float:
    """Threshold minimising clipping error + uniform rounding noise of ``levels`` steps."""
    if hist.sum() == 0:
        return 0.0
    centres = (np.arange(hist.size) + 0.5) * width
    thresholds = (np.arange(hist.size) + 1) * width  # candidate T at each bin's upper edge
    # tail sums over bins strictly above candidate j: S0, S1, S2 of n, n c, n c^2
    def tail(values):
        total = np.cumsum(values[::-1])[::-1]
        return np.append(total[1:], 0.0)
    s0, s1, s2 = tail(hist), tail(hist * centres), tail(hist * centres ** 2)
    clip_error = s2 - 2 * thresholds * s1 + thresholds ** 2 * s0
    below = np.cumsum(hist)
    noise = below * (thresholds / levels) ** 2 / 12.0
    return float(thresholds[int(np.argmin(clip_error + noise))])


def _threshold(hist: np.ndarray, width: float, method: str, percentile: float, levels: int) -> float:
    if method == "percentile":
        return _percentile_threshold(hist, width, percentile)
    if method == "entropy":
        return _entropy_threshold(hist, width)
    if method == "mse":
        return _mse_threshold(hist, width, levels)
    raise GraphcError(f"unknown calibration method {method!r} (methods: {', '.join(METHODS)})")


def tensor_range(state: StreamingHistogram, method: str, percentile: float = 99.99,
                 symmetric: bool = True) -> tuple[float, float]:
    """(lo, hi) of one tensor by ``method`` (see the module docstring for the rules)."""
    if state.seen == 0:
        raise GraphcError("calibration saw no values")
    if method not in METHODS:
        raise GraphcError(f"unknown calibration method {method!r} (methods: {', '.join(METHODS)})")
    low, high = float(state.min), float(state.max)
    if method == "minmax":
        return low, high
    if symmetric:
        hist, width = state.magnitudes()
        threshold = _threshold(hist, width, method, percentile, 127)
        return max(low, -threshold), min(high, threshold)
    positive, negative, width = state.sides()
    levels = 255 if low >= 0 or high <= 0 else 127
    upper = _threshold(positive, width, method, percentile, levels) if positive.any() else 0.0
    lower = _threshold(negative, width, method, percentile, levels) if negative.any() else 0.0
    return max(low, -lower), min(high, upper)


@dataclass
class Calibration:
    """Streamed statistics of the calibrated tensors and how they were gathered."""

    states: dict[str, StreamingHistogram]
    samples: int
    batches: int
    seconds: float
    source: str
    channel_max: dict[str, np.ndarray] = field(default_factory=dict)  # per-last-axis-channel max |x|
    runs: int = 0  # onnxruntime runs (batches split into pieces of about ``run_bytes``)

    def state_bytes(self) -> int:
        return sum(s.state_bytes() for s in self.states.values()) + sum(m.nbytes for m in self.channel_max.values())


def _merge_channel_max(current: np.ndarray | None, values: np.ndarray, name: str) -> np.ndarray:
    """``current`` merged with the per-channel ``|x|`` max of ``values`` along its last axis."""
    if values.ndim == 0:
        raise GraphcError(f"calibration: tensor {name!r} is a scalar; it has no channel axis")
    peak = np.abs(values.reshape(-1, values.shape[-1])).max(axis=0, initial=0.0).astype(np.float64)
    if current is None:
        return peak
    if current.shape != peak.shape:
        raise GraphcError(f"calibration: tensor {name!r} has {peak.size} channels on its last axis in one batch "
                          f"and {current.size} in another")
    return np.maximum(current, peak)


def collect(model: onnx.ModelProto | pathlib.Path | gs.Graph, names: Sequence[str], data: Dataset, samples: int | None = None,
            batch_size: int = 16, threads: int | None = None, channel_names: Sequence[str] = (),
            run_bytes: int = RUN_BYTES) -> Calibration:
    """Run ``data`` (its first ``samples`` rows) through the tensor tap (``graphc.runtime.tap``)
    exposing ``names`` (and ``channel_names``, whose per-channel maxima land in
    ``Calibration.channel_max``), in batches of ``batch_size`` rows run in pieces of about
    ``run_bytes`` exposed bytes."""
    start = time.perf_counter()
    names = list(dict.fromkeys(names))
    channel_names = list(dict.fromkeys(channel_names))
    states = {n: StreamingHistogram() for n in names}
    exposed = list(dict.fromkeys([*names, *channel_names]))
    if not exposed:
        return Calibration(states, 0, 0, 0.0, data.source)
    rows = data if samples is None or samples >= len(data) else data.take(samples)
    channel_max: dict[str, np.ndarray] = {}
    wanted_channels = set(channel_names)

    def reduce(name: str, values: np.ndarray, piece: Piece) -> None:
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise GraphcError(f"calibration data from {data.source}: tensor {name!r} is NaN or infinite "
                              f"in batch {piece.batch + 1}; check the inputs' values and scaling")
        if name in states:
            states[name].update(values)
        if name in wanted_channels:
            channel_max[name] = _merge_channel_max(channel_max.get(name), values, name)

    tap_model = tap_graph if isinstance(model, gs.Graph) else tap  # a graph: from a file with external weights
    run = tap_model(model, exposed, rows, reduce, batch_size, threads, run_bytes, what="the calibration model")
    return Calibration(states, len(rows), run.batches, time.perf_counter() - start, data.source, channel_max,
                       run.runs)


def calibration_data(ctx: Context, opts: Int8Options):
    """(rows to calibrate on, how to name them): ``--data``, else synthetic inputs."""
    if ctx.data is not None:
        return ctx.data, "--data"
    return (synthetic_dataset(ctx.original, batches=opts.samples, shapes=ctx.shapes, seed=0,
                              batch_axes=ctx.batch_axes),
            "synthetic inputs (no --data)")


def calibrate(graph: gs.Graph, ctx: Context, tensors: dict[str, gs.Variable], opts: Int8Options):
    """Ranges of ``tensors`` from ``--data`` (or synthetic inputs), and report statistics."""
    data, source = calibration_data(ctx, opts)
    result = collect(graph, list(tensors), data, opts.samples, opts.calib_batch, ctx.threads)
    ranges = {name: tensor_range(state, opts.calib, opts.percentile, symmetric=opts.target == "tensorrt")
              for name, state in result.states.items()}
    stats = {"calibration": f"{opts.calib} on {result.samples} rows of {source}",
             "calibration_seconds": round(result.seconds, 3),
             "calibration_state_bytes": result.state_bytes()}
    return ranges, stats
