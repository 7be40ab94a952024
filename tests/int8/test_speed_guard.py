"""Rule 11 (speed guard) and graphc.profiling: the decisions are tested on injected profiles
(no timed assertion anywhere); the real profiler only for what it returns, never how fast.
"""

import collections
import re

import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort
import pytest

from graphc.metrics import cosine_per_sample
from graphc.passes.int8 import speed_guard
from graphc.pipeline import OptimizeRequest, optimize
from graphc.profiling import ExecutedNode, Profile, attribute, name_nodes, profile_models, time_models
from graphc.runtime import open_session, session_options

FLOAT = onnx.TensorProto.FLOAT


# --------------------------------------------------------------------------- decide
def test_decide_keeps_the_layers_measured_slower():
    fp32 = {"a": 100.0, "b": 50.0, "c": 10.0, "d": 0.0}
    int8 = {"a": 60.0, "b": 80.0, "c": 10.5, "d": 5.0}  # c: within the slack; d: absent from FP32's profile
    keep = speed_guard.decide(fp32, int8)
    assert set(keep) == {"b", "d"}
    assert keep["b"] == "kept FP32 by speed_guard: INT8 80 us vs FP32 50 us"


def test_decide_weighs_boundaries():
    fp32 = {"a": 100.0, "b": 50.0, "c": 100.0}
    int8 = {"a": 60.0, "b": 53.0, "c": 60.0}  # b alone is 3 us slower in INT8
    edges = [("a", "b", 1000), ("b", "c", 1000)]
    assert set(speed_guard.decide(fp32, int8)) == {"b"}
    assert speed_guard.decide(fp32, int8, edges, element_us=0.01) == {}  # two 10 us boundaries cost more
    # a slow first layer whose boundary is cheap stays FP32; its neighbour follows when that is cheaper
    fp32 = {"stem": 200.0, "next": 100.0, "rest": 100.0}
    int8 = {"stem": 800.0, "next": 95.0, "rest": 50.0}
    edges = [("stem", "next", 4000), ("next", "rest", 1000)]
    assert set(speed_guard.decide(fp32, int8, edges, element_us=0.005)) == {"stem", "next"}


# --------------------------------------------------------------------------- layers
def _conv_chain(tmp_path, name="m.onnx", channels=8, named=True):
    """x -> Transpose (NHWC input) -> Conv -> Sigmoid -> Mul -> Conv -> Relu -> y (``named``: node
    names, else none, as hand-written and some exported models have)."""
    rng = np.random.default_rng(0)
    inits = {"w0": rng.standard_normal((channels, 3, 3, 3)).astype(np.float32) * 0.3,
             "w1": rng.standard_normal((channels, channels, 3, 3)).astype(np.float32) * 0.3}
    nodes = [oh.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2], name="pre"),
             oh.make_node("Conv", ["t", "w0"], ["c0"], pads=[1, 1, 1, 1], name="conv0"),
             oh.make_node("Sigmoid", ["c0"], ["s0"], name="sig0"),
             oh.make_node("Mul", ["c0", "s0"], ["a0"], name="mul0"),
             oh.make_node("Conv", ["a0", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             oh.make_node("Relu", ["c1"], ["y"], name="relu1")]
    if not named:
        for node in nodes:
            node.name = ""
    graph = oh.make_graph(nodes, "chain", [oh.make_tensor_value_info("x", FLOAT, ["batch", 16, 16, 3])],
                          [oh.make_tensor_value_info("y", FLOAT, ["batch", channels, 16, 16])],
                          [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()])
    path = tmp_path / name
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)
    return path


def test_layer_of_groups_chains_qdq_and_preprocessing(tmp_path):
    model = onnx.load(_conv_chain(tmp_path))
    compute = {"c0": "conv0", "c1": "conv1"}
    layer = speed_guard.layer_of(model, compute)
    assert layer == {"t": "conv0", "c0": "conv0", "s0": "conv0", "a0": "conv0", "c1": "conv1", "y": "conv1"}
    # in a quantized graph: Q/DQ follow their tensor's producer; weight DQs named after their node
    q = oh.make_node("QuantizeLinear", ["a0", "s", "z"], ["a0_q"], name="a0_Q")
    dq = oh.make_node("DequantizeLinear", ["a0_q", "s", "z"], ["a0_dq"], name="a0_DQ")
    wdq = oh.make_node("DequantizeLinear", ["w1_q", "ws", "wz"], ["w1_dq"], name="conv1_weight_dq")
    model.graph.node.insert(4, wdq)
    model.graph.node.insert(4, dq)
    model.graph.node.insert(4, q)
    layer = speed_guard.layer_of(model, compute)
    assert layer["a0_q"] == layer["a0_dq"] == "conv0" and layer["w1_dq"] == "conv1"


def test_attribute_maps_onnxruntime_names_back(tmp_path):
    model = onnx.load(_conv_chain(tmp_path))
    executed = {e.name: e for e in [
        ExecutedNode("pre", "Transpose", ("x",), ("t",)),
        ExecutedNode("conv0_token_3", "QLinearConv", ("t",), ("c0_new",)),        # QDQ fusion suffix
        ExecutedNode("ReorderInput_token_7", "ReorderInput", ("c0_new",), ("r",)),  # made by onnxruntime
        ExecutedNode("c1_nchwc", "Conv", ("r",), ("c1_r",)),                      # NCHWc: named after its output
        ExecutedNode("fused relu1", "Relu", ("c1_r",), ("y",)),
        ExecutedNode("Transpose_token_9", "Transpose", (), ("orphan",)),         # reaches nothing
    ]}
    times = {"pre": 5.0, "conv0_token_3": 20.0, "ReorderInput_token_7": 3.0, "c1_nchwc": 30.0, "fused relu1": 1.0,
             "Transpose_token_9": 2.0}
    credited = attribute(Profile(executed, times, 10), model)
    assert credited == {"t": 5.0, "c0": 23.0, "c1": 30.0, "y": 1.0, None: 2.0}


# --------------------------------------------------------------------------- the pass, profiles injected
def _fake_profiles(slow_layers: set[str], confirm: list[float] | None):
    """Stand-ins for graphc.profiling.profile_models (it names unnamed nodes after their first
    output, in place, as the real one does; every executed node is a loaded node;
    FP32 nodes take 10 us, INT8 candidate nodes 1 us, or 100 us in ``slow_layers``, matched
    by node name) and time_models_rounds (the confirmation: ``confirm`` holds each model's wall
    times per round, or one time, which every one of 8 rounds then takes)."""
    calls = []

    def timed(models, feeds, threads=None, **_):
        calls.append(len(models))
        return [list(c) if isinstance(c, (list, tuple, np.ndarray)) else [c] * 8 for c in confirm]

    def fake(models, feeds, threads=None, **_):
        calls.append(len(models))
        profiles = []
        for i, model in enumerate(models):
            name_nodes(model)  # as profile_models does (its rule 2), in place
            names = [n.name or n.output[0] for n in model.graph.node]
            executed = {name: ExecutedNode(name, n.op_type, tuple(n.input), tuple(n.output))
                        for name, n in zip(names, model.graph.node)}
            quantized = any(n.op_type == "QuantizeLinear" for n in model.graph.node)
            times = {name: (10.0 if not quantized else 100.0 if any(name.startswith(s) for s in slow_layers) else 1.0)
                     for name in names}
            profiles.append(Profile(executed, times, 5))
        return profiles

    return fake, timed, calls


def _run(tmp_path, spec, monkeypatch, slow=(), confirm=None, named=True):
    fake, timed, calls = _fake_profiles(set(slow), confirm)
    monkeypatch.setattr(speed_guard, "profile_models", fake)
    monkeypatch.setattr(speed_guard, "time_models_rounds", timed)
    source = _conv_chain(tmp_path, named=named)
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((16, 16, 16, 3)).astype(np.float32))
    out = tmp_path / "int8.onnx"
    report = optimize(OptimizeRequest(model=source, passes=spec, output=out, data=tmp_path / "calib.npz",
                                      verify=True, progress=False))
    feeds = {"x": rng.standard_normal((4, 16, 16, 3)).astype(np.float32)}
    want, got = open_session(source).run(None, feeds)[0], open_session(out).run(None, feeds)[0]
    cosine = cosine_per_sample(want.reshape(4, -1).astype(np.float64), got.reshape(4, -1).astype(np.float64))
    assert cosine.min() >= 0.99
    return out, report, calls


def _executed_ops(path, tmp_path):
    options = session_options()
    options.optimized_model_filepath = str(tmp_path / "ort_optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


def test_a_layer_measured_slower_stays_fp32_and_is_reported(tmp_path, monkeypatch):
    out, report, calls = _run(tmp_path, "int8", monkeypatch, slow={"conv1"}, confirm=[100.0, 90.0, 50.0])
    assert calls == [2, 3]  # one profile of FP32 + candidate, one timing of FP32 / all INT8 / mix
    step = report.passes[-1]
    assert step.stats["static_nodes"] == 1 and step.stats["speed_guard_fp32_layers"] == 1
    # conv1's layer: FP32 conv1 + relu1 (10 us each); INT8 conv1 and its weight DQ (100 us each) + Q/DQ/Relu
    assert step.stats["fp32_reasons"] == {"conv1": "kept FP32 by speed_guard: INT8 203 us vs FP32 20 us"}
    kept = step.details["speed_guard"]["kept_fp32"]
    assert [k["layer"] for k in kept] == ["conv1"] and kept[0]["int8_us"] > kept[0]["fp32_us"]
    assert any(n.startswith("int8 speed_guard") and "1 of 2 layers kept FP32: conv1 (INT8 203 us, FP32 20 us)" in n
               for n in report.notes)
    ops = _executed_ops(out, tmp_path)
    assert ops["QLinearConv"] == 1 and ops["Conv"] + ops.get("FusedConv", 0) == 1
    assert {"QLinearSigmoid", "QLinearMul"} <= set(ops)  # conv0's SiLU chain stays integer


@pytest.mark.parametrize("confirm,why", [([50.0, 90.0, 60.0], "slower than"),
                                         # within the 3% margin: a tie, and a tie keeps FP32
                                         ([100.0, 97.0, 98.0], "within 3% of"), ([100.0, 99.0, 97.5], "within 3% of")])
def test_confirmation_picks_fp32_when_no_int8_form_beats_it_by_the_margin(confirm, why, tmp_path, monkeypatch):
    out, report, calls = _run(tmp_path, "int8", monkeypatch, slow={"conv1"}, confirm=confirm)
    step = report.passes[-1]
    assert calls == [2, 3] and step.stats["static_nodes"] == 0 and step.stats["speed_guard_fp32_layers"] == 2
    assert all(f"every INT8 form measured {why} FP32" in reason for reason in step.stats["fp32_reasons"].values())
    assert not any(n.op_type == "QuantizeLinear" for n in onnx.load(out).graph.node)


def test_confirmation_picks_all_int8_when_the_mix_is_slower(tmp_path, monkeypatch):
    _, report, calls = _run(tmp_path, "int8", monkeypatch, slow={"conv1"}, confirm=[100.0, 60.0, 80.0])
    step = report.passes[-1]
    assert calls == [2, 3] and step.stats["static_nodes"] == 2 and step.stats["speed_guard_fp32_layers"] == 0


def test_unnamed_nodes_kept_fp32_are_fp32_in_the_written_model(tmp_path, monkeypatch):
    """The FP32 and mix builds find kept layers by their first output: unnamed nodes are labelled
    by it, and the FP32 model the builds start from names them (the label alone matched nothing,
    and gru-state's "1 of 1 layers kept FP32" was written all INT8)."""
    out, report, _ = _run(tmp_path, "int8", monkeypatch, slow={"c1"}, confirm=[50.0, 90.0, 60.0], named=False)
    assert report.passes[-1].stats["static_nodes"] == 0
    assert not any(n.op_type == "QuantizeLinear" for n in onnx.load(out).graph.node)
    out, report, _ = _run(tmp_path, "int8", monkeypatch, slow={"c1"}, confirm=[100.0, 90.0, 50.0], named=False)
    step = report.passes[-1]
    assert step.stats["static_nodes"] == 1 and step.stats["speed_guard_fp32_layers"] == 1
    ops = _executed_ops(out, tmp_path)
    assert ops["QLinearConv"] == 1 and ops["Conv"] + ops.get("FusedConv", 0) == 1


def test_an_int8_form_just_past_the_margin_is_written(tmp_path, monkeypatch):
    _, report, _ = _run(tmp_path, "int8", monkeypatch, slow={"conv1"}, confirm=[100.0, 96.5, 99.0])
    assert report.passes[-1].stats["static_nodes"] == 2 and report.passes[-1].stats["speed_guard_fp32_layers"] == 0


def test_an_int8_gain_within_the_noise_of_the_rounds_keeps_fp32(tmp_path, monkeypatch):
    """Medians 5% apart, past the margin, but over 40 rounds this noisy the 95% interval of the
    speed-up reaches below 1: a tie, FP32 kept; the same medians over quiet rounds: INT8."""
    rng = np.random.default_rng(5)
    fp32, int8 = 100.0 + rng.normal(0, 15, 40), 95.0 + rng.normal(0, 15, 40)
    fp32, int8 = fp32 - np.median(fp32) + 100.0, int8 - np.median(int8) + 95.0
    _, report, _ = _run(tmp_path, "int8", monkeypatch, confirm=[fp32, int8])
    step = report.passes[-1]
    assert step.stats["static_nodes"] == 0 and step.stats["speed_guard_fp32_layers"] == 2
    assert all("faster than, but within the noise of (95% interval of the speed-up 0." in reason
               for reason in step.stats["fp32_reasons"].values())
    low, high = map(float, re.search(r"([\d.]+)-([\d.]+)x over 40 rounds", step.stats["speed_guard_confirm_interval"]).groups())
    assert low < 1.0 < 1.05 < high
    quiet = [100.0 + rng.normal(0, 0.5, 40), 95.0 + rng.normal(0, 0.5, 40)]
    (tmp_path / "quiet").mkdir()
    _, report, _ = _run(tmp_path / "quiet", "int8", monkeypatch, confirm=quiet)
    assert report.passes[-1].stats["static_nodes"] == 2 and report.passes[-1].stats["speed_guard_fp32_layers"] == 0
    assert report.passes[-1].stats["speed_guard_confirm_interval"].startswith("FP32 / all INT8 1.0")


def test_nothing_slower_is_still_timed_against_fp32(tmp_path, monkeypatch):
    _, report, calls = _run(tmp_path, "int8", monkeypatch, confirm=[100.0, 60.0])
    assert calls == [2, 2] and report.passes[-1].stats["speed_guard_fp32_layers"] == 0  # FP32 vs all INT8
    assert any(n.startswith("int8 speed_guard") and "0 of 2 layers kept FP32" in n for n in report.notes)
    _, report, calls = _run(tmp_path, "int8", monkeypatch, confirm=[50.0, 60.0])  # every layer faster alone
    assert calls == [2, 2] and report.passes[-1].stats["speed_guard_fp32_layers"] == 2


@pytest.mark.parametrize("spec", ["int8:speed_guard=false", "int8:target=tensorrt"])
def test_guard_off_or_tensorrt_never_profiles(spec, tmp_path, monkeypatch):
    _, report, calls = _run(tmp_path, spec, monkeypatch, slow={"conv0", "conv1"})
    assert calls == [] and "speed_guard_layers" not in report.passes[-1].stats
    assert report.passes[-1].stats["static_nodes"] == 2


# --------------------------------------------------------------------------- the real profiler
def test_profile_models_credits_every_executed_node(tmp_path):
    path = _conv_chain(tmp_path)
    model = onnx.load(path)
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 16, 16, 3)).astype(np.float32)}
    (profile,) = profile_models([model], feeds, seconds=0.0, rounds=(3, 3))
    assert profile.rounds == 3 and set(profile.times) <= set(profile.executed) and profile.times
    assert all(us >= 0 for us in profile.times.values()) and profile.wall_us > 0
    credited = attribute(profile, model)
    assert None not in credited and set(credited) <= {n.output[0] for n in model.graph.node}
    assert any(profile.elements[name] == 16 * 16 * 3 for name in profile.times)  # the input Transpose's input


def test_guard_skips_models_above_the_weight_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(speed_guard, "MAX_WEIGHT_BYTES", 1000)  # the fixture holds 3.5 KB of weights
    _, report, calls = _run(tmp_path, "int8", monkeypatch, slow={"conv0", "conv1"})
    stats = report.passes[-1].stats
    assert calls == [] and stats["speed_guard"].startswith("skipped: 0 MiB of weights > 0 MiB")
    assert stats["static_nodes"] == 2 and any("speed_guard skipped" in n for n in report.notes)


def test_time_models_times_each_model(tmp_path):
    model = onnx.load(_conv_chain(tmp_path))
    feeds = {"x": np.zeros((1, 16, 16, 3), np.float32)}
    walls = time_models([model, model], feeds, seconds=0.0, rounds=(3, 3))
    assert len(walls) == 2 and all(w > 0 for w in walls)
