"""prune:recalibrate=true (rule 5): re-estimated BatchNorm statistics equal the data's."""

import numpy as np
import onnx

from graphc.graph import to_graph, to_model
from graphc.model_io import load_model
from graphc.passes.prune import PruneOptions, apply_pruning, plan_pruning
from graphc.runtime import open_session


def _plan(onnx_model, name, **options):
    return plan_pruning(to_graph(load_model(onnx_model(name))), PruneOptions(**options))


def test_recalibrated_batchnorm_statistics_match_the_data(onnx_model, tmp_path):
    from graphc.bn_recalibrate import recalibrate_batchnorm
    from graphc.data import synthetic_dataset

    model = load_model(onnx_model("resnet"))
    plan = _plan(onnx_model, "resnet", ratio=0.3)
    apply_pruning(plan)
    data = synthetic_dataset(model, batches=6, seed=3)
    bn = next(n for n in plan.graph.nodes if n.op == "BatchNormalization")
    probe = to_model(plan.graph, model)
    probe.graph.output.append(onnx.ValueInfoProto(name=bn.inputs[0].name))
    x = np.concatenate([open_session(probe).run(None, f)[-1] for f, _ in data.batches(4)])
    assert recalibrate_batchnorm(plan.graph, data, batch_size=4) > 0
    np.testing.assert_allclose(bn.inputs[3].values, x.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.inputs[4].values, x.var(axis=(0, 2, 3)), rtol=1e-4, atol=1e-6)
