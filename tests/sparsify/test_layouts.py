"""The reduction axis and the tie-break, on one-layer models built with ``onnx.helper``.

- 2:4 groups run along K: MatMul ``B [K, N]`` (axis 0), Gemm ``transB=0`` (axis 0), Gemm
  ``transB=1`` ``B [N, K]`` (axis 1), Conv ``W [O, I, kh, kw]`` along the input channel at
  each (o, kh, kw), also in a grouped Conv; the zeros are, in every group, the two lowest
  ``|w|``, and the same weights grouped along the other axis do not conform. Block ``4x1``
  runs 4 outputs at one reduction position, ``1x4`` 4 reduction positions of one output.
  onnxruntime's output of the sparse model equals numpy's on the sparse weights.
- Ties: a weight of equal magnitudes (mixed signs) loses the earlier positions of the view
  (outputs first, then K), and two CLI runs write the same bytes.
"""

import hashlib

import numpy as np
import onnx
import pytest
from graphc.passes.sparsify import SparsifyOptions, SparsifyPass
from onnx import TensorProto, helper, numpy_helper

from graphc.cli import main
from graphc.context import Context
from graphc.graph import to_graph, to_model
from graphc.model_io import load_model
from graphc.runtime import open_session

RNG = np.random.default_rng(11)


def _model(op: str, weight: np.ndarray, x_shape, **attrs) -> onnx.ModelProto:
    inputs = ["x", "w"]
    inits = [numpy_helper.from_array(weight, "w")]
    if op == "Gemm":
        bias = RNG.standard_normal(weight.shape[0] if attrs.get("transB") else weight.shape[1]).astype(np.float32)
        inits.append(numpy_helper.from_array(bias, "b"))
        inputs.append("b")
    node = helper.make_node(op, inputs, ["y"], name=f"the_{op.lower()}", **attrs)
    graph = helper.make_graph([node], "one_layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * len(x_shape))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _sparsify(model: onnx.ModelProto, **options) -> np.ndarray:
    graph = to_graph(model)
    result = SparsifyPass(SparsifyOptions(min_size=0, **options)).run(graph, Context.for_model(model))
    assert result.changed and result.stats["layers_sparsified"] == 1
    out = to_model(graph, model)
    (weight,) = [numpy_helper.to_array(t) for t in out.graph.initializer if t.name == "w"]
    return out, weight


def _two_lowest_per_group(groups: np.ndarray) -> np.ndarray:
    """Zero mask of the two lowest |w| in every group of 4 along the last axis."""
    order = np.argsort(np.abs(groups), axis=-1, kind="stable")[..., :2]
    zero = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(zero, order, True, axis=-1)
    return zero


def _run(model, x):
    return open_session(model).run(None, {"x": x})[0]


def test_matmul_groups_run_along_k():
    k, n = 8, 8
    weight = RNG.standard_normal((k, n)).astype(np.float32)
    out, sparse = _sparsify(_model("MatMul", weight, ["batch", k]), pattern="2:4")
    along_k = np.moveaxis(weight.reshape(k // 4, 4, n), 1, -1)  # [K/4, N, 4]
    expected = np.moveaxis(_two_lowest_per_group(along_k), -1, 1).reshape(k, n)
    np.testing.assert_array_equal(sparse == 0, expected)
    np.testing.assert_array_equal(sparse[~expected], weight[~expected])
    assert ((sparse.reshape(k // 4, 4, n) != 0).sum(axis=1) == 2).all()
    assert ((sparse.reshape(k, n // 4, 4) != 0).sum(axis=2) > 2).any()  # not along N
    x = RNG.standard_normal((3, k)).astype(np.float32)
    np.testing.assert_allclose(_run(out, x), x @ sparse, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_groups_run_along_k(trans_b):
    k, n = 12, 8
    weight = RNG.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    out, sparse = _sparsify(_model("Gemm", weight, ["batch", k], transB=trans_b), pattern="2:4")
    b_kn = sparse.T if trans_b else sparse
    original_kn = weight.T if trans_b else weight
    along_k = np.moveaxis(original_kn.reshape(k // 4, 4, n), 1, -1)
    expected = np.moveaxis(_two_lowest_per_group(along_k), -1, 1).reshape(k, n)
    np.testing.assert_array_equal(b_kn == 0, expected)
    assert ((b_kn.reshape(k // 4, 4, n) != 0).sum(axis=1) == 2).all()
    assert ((b_kn.reshape(k, n // 4, 4) != 0).sum(axis=2) > 2).any()
    x = RNG.standard_normal((3, k)).astype(np.float32)
    bias = numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == "b"))
    np.testing.assert_allclose(_run(out, x), x @ b_kn + bias, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_groups_run_along_the_input_channel_at_each_tap(groups):
    out_ch, per_group, kh, kw = 8, 8, 3, 2
    weight = RNG.standard_normal((out_ch, per_group, kh, kw)).astype(np.float32)
    model = _model("Conv", weight, ["batch", per_group * groups, 5, 6], group=groups)
    out, sparse = _sparsify(model, pattern="2:4")
    along_i = np.moveaxis(weight.reshape(out_ch, per_group // 4, 4, kh, kw), 2, -1)  # [O, I/4, kh, kw, 4]
    expected = np.moveaxis(_two_lowest_per_group(along_i), -1, 2).reshape(weight.shape)
    np.testing.assert_array_equal(sparse == 0, expected)
    for o in range(out_ch):
        for a in range(kh):
            for b in range(kw):
                column = sparse[o, :, a, b]
                assert all(np.count_nonzero(column[s:s + 4]) == 2 for s in range(0, per_group, 4))
    assert ((sparse.reshape(out_ch // 4, 4, per_group, kh, kw) != 0).sum(axis=1) > 2).any()  # not along O
    x = RNG.standard_normal((2, per_group * groups, 5, 6)).astype(np.float32)
    reference = _model("Conv", sparse, ["batch", per_group * groups, 5, 6], group=groups)
    np.testing.assert_allclose(_run(out, x), _run(reference, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("block", ["4x1", "1x4"])
def test_blocks_span_outputs_by_reduction_positions(block):
    k, n = 8, 8
    weight = RNG.standard_normal((k, n)).astype(np.float32)
    rows, cols = map(int, block.split("x"))
    _, sparse = _sparsify(_model("MatMul", weight, ["batch", k]), pattern="block", block=block, ratio=0.5)
    zero = sparse == 0
    assert zero.sum() == 32
    # B [K, N]: a block is cols consecutive K rows by `rows` consecutive N columns
    tiles = zero.reshape(k // cols, cols, n // rows, rows)
    whole = tiles.all(axis=(1, 3))
    assert (tiles.any(axis=(1, 3)) == whole).all()
    assert whole.sum() == 32 // (rows * cols)
    sums = np.abs(weight).reshape(k // cols, cols, n // rows, rows).sum(axis=(1, 3))
    assert sums[whole].max() < sums[~whole].min()


def _tied_weight():
    """B [8, 4] of magnitude 1 (mixed signs) but B[0, 0] = 2."""
    signs = np.where(RNG.random((8, 4)) < 0.5, -1.0, 1.0).astype(np.float32)
    signs[0, 0] = 2.0
    return signs


def test_ties_zero_the_earlier_positions_and_runs_are_identical(tmp_path):
    weight = _tied_weight()
    source = tmp_path / "tied.onnx"
    onnx.save(_model("MatMul", weight, ["batch", 8]), source)
    digests = []
    for run in ("a", "b"):
        out = tmp_path / f"out_{run}.onnx"
        assert main(["optimize", str(source), "--passes", "sparsify:0.5:min_size=0", "-o", str(out)]) == 0
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    sparse = numpy_helper.to_array(next(t for t in load_model(out).graph.initializer if t.name == "w"))
    # the view is B.T [N, K]: the 16 lowest (all 1) in view order skip B[0, 0] = 2, take
    # column 0's k=1..7, column 1 whole, and column 2's k=0
    expected = np.zeros((8, 4), dtype=bool)
    expected[1:, 0] = True
    expected[:, 1] = True
    expected[0, 2] = True
    np.testing.assert_array_equal(sparse == 0, expected)
    np.testing.assert_array_equal(sparse[~expected], weight[~expected])


def test_ties_in_nm_groups_zero_the_first_two():
    weight = _tied_weight()
    _, sparse = _sparsify(_model("MatMul", weight, ["batch", 8]), pattern="2:4")
    expected = np.zeros((8, 4), dtype=bool)
    expected[[0, 1, 4, 5], :] = True     # k 0, 1 of each group of 4 ...
    expected[0, 0] = False               # ... but B[0, 0] = 2 is kept, k=2 goes instead
    expected[2, 0] = True
    np.testing.assert_array_equal(sparse == 0, expected)
    _, again = _sparsify(_model("MatMul", weight, ["batch", 8]), pattern="2:4")
    assert again.tobytes() == sparse.tobytes()
