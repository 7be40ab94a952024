"""The confidence interval of a speed-up measured in interleaved rounds.

Rules: a round's runs of the models ran back to back, so rounds are the unit of resampling (a
paired bootstrap: the same rounds drawn for both models, which keeps a burst of machine noise
that hit both runs of a round from widening the interval); the statistic is the ratio of the two
medians (base / other: above 1, ``other`` is faster); 2000 resamples from a fixed seed (the same
times give the same interval). A ratio whose interval reaches 1 is not a measured difference.
The interval covers the noise within one run of the measurement; a lasting difference between
two sessions of the same model (where their buffers landed, say) is not in it.

numpy's generator does the resampling: scipy's ``bootstrap`` would add a dependency for one call,
and its paired form takes the same steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RESAMPLES = 2000


def ratio_interval(base: Sequence[float], other: Sequence[float], confidence: float = 0.95,
                   resamples: int = RESAMPLES) -> tuple[float, float]:
    """The ``confidence`` interval of median(base) / median(other), both timed in the same rounds
    (element i of each from round i); (ratio, ratio) under 2 rounds."""
    a, b = np.asarray(base, dtype=np.float64), np.asarray(other, dtype=np.float64)
    rounds = min(len(a), len(b))
    if rounds < 2:
        ratio = float(np.median(a) / np.median(b))
        return ratio, ratio
    a, b = a[:rounds], b[:rounds]
    picks = np.random.default_rng(0).integers(0, rounds, (resamples, rounds))
    ratios = np.median(a[picks], axis=1) / np.median(b[picks], axis=1)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)
