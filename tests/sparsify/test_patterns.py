"""``graphc.sparsity`` on numpy arrays alone, against the reference in ``oracle``:

- ``Pattern.parse`` accepts unstructured / N:M / block RxC and refuses the rest with a reason;
- ``to_view`` puts the reduction axis last for each layout (MatMul/Gemm ``transB=0``: B's
  axis 0; Gemm ``transB=1``: axis 1; Conv: the input channel at each tap) and ``from_view``
  inverts it;
- ``conforms`` / ``skippable`` agree with the oracle's N:M and block checks, on masks that
  conform and on masks with one weight out of place;
- ``choose``: uniform counts (round to the nearest unit), the same zeros as the oracle,
  ties to the earlier position, N:M masks that only grow with the ratio, weights already
  zero counted, per-row wanda masks, and global scope (normalised ranking, the per-layer cap,
  the overall count);
- ``scores``: wanda's |w| x channel norm, a grouped Conv reading its group's channels.
"""

import itertools

import numpy as np
import pytest

from graphc import sparsity
from graphc.sparsity import Layout, Pattern
from tests.sparsify import oracle

RNG = np.random.default_rng(7)
LAYOUTS = [("MatMul", 0, Layout("kn"), (16, 12)), ("Gemm", 1, Layout("nk"), (12, 16)),
           ("Conv", 0, Layout("conv"), (8, 16, 3, 3))]


@pytest.mark.parametrize("text,block,expected", [
    ("unstructured", "1x4", Pattern("unstructured")),
    ("2:4", "1x4", Pattern("nm", n=2, m=4)),
    ("1:8", "1x4", Pattern("nm", n=1, m=8)),
    ("block", "1x4", Pattern("block", rows=1, cols=4)),
    ("block", "16x4", Pattern("block", rows=16, cols=4)),
])
def test_parse_accepts(text, block, expected):
    parsed = Pattern.parse(text, block)
    assert parsed == expected
    if expected.kind == "nm":
        assert parsed.implied_ratio() == pytest.approx(1 - expected.n / expected.m)
    else:
        assert parsed.implied_ratio() is None


@pytest.mark.parametrize("text,block,words", [
    ("3:2", "1x4", "0 < N < M"), ("2:2", "1x4", "0 < N < M"), ("0:4", "1x4", "0 < N < M"),
    ("dense", "1x4", "not unstructured"), ("block", "0x4", "RxC"), ("block", "4", "RxC"),
    ("block", "1x1", "single weight"),
])
def test_parse_refuses(text, block, words):
    with pytest.raises(ValueError, match=words):
        Pattern.parse(text, block)


@pytest.mark.parametrize("op,trans_b,layout,shape", LAYOUTS, ids=[x[0] + str(x[1]) for x in LAYOUTS])
def test_view_puts_the_reduction_axis_last(op, trans_b, layout, shape):
    weight = RNG.standard_normal(shape).astype(np.float32)
    view = sparsity.to_view(weight, layout)
    np.testing.assert_array_equal(view, oracle.rows_by_reduction(weight, op, trans_b))
    back = sparsity.from_view(view, layout, weight.shape)
    assert back.flags.c_contiguous and back.dtype == weight.dtype
    np.testing.assert_array_equal(back, weight)
    # one explicit element per layout: view[p, n, k] is the weight (output n, reduction k, tap p)
    if op == "MatMul":
        assert view[0, 5, 3] == weight[3, 5]
    elif op == "Gemm":
        assert view[0, 5, 3] == weight[5, 3]
    else:
        assert view[1 * 3 + 2, 5, 3] == weight[5, 3, 1, 2]


def _random_view(shape=(2, 8, 16)):
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("pattern,spec", [(Pattern("nm", n=2, m=4), ("nm", 2, 4)),
                                          (Pattern("nm", n=1, m=4), ("nm", 1, 4)),
                                          (Pattern("block", rows=1, cols=4), ("block", 1, 4)),
                                          (Pattern("block", rows=4, cols=1), ("block", 4, 1)),
                                          (Pattern("block", rows=4, cols=4), ("block", 4, 4))])
def test_conforms_and_skippable_agree_with_the_oracle(pattern, spec):
    view = _random_view()
    ratio = pattern.implied_ratio() or 0.5
    zero = oracle.magnitude_zero_mask(view, spec, ratio)
    sparse = np.where(zero, 0, view)
    check = oracle.nm_holds if spec[0] == "nm" else oracle.blocks_hold
    assert check(sparse, spec[1], spec[2])
    assert sparsity.conforms(sparse, pattern) is True
    assert sparsity.skippable(sparse, pattern) == int(zero.sum())
    # one more zero outside the pattern's structure breaks it (N:M: a 3rd zero in a 2:4 group
    # keeps conformance, so break N:M by restoring a zeroed weight instead)
    broken = sparse.copy()
    if spec[0] == "nm":
        p, o, k = np.argwhere(zero)[0]
        broken[p, o, k] = 1.0
    else:
        p, o, k = np.argwhere(~zero)[0]
        broken[p, o, k] = 0.0
    assert not check(broken, spec[1], spec[2])
    assert sparsity.conforms(broken, pattern) is False
    # a dense view: every N:M group is over its N; no zero lies outside a block
    assert sparsity.conforms(view, pattern) is (spec[0] == "block")


def test_conforms_is_none_when_the_shape_does_not_divide():
    view = _random_view((1, 6, 10))
    assert sparsity.conforms(view, Pattern("nm", n=2, m=4)) is None
    assert sparsity.conforms(view, Pattern("block", rows=4, cols=1)) is None
    assert sparsity.conforms(view, Pattern("block", rows=1, cols=5)) is True  # dense: no zero out of place
    assert sparsity.skippable(view, Pattern("nm", n=2, m=4)) == 0
    assert Pattern("nm", n=2, m=4).misfit((1, 6, 10)) == "its reduction length 10 is not a multiple of 4"
    assert "6 outputs x 10" in Pattern("block", rows=4, cols=1).misfit((1, 6, 10))


@pytest.mark.parametrize("ratio", [0.5, 0.3, 0.77])
@pytest.mark.parametrize("spec", [("unstructured",), ("block", 1, 4), ("block", 4, 1), ("block", 4, 4)])
def test_uniform_choice_equals_the_oracle(spec, ratio):
    views = [_random_view((1, 16, 32)), _random_view((9, 8, 4)), _random_view((3, 4, 12))]
    pattern = Pattern(spec[0]) if spec[0] == "unstructured" else Pattern("block", rows=spec[1], cols=spec[2])
    masks = sparsity.choose([np.abs(v.astype(np.float64)) for v in views], pattern, ratio)
    unit = 1 if spec[0] == "unstructured" else spec[1] * spec[2]
    for view, keep in zip(views, masks):
        assert keep.shape == view.shape and keep.dtype == bool
        expected = oracle.magnitude_zero_mask(view, spec, ratio)
        np.testing.assert_array_equal(~keep, expected)
        zeros = int((~keep).sum())
        assert zeros == unit * round(ratio * view.size / unit)
        assert abs(zeros / view.size - ratio) <= unit / (2 * view.size) + 1e-12


def test_nm_choice_equals_the_oracle_and_grows_with_the_ratio():
    view = _random_view((3, 8, 16))
    score = np.abs(view.astype(np.float64))
    pattern = Pattern("nm", n=2, m=4)
    (full,) = sparsity.choose([score], pattern, 0.5)
    np.testing.assert_array_equal(~full, oracle.magnitude_zero_mask(view, ("nm", 2, 4), 0.5))
    # the gradual schedule passes smaller ratios: global ranking over the candidates only
    for scope in ("uniform", "global"):
        previous = np.ones_like(full)
        for ratio in (0.1, 0.25, 0.4, 0.5):
            (keep,) = sparsity.choose([score], pattern, ratio, scope=scope)
            assert int((~keep).sum()) == round(ratio * view.size)
            assert not (~keep & full).any()          # only the 2:4 candidates are ever zeroed
            assert (keep <= previous).all()          # the mask only grows
            previous = keep
        np.testing.assert_array_equal(previous, full)


def test_ties_go_to_the_earlier_position():
    view = np.ones((1, 4, 8), dtype=np.float32)
    view[0, :, ::2] *= -1  # equal magnitudes, mixed signs
    score = np.abs(view.astype(np.float64))
    (keep,) = sparsity.choose([score], Pattern("unstructured"), 0.25)
    assert (~keep).ravel()[:8].all() and keep.ravel()[8:].all()
    (keep,) = sparsity.choose([score], Pattern("nm", n=2, m=4), 0.5)
    expected = np.zeros((1, 4, 8), dtype=bool)
    expected[..., [0, 1, 4, 5]] = True
    np.testing.assert_array_equal(~keep, expected)
    (keep,) = sparsity.choose([score], Pattern("block", rows=2, cols=4), 0.5)
    np.testing.assert_array_equal(~keep[0, :2], np.ones((2, 8), dtype=bool))
    assert keep[0, 2:].all()
    again = sparsity.choose([score], Pattern("block", rows=2, cols=4), 0.5)
    np.testing.assert_array_equal(again[0], keep)


def test_weights_already_zero_count_toward_the_ratio():
    view = _random_view((1, 8, 16))
    view[0, 0, :10] = 0
    score = np.abs(view.astype(np.float64))
    (keep,) = sparsity.choose([score], Pattern("unstructured"), 0.5)
    assert not keep[0, 0, :10].any()
    assert int((~keep).sum()) == 64
    assert int(((view == 0) | ~keep).sum()) == 64


def test_per_row_choice_ranks_each_output_on_its_own():
    view = _random_view((9, 6, 8))  # a Conv-like view: a row is every tap and channel of one output
    view[:, 0] *= 100  # one output far larger: a layer-wide ranking would spare it entirely
    score = np.abs(view.astype(np.float64))
    (keep,) = sparsity.choose([score], Pattern("unstructured"), 0.5, per_row=True)
    per_output = (~keep).sum(axis=(0, 2))
    np.testing.assert_array_equal(per_output, np.full(6, 36))
    for o in range(6):
        row = score[:, o, :].ravel()
        expected = np.zeros(row.size, dtype=bool)
        expected[np.argsort(row, kind="stable")[:36]] = True
        np.testing.assert_array_equal((~keep[:, o, :]).ravel(), expected)


def test_global_scope_normalises_caps_and_totals():
    small = _random_view((1, 8, 16)) * 0.01  # a layer of small weights: normalisation protects it
    large = _random_view((1, 16, 32))
    skewed = _random_view((1, 8, 8))
    skewed[0, :6] *= 1e-4  # 3/4 of its weights tiny: ranked alone it would lose them all, the cap stops it
    views = [small, large, skewed]
    scores = [np.abs(v.astype(np.float64)) for v in views]
    ratio, cap = 0.6, 0.65
    masks = sparsity.choose(scores, Pattern("unstructured"), ratio, scope="global", max_layer_ratio=cap)
    total = sum(v.size for v in views)
    zeros = sum(int((~k).sum()) for k in masks)
    assert zeros == round(ratio * total)
    for view, keep in zip(views, masks):
        assert int((~keep).sum()) <= int(np.floor(cap * view.size + 1e-9))
        # within one layer the zeroed scores are the lowest
        s = np.abs(view).ravel()
        if (~keep).any() and keep.any():
            assert s[(~keep).ravel()].max() <= s[keep.ravel()].min()
    # across layers: no kept normalised score below a zeroed one, in layers under the cap
    normalised = [np.abs(v).ravel() / np.abs(v).mean() for v in views]
    zeroed = np.concatenate([n[(~k).ravel()] for n, k in zip(normalised, masks)])
    open_layers = [i for i, (v, k) in enumerate(zip(views, masks))
                   if int((~k).sum()) < int(np.floor(cap * v.size + 1e-9))]
    kept = np.concatenate([normalised[i][masks[i].ravel()] for i in open_layers])
    assert zeroed.max() <= kept.min() + 1e-12
    assert 0 < int((~masks[0]).sum()) < small.size  # the small layer was ranked on its own scale
    assert int((~masks[2]).sum()) == int(np.floor(cap * skewed.size))


def test_global_block_total_is_the_nearest_whole_unit():
    views = [_random_view((1, 8, 12)), _random_view((1, 4, 16))]
    scores = [np.abs(v.astype(np.float64)) for v in views]
    masks = sparsity.choose(scores, Pattern("block", rows=1, cols=4), 0.37, scope="global")
    zeros = sum(int((~k).sum()) for k in masks)
    total = sum(v.size for v in views)
    assert zeros % 4 == 0 and abs(zeros - 0.37 * total) <= 2
    for view, keep in zip(views, masks):
        assert oracle.blocks_hold(np.where(keep, view, 0), 1, 4)


def test_wanda_scores_use_the_channel_norms():
    view = _random_view((1, 6, 8))
    norms = RNG.random(8) + 0.1
    got = sparsity.scores(view, Layout("kn"), norms)
    np.testing.assert_allclose(got, np.abs(view) * norms[None, None, :])
    assert got.dtype == np.float64
    np.testing.assert_array_equal(sparsity.scores(view, Layout("kn")), np.abs(view.astype(np.float64)))


def test_wanda_scores_of_a_grouped_conv_read_the_group_channels():
    groups, out, per_group = 2, 6, 4
    weight = RNG.standard_normal((out, per_group, 3, 3)).astype(np.float32)
    norms = RNG.random(groups * per_group) + 0.1
    layout = Layout("conv", groups)
    got = sparsity.from_view(sparsity.scores(sparsity.to_view(weight, layout), layout, norms), layout, weight.shape)
    expected = np.empty(weight.shape)
    for o in range(out):
        group = o // (out // groups)
        for i in range(per_group):
            expected[o, i] = np.abs(weight[o, i]) * norms[group * per_group + i]
    np.testing.assert_allclose(got, expected)


def test_cubic_ratio_rises_from_initial_to_final():
    assert sparsity.cubic_ratio(0, 0, 10, 0.0, 0.5) == 0.0
    assert sparsity.cubic_ratio(5, 0, 10, 0.0, 0.5) == pytest.approx(0.5 - 0.5 * 0.5 ** 3)
    assert sparsity.cubic_ratio(10, 0, 10, 0.0, 0.5) == 0.5
    values = [sparsity.cubic_ratio(s, 2, 8, 0.1, 0.8) for s in range(12)]
    assert values[:3] == [pytest.approx(0.1)] * 3 and values[-1] == 0.8
    assert all(a <= b for a, b in itertools.pairwise(values))
