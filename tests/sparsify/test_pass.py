"""The ``sparsify`` pass on the topology exports (CNN 'resnet', 'depthwise', 'bert', 'gpt',
'vit'; TorchScript in the fast run, the dynamo exporter marked slow), against ``oracle``:

- every pattern (unstructured, 2:4, block 1x4, 4x1, 16x4), uniform magnitude: each layer
  whose view divides into the pattern zeroes exactly the oracle's weights (the ratio is the
  request within one unit's rounding), conforms (the oracle's check and ``conforms``), keeps
  its other weights bit for bit; a layer that does not divide is untouched, with the reason;
  onnxruntime's outputs equal those of the original model with the oracle's zeros set in
  numpy;
- ``scope=global``: the overall zero share is the request within one unit, no layer loses
  more than ``max_layer_ratio``, no zeroed unit outranks (normalised) a kept one of a layer
  under its cap, and the outputs equal the original's with those zeros;
- ``exclude`` (initializer-name and node-name globs) and ``min_size`` leave layers byte for
  byte as they were;
- ``by=wanda`` with data in the context: the zeros equal a numpy wanda (activation L2 norms
  per input channel, read by running onnxruntime with each layer input as an output;
  ``|W| x norm``; the lowest half of each output row);
- ``recalibrate=true`` with data: every BatchNorm gets new statistics, the stem's equal its
  input's, the weights are those of the run without it, and every BatchNorm's statistics
  describe its input in the recalibrated model (``graphc.bn_recalibrate`` measures level by
  level).

The TorchScript BERT and ViT feed their MatMul weights through a Transpose (exported without
constant folding), so their base model is the ``fold`` pass's output (exact, checked by the
pipeline elsewhere); every other base model is the export as it is.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphc.passes.fold import FoldPass
from graphc.passes.sparsify import SparsifyOptions, SparsifyPass

from graphc import sparsity
from graphc.context import Context
from graphc.data import Dataset
from graphc.graph import to_graph, to_model
from graphc.model_io import load_model
from graphc.runtime import open_session
from tests import topologies
from tests.sparsify import oracle

NAMES = ("resnet", "depthwise", "bert", "gpt", "vit")
FOLDED_FIRST = {("bert", False), ("vit", False)}
CASES = [pytest.param(name, False, id=f"{name}-torchscript") for name in NAMES] + [
    pytest.param(name, True, id=f"{name}-dynamo", marks=pytest.mark.slow) for name in NAMES]
# options, the oracle's pattern, the ratio it reads
PATTERNS = {
    "unstructured": ({"ratio": 0.6}, ("unstructured",), 0.6),
    "2:4": ({"pattern": "2:4"}, ("nm", 2, 4), 0.5),
    "1x4": ({"pattern": "block", "block": "1x4", "ratio": 0.5}, ("block", 1, 4), 0.5),
    "4x1": ({"pattern": "block", "block": "4x1", "ratio": 0.4}, ("block", 4, 1), 0.4),
    "16x4": ({"pattern": "block", "block": "16x4", "ratio": 0.5}, ("block", 16, 4), 0.5),
}


@pytest.fixture(scope="module")
def base_model(onnx_model):
    """Factory ``base_model(name, dynamo) -> ModelProto`` (see the module docstring), cached."""
    cache: dict[tuple[str, bool], onnx.ModelProto] = {}

    def get(name: str, dynamo: bool) -> onnx.ModelProto:
        if (name, dynamo) not in cache:
            model = load_model(onnx_model(name, dynamo=dynamo))
            if (name, dynamo) in FOLDED_FIRST:
                result = FoldPass().run(to_graph(model), Context.for_model(model))
                model = to_model(result.graph, model)
            cache[(name, dynamo)] = model
        copy = onnx.ModelProto()
        copy.CopyFrom(cache[(name, dynamo)])
        return copy

    return get


def run_pass(model: onnx.ModelProto, data: Dataset | None = None, **options):
    """(the sparsified model, the PassResult)."""
    graph = to_graph(model)
    result = SparsifyPass(SparsifyOptions(**options)).run(graph, Context.for_model(model, data=data))
    return to_model(graph, model), result


def outputs(model: onnx.ModelProto, feeds) -> list[np.ndarray]:
    return open_session(model, threads=1).run(None, feeds)


def assert_same_outputs(model_a, model_b, feeds) -> None:
    for a, b in zip(outputs(model_a, feeds), outputs(model_b, feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(b).max())))


def _pattern(spec: tuple) -> sparsity.Pattern:
    if spec[0] == "unstructured":
        return sparsity.Pattern("unstructured")
    if spec[0] == "nm":
        return sparsity.Pattern("nm", n=spec[1], m=spec[2])
    return sparsity.Pattern("block", rows=spec[1], cols=spec[2])


def _conforms_in_numpy(view: np.ndarray, spec: tuple) -> bool:
    if spec[0] == "nm":
        return oracle.nm_holds(view, spec[1], spec[2])
    if spec[0] == "block":
        return oracle.blocks_hold(view, spec[1], spec[2])
    return True


@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("name,dynamo", CASES)
def test_uniform_pattern_equals_the_oracle(name, dynamo, pattern, base_model, sample_inputs):
    options, spec, ratio = PATTERNS[pattern]
    model = base_model(name, dynamo)
    layers = oracle.float_layers(model)
    assert layers, f"{name}: no MatMul/Gemm/Conv weight found"
    out, result = run_pass(model, min_size=0, **options)
    after = oracle.initializers(out)
    reported = {row["layer"]: row for row in result.details["layers"]}
    dense = {row["layer"]: row["reason"] for row in result.details["dense"]}
    assert set(reported) | set(dense) == set(layers)
    unit = 1 if spec[0] != "block" else spec[1] * spec[2]
    zeroed, fitting = {}, 0
    for layer in layers.values():
        view = layer.view()
        new = after[layer.name]
        assert new.dtype == layer.weight.dtype and new.shape == layer.weight.shape
        if not oracle.fits(view.shape, spec):
            assert layer.name in dense and str(_pattern(spec)) in dense[layer.name]
            assert new.tobytes() == layer.weight.tobytes()
            continue
        fitting += 1
        expected = oracle.magnitude_zero_mask(view, spec, ratio)
        new_view = layer.view(new)
        np.testing.assert_array_equal(new_view == 0, expected, err_msg=layer.name)
        assert new_view[~expected].tobytes() == view[~expected].tobytes()  # kept weights: same bits
        zeros = int(expected.sum())
        assert abs(zeros / view.size - ratio) <= unit / (2 * view.size) + 1e-9, layer.name
        assert _conforms_in_numpy(new_view, spec), layer.name
        assert sparsity.conforms(sparsity.to_view(new, _layout(layer)), _pattern(spec)) is True
        assert reported[layer.name]["zeros"] == zeros
        zeroed[layer.name] = layer.to_weight(np.where(expected, np.zeros((), view.dtype), view))
    assert fitting == result.stats["layers_sparsified"] > 0
    reference = oracle.with_weights(model, zeroed)
    feeds = sample_inputs(name)
    assert_same_outputs(out, reference, feeds)
    assert not np.allclose(outputs(out, feeds)[0], outputs(model, feeds)[0])  # it did change the model


def _layout(layer: oracle.Layer) -> sparsity.Layout:
    if layer.op == "Conv":
        return sparsity.Layout("conv", layer.groups)
    return sparsity.Layout("nk" if layer.op == "Gemm" and layer.trans_b else "kn")


@pytest.mark.parametrize("pattern", ["unstructured", "1x4"])
@pytest.mark.parametrize("name,dynamo", CASES)
def test_global_scope_meets_the_overall_ratio(name, dynamo, pattern, base_model, sample_inputs):
    options, spec, ratio = PATTERNS[pattern]
    cap = 0.9
    model = base_model(name, dynamo)
    layers = oracle.float_layers(model)
    out, result = run_pass(model, min_size=0, scope="global", max_layer_ratio=cap, **options)
    after = oracle.initializers(out)
    unit = 1 if spec[0] == "unstructured" else spec[1] * spec[2]
    fitting = [layer for layer in layers.values() if oracle.fits(layer.view().shape, spec)]
    total = sum(layer.weight.size for layer in fitting)
    zero_views = {layer.name: layer.view(after[layer.name]) == 0 for layer in fitting}
    zeros = sum(int(z.sum()) for z in zero_views.values())
    assert abs(zeros - ratio * total) <= unit / 2 + 1e-9
    assert result.stats["sparsity"] == pytest.approx(zeros / total, abs=1e-4)
    zeroed_scores, kept_scores = [], []
    for layer in fitting:
        view, zero = layer.view(), zero_views[layer.name]
        assert _conforms_in_numpy(np.where(zero, 0, view), spec)
        score = np.abs(view.astype(np.float64))
        if unit > 1:  # one score per block, one zero flag per block
            r, c = spec[1], spec[2]
            shape = (view.shape[0], view.shape[1] // r, r, view.shape[2] // c, c)
            score, zero = score.reshape(shape).sum(axis=(2, 4)), zero.reshape(shape).all(axis=(2, 4))
        units = score.size
        assert int(zero.sum()) <= int(np.floor(cap * units + 1e-9)), layer.name
        normalised = score / score.mean()
        zeroed_scores.append(normalised[zero])
        if int(zero.sum()) < int(np.floor(cap * units + 1e-9)):  # under its cap: its kept units competed
            kept_scores.append(normalised[~zero])
    assert np.concatenate(zeroed_scores).max() <= np.concatenate(kept_scores).min() + 1e-9
    zeroed = {layer.name: np.where(after[layer.name] == 0, 0, layer.weight).astype(layer.weight.dtype)
              for layer in fitting}
    for layer in fitting:  # nothing but the zeros changed
        keep = after[layer.name] != 0
        assert after[layer.name][keep].tobytes() == layer.weight[keep].tobytes()
    assert_same_outputs(out, oracle.with_weights(model, zeroed), sample_inputs(name))


def _glob(name: str) -> str:
    return "".join(f"[{ch}]" if ch in "[]*?" else ch for ch in name)


@pytest.mark.parametrize("name,dynamo", CASES)
def test_excluded_and_small_layers_stay_byte_for_byte(name, dynamo, base_model):
    model = base_model(name, dynamo)
    layers = list(oracle.float_layers(model).values())
    min_size = min(layer.weight.size for layer in layers) + 1
    small = {layer.name for layer in layers if layer.weight.size < min_size}
    large = [layer for layer in layers if layer.weight.size >= min_size]
    assert small and len(large) >= 3, f"{name}: too few layers to exclude some"
    by_name, by_node = large[0], large[1]
    assert by_node.node, f"{name}: an unnamed node"
    exclude = f"{_glob(by_name.name)}+{_glob(by_node.node)}"
    out, result = run_pass(model, ratio=0.5, min_size=min_size, exclude=exclude)
    before, after = oracle.initializers(model), oracle.initializers(out)
    dense = {row["layer"]: row["reason"] for row in result.details["dense"]}
    untouched = small | {by_name.name, by_node.name}
    assert set(dense) == untouched
    assert dense[by_name.name] == dense[by_node.name] == "excluded"
    assert all(f"< min_size {min_size}" in dense[n] for n in small)
    for n in untouched:
        assert after[n].tobytes() == before[n].tobytes(), n
    for layer in large[2:]:
        share = float((after[layer.name] == 0).mean())
        assert share == pytest.approx(0.5, abs=0.5 / layer.weight.size + 1e-9), layer.name
    for key, value in before.items():  # every other initializer as it was
        if key not in {layer.name for layer in large[2:]}:
            assert after[key].tobytes() == value.tobytes(), key


def _activation_norms(model: onnx.ModelProto, layers: list[oracle.Layer], data: dict[str, np.ndarray]):
    """Per layer, the L2 norm of each input channel of its input, over all rows and positions."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    inputs = {i.name for i in probe.graph.input}
    exposed = sorted({layer.activation for layer in layers} - inputs)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in exposed)
    values = dict(zip(exposed, open_session(probe, threads=1).run(exposed, data))) if exposed else {}
    values.update({k: v for k, v in data.items() if k in inputs})
    norms = {}
    for layer in layers:
        x = values[layer.activation].astype(np.float64)
        axis = 1 if layer.op in ("Conv", "Gemm") else x.ndim - 1  # the fixtures' Gemms have transA=0
        channels = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
        norms[layer.name] = np.sqrt((channels ** 2).sum(axis=1))
    return norms


def _wanda_zero_mask(layer: oracle.Layer, norm: np.ndarray, ratio: float) -> np.ndarray:
    """|W| x the norm of each weight's input channel; the lowest ``ratio`` of every output zeroed."""
    w = np.abs(layer.weight.astype(np.float64))
    if layer.op == "Conv":
        out_ch, per_group = w.shape[:2]
        group_of = np.arange(out_ch) // (out_ch // layer.groups)
        channel = group_of[:, None] * per_group + np.arange(per_group)[None, :]  # [O, I/g]
        score = w * norm[channel][:, :, None, None]
        rows = score.reshape(out_ch, -1)
    elif layer.op == "Gemm" and layer.trans_b:
        rows = w * norm[None, :]                    # B [N, K]
    else:
        rows = (w * norm[:, None]).T                # B [K, N] -> one row per output n
    count = round(ratio * rows.shape[1])
    zero = np.zeros(rows.shape, dtype=bool)
    for r in range(rows.shape[0]):
        zero[r, np.argsort(rows[r], kind="stable")[:count]] = True
    if layer.op == "Conv":
        return zero.reshape(layer.weight.shape)
    return zero if (layer.op == "Gemm" and layer.trans_b) else zero.T


WANDA_CASES = [pytest.param("resnet", False, id="resnet-torchscript"),
               pytest.param("depthwise", False, id="depthwise-torchscript"),
               pytest.param("gpt", False, id="gpt-torchscript"),
               pytest.param("bert", False, id="bert-torchscript"),
               pytest.param("bert", True, id="bert-dynamo", marks=pytest.mark.slow),
               pytest.param("vit", True, id="vit-dynamo", marks=pytest.mark.slow)]


@pytest.mark.parametrize("name,dynamo", WANDA_CASES)
def test_wanda_equals_numpy(name, dynamo, base_model):
    model = base_model(name, dynamo)
    layers = list(oracle.float_layers(model).values())
    feeds = topologies.sample_inputs(name, batch=6, seed=3)
    data = Dataset(feeds, None, "data")
    out, result = run_pass(model, data=data, ratio=0.5, by="wanda", min_size=0)
    assert result.stats["by"] == "wanda" and result.stats["layers_sparsified"] == len(layers)
    after = oracle.initializers(out)
    norms = _activation_norms(model, layers, feeds)
    differs_from_magnitude = 0
    for layer in layers:
        expected = _wanda_zero_mask(layer, norms[layer.name], 0.5)
        np.testing.assert_array_equal(after[layer.name] == 0, expected, err_msg=layer.name)
        magnitude = _wanda_zero_mask(layer, np.ones_like(norms[layer.name]), 0.5)
        differs_from_magnitude += int((expected != magnitude).any())
    assert differs_from_magnitude > 0  # the norms changed the choice somewhere


def _bn_inputs(model: onnx.ModelProto, feeds) -> tuple[list[onnx.NodeProto], list[np.ndarray]]:
    """The model's BatchNorm nodes and the value of each one's input on ``feeds``."""
    norms = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.ValueInfoProto(name=n.input[0]) for n in norms)
    return norms, open_session(probe, threads=1).run(None, feeds)


def _recalibrated(base_model):
    model = base_model("resnet", False)
    feeds = topologies.sample_inputs("resnet", batch=6, seed=4)
    out, result = run_pass(model, data=Dataset(feeds, None, "data"), ratio=0.7, recalibrate=True)
    return model, out, result, feeds


def test_recalibrate_replaces_batchnorm_statistics(base_model):
    model, out, result, feeds = _recalibrated(base_model)
    plain, _ = run_pass(model, ratio=0.7)
    norms, values = _bn_inputs(out, feeds)
    assert result.stats["bn_recalibrated"] == len(norms) > 0
    after, inits = oracle.initializers(out), oracle.initializers(plain)
    before = {n.name: inits[n.input[3]] for n in plain.graph.node if n.op_type == "BatchNormalization"}
    for node in norms:
        assert not np.allclose(after[node.input[3]], before[node.name]), node.name
    # the stem's BatchNorm (no BatchNorm before it) holds its input's statistics exactly
    stem, x = norms[0], values[0]
    assert stem.input[0] == next(n for n in out.graph.node if n.op_type == "Conv").output[0]
    np.testing.assert_allclose(after[stem.input[3]], x.mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(after[stem.input[4]], x.var(axis=(0, 2, 3)), rtol=1e-3, atol=1e-6)
    for layer in oracle.float_layers(out).values():  # the same zeros as without recalibrate
        assert after[layer.name].tobytes() == inits[layer.name].tobytes()


def test_recalibrated_statistics_describe_every_batchnorm_input(base_model):
    _, out, _, feeds = _recalibrated(base_model)
    after = oracle.initializers(out)
    for node, x in zip(*_bn_inputs(out, feeds)):
        np.testing.assert_allclose(after[node.input[3]], x.mean(axis=(0, 2, 3)), rtol=1e-3, atol=1e-4,
                                   err_msg=node.name)
        np.testing.assert_allclose(after[node.input[4]], x.var(axis=(0, 2, 3)), rtol=1e-2, atol=1e-4,
                                   err_msg=node.name)
