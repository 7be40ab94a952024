"""verify.enforce: the tolerance rules a pass is held to."""

from __future__ import annotations

import numpy as np
import pytest

from graphc.errors import GraphcError
from graphc.verify import Tolerance, compare, enforce

FOLD_LIKE = Tolerance(max_rel_error=1e-4, min_cosine=0.99999, abs_floor=1e-6)


def _tiny_output_moved_by(delta):
    """A sigmoid map whose values are all near 4e-5 (ppocr-det's on synthetic inputs),
    every element moved by up to ``delta``."""
    rng = np.random.default_rng(0)
    ref = (4e-5 * rng.random((2, 1, 32, 32))).astype(np.float32)
    new = ref + (delta * rng.uniform(-1, 1, ref.shape)).astype(np.float32)
    return compare(["sigmoid"], [ref], [new])


def test_float32_rounding_of_a_near_zero_output_is_within_an_exact_pass_tolerance():
    results = _tiny_output_moved_by(1.5e-7)
    assert results[0].max_rel_error > 1e-3  # the relative bound alone would refuse it
    enforce("fold", FOLD_LIKE, results)
    with pytest.raises(GraphcError, match="relative"):
        enforce("fold", Tolerance(max_rel_error=1e-4, min_cosine=0.99999), results)


def test_a_move_above_the_floor_is_still_refused():
    with pytest.raises(GraphcError, match="moved output 'sigmoid'"):
        enforce("fold", FOLD_LIKE, _tiny_output_moved_by(3e-6))


def _mixed_output(tiny_delta):
    """ppocr-det's sigmoid map on --verify's 16 synthetic rows: 15 near-zero samples (up to 1e-5)
    moved by up to ``tiny_delta``, one sample up to 0.7 moved by 2.6e-6 (above the floor, relative
    to the output's largest value 4e-6)."""
    rng = np.random.default_rng(1)
    ref = (1e-5 * rng.random((16, 1, 32, 32))).astype(np.float64)
    ref[12] = 0.7 * rng.random((1, 32, 32))
    new = ref + tiny_delta * rng.uniform(-1, 1, ref.shape)
    new[12] = ref[12] + 2.6e-6 * rng.uniform(-1, 1, ref[12].shape)
    return compare(["sigmoid"], [ref.astype(np.float32)], [new.astype(np.float32)])


def test_near_zero_samples_within_the_floor_count_as_exact_for_the_cosine():
    (result,) = _mixed_output(1.5e-7)
    assert result.max_abs_error > 1e-6 and result.max_rel_error < 1e-4  # the output-wide floor does not apply
    assert result.cosine < 0.99999  # their plain cosines (about 0.9999) pull the mean under the bound
    enforce("fold", FOLD_LIKE, [result])
    assert result.as_dict()["cosine"] == result.cosine  # the report keeps the plain mean


def test_near_zero_samples_moved_above_the_floor_still_fail_the_cosine():
    with pytest.raises(GraphcError, match="dropped the cosine of output 'sigmoid'"):
        enforce("fold", FOLD_LIKE, _mixed_output(3e-6))
