"""The compressed weight form (kernels/layout.py) and where graphc finds the library."""

from __future__ import annotations

import numpy as np
import pytest

from graphc.errors import GraphcError
from graphc.kernels.layout import pack
from graphc.runtime import open_session
from tests.kernels.helpers import integer_model


def test_pack_lists_each_columns_non_zero_groups_in_order():
    weight = np.zeros((10, 3), np.int8)  # K = 10: groups 0-3, 4-7 and 8-9 (padded)
    weight[1, 0], weight[9, 0] = 5, -7
    weight[4:8, 2] = [1, 2, 3, 4]
    columns = pack(weight)
    assert columns.col_ptr.tolist() == [0, 2, 2, 3]  # column 1 is empty
    assert columns.block_k.tolist() == [0, 2, 1]
    assert columns.values.tolist() == [0, 5, 0, 0, 0, -7, 0, 0, 1, 2, 3, 4]
    np.testing.assert_array_equal(columns.dense(), weight)


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (64, 32), (3, 1)])
def test_pack_round_trips_and_keeps_only_groups_with_a_non_zero(shape):
    rng = np.random.default_rng(0)
    weight = np.where(rng.random(shape) < 0.7, 0, rng.integers(-128, 128, shape)).astype(np.int8)
    columns = pack(weight)
    np.testing.assert_array_equal(columns.dense(), weight)
    groups = -(-shape[0] // 4)
    padded = np.zeros((groups * 4, shape[1]), np.int8)
    padded[: shape[0]] = weight
    assert columns.blocks == int(padded.reshape(groups, 4, shape[1]).any(axis=1).sum())
    assert not pack(np.zeros(shape, np.int8)).blocks


def test_pack_refuses_what_is_not_an_int8_matrix():
    with pytest.raises(ValueError, match="2-D int8"):
        pack(np.zeros((4, 4), np.float32))


def test_a_missing_library_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("GRAPHC_KERNELS_LIBRARY", str(tmp_path / "nothing.so"))
    with pytest.raises(GraphcError, match="GRAPHC_KERNELS_LIBRARY=.*nothing.so is not a file"):
        open_session(integer_model(pack(np.ones((4, 4), np.int8))))
