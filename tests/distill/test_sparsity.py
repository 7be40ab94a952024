"""distill's rule 8 in the real training environment: zeros present when distill starts stay
exactly zero (and only because of the mask: ``keep_zeros=false`` lets them move), the N:M
pattern still conforms after training, and gradual sparsity (``sparsity=``) reaches the final
ratio exactly, with the written weights zero wherever the final mask is; plus the schedule
(``worker/sparse_masks.Schedule``) against Zhu & Gupta's formula, written out here."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from graphc import sparsity
from graphc.pipeline import OptimizeRequest, optimize
from tests.distill.helpers import CNN, TEST_SPLIT

CONV_WEIGHTS = ["features.3.weight", "features.6.body.0.weight", "features.6.body.3.weight", "features.7.weight",
                "features.10.body.0.weight", "features.10.body.3.weight"]  # >= 1024 weights: sparsify's default


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("sparse-distill")
    with np.load(TEST_SPLIT) as npz:
        np.savez(root / "train.npz", image=npz["image"][:512], labels=npz["labels"][:512])
        np.savez(root / "eval.npz", image=npz["image"][512:768], labels=npz["labels"][512:768])
    return root


def weights(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def run(splits, passes, out, evaluate=True):
    held_out = {"eval_data": splits / "eval.npz", "metric": "top1"} if evaluate else {}
    return optimize(OptimizeRequest(model=CNN, passes=passes, output=out, train_data=splits / "train.npz",
                                    progress=False, threads=2, **held_out))


@pytest.mark.parametrize("pattern", ["sparsify:0.7", "sparsify:pattern=2:4"])
def test_zeros_at_the_start_stay_exactly_zero(tmp_path, splits, training_python, pattern):
    sparse_path = tmp_path / "sparse.onnx"
    optimize(OptimizeRequest(model=CNN, passes=pattern, output=sparse_path, progress=False))
    before = weights(sparse_path)
    report = run(splits, f"{pattern},distill:epochs=1:batch=64:lr=0.002", tmp_path / "trained.onnx")
    after = weights(tmp_path / "trained.onnx")
    zeros = 0
    for name in CONV_WEIGHTS:
        was_zero = before[name] == 0
        assert was_zero.mean() == pytest.approx(0.7 if "0.7" in pattern else 0.5, abs=0.002)
        assert (after[name][was_zero] == 0).all(), name  # exactly zero, not small
        assert not np.array_equal(after[name][~was_zero], before[name][~was_zero]), name  # the rest trained
        zeros += int(was_zero.sum())
        if "2:4" in pattern:
            layout = sparsity.Layout("conv", 1)
            assert sparsity.conforms(sparsity.to_view(after[name], layout), sparsity.Pattern.parse("2:4"))
    assert report.passes[-1].stats["zeros_kept"] == zeros


def test_without_keep_zeros_the_zeros_move(tmp_path, splits, training_python):
    """The mask is what keeps them: with keep_zeros=false most zero weights train away from 0
    (no --eval-data: the last epoch is written, whatever its accuracy)."""
    run(splits, "sparsify:0.7,distill:epochs=1:batch=64:lr=0.002:keep_zeros=false", tmp_path / "free.onnx",
        evaluate=False)
    sparse_path = tmp_path / "sparse.onnx"
    optimize(OptimizeRequest(model=CNN, passes="sparsify:0.7", output=sparse_path, progress=False))
    before, after = weights(sparse_path), weights(tmp_path / "free.onnx")
    name = CONV_WEIGHTS[-1]
    assert (after[name][before[name] == 0] != 0).mean() > 0.9


@pytest.mark.parametrize("extra,expect_pattern", [("", None), (":pattern=2:4:by=wanda", "2:4"),
                                                 (":pattern=block:block=1x4:scope=global", "1x4")])
def test_gradual_sparsity_reaches_the_final_ratio_exactly(tmp_path, splits, training_python, extra, expect_pattern):
    final = 0.5 if "2:4" in extra else 0.6
    report = run(splits, f"distill:epochs=2:batch=64:lr=0.002:sparsity={final}:mask_every=2{extra}",
                 tmp_path / "gradual.onnx")
    after, dense = weights(tmp_path / "gradual.onnx"), weights(CNN)
    sizes = {name: after[name].size for name in CONV_WEIGHTS}
    zeros = {name: int((after[name] == 0).sum()) for name in CONV_WEIGHTS}
    if "global" in extra:  # the whole chosen set: the nearest whole 1x4 block
        assert abs(sum(zeros.values()) - final * sum(sizes.values())) <= 2
    else:  # every layer: round(final * size) weights (per output row for wanda: rows x round(final * row))
        for name in CONV_WEIGHTS:
            assert zeros[name] == round(final * sizes[name]), name
    assert report.passes[-1].stats["sparsity"] == pytest.approx(sum(zeros.values()) / sum(sizes.values()), abs=1e-4)
    for name in ("features.0.weight", "classifier.weight"):  # under min_size: dense, trained
        assert (after[name] != 0).all()
    if expect_pattern:
        layout = sparsity.Layout("conv", 1)
        pattern = (sparsity.Pattern.parse(expect_pattern) if ":" in expect_pattern
                   else sparsity.Pattern.parse("block", expect_pattern))
        for name in CONV_WEIGHTS:
            assert sparsity.conforms(sparsity.to_view(after[name], layout), pattern), name
    assert report.passes[-1].stats["best_epoch"] == 2  # epoch 1 ends before the last mask update (ramp 0.5)
    assert not np.array_equal(after[CONV_WEIGHTS[0]], dense[CONV_WEIGHTS[0]])


def test_schedule_follows_the_cubic_formula(tmp_path):
    from graphc.passes.distill.worker.sparse_masks import Schedule

    class Param:
        def __init__(self, data):
            self.data = data

    class State:
        parameters = {"w": Param(np.ones((4, 4), np.float32)), "w__graphc_keep": Param(np.ones((4, 4), np.float32))}

    spec = {"module": sparsity.__file__, "layers": {"w": ["kn", 1]}, "pattern": "unstructured", "block": "1x4",
            "final": 0.8, "initial": 0.2, "scope": "uniform", "max_layer_ratio": 1.0, "by": "magnitude",
            "every": 10, "ramp": 0.5}
    schedule = Schedule(spec, State(), total_steps=100, norms={})
    assert schedule.ramp_steps == 50 and schedule.last_update == 50
    assert [s for s in range(100) if schedule.due(s)] == [0, 10, 20, 30, 40, 50]
    for step in (0, 10, 25, 40):
        assert schedule.ratio(step) == pytest.approx(0.8 + (0.2 - 0.8) * (1 - step / 50) ** 3)
    assert schedule.ratio(50) == schedule.ratio(99) == 0.8
    assert schedule.settled(50) and not schedule.settled(49)
    odd = Schedule({**spec, "every": 15}, State(), total_steps=100, norms={})
    assert odd.last_update == 60 and [s for s in range(100) if odd.due(s)] == [0, 15, 30, 45, 60]


@pytest.mark.parametrize("spec,message", [
    ("distill:pattern=2:4", "read only with sparsity="),
    ("distill:sparsity=0.6:pattern=2:4", "pattern=2:4 means sparsity=0.5, not 0.6"),
    ("distill:sparsity=0.5:block=4x4", "block=4x4 is read only with pattern=block"),
    ("distill:sparsity=0.5:pattern=block:block=1x1", "single weight"),
    ("distill:sparsity=0.5:pattern=5:3", "not unstructured, block, or N:M"),
])
def test_sparsity_options_are_checked_when_parsed(spec, message):
    from graphc.errors import GraphcError
    from graphc.passes import build_passes
    from graphc.spec import parse_spec

    with pytest.raises(GraphcError, match=message):
        build_passes(parse_spec(spec))
