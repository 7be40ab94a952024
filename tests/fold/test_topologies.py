"""fold on real topologies, both exporter flavours, through the pipeline with --verify.

Each model is optimized with ``fold`` and compared with onnxruntime on the unmodified model:
outputs equal within 1e-4 relative, node count does not grow, every BatchNormalization
that directly follows a Conv/Gemm is gone.
"""

import numpy as np
import onnx
import pytest

from graphc.pipeline import OptimizeRequest, optimize
from graphc.runtime import open_session
from tests.topologies import BUILDERS

FOLDABLE_PRODUCERS = {"Conv", "ConvTranspose", "Gemm"}


def unfoldable_bns(model: onnx.ModelProto) -> int:
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    consumers: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    return sum(1 for n in model.graph.node if n.op_type == "BatchNormalization"
               and not (producers.get(n.input[0]) in FOLDABLE_PRODUCERS and consumers[n.input[0]] == 1))


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_fold_is_exact_and_removes_foldable_bn(name, dynamo, onnx_model, sample_inputs, tmp_path):
    source = onnx_model(name, dynamo=dynamo)
    original = onnx.load(str(source))
    out = tmp_path / "folded.onnx"
    report = optimize(OptimizeRequest(model=source, passes="fold", output=out, verify=True, progress=False))
    folded = onnx.load(str(out))

    feeds = sample_inputs(name, batch=3)
    want = open_session(source).run(None, feeds)
    got = open_session(out).run(None, feeds)
    for w, g in zip(want, got):
        assert g.shape == w.shape
        assert np.abs(g - w).max() <= 1e-4 * np.abs(w).max()

    assert len(folded.graph.node) <= len(original.graph.node)
    bns_before = sum(n.op_type == "BatchNormalization" for n in original.graph.node)
    bns_after = sum(n.op_type == "BatchNormalization" for n in folded.graph.node)
    assert bns_after == unfoldable_bns(original)
    assert report.passes[0].stats["bn_folded"] == bns_before - bns_after
    assert not any(n.op_type in ("Identity", "Dropout", "Constant") for n in folded.graph.node)
    assert [i.name for i in folded.graph.input] == [i.name for i in original.graph.input
                                                   if i.name not in {t.name for t in original.graph.initializer}]
    assert [o.name for o in folded.graph.output] == [o.name for o in original.graph.output]
    (verify,) = report.passes[0].verify
    assert verify.max_rel_error <= 1e-4


def test_cnn_fixtures_really_have_bn_to_fold(onnx_model):
    for name in ("resnet", "depthwise", "concat", "mlp_bn"):
        model = onnx.load(str(onnx_model(name)))
        assert sum(n.op_type == "BatchNormalization" for n in model.graph.node) > unfoldable_bns(model)


def _ort_optimized_ops(path, tmp_path, tag) -> dict[str, int]:
    import collections

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / f"{tag}.ort-optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(options.optimized_model_filepath, load_external_data=False)
    return dict(collections.Counter(n.op_type for n in optimized.graph.node))


@pytest.mark.parametrize("passes", ["fold", "prune:ratio=0.3"])
def test_written_model_is_optimized_by_onnxruntime_like_the_original(passes, onnx_model, tmp_path):
    """The passes infer intermediate shapes; the written model must not carry them, or
    onnxruntime fuses Add+LayerNormalization into SkipLayerNormalization (measured slower)."""
    source = onnx_model("bert")
    assert not onnx.load(str(source)).graph.value_info
    out = tmp_path / "out.onnx"
    optimize(OptimizeRequest(model=source, passes=passes, output=out, progress=False))
    written = onnx.load(str(out))
    assert not written.graph.value_info
    assert written.graph.output[0].type.tensor_type.HasField("shape")  # boundary shapes kept
    before = _ort_optimized_ops(source, tmp_path, "original")
    after = _ort_optimized_ops(out, tmp_path, "written")
    assert before.get("LayerNormalization", 0) > 0
    assert after.get("SkipLayerNormalization", 0) == before.get("SkipLayerNormalization", 0)
    assert after.get("LayerNormalization", 0) == before.get("LayerNormalization", 0)
