"""WordNet noun data (models/wordnet.py) and the supersense probe's data path (models/supersense.py)."""


import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from graphc.models import wordnet


pytestmark = pytest.mark.skipif(not wordnet.DATA_NOUN.is_file(), reason="Debian wordnet-base is not installed")


def test_synsets_carry_noun_supersense_labels():
    synsets = wordnet.noun_synsets()
    assert len(synsets) == 82115
    assert synsets[0] == ("that which is perceived or known or inferred to have its own distinct existence "
                          "(living or nonliving)", 3)
    assert {lex for _, lex in synsets} == set(range(3, 29))


def test_probe_is_fixed_unique_and_disjoint_from_every_other_gloss():
    probe = wordnet.probe_synsets()
    assert len(probe) == wordnet.PROBE_ROWS and probe == wordnet.probe_synsets()
    texts = [g for g, _ in probe]
    assert len(set(texts)) == len(texts)
    others = wordnet.noun_glosses()
    assert not set(texts) & set(others)
    assert len(others) + len(probe) == len(wordnet.noun_synsets())
    assert wordnet.noun_glosses(10) == others[:10] and wordnet.noun_glosses(10, seed=1) != others[:10]


def mean_of_ids_model(path):
    """Masked mean of the token ids: a stand-in embedding that any padding mistake changes."""
    ids, mask, types = (helper.make_tensor_value_info(n, TensorProto.INT64, ["N", "S"])
                        for n in ("input_ids", "attention_mask", "token_type_ids"))
    nodes = [helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["f", "m"], ["fm"]),
             helper.make_node("ReduceSum", ["fm", "axes"], ["num"], keepdims=1),
             helper.make_node("ReduceSum", ["m", "axes"], ["den"], keepdims=1),
             helper.make_node("Div", ["num", "den"], ["embedding"])]
    graph = helper.make_graph(nodes, "mean_ids", [ids, mask, types],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 1])],
                              [helper.make_tensor("axes", TensorProto.INT64, [1], [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_embed_batches_by_length_and_returns_rows_in_order(tmp_path):
    from graphc.models import supersense

    train, train_labels, test, test_labels = supersense.split(40, 10)
    assert train + test == [g for g, _ in wordnet.probe_synsets()[:50]]
    assert list(train_labels) + list(test_labels) == [lex for _, lex in wordnet.probe_synsets()[:50]]
    feeds = supersense.gloss_feeds(train)
    assert feeds["input_ids"].shape == (40, supersense.MAX_LENGTH) and feeds["input_ids"].dtype == np.int64
    mean_of_ids_model(tmp_path / "m.onnx")
    got = supersense.embed(str(tmp_path / "m.onnx"), feeds, batch=16)
    ids, mask = feeds["input_ids"].astype(np.float64), feeds["attention_mask"]
    np.testing.assert_allclose(got[:, 0], (ids * mask).sum(1) / mask.sum(1), rtol=1e-6)
    widths = [chunk["input_ids"].shape[1] for _, chunk in supersense.length_batches(feeds, 16)]
    assert widths == sorted(widths) and widths[-1] == mask.sum(1).max() < supersense.MAX_LENGTH


def test_split_refuses_sizes_beyond_the_probe():
    from graphc.models import supersense

    with pytest.raises(ValueError, match=r"train \+ test <= 5000"):
        supersense.split(4500, 1000)


def test_probe_classifier_separates_clusters_and_not_noise():
    from graphc.models import supersense

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((5, 16)) * 3
    labels = rng.integers(0, 5, 300)
    points = centres[labels] + rng.standard_normal((300, 16)) * 0.5
    assert supersense.fit_probe(points[:200], labels[:200], points[200:], labels[200:]) == 1.0
    noise = rng.standard_normal((300, 16))
    assert supersense.fit_probe(noise[:200], labels[:200], noise[200:], labels[200:]) < 0.4


def test_gloss_npz_is_unlabelled_minilm_input_and_ranges_are_disjoint(tmp_path):
    from graphc.models import minilm

    from graphc.data import load_dataset, model_signature

    path = wordnet.gloss_npz(tmp_path / "train.npz", 20, start=5, max_length=24)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    assert sorted(arrays) == sorted(minilm.INPUT_NAMES)
    assert all(v.shape == (20, 24) and v.dtype == np.int64 for v in arrays.values())
    want = minilm.tokenize(wordnet.noun_glosses(25)[5:], max_length=24)
    assert all(np.array_equal(arrays[k], want[k]) for k in arrays)
    assert not list(tmp_path.glob("*.tmp*"))
    other = wordnet.gloss_npz(tmp_path / "eval.npz", 5, start=0, max_length=24)
    with np.load(other) as npz:
        assert not {tuple(r) for r in npz["input_ids"]} & {tuple(r) for r in arrays["input_ids"]}
    # graphc reads it as --train-data for a model with MiniLM's inputs (no labels)
    info = helper.make_tensor_value_info
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["input_ids"], ["y"])], "g",
        [info(n, TensorProto.INT64, ["batch", "sequence"]) for n in minilm.INPUT_NAMES],
        [info("y", TensorProto.INT64, ["batch", "sequence"])]))
    dataset = load_dataset(path, model_signature(model))
    assert len(dataset) == 20 and dataset.labels is None


def test_gloss_npz_refuses_impossible_ranges(tmp_path):
    with pytest.raises(ValueError, match=r"count=0, start=0: need count >= 1 and start >= 0"):
        wordnet.gloss_npz(tmp_path / "x.npz", 0)
    with pytest.raises(ValueError, match=r"is more than the 77115 glosses outside the probe"):
        wordnet.gloss_npz(tmp_path / "x.npz", 10, start=77110)
    assert not list(tmp_path.iterdir())
