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
