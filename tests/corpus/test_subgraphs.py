"""Subgraphs (issue 13): If/Loop bodies keep one copy of an outer weight through every pass,
fold folds inside them exactly, inspect counts their parameters and MACs, int8 says what it
left in them. Outputs compared with onnxruntime on the original model."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from graphc.describe import describe, render
from graphc.graph import to_graph, to_model
from graphc.pipeline import OptimizeRequest, optimize
from graphc.stats import model_stats
from tests.corpus import CORPUS
from tests.corpus.control_flow import FEATURES, TRIPS


def graphs(graph):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from graphs(attr.g)


def run(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def assert_equal_outputs(original, rewritten, feeds):
    for before, after in zip(run(original, feeds), run(rewritten, feeds)):
        assert before.shape == after.shape and np.array_equal(before, after)


def initializer_homes(path):
    """initializer name -> names of the graphs that store it."""
    homes = {}
    for graph in graphs(onnx.load(str(path)).graph):
        for tensor in graph.initializer:
            homes.setdefault(tensor.name, []).append(graph.name)
    return homes


def if_feeds():
    """One feed per branch: mean(x) > 0 takes then, < 0 takes else."""
    x = np.random.default_rng(0).standard_normal((2, FEATURES)).astype(np.float32)
    return [{"x": np.abs(x)}, {"x": -np.abs(x)}]


@pytest.fixture(scope="module")
def if_model(tmp_path_factory):
    return CORPUS["if-shared-weights"].build(tmp_path_factory.mktemp("if"))


@pytest.fixture(scope="module")
def loop_model(tmp_path_factory):
    return CORPUS["loop-outer-weight"].build(tmp_path_factory.mktemp("loop"))


def test_roundtrip_stores_an_outer_weight_read_in_both_branches_once(if_model, tmp_path):
    model = onnx.load(str(if_model))
    out = tmp_path / "roundtrip.onnx"
    onnx.save(to_model(to_graph(model), model), str(out))
    assert initializer_homes(out)["W"] == ["if_shared"]  # graphsurgeon alone writes it in each branch
    assert out.stat().st_size <= if_model.stat().st_size * 1.01
    for feeds in if_feeds():
        assert_equal_outputs(if_model, out, feeds)


def test_fold_in_if_branches_is_exact_and_does_not_copy_the_outer_weight(if_model, tmp_path):
    out = tmp_path / "fold.onnx"
    optimize(OptimizeRequest(model=if_model, passes="fold", output=out, progress=False))
    homes = initializer_homes(out)
    assert homes["W"] == ["if_shared"]  # not folded into a transposed copy per branch
    assert not any(name.endswith("_wt") for name in homes)
    assert out.stat().st_size <= if_model.stat().st_size * 1.01
    for feeds in if_feeds():
        assert_equal_outputs(if_model, out, feeds)


def test_fold_in_a_loop_body_is_exact_and_keeps_one_weight(loop_model, tmp_path):
    out = tmp_path / "fold.onnx"
    optimize(OptimizeRequest(model=loop_model, passes="fold", output=out, progress=False))
    weights = [t for g in graphs(onnx.load(str(out)).graph) for t in g.initializer if list(t.dims) == [FEATURES] * 2]
    assert len(weights) == 1  # read by the body only: folded there (transposed) once, the outer copy gone
    assert out.stat().st_size <= loop_model.stat().st_size * 1.01
    assert_equal_outputs(loop_model, out, {"x": np.random.default_rng(1).standard_normal((3, FEATURES),
                                                                                           dtype=np.float32)})


def test_inspect_counts_if_branches_and_loop_bodies(if_model, loop_model):
    stats = model_stats(onnx.load(str(if_model)))
    assert stats.params == 3 * FEATURES * FEATURES  # W and each branch's own weight
    assert stats.macs == 2 * FEATURES * FEATURES  # one branch (two MatMuls at batch 1), not both
    assert any("larger branch" in n for n in stats.macs_notes)
    loop = model_stats(onnx.load(str(loop_model)))
    assert loop.params == FEATURES * FEATURES  # two MatMuls a trip; h @ W^T measured by the profiled run
    assert loop.macs == TRIPS * 2 * FEATURES * FEATURES and not loop.uncounted


def silero_feeds():
    rng = np.random.default_rng(0)
    return [{"input": (0.1 * rng.standard_normal((2, n))).astype(np.float32),
             "state": rng.standard_normal((2, 2, 128)).astype(np.float32), "sr": np.array(sr, np.int64)}
            for sr, n in ((16000, 512), (8000, 256))]


def test_silero_fold_is_exact_and_not_larger(tmp_path):
    source = CORPUS["silero-vad"].build(tmp_path)
    out = tmp_path / "fold.onnx"
    optimize(OptimizeRequest(model=source, passes="fold", output=out, progress=False))
    assert out.stat().st_size <= source.stat().st_size  # was 1.43x: each inner If branch got a copy
    for feeds in silero_feeds():
        assert_equal_outputs(source, out, feeds)


def test_silero_inspect_counts_weights_inside_ifs_and_points_at_shape(tmp_path):
    source = CORPUS["silero-vad"].build(tmp_path)
    model = onnx.load(str(source))
    info = describe(model, source, {})
    assert info["params"] > 500_000  # was 0: every weight sits inside the If branches
    text = render(info)
    assert "MACs (one batch): 0" in text and "--shape input=" in text
    shaped = describe(model, source, {"input": (1, 512)})  # the branch synthetic inputs take is measured
    assert shaped["macs"] > 100_000 and shaped["macs_unknown"] is None


def test_silero_fold_is_checked_exact_by_the_pipeline(tmp_path):
    source = CORPUS["silero-vad"].build(tmp_path)
    report = optimize(OptimizeRequest(model=source, passes="fold", output=tmp_path / "f.onnx",
                                      shapes={"input": (1, 512)}, progress=False))
    assert not any("not checked" in n for n in report.notes)  # it ran the exact check on sample inputs


def test_int8_says_how_many_subgraph_compute_nodes_it_left(tmp_path):
    source = CORPUS["silero-vad"].build(tmp_path)
    report = optimize(OptimizeRequest(model=source, passes="fold,int8", output=tmp_path / "q.onnx", progress=False))
    int8 = report.passes[-1]
    assert int8.stats["subgraph_compute_nodes_fp32"] == 16  # 12 Conv + 4 LSTM inside the Ifs
    assert any("16 compute nodes inside If/Loop/Scan bodies left FP32" in n for n in report.notes)
    for feeds in silero_feeds():  # nothing quantized: the output is the folded model, exact
        assert_equal_outputs(source, tmp_path / "q.onnx", feeds)
