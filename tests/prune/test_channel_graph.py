"""prune on real topologies (rules 1 and 4: the channel dependency graph and removal): ratio 0
is the identity, ratio 0.3 removes >= 25% of the prunable parameters, and the pruned model
equals the original with exactly the removed channels' consumer weights zeroed (the test
that proves the dependency graph right)."""

import numpy as np
import onnx
import pytest

from graphc.graph import to_graph, to_model
from graphc.model_io import load_model
from graphc.passes.prune import PruneOptions, PrunePass, apply_pruning, plan_pruning
from graphc.runtime import open_session
from graphc.stats import count_params
from tests.prune.oracle import pruned_and_masked
from tests.topologies import BUILDERS

EXPECTED_KINDS = {  # what each topology must offer to prune
    "resnet": {"channels"}, "depthwise": {"channels"}, "concat": {"channels"}, "se": {"channels"},
    "mlp_bn": {"channels"}, "convnext": {"neurons"}, "bert": {"heads", "neurons"},
    "gpt": {"heads", "channels"}, "vit": {"heads", "neurons"},  # GPT-2's Conv1D exports as Gemm
}
FLAVOURS = [(name, False) for name in sorted(BUILDERS)] + [("bert", True), ("resnet", True), ("vit", True)]


def run(model, feeds):
    return open_session(model).run(None, feeds)


@pytest.mark.parametrize("name, dynamo", FLAVOURS, ids=[f"{n}-{'dynamo' if d else 'torchscript'}" for n, d in FLAVOURS])
def test_prune_is_exact_against_masking_and_removes_a_quarter(name, dynamo, onnx_model, sample_inputs, make_context):
    path = onnx_model(name, dynamo=dynamo)
    model = load_model(path)
    feeds = sample_inputs(name, batch=3)
    original = run(model, feeds)

    graph = to_graph(model)
    result = PrunePass(PruneOptions(ratio=0.0)).run(graph, make_context(model))
    assert not result.changed and result.graph is graph  # in_place = False: the given graph, untouched
    unchanged = to_model(graph, model)
    assert [n.op_type for n in unchanged.graph.node] == [n.op_type for n in model.graph.node]
    for a, b in zip(run(unchanged, feeds), original):
        np.testing.assert_array_equal(a, b)

    plan, pruned, masked = pruned_and_masked(model, PruneOptions(ratio=0.3))
    kinds = {g.kind for g in plan.prunable()}
    assert EXPECTED_KINDS[name] <= kinds, (kinds, [g.describe() for g in plan.groups])
    assert plan.cost_removed >= 0.25 * plan.cost_total
    for group in plan.prunable():  # no group emptied
        assert len(plan.removed.get(group.id, [])) < group.units
    onnx.checker.check_model(pruned)
    got, want = run(pruned, feeds), run(masked, feeds)
    for g, w, o in zip(got, want, original):
        assert g.shape == o.shape
        assert np.abs(g - w).max() <= 1e-4 * max(1.0, np.abs(w).max()), np.abs(g - w).max()
    assert count_params(pruned) < count_params(model)


def test_residual_and_se_groups_are_coupled(onnx_model):
    for name, coupled_producers in (("resnet", 3), ("se", 2)):
        plan = plan_pruning(to_graph(load_model(onnx_model(name))), PruneOptions(ratio=0.3))
        producers = [len([m for m in g.members if m.kind == "producer" and m.input_index == 1])
                     for g in plan.groups]
        assert max(producers) >= coupled_producers, [g.describe() for g in plan.groups]


def test_heads_are_pruned_whole_and_reshapes_updated(onnx_model, sample_inputs):
    model = load_model(onnx_model("bert"))
    plan, pruned, _ = pruned_and_masked(model, PruneOptions(ratio=0.5))
    heads = [g for g in plan.prunable() if g.kind == "heads"]
    assert heads and all(g.channels_per_unit == 16 and g.units == 4 for g in heads)  # hidden 64 = 4 heads x 16
    for group in heads:  # Q, K, V lose whole 16-column heads; the output projection 16-row blocks
        kept = 64 - 16 * len(plan.removed.get(group.id, []))
        producers = [m for m in group.params() if m.kind == "producer" and m.input_index == 1]
        assert len(producers) == 3
        for member in producers:
            weight = next(t for t in pruned.graph.initializer if t.name.startswith(member.tensor + "_pruned")
                          ) if plan.removed.get(group.id) else None
            assert weight is None or weight.dims[member.axis] == kept
    assert any(plan.removed.get(g.id) for g in heads)
    out = run(pruned, sample_inputs("bert", batch=2, seq=9))[0]
    assert out.shape == (2, 4)


def test_blocked_groups_are_reported_with_their_reason(onnx_model):
    plan = plan_pruning(to_graph(load_model(onnx_model("bert"))), PruneOptions(ratio=0.3))
    reasons = {g.blocked for g in plan.groups if g.blocked}
    assert any("LayerNormalization" in r for r in reasons)  # the hidden size stays unless hidden=true
    assert any("graph output" in r for r in reasons)


def test_nothing_prunable_returns_model_unchanged_with_message(make_context):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    w = onnx.numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    model = helper.make_model(helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w]),
                              opset_imports=[helper.make_opsetid("", 17)])
    ctx = make_context(model)

    result = PrunePass(PruneOptions(ratio=0.5)).run(to_graph(model), ctx)
    assert not result.changed
    assert ctx.report.notes == ["prune: nothing prunable in this model; returned unchanged "
                                "(blocked: reaches graph output 'y')"]


def _plan(onnx_model, name, **options):
    return plan_pruning(to_graph(load_model(onnx_model(name))), PruneOptions(**options))


def test_hidden_true_prunes_the_residual_stream_and_still_runs(onnx_model, sample_inputs):
    model = load_model(onnx_model("bert"))
    blocked = _plan(onnx_model, "bert", ratio=0.3)
    assert all(g.blocked for g in blocked.groups if g.kind == "hidden")
    plan = _plan(onnx_model, "bert", ratio=0.3, hidden=True)
    hidden = [g for g in plan.prunable() if g.kind == "hidden"]
    assert len(hidden) == 1 and plan.removed.get(hidden[0].id)
    apply_pruning(plan)
    pruned = to_model(plan.graph, model)
    onnx.checker.check_model(pruned)
    assert run(pruned, sample_inputs("bert", batch=2))[0].shape == (2, 4)
    kept = 64 - len(plan.removed[hidden[0].id])
    embedding = next(t for t in pruned.graph.initializer if "word_embeddings" in t.name)
    assert list(embedding.dims) == [1000, kept]


def test_exporter_shared_zero_biases_do_not_block_groups(tmp_path):
    """The TorchScript exporter merges identical (zero) biases and reads them through
    Identity nodes; prune must still prune those layers, exactly."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16), torch.nn.ReLU(),
                              torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)).eval()
    for layer in (net[0], net[4]):
        torch.nn.init.zeros_(layer.bias)
    path = tmp_path / "dedup.onnx"
    torch.onnx.export(net, (torch.randn(2, 16),), str(path), dynamo=False, opset_version=17, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    model = load_model(path)
    assert any(n.op_type == "Identity" for n in model.graph.node)  # the exporter's deduplication
    plan, pruned, masked = pruned_and_masked(model, PruneOptions(ratio=0.3, round_to=1))
    assert len(plan.prunable()) == 3 and len(plan.removed) == 3
    feeds = {"x": np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)}
    np.testing.assert_allclose(run(pruned, feeds)[0], run(masked, feeds)[0], rtol=1e-5, atol=1e-6)
