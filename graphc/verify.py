"""Output comparison of a rewritten model against the original (``--verify``).

Per output: max absolute error, max error relative to the reference's largest magnitude,
mean per-sample cosine similarity (samples along the output's batch axis, ``axes``; an
output without one is one sample), and for [batch, classes] outputs the top-1 agreement.
A pass fails verification when any output leaves the pass's declared tolerance. The
tolerance's absolute floor applies to the whole output (no element moved by more: within
tolerance) and, for the cosine bound, to each sample: a sample no element of which moved by
more than the floor counts as cosine 1. Without the per-sample floor, an exact pass failed on
ppocr-det's sigmoid map on the AVX2 EPYC: one sample of 16 (values up to 0.68) moved by 2.6e-6,
above the floor, so the output was checked, and near-zero samples (values about 4e-5) moved by
1.5e-7 had cosines of 0.9996, taking the mean to 0.999959.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from graphc.errors import VerificationError
from graphc.metrics import cosine_per_sample


@dataclass(frozen=True)
class Tolerance:
    """How far a pass may move the model's outputs from its input model (None: not checked)."""

    max_rel_error: float | None = None  # max |new - ref| / max |ref|, per output
    min_cosine: float | None = None  # mean per-sample cosine similarity, per output
    min_top1_agreement: float | None = None  # share of samples with the same argmax
    # an output no element of which moved by more than this absolute amount is within
    # tolerance (as numpy's allclose has an atol): float32 rounding of an output whose values
    # are all near zero (a sigmoid map at 4e-5) is large relative to them, not a change
    abs_floor: float = 0.0


@dataclass(frozen=True)
class OutputComparison:
    name: str
    max_abs_error: float
    max_rel_error: float
    cosine: float
    top1_agreement: float | None
    # per sample: cosine and max absolute error (for the floor of the cosine bound)
    sample_cosines: tuple[float, ...] = field(default=(), repr=False)
    sample_abs_errors: tuple[float, ...] = field(default=(), repr=False)

    def as_dict(self) -> dict:
        return {"name": self.name, "max_abs_error": self.max_abs_error, "max_rel_error": self.max_rel_error,
                "cosine": self.cosine, "top1_agreement": self.top1_agreement}

    def cosine_above(self, abs_floor: float) -> float:
        """The mean per-sample cosine with every sample moved by at most ``abs_floor`` counted as 1."""
        if not self.sample_cosines:
            return self.cosine
        return float(np.mean([1.0 if error <= abs_floor else cos
                              for cos, error in zip(self.sample_cosines, self.sample_abs_errors)]))


def compare(names: Sequence[str], reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray],
            axes: Mapping[str, int | None] | None = None) -> list[OutputComparison]:
    """Per-output comparison; ``axes``: output name -> batch axis (default 0)."""
    results = []
    for name, ref, new in zip(names, reference, candidate):
        if ref.shape != new.shape:
            raise VerificationError(f"output {name!r} changed shape: {list(ref.shape)} -> {list(new.shape)}")
        ref64, new64 = ref.astype(np.float64), new.astype(np.float64)
        diff = np.abs(ref64 - new64)
        abs_error = float(diff.max()) if ref.size else 0.0
        scale = float(np.abs(ref64).max()) if ref.size else 0.0
        rel_error = abs_error / scale if scale > 0 else abs_error
        axis = (axes or {}).get(name, 0)
        if axis is None or axis >= ref.ndim:
            ref64, new64, diff = ref64.reshape(1, -1), new64.reshape(1, -1), diff.reshape(1, -1)
        elif axis:
            ref64, new64, diff = (np.moveaxis(x, axis, 0) for x in (ref64, new64, diff))
        samples, errors = (), ()
        if ref64.ndim and ref.size:
            samples = tuple(float(c) for c in cosine_per_sample(ref64, new64))
            errors = tuple(float(e) for e in diff.reshape(len(diff), -1).max(1))
        cosine = float(np.mean(samples)) if samples else 1.0
        top1 = None
        if ref.ndim == 2 and ref.shape[1] > 1 and axis == 0:
            top1 = float((ref.argmax(1) == new.argmax(1)).mean())
        results.append(OutputComparison(name, abs_error, rel_error, cosine, top1, samples, errors))
    return results


def enforce(pass_name: str, tolerance: Tolerance, results: Sequence[OutputComparison]) -> None:
    """Raise VerificationError naming the first output outside ``tolerance``."""
    for r in results:
        if r.max_abs_error <= tolerance.abs_floor:
            continue
        if tolerance.max_rel_error is not None and r.max_rel_error > tolerance.max_rel_error:
            raise VerificationError(
                f"--verify: pass {pass_name} moved output {r.name!r} by {r.max_rel_error:.3g} relative to its input "
                f"(max abs {r.max_abs_error:.3g}), above its tolerance {tolerance.max_rel_error:g}; stopped")
        if tolerance.min_cosine is not None and r.cosine_above(tolerance.abs_floor) < tolerance.min_cosine:
            raise VerificationError(
                f"--verify: pass {pass_name} dropped the cosine of output {r.name!r} to "
                f"{r.cosine_above(tolerance.abs_floor):.6f} against its input, "
                f"below its tolerance {tolerance.min_cosine:g}; stopped")
        if (tolerance.min_top1_agreement is not None and r.top1_agreement is not None
                and r.top1_agreement < tolerance.min_top1_agreement):
            raise VerificationError(
                f"--verify: pass {pass_name} changed top-1 of output {r.name!r} to {r.top1_agreement:.2%} against its input, "
                f"agreement, below its tolerance {tolerance.min_top1_agreement:.2%}; stopped")
