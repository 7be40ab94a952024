"""prune's options (rules 2 and 3: importance and selection): round_to, max_layer_ratio,
scope=uniform, target=macs, and the data-driven scores."""

import pytest

from graphc.graph import to_graph, to_model
from graphc.model_io import load_model
from graphc.passes.prune import PruneOptions, PrunePass, apply_pruning, plan_pruning


def _plan(onnx_model, name, **options):
    return plan_pruning(to_graph(load_model(onnx_model(name))), PruneOptions(**options))


def test_round_to_keeps_channel_counts_multiples(onnx_model):
    plan = _plan(onnx_model, "resnet", ratio=0.4, round_to=8)
    for group in plan.prunable():
        kept = group.size - len(plan.removed.get(group.id, []))
        assert kept % 8 == 0 or kept == group.size, (group.describe(), kept)
    assert plan.removed


def test_max_layer_ratio_caps_every_group(onnx_model):
    plan = _plan(onnx_model, "depthwise", ratio=0.9, max_layer_ratio=0.5)
    for group in plan.prunable():
        assert len(plan.removed.get(group.id, [])) <= group.units // 2


def test_uniform_scope_prunes_every_group_by_the_ratio(onnx_model):
    plan = _plan(onnx_model, "concat", ratio=0.5, scope="uniform", round_to=1)
    for group in plan.prunable():
        assert len(plan.removed.get(group.id, [])) == min(group.units // 2, group.units - 1)


def test_target_macs_measures_the_share_of_macs(onnx_model, tmp_path):
    from graphc.stats import model_stats

    model = load_model(onnx_model("resnet"))
    plan = _plan(onnx_model, "resnet", ratio=0.4, target="macs")
    assert plan.cost_removed >= 0.4 * plan.cost_total
    apply_pruning(plan)
    before, after = model_stats(model).macs, model_stats(to_model(plan.graph, model)).macs
    assert after <= 0.7 * before  # every MAC of this CNN sits in a prunable Conv/Gemm


@pytest.mark.parametrize("by", ["activation", "taylor"])
def test_data_driven_scores_need_data_and_use_it(by, onnx_model, make_context):
    from graphc.data import synthetic_dataset
    from graphc.errors import GraphcError

    model = load_model(onnx_model("resnet"))
    ctx = make_context(model)
    with pytest.raises(GraphcError, match=f"prune:by={by} needs --data"):
        PrunePass(PruneOptions(by=by)).check(ctx)
    ctx.data = synthetic_dataset(model, batches=8, seed=1)
    data_plan = plan_pruning(to_graph(model), PruneOptions(ratio=0.3, by=by), data=ctx.data)
    l2_plan = plan_pruning(to_graph(model), PruneOptions(ratio=0.3, by="l2"), data=ctx.data)
    assert data_plan.removed and data_plan.removed != l2_plan.removed
