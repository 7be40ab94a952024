"""``prune:latency=true`` and ``target=latency`` (rule 3): measured layer times
(``graphc.passes.prune.layer_times``) and the speed factors that reorder the units
(``graphc.passes.prune.selection.speed_factors``)."""

import json

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from graphc.errors import GraphcError
from graphc.graph import to_graph, to_model
from graphc.model_io import load_model
from graphc.ops import WEIGHTED_OPS
from graphc.passes.prune import PruneOptions, PrunePass, analyse, apply_pruning, plan_pruning
from graphc.passes.prune.layer_times import weighted_node_times
from graphc.passes.prune.selection import CostModel, PruneConfig, select_units, speed_factors, timed_cost
from graphc.runtime import open_session
from tests.prune.oracle import mask_pruned_channels
from tests.topologies import BUILDERS

FLAVOURS = [(name, False) for name in sorted(BUILDERS)] + [("bert", True), ("resnet", True), ("vit", True)]


@pytest.fixture
def resnet_context(onnx_model, make_context):
    """A real pass context (on the resnet topology) for ``PrunePass.check``."""
    return make_context(load_model(onnx_model("resnet")))


def folded(path) -> onnx.ModelProto:
    """The model as the prune pass profiles it: constants folded, weights as initializers."""
    graph = to_graph(load_model(path))
    analyse(graph)
    return gs.export_onnx(graph, do_type_check=False)


@pytest.mark.parametrize("name, dynamo", FLAVOURS, ids=[f"{n}-{'dynamo' if d else 'torchscript'}" for n, d in FLAVOURS])
def test_every_weighted_layer_gets_a_measured_time(name, dynamo, onnx_model, sample_inputs):
    model = folded(onnx_model(name, dynamo=dynamo))
    weights = {t.name for t in model.graph.initializer}
    layers = [n.output[0] for n in model.graph.node
              if n.op_type in WEIGHTED_OPS and len(n.input) > 1 and n.input[1] in weights]
    times = weighted_node_times(model, sample_inputs(name, batch=1), runs=3)
    assert layers and sorted(times) == sorted(layers)
    assert all(t > 0 for t in times.values())


def _plan_inputs(onnx_model, name):
    graph = to_graph(load_model(onnx_model(name)))
    channel_graph = analyse(graph)
    groups = [g for g in sorted(channel_graph.groups.values(), key=lambda g: g.id) if not g.blocked and g.units >= 2]
    return groups, CostModel(groups, channel_graph.shapes, "macs")


def _time_at_speed(macs: CostModel, slow: set[str], speed: float = 100.0) -> dict[str, float]:
    """Microseconds per layer at ``speed`` MACs/us, layers named in ``slow`` at half of it."""
    return {node.outputs[0].name: macs.tensors[key][1] / speed * (2 if node.outputs[0].name in slow else 1)
            for key, node in macs.nodes.items()}


def test_speed_factors_are_one_at_uniform_speed_and_lower_for_slow_layers(onnx_model):
    groups, macs = _plan_inputs(onnx_model, "resnet")
    uniform = speed_factors(macs, _time_at_speed(macs, set()))
    assert set(uniform) == {g.id for g in groups}
    np.testing.assert_allclose(list(uniform.values()), 1.0, rtol=1e-12)

    slow_group = max(groups, key=lambda g: len(macs.members.get(g.id, [])))
    slow = {macs.nodes[key].outputs[0].name for key, _, _ in macs.members[slow_group.id]}
    factors = speed_factors(macs, _time_at_speed(macs, slow))
    # every layer of the slow group runs at half speed: its units save half the MACs per us
    total_macs = sum(c for _, c in macs.tensors.values())
    total_time = sum(c / 100.0 * (2 if macs.nodes[k].outputs[0].name in slow else 1) for k, (_, c) in macs.tensors.items())
    np.testing.assert_allclose(factors[slow_group.id], 0.5 * total_time / (total_macs / 100.0), rtol=1e-9)
    for group in groups:  # groups that share no layer with it are faster than the model average
        layers = {macs.nodes[key].outputs[0].name for key, _, _ in macs.members.get(group.id, [])}
        if layers and not layers & slow:
            assert factors[group.id] > 1.0


def test_unmeasured_layers_run_at_the_model_average_and_factors_are_clipped(onnx_model):
    groups, macs = _plan_inputs(onnx_model, "resnet")
    assert speed_factors(macs, {}) == {g.id: 1.0 for g in groups}
    times = _time_at_speed(macs, set())
    one = next(iter(times))
    times[one] *= 1000  # a wildly slow measurement
    factors = speed_factors(macs, times)
    assert min(factors.values()) == 0.5 and max(factors.values()) <= 2.0


def test_slow_layers_lose_more_units_at_equal_importance(onnx_model):
    groups, macs = _plan_inputs(onnx_model, "resnet")
    slow_group = max(groups, key=lambda g: g.units)
    slow = {macs.nodes[key].outputs[0].name for key, _, _ in macs.members[slow_group.id]}
    rng = np.random.default_rng(0)
    importance = {g.id: 1 + 0.01 * rng.standard_normal(g.units) for g in groups}
    config = PruneConfig(ratio=0.2)
    plain = select_units(groups, importance, macs, config)
    factors = speed_factors(macs, _time_at_speed(macs, slow))
    weighed = select_units(groups, {gid: s * factors[gid] for gid, s in importance.items()}, macs, config)
    assert len(weighed.get(slow_group.id, [])) > len(plain.get(slow_group.id, []))
    assert macs.share(weighed) >= 0.2 and macs.share(plain) >= 0.2


def test_timed_cost_at_uniform_speed_selects_what_macs_selects(onnx_model):
    groups, macs = _plan_inputs(onnx_model, "resnet")
    times = _time_at_speed(macs, set())
    timed = timed_cost(macs, times)
    assert timed.total == pytest.approx(sum(times.values()), rel=1e-12)
    rng = np.random.default_rng(1)
    importance = {g.id: rng.random(g.units) for g in groups}
    for ratio in (0.2, 0.5):
        config = PruneConfig(ratio=ratio, round_to=8)
        assert select_units(groups, importance, timed, config) == select_units(groups, importance, macs, config)


def test_timed_cost_charges_slow_layers_their_measured_time(onnx_model):
    groups, macs = _plan_inputs(onnx_model, "resnet")
    slow_group = max(groups, key=lambda g: len(macs.members.get(g.id, [])))
    slow = {macs.nodes[key].outputs[0].name for key, _, _ in macs.members[slow_group.id]}
    times = _time_at_speed(macs, slow)
    timed = timed_cost(macs, times)
    assert timed.total == pytest.approx(sum(times.values()), rel=1e-12)
    chosen = {slow_group.id: [0]}
    assert timed.removed(chosen) == pytest.approx(2 * macs.removed(chosen) / 100.0, rel=1e-12)
    del times[next(iter(slow))]  # an unmeasured layer costs its MACs at the measured speed
    assert timed_cost(macs, times).total < timed.total
    assert timed_cost(macs, {}).total == macs.total  # nothing measured: MACs, the same shares


SPECS = {"latency": dict(target="macs", latency=True), "target-latency": dict(target="latency"),
         "both": dict(target="latency", latency=True)}


@pytest.mark.parametrize("spec", sorted(SPECS))
@pytest.mark.parametrize("name", ["resnet", "depthwise", "bert"])
def test_latency_pruning_is_exact_against_masking(name, spec, onnx_model, sample_inputs, monkeypatch, make_context):
    import graphc.passes.prune.layer_times as layer_times_module

    first: dict[str, float] = {}

    def measured_once(model, feeds, threads=None):  # both plans must see the same measurement
        if not first:
            first.update(weighted_node_times(model, feeds, threads, runs=3))
        return first

    monkeypatch.setattr(layer_times_module, "weighted_node_times", measured_once)
    model = load_model(onnx_model(name))
    options = PruneOptions(ratio=0.3, **SPECS[spec])
    plan = plan_pruning(to_graph(model), options)
    reference = plan_pruning(to_graph(model), options)
    assert plan.removed == reference.removed and plan.layers_timed == len(first) > 0
    apply_pruning(plan)
    mask_pruned_channels(reference)
    pruned, masked = to_model(plan.graph, model), to_model(reference.graph, model)
    onnx.checker.check_model(pruned)
    feeds = sample_inputs(name, batch=2)
    for got, want in zip(open_session(pruned).run(None, feeds), open_session(masked).run(None, feeds)):
        assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())
    assert plan.cost_removed >= 0.3 * plan.cost_total
    if options.target == "latency":  # the cost is the prunable layers' measured microseconds
        assert 0 < plan.cost_total <= sum(first.values()) * (1 + 1e-9)
        assert "prunable_latency_removed" in plan.stats()
    else:  # MACs target: the measurement's prediction of the time this choice saves
        _, macs = _plan_inputs(onnx_model, name)
        expected = timed_cost(macs, first).share({gid: units for gid, units in reference.removed.items()})
        assert plan.time_share_removed == pytest.approx(expected, rel=1e-9) and 0 < expected < 1
        assert plan.stats()["prunable_latency_removed_predicted"] == f"{expected:.1%}"
    assert PrunePass(options).run(to_graph(model), make_context(model)).stats["layers_timed"] == len(first)


def test_latency_with_uniform_scope_is_refused(resnet_context):
    with pytest.raises(GraphcError, match="latency=true.*scope=uniform"):
        PrunePass(PruneOptions(latency=True, scope="uniform")).check(resnet_context)


def test_profile_file_is_written_once_and_reread_exactly(onnx_model, tmp_path, monkeypatch, make_context):
    import graphc.passes.prune.layer_times as layer_times_module

    model = load_model(onnx_model("resnet"))
    profile = tmp_path / "times.json"
    options = PruneOptions(ratio=0.4, target="latency", latency=True, profile=str(profile))
    PrunePass(options).check(make_context(model))  # no file yet: fine, it is written by the run
    first = plan_pruning(to_graph(model), options)
    record = json.loads(profile.read_text())
    assert record["format"] == "graphc-layer-times/1" and len(record["layers"]) == first.layers_timed > 0

    def no_measuring(*args, **kwargs):
        raise AssertionError("the profile file must be read, not measured again")

    monkeypatch.setattr(layer_times_module, "weighted_node_times", no_measuring)
    again = plan_pruning(to_graph(model), options)
    assert again.removed == first.removed and again.cost_total == first.cost_total
    times = dict(record["layers"])
    slowest = max(times, key=times.get)  # an edited measurement changes the choice
    times[slowest] *= 50
    profile.write_text(json.dumps({**record, "layers": times}))
    assert plan_pruning(to_graph(model), options).removed != first.removed


@pytest.mark.parametrize("content, message", [
    ("not json", "cannot read layer times"),
    ('{"layers": {"a": 1}}', "not a graphc layer-times file"),
    ('{"format": "graphc-layer-times/1", "layers": {"a": -3}}', "times must be positive"),
    ('{"format": "graphc-layer-times/1", "layers": {"a": true}}', "times must be positive"),
])
def test_malformed_profile_files_are_refused_before_any_work(content, message, tmp_path, resnet_context):
    profile = tmp_path / "times.json"
    profile.write_text(content)
    with pytest.raises(GraphcError, match=message):
        PrunePass(PruneOptions(latency=True, profile=str(profile))).check(resnet_context)


def test_profile_of_another_model_and_profile_without_latency_are_refused(onnx_model, tmp_path, resnet_context):
    profile = tmp_path / "times.json"
    profile.write_text(json.dumps({"format": "graphc-layer-times/1", "layers": {"/other/model/Conv_output_0": 5.0}}))
    with pytest.raises(GraphcError, match="names none of this model's weighted layers"):
        plan_pruning(to_graph(load_model(onnx_model("resnet"))), PruneOptions(latency=True, profile=str(profile)))
    with pytest.raises(GraphcError, match="only read with latency=true or target=latency"):
        PrunePass(PruneOptions(profile=str(profile))).check(resnet_context)


def test_cli_bad_profile_is_a_one_line_error_and_writes_nothing(tmp_path):
    import subprocess
    import sys

    from tests import CNN, assert_one_line_error

    profile = tmp_path / "times.json"
    profile.write_text("{broken")
    out = tmp_path / "out.onnx"
    run = subprocess.run([sys.executable, "-m", "graphc", "optimize", str(CNN), "--passes",
                          f"prune:latency=true:profile={profile}", "-o", str(out)], capture_output=True, text=True)
    assert_one_line_error(run, "cannot read layer times")
    assert not out.exists()
