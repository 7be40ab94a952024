"""Side-by-side latency of several models, measured interleaved in one run.

All models get the same inputs (the first ``batch`` rows of ``--data``, repeated when it has
fewer, or synthetic ones from the first model's signature and ``--shape``; rows along each
input's batch axis, ``--batch-axis``), warm up, then are timed round-robin, one run each per round,
with the starting model rotated every round so no model always runs right after another.
Reported: p50/p90 latency, size on disk, and ratios against the first model, each with a 95%
interval (``graphc.speedup.ratio_interval``: a paired bootstrap over the rounds).
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from graphc.data import count_rows, load_dataset, model_signature, repeat_rows, synthetic_feeds, validate
from graphc.model_io import file_size, load_model
from graphc.report import markdown_table
from graphc.speedup import ratio_interval
from graphc.runtime import open_session, run_session
from graphc.stats import human_bytes


@dataclass
class BenchResult:
    model: str
    size_bytes: int
    p50_ms: float
    p90_ms: float
    runs: int
    # milliseconds per run in round order; round i of every model of one call ran back to back
    times_ms: tuple[float, ...] = field(default=(), repr=False)

    def as_dict(self) -> dict:
        return {key: value for key, value in vars(self).items() if key != "times_ms"}


def speedup_interval(base: BenchResult, other: BenchResult, confidence: float = 0.95) -> tuple[float, float]:
    """The ``confidence`` interval of base.p50 / other.p50 (``graphc.speedup.ratio_interval``);
    (ratio, ratio) when there are under 2 rounds."""
    if min(len(base.times_ms), len(other.times_ms)) < 2:
        ratio = base.p50_ms / other.p50_ms
        return ratio, ratio
    return ratio_interval(base.times_ms, other.times_ms, confidence)


def _feeds_for(models, data: pathlib.Path | None, shapes, batch: int, batch_axes=None) -> dict[str, np.ndarray]:
    first = models[0]
    signature = model_signature(first, batch_axes)
    if data is not None:
        feeds, _ = next(load_dataset(data, signature).batches(batch))
    else:
        feeds = synthetic_feeds(first, shapes, batch, batch_axes)
    axes = validate(feeds, signature, "the benchmark inputs").axes
    if count_rows(feeds, axes) < batch:  # fewer rows than the batch: repeat them, the batch size is what is measured
        feeds = repeat_rows(feeds, batch, axes)
    for model in models[1:]:  # every model must accept the same inputs
        validate(feeds, model_signature(model, batch_axes), "the benchmark inputs")
    return feeds


def bench(paths: Sequence[pathlib.Path], threads: int | None = None, data: pathlib.Path | None = None,
          shapes: Mapping[str, tuple[int, ...]] | None = None, batch: int = 1,
          warmup: int = 5, runs: int = 30, batch_axes=None, min_seconds: float = 0.0,
          max_runs: int = 10000) -> list[BenchResult]:
    """``runs`` interleaved rounds, more while the rounds have taken under ``min_seconds`` in all
    (at most ``max_runs``): a sub-millisecond model gets enough runs for a narrow interval."""
    models = [load_model(p) for p in paths]
    feeds = _feeds_for(models, data, shapes or {}, batch, batch_axes)
    del models  # sessions open from the files: no proto held beside them
    sessions = [open_session(p, threads, what=str(p), spinning=False) for p in paths]
    for session in sessions:
        for _ in range(warmup):
            run_session(session, feeds)
    times: list[list[float]] = [[] for _ in sessions]
    started = time.perf_counter()
    round_index = 0
    while round_index < runs or (round_index < max_runs and time.perf_counter() - started < min_seconds):
        for k in range(len(sessions)):
            i = (round_index + k) % len(sessions)
            start = time.perf_counter()
            run_session(sessions[i], feeds)
            times[i].append(time.perf_counter() - start)
        round_index += 1
    return [BenchResult(str(p), file_size(p), float(np.percentile(t, 50) * 1e3), float(np.percentile(t, 90) * 1e3),
                        len(t), tuple(v * 1e3 for v in t)) for p, t in zip(paths, times)]


def bench_table(results: Sequence[BenchResult]) -> str:
    base = results[0]
    rows = [["#", "model", "size", "p50 ms", "p90 ms", "speed-up vs #1 (p50)", "95% interval", "size vs #1"]]
    for i, r in enumerate(results, 1):
        low, high = speedup_interval(base, r) if i > 1 else (1.0, 1.0)
        rows.append([str(i), r.model, human_bytes(r.size_bytes), f"{r.p50_ms:.3f}", f"{r.p90_ms:.3f}",
                     f"{base.p50_ms / r.p50_ms:.2f}x", "" if i == 1 else f"{low:.2f}-{high:.2f}x",
                     f"{r.size_bytes / base.size_bytes:.3f}x"])
    return markdown_table(rows)
