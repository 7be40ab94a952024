"""The sparse-int8 pass's per-CPU rule (passes/sparse_int8/payoff.py) on weights of known form."""

from __future__ import annotations

import numpy as np
import pytest

from graphc.kernels.layout import pack
from graphc.passes.sparse_int8 import payoff


def weight(rng, pattern: str, sparsity: float, k: int = 256, n: int = 64) -> np.ndarray:
    w = rng.integers(-63, 64, (k, n)).astype(np.int8)  # 7-bit, as int8 writes on AVX2-only CPUs
    w[w == 0] = 1
    if pattern == "1x4":
        w[np.repeat(rng.random((k // 4, n)) < sparsity, 4, axis=0)] = 0
    else:  # 16x64 tiles, exactly round(sparsity * tiles) of them
        tiles = np.zeros((k // 64) * (n // 16), bool)
        tiles[rng.permutation(tiles.size)[:round(sparsity * tiles.size)]] = True
        w[np.kron(tiles.reshape(k // 64, n // 16), np.ones((64, 16), bool))] = 0
    return w


def refusal(path: str, w: np.ndarray, monkeypatch) -> str:
    monkeypatch.setattr(payoff, "default_path", lambda: path)
    columns = pack(w)
    density = columns.blocks / (-(-w.shape[0] // 4) * w.shape[1])
    return payoff.machine_refusal(columns, density)


@pytest.mark.parametrize("path", ["amx", "scalar"])
def test_other_paths_leave_it_to_max_density(path, monkeypatch):
    rng = np.random.default_rng(1)
    assert refusal(path, weight(rng, "1x4", 0.5), monkeypatch) == ""


def test_avx2_column_kernels_need_more_sparsity_than_the_tile_kernel(monkeypatch):
    rng = np.random.default_rng(2)
    reason = refusal("avx2", weight(rng, "1x4", 0.5), monkeypatch)  # on the tile kernel, every tile kept
    assert "AVX2 tile kernel pays off at most 60%" in reason and reason.startswith("100% of its 16x64")
    assert refusal("avx2", weight(rng, "1x4", 0.8), monkeypatch) == ""  # the column kernels
    assert refusal("avx2", weight(rng, "16x64", 0.5), monkeypatch) == ""  # the tile kernel, half the tiles
    assert "tile kernel pays off" in refusal("avx2", weight(rng, "16x64", 0.25), monkeypatch)
    assert "tile kernel pays off" in refusal("avx2", weight(rng, "1x4", 0.0), monkeypatch)  # dense
    eight_bit = weight(rng, "16x64", 0.5)
    eight_bit[eight_bit > 0] = 127  # pairs that overflow vpmaddubsw: no tile kernel, 50% of groups kept
    reason = refusal("avx2", eight_bit, monkeypatch)
    assert "column kernels pay off at most 35%" in reason and reason.split("%")[0] in ("49", "50", "51")


def test_vnni_has_the_same_rule_over_its_own_kernels_for_any_8_bit_weights(monkeypatch):
    """On the AVX-512 VNNI path (without AMX) the tile kernel takes 8-bit weights too: the pairs that
    keep AVX2 off its tiles leave VNNI on them."""
    rng = np.random.default_rng(3)
    reason = refusal("avx512vnni", weight(rng, "1x4", 0.5), monkeypatch)  # tiles, every tile kept
    assert "AVX-512 VNNI tile kernel pays off at most 60%" in reason and reason.startswith("100% of its 16x64")
    assert refusal("avx512vnni", weight(rng, "1x4", 0.8), monkeypatch) == ""  # the column kernels
    eight_bit = weight(rng, "16x64", 0.5)
    eight_bit[eight_bit > 0] = 127
    assert refusal("avx512vnni", eight_bit, monkeypatch) == ""  # the tile kernel, half the tiles
    assert "AVX-512 VNNI tile kernel pays off" in refusal("avx512vnni", weight(rng, "16x64", 0.25), monkeypatch)
