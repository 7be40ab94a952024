"""fuse's norm and activation rules (passes/fuse/norms.py, gelu.py): each rewrite against onnxruntime on
the unmodified model, on the bert / gpt fixtures (both exporters) and MiniLM, small graphs for
what must stay untouched, and the choice by measured time with the timer replaced."""

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphc import profiling
from graphc.checks import check_model
from graphc.graph import to_graph, to_model
from graphc.passes.fuse import gelu, norms
from graphc.runtime import open_session

rng = np.random.default_rng(0)
C = 8
SQRT2 = math.sqrt(2)
SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
DYNAMO = [False, pytest.param(True, marks=pytest.mark.slow)]  # as fold's tests: the dynamo exports take seconds each


def const(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def var(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def make(nodes, inputs, outputs, initializers, opset=17):
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers),
                              opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def rewrite(model, rule):
    """(the rewritten model, the count ``rule`` returned); the rewritten model passes graphc's
    check (checker, strict shape inference, an onnxruntime session)."""
    graph = to_graph(model)
    count = rule(graph)
    out = to_model(graph, model)
    check_model(out, "fuse")
    return out, count


def assert_same_outputs(original, rewritten, feeds):
    want = open_session(original).run(None, feeds)
    got = open_session(rewritten).run(None, feeds)
    for w, g in zip(want, got):
        assert w.shape == g.shape
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * float(np.abs(w).max()))


def ops(model, op):
    return [n for n in model.graph.node if n.op_type == op]


def microsoft_imported(model):
    return any(o.domain == "com.microsoft" and o.version == 1 for o in model.opset_import)


def all_rules(graph):
    return norms.skip_layer_norm(graph) + gelu.erf_gelu(graph) + gelu.tanh_gelu(graph)


# ------------------------------------------------------------------ rule 1: fixtures
@pytest.mark.parametrize("dynamo", DYNAMO, ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name, sums_read_again, biases_folded", [("bert", 0, 4), ("gpt", 3, 0)])
def test_skip_layer_norm_on_transformers(name, dynamo, sums_read_again, biases_folded, onnx_model, sample_inputs):
    """2 layers x 2 residual LayerNorms each: post-norm bert (the attention / FFN output bias
    folded in), pre-norm gpt (ln_2, ln_1 of layer 1, ln_2, ln_f; three sums read again by the
    next residual). The embeddings' LayerNorm (bert; gpt's first ln_1) adds a [1, S, C]
    position table: a broadcast, left alone."""
    original = onnx.load(str(onnx_model(name, dynamo=dynamo)))
    fused, count = rewrite(original, norms.skip_layer_norm)
    skips = ops(fused, "SkipLayerNormalization")
    assert count == len(skips) == 4 and len(ops(fused, "LayerNormalization")) == 1
    assert sum(len(n.output) == 4 for n in skips) == sums_read_again
    assert sum(len(n.input) == 5 for n in skips) == biases_folded
    assert microsoft_imported(fused)
    assert_same_outputs(original, fused, sample_inputs(name, batch=3))


# ------------------------------------------------------------------ rule 2: fixtures
@pytest.mark.parametrize("dynamo", DYNAMO, ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name, gelus", [("bert", 2), ("gpt", 0)])
def test_erf_gelu_on_transformers(name, dynamo, gelus, onnx_model, sample_inputs):
    """bert's two FFN GELUs become BiasGelu with the intermediate dense bias; gpt's tanh GELU is
    not an erf GELU (onnxruntime makes it FastGelu itself) and stays."""
    original = onnx.load(str(onnx_model(name, dynamo=dynamo)))
    fused, count = rewrite(original, gelu.erf_gelu)
    assert count == len(ops(fused, "BiasGelu")) == gelus and len(ops(fused, "Erf")) == len(ops(original, "Erf")) - gelus
    assert len(ops(fused, "Tanh")) == len(ops(original, "Tanh"))
    assert_same_outputs(original, fused, sample_inputs(name, batch=3))


# ------------------------------------------------------------------ rule 3: fixtures
@pytest.mark.parametrize("dynamo", DYNAMO, ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name, gelus", [("gpt", 2), ("bert", 0)])
def test_tanh_gelu_on_transformers(name, dynamo, gelus, onnx_model, sample_inputs):
    """gpt's two gelu_new become FastGelu (no bias: GPT-2's Conv1D is a Gemm, then a Reshape);
    bert's Tanh is its pooler's activation, not a GELU, and stays."""
    original = onnx.load(str(onnx_model(name, dynamo=dynamo)))
    fused, count = rewrite(original, gelu.tanh_gelu)
    assert count == len(ops(fused, "FastGelu")) == gelus and len(ops(fused, "Tanh")) == len(ops(original, "Tanh")) - gelus
    assert all(len(n.input) == 1 for n in ops(fused, "FastGelu"))
    assert_same_outputs(original, fused, sample_inputs(name, batch=3))


def test_onnxruntime_fusions_counts_what_onnxruntime_adds(onnx_model):
    """The module docstring's finding on the installed onnxruntime (TorchScript bert: BiasGelu
    fused, no SkipLayerNormalization), and the rewritten ops survive its optimizer."""
    original = onnx.load(str(onnx_model("bert")))
    before = norms.onnxruntime_fusions(original)
    assert before["com.microsoft:BiasGelu"] == 2 and before["com.microsoft:SkipLayerNormalization"] == 0
    fused, _ = rewrite(original, all_rules)
    after = norms.onnxruntime_fusions(fused)
    assert after["com.microsoft:SkipLayerNormalization"] == 4 and after["com.microsoft:BiasGelu"] == 2


# ------------------------------------------------------------------------ MiniLM
@pytest.fixture(scope="module", params=[False, True], ids=["torchscript", "dynamo"])
def minilm_export(request, tmp_path_factory):
    from graphc.models import minilm

    path = minilm.export_minilm(tmp_path_factory.mktemp("minilm") / "minilm.onnx", dynamo=request.param)
    return onnx.load(str(path)), request.param


@pytest.mark.slow  # a 22.7M-parameter export per exporter
def test_each_rule_on_minilm(minilm_export):
    from graphc.models import minilm

    original, dynamo = minilm_export
    graph = to_graph(original)
    skips, gelus, tanhs = norms.skip_layer_norm(graph), gelu.erf_gelu(graph), gelu.tanh_gelu(graph)
    fused = to_model(graph, original)
    check_model(fused, "fuse")
    assert skips == len(ops(fused, "SkipLayerNormalization")) == 12  # 6 layers x 2
    assert gelus == len(ops(fused, "BiasGelu")) == (0 if dynamo else 6)  # dynamo at opset 20 writes ONNX Gelu
    assert tanhs == 0
    feeds = minilm.tokenize(["A man is playing a guitar.", "The cat sleeps on the warm windowsill, all afternoon long.",
                             "Revenue grew."], max_length=24)
    assert_same_outputs(original, fused, feeds)


# ----------------------------------------------------------------- rule 1: small graphs
def residual_block(*, axis=-1, skip_shape=("B", "S", C), sum_is_output=False, sum_read_again=False,
                   bias_read_again=False):
    """y = LayerNorm(MatMul(x, w) + bias + r), with the variations the negative cases need."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "bias"], ["mb"]),
             helper.make_node("Add", ["mb", "r"], ["s"]),
             helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["y"], axis=axis, epsilon=1e-5)]
    outputs = [var("y", ["B", "S", C])]
    if sum_read_again:
        nodes.append(helper.make_node("Add", ["s", "y"], ["z"]))
        outputs.append(var("z", ["B", "S", C]))
    if sum_is_output:
        outputs.append(var("s", ["B", "S", C]))
    if bias_read_again:
        nodes.append(helper.make_node("Mul", ["mb", "y"], ["q"]))
        outputs.append(var("q", ["B", "S", C]))
    norm_shape = [C] if axis in (-1, 2) else [4, C]
    inits = [const("w", rng.normal(size=(C, C))), const("bias", rng.normal(size=C)),
             const("gamma", rng.uniform(0.5, 1.5, norm_shape)), const("beta", rng.normal(size=norm_shape))]
    model = make(nodes, [var("x", ["B", "S", C]), var("r", list(skip_shape))], outputs, inits)
    feeds = {"x": rng.normal(size=(2, 4, C)).astype(np.float32),
             "r": rng.normal(size=[2 if d == "B" else 4 if d == "S" else d for d in skip_shape]).astype(np.float32)}
    return model, feeds


def test_skip_layer_norm_folds_the_bias_and_keeps_a_sum_read_again():
    model, feeds = residual_block(sum_read_again=True)
    fused, count = rewrite(model, norms.skip_layer_norm)
    (skip,) = ops(fused, "SkipLayerNormalization")
    assert count == 1 and [n.op_type for n in fused.graph.node] == ["MatMul", "SkipLayerNormalization", "Add"]
    assert list(skip.input) == ["m", "r", "gamma", "beta", "bias"] and list(skip.output) == ["y", "", "", "s"]
    assert math.isclose(helper.get_attribute_value(skip.attribute[0]), 1e-5, rel_tol=1e-6)
    assert microsoft_imported(fused)
    assert_same_outputs(model, fused, feeds)


def test_skip_layer_norm_without_a_sum_read_again_writes_one_output():
    model, feeds = residual_block()
    fused, count = rewrite(model, norms.skip_layer_norm)
    assert count == 1 and list(ops(fused, "SkipLayerNormalization")[0].output) == ["y"]
    assert_same_outputs(model, fused, feeds)


def test_skip_layer_norm_leaves_a_bias_read_elsewhere_as_its_add():
    model, feeds = residual_block(bias_read_again=True)
    fused, count = rewrite(model, norms.skip_layer_norm)
    (skip,) = ops(fused, "SkipLayerNormalization")
    assert count == 1 and list(skip.input) == ["mb", "r", "gamma", "beta"] and len(ops(fused, "Add")) == 1
    assert_same_outputs(model, fused, feeds)


@pytest.mark.parametrize("case", ["axis_1", "broadcast_batch", "broadcast_rank", "sum_is_graph_output"])
def test_skip_layer_norm_leaves_other_patterns_alone(case):
    block = {"axis_1": {"axis": 1}, "broadcast_batch": {"skip_shape": (1, "S", C)},
             "broadcast_rank": {"skip_shape": ("S", C)}, "sum_is_graph_output": {"sum_is_output": True}}[case]
    model, _ = residual_block(**block)
    fused, count = rewrite(model, norms.skip_layer_norm)
    assert count == 0 and not ops(fused, "SkipLayerNormalization") and len(ops(fused, "LayerNormalization")) == 1
    assert not microsoft_imported(fused)


def test_skip_layer_norm_needs_shapes_shown_equal():
    """The skip reshaped to a shape known only at run time: its dims are no symbols of x's
    shape, so the two summands are not shown to have one shape."""
    model, _ = residual_block()
    graph = model.graph
    graph.input[1].name = "r0"
    graph.input.append(helper.make_tensor_value_info("target", TensorProto.INT64, [3]))
    graph.node.insert(0, helper.make_node("Reshape", ["r0", "target"], ["r"]))
    onnx.checker.check_model(model)
    _, count = rewrite(model, norms.skip_layer_norm)
    assert count == 0


# ----------------------------------------------------------------- rule 2: small graphs
def gelu_block(arrangement, *, bias=True, half=0.5, root2=SQRT2, one=1.0, erf_is_output=False,
               x_read_again=False):
    """GELU of x (= MatMul(i, w) [+ bias]) written the way ``arrangement`` names."""
    nodes = [helper.make_node("MatMul", ["i", "w"], ["m"])]
    inits = [const("w", rng.normal(size=(C, 2 * C))), const("half", half), const("root2", root2), const("one", one),
             const("inv_root2", 1 / root2)]
    x = "m"
    if bias:
        nodes.append(helper.make_node("Add", ["m", "bias"], ["x"]))
        inits.append(const("bias", rng.normal(size=2 * C)))
        x = "x"
    if arrangement == "mul_by_inverse":
        nodes.append(helper.make_node("Mul", ["inv_root2", x], ["d"]))
    else:
        nodes.append(helper.make_node("Div", [x, "root2"], ["d"]))
    nodes += [helper.make_node("Erf", ["d"], ["e"]), helper.make_node("Add", ["one", "e"], ["p"])]
    if arrangement in ("torchscript", "mul_by_inverse"):  # (x * p) * 0.5
        nodes += [helper.make_node("Mul", [x, "p"], ["t"]), helper.make_node("Mul", ["t", "half"], ["y"])]
    elif arrangement == "dynamo":  # x * (0.5 * p)
        nodes += [helper.make_node("Mul", ["half", "p"], ["t"]), helper.make_node("Mul", [x, "t"], ["y"])]
    else:  # (x * 0.5) * p
        nodes += [helper.make_node("Mul", [x, "half"], ["t"]), helper.make_node("Mul", ["p", "t"], ["y"])]
    outputs = [var("y", ["B", "S", 2 * C])]
    if erf_is_output:
        outputs.append(var("e", ["B", "S", 2 * C]))
    if x_read_again:
        nodes.append(helper.make_node("Relu", [x], ["z"]))
        outputs.append(var("z", ["B", "S", 2 * C]))
    model = make(nodes, [var("i", ["B", "S", C])], outputs, inits)
    return model, {"i": rng.normal(size=(2, 5, C)).astype(np.float32) * 2}


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("arrangement", ["torchscript", "dynamo", "half_first", "mul_by_inverse"])
def test_erf_gelu_rewrites_each_arrangement(arrangement, bias):
    model, feeds = gelu_block(arrangement, bias=bias)
    fused, count = rewrite(model, gelu.erf_gelu)
    assert count == 1 and [n.op_type for n in fused.graph.node] == ["MatMul", "BiasGelu" if bias else "Gelu"]
    assert all(n.domain == "com.microsoft" for n in fused.graph.node[1:]) and microsoft_imported(fused)
    assert_same_outputs(model, fused, feeds)


def test_erf_gelu_keeps_a_bias_add_read_elsewhere():
    model, feeds = gelu_block("torchscript", x_read_again=True)
    fused, count = rewrite(model, gelu.erf_gelu)
    assert count == 1 and sorted(n.op_type for n in fused.graph.node) == ["Add", "Gelu", "MatMul", "Relu"]
    assert_same_outputs(model, fused, feeds)


@pytest.mark.parametrize("wrong", [{"half": 0.6}, {"root2": 1.5}, {"one": 0.9}, {"half": 0.5 * (1 + 1e-4)},
                                   {"erf_is_output": True}],
                         ids=["half", "sqrt2", "one", "half_off_by_1e-4", "erf_is_graph_output"])
@pytest.mark.parametrize("arrangement", ["torchscript", "dynamo"])
def test_erf_gelu_leaves_other_patterns_alone(arrangement, wrong):
    model, _ = gelu_block(arrangement, **wrong)
    fused, count = rewrite(model, gelu.erf_gelu)
    assert count == 0 and len(ops(fused, "Erf")) == 1 and not microsoft_imported(fused)


# ----------------------------------------------------------------- rule 3: small graphs
def tanh_gelu_block(arrangement, cube, *, bias=True, cubic=0.044715, root=SQRT_2_OVER_PI, x_read_again=False):
    """GPT-2's gelu_new of x (= MatMul(i, w) [+ bias]); ``cube`` "pow" or "mul" (x * (x * x))."""
    nodes = [helper.make_node("MatMul", ["i", "w"], ["m"])]
    inits = [const("w", rng.normal(size=(C, 2 * C))), const("half", 0.5), const("one", 1.0), const("three", 3.0),
             const("cubic", cubic), const("root", root)]
    x = "m"
    if bias:
        nodes.append(helper.make_node("Add", ["bias", "m"], ["x"]))
        inits.append(const("bias", rng.normal(size=2 * C)))
        x = "x"
    if cube == "pow":
        nodes.append(helper.make_node("Pow", [x, "three"], ["x3"]))
    else:
        nodes += [helper.make_node("Mul", [x, x], ["x2"]), helper.make_node("Mul", [x, "x2"], ["x3"])]
    nodes += [helper.make_node("Mul", ["cubic", "x3"], ["c3"]), helper.make_node("Add", [x, "c3"], ["inner"]),
              helper.make_node("Mul", ["inner", "root"], ["arg"]), helper.make_node("Tanh", ["arg"], ["th"]),
              helper.make_node("Add", ["th", "one"], ["p"])]
    if arrangement == "torchscript":  # (x * 0.5) * p, as GPT-2's TorchScript export
        nodes += [helper.make_node("Mul", [x, "half"], ["t"]), helper.make_node("Mul", ["t", "p"], ["y"])]
    else:  # x * (0.5 * p), as the dynamo export
        nodes += [helper.make_node("Mul", ["half", "p"], ["t"]), helper.make_node("Mul", [x, "t"], ["y"])]
    outputs = [var("y", ["B", "S", 2 * C])]
    if x_read_again:
        nodes.append(helper.make_node("Relu", [x], ["z"]))
        outputs.append(var("z", ["B", "S", 2 * C]))
    model = make(nodes, [var("i", ["B", "S", C])], outputs, inits)
    return model, {"i": rng.normal(size=(2, 5, C)).astype(np.float32) * 2}


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("cube", ["pow", "mul"])
@pytest.mark.parametrize("arrangement", ["torchscript", "dynamo"])
def test_tanh_gelu_rewrites_each_arrangement(arrangement, cube, bias):
    model, feeds = tanh_gelu_block(arrangement, cube, bias=bias)
    fused, count = rewrite(model, gelu.tanh_gelu)
    (fast,) = ops(fused, "FastGelu")
    assert count == 1 and [n.op_type for n in fused.graph.node] == ["MatMul", "FastGelu"]
    assert list(fast.input) == (["m", "bias"] if bias else ["m"]) and fast.domain == "com.microsoft"
    assert_same_outputs(model, fused, feeds)


def test_tanh_gelu_after_a_linear_is_not_fused_by_onnxruntime():
    """The module docstring's finding: MatMul + bias Add + gelu_new stays unfused in
    onnxruntime's own optimizer; after the rule, its graph runs our FastGelu."""
    model, _ = tanh_gelu_block("dynamo", "pow")
    assert norms.onnxruntime_fusions(model)["Tanh"] == 1
    fused, _ = rewrite(model, gelu.tanh_gelu)
    assert norms.onnxruntime_fusions(fused)["com.microsoft:FastGelu"] == 1


def test_tanh_gelu_keeps_a_bias_add_read_elsewhere():
    model, feeds = tanh_gelu_block("torchscript", "mul", x_read_again=True)
    fused, count = rewrite(model, gelu.tanh_gelu)
    assert count == 1 and sorted(n.op_type for n in fused.graph.node) == ["Add", "FastGelu", "MatMul", "Relu"]
    assert_same_outputs(model, fused, feeds)


@pytest.mark.parametrize("wrong", [{"cubic": 0.045}, {"root": 0.8}, {"cubic": 0.044715 * (1 + 1e-4)}],
                         ids=["cubic", "sqrt_2_over_pi", "cubic_off_by_1e-4"])
@pytest.mark.parametrize("cube", ["pow", "mul"])
def test_tanh_gelu_leaves_other_patterns_alone(cube, wrong):
    model, _ = tanh_gelu_block("dynamo", cube, **wrong)
    fused, count = rewrite(model, gelu.tanh_gelu)
    assert count == 0 and len(ops(fused, "Tanh")) == 1 and not microsoft_imported(fused)


def test_tanh_gelu_needs_the_same_x_in_the_cube():
    """x + 0.044715 * w^3 with w another tensor: not a GELU."""
    model, _ = tanh_gelu_block("dynamo", "pow", bias=False)
    pow_node = next(n for n in model.graph.node if n.op_type == "Pow")
    pow_node.input[0] = "i2"
    model.graph.input.append(var("i2", ["B", "S", 2 * C]))
    _, count = rewrite(model, gelu.tanh_gelu)
    assert count == 0


# ---------------------------------------------------------------- rule 5: measurement
def fake_timer(monkeypatch, times):
    calls = []

    def time_models(models, feeds, threads=None, **timing):
        calls.append((list(models), feeds, threads, timing))
        return [times[id(m)] for m in models]

    monkeypatch.setattr(profiling, "time_models", time_models)
    return calls


def test_faster_variant_returns_the_least_measured_time(monkeypatch):
    models = {name: onnx.ModelProto(producer_name=name) for name in ("unfused", "skip", "skip+gelu")}
    feeds = {"x": np.zeros(3, np.float32)}
    calls = fake_timer(monkeypatch, {id(models["unfused"]): 100.0, id(models["skip"]): 90.0,
                                     id(models["skip+gelu"]): 80.0})
    name, times = norms.faster_variant(models, feeds, threads=2, seconds=0.5)
    assert name == "skip+gelu" and times == {"unfused": 100.0, "skip": 90.0, "skip+gelu": 80.0}
    (timed, fed, threads, timing), = calls  # one side-by-side timing of all candidates
    assert [m.producer_name for m in timed] == list(models) and all(a is b for a, b in zip(timed, models.values()))
    assert fed is feeds and threads == 2 and timing == {"seconds": 0.5}


@pytest.mark.parametrize("times, margin, want", [((100.0, 100.0), 0.0, "unfused"), ((100.0, 101.0), 0.0, "unfused"),
                                                 ((100.0, 97.0), 0.05, "unfused"), ((100.0, 94.0), 0.05, "fused")])
def test_faster_variant_keeps_the_reference_unless_another_is_faster(monkeypatch, times, margin, want):
    models = {"unfused": onnx.ModelProto(), "fused": onnx.ModelProto()}
    fake_timer(monkeypatch, {id(m): t for m, t in zip(models.values(), times)})
    assert norms.faster_variant(models, {}, margin=margin)[0] == want


def test_faster_variant_times_real_sessions():
    """With the real timer: both candidates run (tiny graphs), each gets a positive time."""
    model, feeds = residual_block()
    fused, _ = rewrite(model, norms.skip_layer_norm)
    name, times = norms.faster_variant({"unfused": model, "fused": fused}, feeds, threads=1, seconds=0.01, rounds=(3, 3))
    assert name in times and set(times) == {"unfused", "fused"} and all(t > 0 for t in times.values())
