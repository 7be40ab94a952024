"""Every pass on the ONNX backend test suite (``tests/conformance/suite.py``): a written
model runs and matches the reference outputs, or the pass refuses in one line (exit 2).
Named cases pin the causes found so far; a spread over all op types runs in the fast subset,
every case in the slow run."""

from __future__ import annotations

import pytest

from tests.conformance import suite

PASSES = ["fold", "fold,int8", "prune:0.3", "fold,fuse"]
SHAPE_BOUNDS = ["test_shape_start_1", "test_shape_end_1", "test_shape_end_negative_1", "test_shape_start_negative_1",
                "test_shape_start_1_end_2", "test_shape_start_1_end_negative_1", "test_shape_start_greater_than_end",
                "test_shape_clip_start", "test_shape_clip_end"]


def acceptable(result: str) -> bool:
    """Exact, refused in one line, or (a lossy pass: int8) within the pass's own tolerance."""
    return result == "exact" or result.startswith(("refused: ", "within tolerance"))


@pytest.mark.parametrize("name", SHAPE_BOUNDS)
def test_fold_keeps_the_bounds_of_shape(name, tmp_path):
    """Rule 3 of fold: Shape(start, end) folds to the bounded slice of the shape, not the whole."""
    case = suite.case(name)
    assert suite.onnxruntime_conforms(name)
    assert suite.outcome(case, "fold", tmp_path) == "exact"


@pytest.mark.parametrize("name", ["test_group_normalization_epsilon_expanded", "test_group_normalization_example_expanded",
                                  "test_attention_4d_gqa_expanded", "test_attention_3d_expanded"])
def test_fold_on_expanded_functions_built_from_bounded_shapes(name, tmp_path):
    case = suite.case(name)
    assert suite.onnxruntime_conforms(name)
    assert suite.outcome(case, "fold", tmp_path) == "exact"


@pytest.mark.parametrize("passes", [pytest.param(p, marks=[] if p == "fold" else [pytest.mark.slow]) for p in PASSES])
def test_every_pass_on_a_spread_of_op_types(passes, tmp_path):
    results = {name: suite.outcome(suite.case(name), passes, tmp_path) for name in suite.sample()}
    bad = {name: r for name, r in results.items() if not acceptable(r)}
    assert len(results) > 150
    assert not bad, f"{len(bad)} of {len(results)}: {bad}"


@pytest.mark.slow
@pytest.mark.parametrize("passes", PASSES)
def test_every_pass_on_every_conforming_case(passes, tmp_path):
    names = [c.name for c in suite.all_cases() if suite.onnxruntime_conforms(c.name)]
    results = {name: suite.outcome(suite.case(name), passes, tmp_path) for name in names}
    bad = {name: r for name, r in results.items() if not acceptable(r)}
    assert len(results) > 1400
    assert not bad, f"{len(bad)} of {len(results)}: {bad}"


@pytest.mark.parametrize("passes", ["fold", "prune:0.3"])
@pytest.mark.parametrize("name", ["pytorch-converted/test_Conv1d", "pytorch-converted/test_Linear_no_bias"])
def test_ir3_models_keep_their_initializers_as_graph_inputs(name, passes, tmp_path):
    case = suite.case(name)
    assert case.model.ir_version == 3 and suite.onnxruntime_conforms(name)
    assert suite.outcome(case, passes, tmp_path) == "exact"


@pytest.mark.parametrize("passes", ["fold", "prune:0.3"])
@pytest.mark.parametrize("name", ["simple/test_sequence_model1", "simple/test_sequence_model2",
                                  "simple/test_sequence_model6"])
def test_sequence_values_are_never_folded(name, passes, tmp_path):
    assert suite.onnxruntime_conforms(name)
    assert suite.outcome(suite.case(name), passes, tmp_path) == "exact"


def test_an_input_that_fails_strict_shape_inference_is_bad_input(tmp_path):
    """test_mvn: onnxruntime runs it, but its MeanVarianceNormalization body fails strict
    inference; graphc refuses it at load (exit 2), before blaming a pass."""
    result = suite.outcome(suite.case("test_mvn"), "fold", tmp_path)
    assert result.startswith("refused: ") and "invalid model" in result and "MeanVarianceNormalization" in result


@pytest.mark.slow
@pytest.mark.parametrize("passes", ["fold,int8", "prune:0.3"])
def test_every_pass_with_the_cases_own_inputs_as_data(passes, tmp_path):
    """The cases' inputs as --data (calibration, activation scores): data that does not batch
    along axis 0 is refused in one line, never an internal error."""
    names = [c.name for c in suite.all_cases() if suite.onnxruntime_conforms(c.name)]
    results = {name: suite.outcome(suite.case(name), passes, tmp_path, with_data=True) for name in names}
    bad = {name: r for name, r in results.items() if not acceptable(r)}
    assert sum(r == "exact" for r in results.values()) > 800
    assert not bad, f"{len(bad)} of {len(results)}: {bad}"
