"""Rule 4, ``mask``: length-grouped batches and batches cut to their longest row (no training
needed).
"""

import numpy as np


def test_valid_lengths_and_length_grouped_batches():
    from graphc.passes.distill.worker.batches import epoch_batches, valid_lengths

    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 1, 0]])
    assert valid_lengths(mask).tolist() == [2, 4, 1, 3]
    lengths = np.random.default_rng(5).integers(1, 49, 1000)
    perm = np.random.default_rng(0).permutation(1000)
    plain = epoch_batches(perm, 32, None, None)
    np.testing.assert_array_equal(np.concatenate(plain), perm[:992])  # consecutive slices, last one dropped
    grouped = epoch_batches(perm, 32, lengths, np.random.default_rng(1))
    assert [len(b) for b in grouped] == [32] * 31
    np.testing.assert_array_equal(np.sort(np.concatenate(grouped)), np.sort(perm[:992]))  # each row once
    for again, first in zip(epoch_batches(perm, 32, lengths, np.random.default_rng(1)), grouped):
        np.testing.assert_array_equal(again, first)  # same seed, same batches
    real = lengths[perm[:992]].sum()
    padded = [sum(32 * lengths[b].max() for b in batches) for batches in (plain, grouped)]
    assert padded[1] < 1.1 * real < 0.6 * padded[0]


def test_trimmed_feeds_cut_inputs_and_sequence_targets_to_the_longest_row(tmp_path):
    from graphc.passes.distill.worker.batches import Data
    from graphc.passes.distill.worker.protocol import LAYER_FILE, LAYER_INPUT, TEACHER_INPUT

    rng = np.random.default_rng(0)
    mask = np.zeros((6, 8), np.int64)
    for row, length in enumerate([3, 8, 2, 5, 1, 4]):
        mask[row, :length] = 1
    ids, teacher = rng.integers(0, 99, (6, 8)), rng.standard_normal((6, 8)).astype(np.float32)
    layer = rng.standard_normal((6, 8, 4)).astype(np.float16)
    np.savez(tmp_path / "train.npz", input_ids=ids, attention_mask=mask, teacher=teacher)
    np.save(tmp_path / LAYER_FILE.format(stem="train", index=0), layer)
    data = Data(tmp_path / "train.npz", ["input_ids", "attention_mask"], 1, "attention_mask")
    order = ["input_ids", TEACHER_INPUT, "attention_mask", LAYER_INPUT.format(0)]
    got = data.feeds(order, [0, 3], trim=True)  # longest row: 5
    np.testing.assert_array_equal(got[0], ids[[0, 3], :5])
    np.testing.assert_array_equal(got[1], teacher[[0, 3]])  # rank 2 [batch, 8]: a per-sample target, not cut
    np.testing.assert_array_equal(got[2], mask[[0, 3], :5])
    assert got[3].dtype == np.float32 and got[3].shape == (2, 5, 4)
    np.testing.assert_array_equal(got[3], layer[[0, 3], :5].astype(np.float32))
    full = data.feeds(order, [1, 2], trim=True)  # row 1 is full length
    assert [a.shape for a in full] == [(2, 8), (2, 8), (2, 8), (2, 8, 4)]
    assert all(np.shares_memory(a, b) for a, b in zip(got, full))  # buffers kept for the run
    assert data.feeds(order, [0, 3])[0].shape == (2, 8)  # evaluation: never cut
