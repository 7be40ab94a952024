"""graphc's sparse INT8 GEMM (kernels/cpu) through onnxruntime, every code path this machine
has, bit-exact against an int64 numpy reference; the paths it lacks are skipped by name."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from graphc import kernels
from graphc.errors import GraphcError
from graphc.kernels.layout import pack
from graphc.runtime import open_session
from tests.kernels.helpers import (dense_integer_chain, dynamic_model, dynamic_quantize, integer_model,
                                   integer_product, run_integer, to_float_model)


@pytest.fixture(params=kernels.ISAS)
def isa(request, monkeypatch):
    """Each path in turn, forced through GRAPHC_ISA (read when a session creates the kernel)."""
    if request.param not in kernels.supported_isas():
        pytest.skip(f"this CPU/OS/build has no {request.param} path (has {', '.join(kernels.supported_isas())})")
    monkeypatch.setenv("GRAPHC_ISA", request.param)
    return request.param


def sparse_weight(rng, k: int, n: int, pattern: str, ratio: float) -> np.ndarray:
    weight = rng.integers(-128, 128, (k, n)).astype(np.int8)
    if pattern == "unstructured":
        weight[rng.random((k, n)) < ratio] = 0
    elif pattern == "block1x4":  # whole groups of 4 along K, as sparsify:pattern=block:block=1x4 writes
        groups = -(-k // 4)
        zero = np.repeat(rng.random((groups, n)) < ratio, 4, axis=0)[:k]
        weight[zero] = 0
    elif pattern == "2:4":
        for start in range(0, k - k % 4, 4):
            order = np.argsort(rng.random((4, n)), axis=0)[:2]
            weight[start + order, np.arange(n)] = 0
    return weight


SHAPES = [(1, 1, 1), (1, 3, 5), (1, 768, 64), (7, 33, 17), (16, 64, 16), (17, 129, 47), (65, 300, 70),
          (128, 96, 130), (3, 4096, 9)]


@pytest.mark.parametrize("pattern,ratio", [("unstructured", 0.0), ("unstructured", 0.5), ("unstructured", 0.9),
                                           ("block1x4", 0.8), ("2:4", 0.5), ("unstructured", 1.0)])
def test_every_path_equals_the_int64_product(isa, pattern, ratio):
    rng = np.random.default_rng(abs(hash((pattern, ratio))) % 2**32)
    for m, k, n in SHAPES:  # M, K, N not multiples of any tile (16 rows, 4-groups, 16 or 64 columns)
        weight = sparse_weight(rng, k, n, pattern, ratio)
        a = rng.integers(0, 256, (1, m, k)).astype(np.uint8)
        zero_point = int(rng.integers(0, 256))
        got = run_integer(weight, a, zero_point)
        assert got.dtype == np.int32 and got.shape == (1, m, n)
        np.testing.assert_array_equal(got, integer_product(a, zero_point, weight), err_msg=f"{isa} {m}x{k}x{n}")


def test_extreme_values_empty_columns_and_rows(isa):
    rng = np.random.default_rng(7)
    k, n = 4097, 40  # the longest sums of the most extreme products, a ragged last group
    weight = np.where(rng.random((k, n)) < 0.5, -128, 127).astype(np.int8)
    weight[:, 3] = 0  # an empty column
    weight[:, 20:36] = 0  # a whole 16-column tile empty
    weight[:1000] = 0  # leading groups empty in every column
    for m in (19, 1):  # 1: the few-rows (gather) kernel of the AVX2 path
        for a_value, zero_point in ((255, 0), (0, 255), (255, 255), (0, 0)):
            a = np.full((2, m, k), a_value, np.uint8)
            a[1, ::3] = 255 - a_value  # rows of both extremes
            np.testing.assert_array_equal(run_integer(weight, a, zero_point), integer_product(a, zero_point, weight),
                                          err_msg=f"{isa} m={m}")


def test_one_and_two_threads_agree_exactly(isa):
    rng = np.random.default_rng(3)
    weight = sparse_weight(rng, 256, 300, "unstructured", 0.8)
    for m in (70, 2):
        a = rng.integers(0, 256, (1, m, 256)).astype(np.uint8)
        one, two = run_integer(weight, a, 9, threads=1), run_integer(weight, a, 9, threads=2)
        np.testing.assert_array_equal(one, two)
        np.testing.assert_array_equal(one, integer_product(a, 9, weight))


@pytest.mark.parametrize("bias", [True, False])
def test_dynamic_op_quantizes_like_dynamic_quantize_linear(isa, bias):
    rng = np.random.default_rng(11)
    k, n, m = 200, 90, 33
    weight = sparse_weight(rng, k, n, "block1x4", 0.7)
    scale = rng.uniform(0.001, 0.02, n).astype(np.float32)
    offsets = rng.normal(size=n).astype(np.float32) if bias else None
    x = rng.normal(size=(m, k)).astype(np.float32) * 3 + 0.5
    values, a_scale, zero_point = dynamic_quantize(x)
    # 8-bit weights, and the 7-bit ones graphc int8 writes where onnxruntime's u8 x s8 saturates
    # (AVX2 without VNNI: there its DynamicQuantizeMatMul is wrong for 8-bit weights, not graphc's op)
    for weight in (weight, weight // 2):
        got = open_session(dynamic_model(pack(weight), scale, offsets)).run(None, {"A": x})[0]
        product = integer_product(values, zero_point, weight)  # exact: the same integers, by the test above
        expected = product.astype(np.float32) * (a_scale * scale)
        if bias:
            expected = expected + offsets
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())
    # and onnxruntime's own DynamicQuantizeMatMul on the dense 7-bit weight (exact on every CPU), within
    # one float rounding
    reference = dense_dynamic_quantize_matmul(x, weight, scale, offsets)
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5 * np.abs(reference).max())


def onnxruntime_dynamic_quantize(x: np.ndarray) -> tuple[np.ndarray, np.float32, int]:
    from onnx import TensorProto, helper

    node = helper.make_node("DynamicQuantizeLinear", ["X"], ["Y", "scale", "zp"])
    graph = helper.make_graph([node], "dql", [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info(name, type_, None) for name, type_ in
                               (("Y", TensorProto.UINT8), ("scale", TensorProto.FLOAT), ("zp", TensorProto.UINT8))])
    values, scale, zero_point = open_session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                                             optimized=False).run(None, {"X": x})
    return values, scale, int(zero_point)


@pytest.mark.parametrize("shape", [(7, 37), (40, 1703)])
@pytest.mark.parametrize("case", ["ties", "positive", "negative", "normal", "zeros"])
def test_dynamic_op_quantizes_a_to_the_bytes_of_dynamic_quantize_linear(isa, case, shape):
    """The op's own quantization of A (quantize.cc: the scalar, AVX2 and AVX-512 forms by the path,
    in 32768-value chunks over the pool) against onnxruntime's DynamicQuantizeLinear, byte for byte:
    an identity weight with scale 1 makes Y = (q - zp) * a_scale, from which q comes back exactly.
    7 x 37 values: one chunk, the vector loops and their tails; 40 x 1703: two whole chunks and a
    third whose tail takes the SSE2 and scalar steps, the maximum in the last chunk. "ties" puts
    x / scale exactly halfway between integers (to even)."""
    rng = np.random.default_rng(3)
    m, k = shape
    if case == "ties":  # max 127.5, min 0: scale 0.5 exactly; x = j / 4 gives x / scale = j / 2
        x = (rng.integers(0, 511, (m, k)) / 4).astype(np.float32)
        x[-1, -1] = 127.5
    elif case == "positive":
        x = rng.uniform(0.5, 3.0, (m, k)).astype(np.float32)
    elif case == "negative":
        x = -rng.uniform(0.5, 3.0, (m, k)).astype(np.float32)
    elif case == "normal":
        x = (rng.normal(size=(m, k)) * 4 - 1).astype(np.float32)
        x[-1, -2] = 40.0
    else:
        x = np.zeros((m, k), np.float32)
    identity = pack(np.eye(k, dtype=np.int8))
    y = open_session(dynamic_model(identity, np.ones(k, np.float32), None)).run(None, {"A": x})[0]
    values, scale, zero_point = onnxruntime_dynamic_quantize(x)
    np.testing.assert_array_equal(np.rint(y / scale).astype(np.int64) + zero_point, values.astype(np.int64))
    assert np.array_equal(y, (values.astype(np.int64) - zero_point).astype(np.float32) * scale)


def dense_dynamic_quantize_matmul(x, weight, scale, bias):
    from onnx import TensorProto, helper, numpy_helper

    inputs = ["A", "B", "b_scale"] + (["", "bias"] if bias is not None else [])  # no b_zero_point: symmetric
    node = helper.make_node("DynamicQuantizeMatMul", inputs, ["Y"], domain="com.microsoft")
    initializers = [numpy_helper.from_array(weight, "B"), numpy_helper.from_array(scale, "b_scale")]
    if bias is not None:
        initializers.append(numpy_helper.from_array(bias, "bias"))
    graph = helper.make_graph([node], "dense", [helper.make_tensor_value_info("A", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    return open_session(model).run(None, {"A": x})[0]


def test_forced_path_the_machine_lacks_or_does_not_know_is_one_clear_error(monkeypatch):
    model = integer_model(pack(np.ones((8, 8), np.int8)))
    monkeypatch.setenv("GRAPHC_ISA", "avx9000")
    with pytest.raises(GraphcError, match="GRAPHC_ISA=avx9000 is not one of scalar, avx2, avx512vnni, amx"):
        open_session(model).run(None, {"A": np.zeros((1, 1, 8), np.uint8), "zp": np.array(0, np.uint8)})
    missing = [isa for isa in kernels.ISAS if isa not in kernels.supported_isas()]
    if missing:
        monkeypatch.setenv("GRAPHC_ISA", missing[0])
        with pytest.raises(GraphcError, match=f"GRAPHC_ISA={missing[0]}: this CPU, OS or build has no such path"):
            open_session(model).run(None, {"A": np.zeros((1, 1, 8), np.uint8), "zp": np.array(0, np.uint8)})


@pytest.mark.parametrize("damage,message", [
    (lambda c: c.col_ptr.__setitem__(slice(None), c.col_ptr[::-1]), "col_ptr must start at 0"),
    (lambda c: c.block_k.__setitem__(0, 10_000), "block_k must increase within a column and stay below"),
    (lambda c: c.block_k.__setitem__(slice(0, 2), [1, 0]), "block_k must increase within a column"),
])
def test_malformed_weights_are_refused_not_read_out_of_bounds(damage, message):
    columns = pack(np.ones((64, 8), np.int8))
    damage(columns)
    feeds = {"A": np.zeros((1, 2, 64), np.uint8), "zp": np.array(0, np.uint8)}
    with pytest.raises(GraphcError, match=message):  # initializers: checked once, when the session opens
        open_session(integer_model(columns))
    fed = integer_model(columns)  # the same weights fed as inputs: checked on every run
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in fed.graph.initializer}
    fed.graph.input.extend(onnx.helper.make_tensor_value_info(name, t.data_type, t.dims) for name, t in
                           ((t.name, t) for t in fed.graph.initializer))
    del fed.graph.initializer[:]
    session = open_session(fed)
    with pytest.raises(Exception, match=message):
        session.run(None, {**feeds, **weights})
    good = {name: value for name, value in weights.items()}
    good.update({"col_ptr": pack(np.ones((64, 8), np.int8)).col_ptr, "block_k": pack(np.ones((64, 8), np.int8)).block_k})
    np.testing.assert_array_equal(session.run(None, {**feeds, **good})[0], np.zeros((1, 2, 8), np.int32))


def test_weights_fed_at_run_time_give_the_same_integers(isa):
    """Fed weights take the per-run route (checked and, on AMX, decompressed on every run)."""
    rng = np.random.default_rng(13)
    weight = sparse_weight(rng, 200, 50, "unstructured", 0.7)
    fed = integer_model(pack(weight))
    values = {t.name: onnx.numpy_helper.to_array(t) for t in fed.graph.initializer}
    fed.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in fed.graph.initializer)
    del fed.graph.initializer[:]
    session = open_session(fed)
    for m in (1, 16, 40):
        a = rng.integers(0, 256, (2, m, 200)).astype(np.uint8)
        got = session.run(None, {"A": a, "zp": np.array(200, np.uint8), **values})[0]
        np.testing.assert_array_equal(got, integer_product(a, 200, weight))


@pytest.mark.parametrize("per_column,bias", [(True, True), (False, False), (True, False)])
def test_to_float_op_equals_the_cast_mul_add_it_replaces_bit_for_bit(isa, per_column, bias):
    rng = np.random.default_rng(17)
    k, n = 300, 70
    # 7-bit: onnxruntime's MatMulInteger saturates 8-bit weights on AVX2 without VNNI (the integers
    # themselves are checked against numpy above, 8-bit included)
    weight = sparse_weight(rng, k, n, "block1x4", 0.8) // 2
    scale = rng.uniform(0.001, 0.02, n if per_column else 1).astype(np.float32)
    offsets = rng.normal(size=n).astype(np.float32) if bias else None
    sparse = open_session(to_float_model(pack(weight), scale, offsets))
    dense = open_session(dense_integer_chain(weight, scale, offsets), optimized=False)  # unfused: Cast, Mul, Add
    for m in (1, 17, 130):
        feeds = {"A": rng.integers(0, 256, (m, k)).astype(np.uint8), "a_scale": np.array(0.037, np.float32),
                 "zp": np.array(121, np.uint8)}
        np.testing.assert_array_equal(sparse.run(None, feeds)[0], dense.run(None, feeds)[0])


@pytest.mark.parametrize("limit", [63, 64, 127])
def test_weights_whose_pairs_fit_int16_and_those_that_do_not(isa, limit):
    """AVX2 multiplies with vpmaddubsw only when every pair has |w0| + |w1| <= 128 (graphc int8's
    7-bit weights: 63; 64 + 64 is the edge); 127 needs the widening form. Both exact at the
    extremes: A = 255 against the pairs' largest sums."""
    rng = np.random.default_rng(limit)
    k, n = 96, 40
    weight = rng.choice([-limit, limit], (k, n)).astype(np.int8)
    weight[rng.random((k, n)) < 0.3] = 0
    scattered = weight.copy()  # 1x4 groups at 85%: the AVX2 column kernels, not its tile kernel
    scattered[np.repeat(rng.random((k // 4, n)) < 0.85, 4, axis=0)] = 0
    if limit == 63:
        assert kernels.uses_tiles(pack(weight), "avx2") and not kernels.uses_tiles(pack(scattered), "avx2")
    for w in (weight, scattered):
        for m in (21, 3):  # 3: the few-rows (gather) kernel of the AVX2 path
            a = np.full((1, m, k), 255, np.uint8)
            a[0, 1::2] = rng.integers(0, 256, (m // 2, k))
            np.testing.assert_array_equal(run_integer(w, a, 0), integer_product(a, 0, w))
            np.testing.assert_array_equal(run_integer(w, a, 255), integer_product(a, 255, w))


def block_sparse_weight(rng, k: int, n: int, ratio: float, limit: int, outputs: int, reduction: int) -> np.ndarray:
    """Whole blocks of ``outputs`` x ``reduction`` weights zero (sparsify's block=RxC; ragged edge
    blocks too), round(ratio * blocks) of them and at least one kept, the rest random in
    [-limit, limit] with both extremes present."""
    weight = rng.integers(-limit, limit + 1, (k, n)).astype(np.int8)
    weight[rng.random((k, n)) < 0.1] = limit
    weight[rng.random((k, n)) < 0.1] = -limit
    grid = (-(-k // reduction), -(-n // outputs))
    blocks = grid[0] * grid[1]
    empty = np.zeros(blocks, bool)
    empty[rng.permutation(blocks)[:min(blocks - 1, round(ratio * blocks))]] = True
    weight[np.kron(empty.reshape(grid), np.ones((reduction, outputs), bool))[:k, :n]] = 0
    return weight


def tile_sparse_weight(rng, k: int, n: int, ratio: float, limit: int) -> np.ndarray:
    """16-output x 64-reduction tiles (block=16x64), what the AVX2 tile and AMX kernels skip."""
    return block_sparse_weight(rng, k, n, ratio, limit, 16, 64)


def assert_float_op_equals_the_dense_chain(rng, columns, weight, rows):
    """SparseMatMulIntegerToFloat with per-column scales and a bias equals MatMulInteger -> Cast ->
    Mul -> Add bit for bit, at each row count in ``rows``."""
    k, n = weight.shape
    scale = rng.uniform(0.001, 0.02, n).astype(np.float32)
    offsets = rng.normal(size=n).astype(np.float32)
    sparse = open_session(to_float_model(columns, scale, offsets))
    dense = open_session(dense_integer_chain(weight, scale, offsets), optimized=False)  # Cast, Mul, Add
    for m in rows:
        feeds = {"A": rng.integers(0, 256, (m, k)).astype(np.uint8), "a_scale": np.array(0.037, np.float32),
                 "zp": np.array(121, np.uint8)}
        np.testing.assert_array_equal(sparse.run(None, feeds)[0], dense.run(None, feeds)[0], err_msg=f"{k}x{n} m={m}")


def force_path(monkeypatch, isa: str) -> None:
    if isa not in kernels.supported_isas():
        pytest.skip(f"this CPU/OS/build has no {isa} path (has {', '.join(kernels.supported_isas())})")
    monkeypatch.setenv("GRAPHC_ISA", isa)


@pytest.mark.parametrize("isa,limit", [("avx2", 63), ("avx2", 64), ("avx512vnni", 63), ("avx512vnni", 127)])
def test_tile_kernels_equal_the_int64_product(isa, limit, monkeypatch):
    """The tile kernels (kernel_avx2_tiles.cc, kernel_avx512vnni_tiles.cc: constant weights with most
    16 x 64 tiles empty; AVX2's for pairs vpmaddubsw cannot saturate, VNNI's for any 8-bit weights):
    ragged K and N, 1 to 70 rows (VNNI's 1-3 rows with several accumulators per row, its blocks of 8
    rows and a ragged last block), dense weights, A at its extremes, int32 and float outputs."""
    force_path(monkeypatch, isa)
    # dense (ratio 0): neighbouring panels with the same kept tiles, which VNNI's kernel takes in pairs,
    # and a lone ragged last panel
    for k, n, ratio in ((200, 70, 0.7), (768, 48, 0.7), (64, 48, 0.7), (129, 17, 0.7), (3100, 33, 0.7), (300, 40, 0.0)):
        rng = np.random.default_rng([k, n])  # a draw whose kept tiles are not all ragged edge ones
        weight = tile_sparse_weight(rng, k, n, ratio, limit)
        columns = pack(weight)
        assert kernels.uses_tiles(columns, isa), f"{k}x{n} should run on the tile kernel"
        for m in (1, 2, 3, 5, 8, 70):
            a = rng.integers(0, 256, (1, m, k)).astype(np.uint8)
            a[0, ::2] = 255
            for zero_point in (0, 255, int(rng.integers(0, 256))):
                np.testing.assert_array_equal(run_integer(weight, a, zero_point), integer_product(a, zero_point, weight),
                                              err_msg=f"{isa} {k}x{n} m={m} zp={zero_point}")
        assert_float_op_equals_the_dense_chain(rng, columns, weight, rows=(1, 9))


def test_avx2_tile_kernel_only_where_it_pays_and_cannot_saturate():
    """The library's rule: tiles when the kept 16 x 64 tiles cost less than 3x the non-zero
    4-groups' share (ops.cc, kAvx2ColumnGroupCost), and only for pairs vpmaddubsw cannot saturate."""
    rng = np.random.default_rng(5)
    share = kernels.kept_tile_share(pack(tile_sparse_weight(rng, 256, 64, 0.75, 63)), "avx2")
    assert share == pytest.approx(0.25)  # 4 x 16 tiles, 12 of them empty
    dense = pack(rng.integers(-63, 64, (256, 64)).astype(np.int8))
    assert kernels.kept_tile_share(dense, "avx2") == 1.0  # dense: the tile kernel, at onnxruntime's dense speed
    assert not kernels.uses_tiles(pack(tile_sparse_weight(rng, 256, 64, 0.8, 127)), "avx2")  # pairs overflow int16
    assert not kernels.uses_tiles(pack(sparse_weight(rng, 256, 64, "block1x4", 0.8) // 2), "avx2")  # 1x4: every tile kept
    assert kernels.uses_tiles(pack(sparse_weight(rng, 256, 64, "block1x4", 0.5) // 2), "avx2")  # 50%: columns cost 1.5


def panel_sparse_weight(rng, k: int, n: int, ratio: float, limit: int) -> np.ndarray:
    """8-output x 4-reduction blocks (block=8x4), what the AVX2 panel kernel reads fastest."""
    return block_sparse_weight(rng, k, n, ratio, limit, 8, 4)


def test_avx2_panel_kernel_equals_the_int64_product(monkeypatch):
    """The AVX2 path's few-rows panel kernel (kernel_avx2_panels.cc: constant weights whose zeros
    span 8 outputs, below 4 rows): ragged K and N, a whole panel and whole rows of K empty, 1 to 3
    rows (and 4, past it, on the other kernels), A at its extremes, int32 and float outputs."""
    if "avx2" not in kernels.supported_isas():
        pytest.skip(f"this CPU/OS/build has no avx2 path (has {', '.join(kernels.supported_isas())})")
    monkeypatch.setenv("GRAPHC_ISA", "avx2")
    rng = np.random.default_rng(8)
    for k, n in ((768, 64), (129, 23), (33, 15), (3100, 41), (4, 8), (200, 70), (1, 16)):
        weight = panel_sparse_weight(rng, k, n, 0.8, 63)
        if k >= 64:
            weight[:, 8:16] = 0  # a whole panel empty
            weight[k // 2:k // 2 + 8] = 0  # and 2 groups of K in every panel
        columns = pack(weight)
        assert kernels.few_rows_kernel(columns, "avx2") == "panels", f"{k}x{n} should run on the panel kernel"
        for m in (1, 2, 3, 4):
            a = rng.integers(0, 256, (1, m, k)).astype(np.uint8)
            a[0, ::2] = 255
            a[0, :, :k // 3] = 0
            for zero_point in (0, 255, int(rng.integers(0, 256))):
                np.testing.assert_array_equal(run_integer(weight, a, zero_point), integer_product(a, zero_point, weight),
                                              err_msg=f"{k}x{n} m={m} zp={zero_point}")
        scale = rng.uniform(0.001, 0.02, n).astype(np.float32)
        offsets = rng.normal(size=n).astype(np.float32)
        for bias in (None, offsets):
            sparse = open_session(to_float_model(columns, scale, bias))
            dense = open_session(dense_integer_chain(weight, scale, bias), optimized=False)  # Cast, Mul, Add
            for m in (1, 3):
                feeds = {"A": rng.integers(0, 256, (m, k)).astype(np.uint8), "a_scale": np.array(0.037, np.float32),
                         "zp": np.array(121, np.uint8)}
                np.testing.assert_array_equal(sparse.run(None, feeds)[0], dense.run(None, feeds)[0],
                                              err_msg=f"{k}x{n} m={m} bias={bias is not None}")


def test_vnni_tile_kernel_where_it_costs_less_than_the_columns():
    """The AVX-512 VNNI path's rule (ops.cc, kVnniColumnGroupCost): tiles when the kept 16 x 64 tiles
    cost less than 2x the non-zero 4-groups' share, for any 8-bit weights; below 4 rows the tiles or
    the one-row lane kernel (no panel kernel on this path)."""
    rng = np.random.default_rng(6)
    assert kernels.kept_tile_share(pack(tile_sparse_weight(rng, 256, 64, 0.75, 127)), "avx512vnni") == pytest.approx(0.25)
    dense = pack(rng.integers(-128, 128, (256, 64)).astype(np.int8))
    assert kernels.kept_tile_share(dense, "avx512vnni") == 1.0
    assert kernels.few_rows_kernel(dense, "avx512vnni") == "tiles"
    assert not kernels.uses_tiles(pack(sparse_weight(rng, 256, 64, "block1x4", 0.8)), "avx512vnni")  # 1x4: every tile kept
    assert kernels.uses_tiles(pack(sparse_weight(rng, 256, 64, "block1x4", 0.4)), "avx512vnni")  # 40%: columns cost 1.2
    assert kernels.few_rows_kernel(pack(panel_sparse_weight(rng, 768, 64, 0.8, 63)), "avx512vnni") == "columns"
    with pytest.raises(ValueError, match="no tile kernel"):
        kernels.uses_tiles(dense, "amx")


def test_avx2_panel_kernel_only_where_it_reads_fewer_bytes_and_cannot_saturate():
    """The library's rule (ops.cc, kPanelEntryBytes / lane_group_bytes): 8-column panels below 4 rows
    when their entries (32 weights and an index each) take fewer bytes than the non-zero 4-groups
    (4 weights and an index each), off the tile kernel, for pairs vpmaddubsw cannot saturate."""
    rng = np.random.default_rng(9)
    assert kernels.few_rows_kernel(pack(panel_sparse_weight(rng, 768, 64, 0.8, 63)), "avx2") == "panels"
    assert kernels.few_rows_kernel(pack(panel_sparse_weight(rng, 768, 64, 0.5, 63)), "avx2") == "panels"
    assert kernels.few_rows_kernel(pack(panel_sparse_weight(rng, 768, 64, 0.8, 127)), "avx2") == "columns"  # pairs overflow
    # 1x4 groups scattered at 80%: 83% of a panel's union holds a group, 4.2 entry bytes per group byte
    assert kernels.few_rows_kernel(pack(sparse_weight(rng, 768, 64, "block1x4", 0.8) // 2), "avx2") == "columns"
    assert kernels.few_rows_kernel(pack(rng.integers(-63, 64, (768, 64)).astype(np.int8)), "avx2") == "tiles"
    assert kernels.few_rows_kernel(pack(tile_sparse_weight(rng, 256, 64, 0.75, 63)), "avx2") == "tiles"


@pytest.mark.parametrize("limit", [63, 127])
@pytest.mark.parametrize("isa", kernels.TILE_PATHS)
def test_one_row_lane_kernels_equal_the_int64_product(isa, limit, monkeypatch):
    """The one-row kernels on constant weights (kernel_avx2_gemv.cc, kernel_avx512vnni_gemv.cc: the lane form, the
    columns sorted by their number of 4-groups into slices of 8, each lane one column): columns of
    very different lengths in a ragged N (a full one, an empty one, half a column, one group), K on
    both sides of the one-byte index limit (1024 and 1028: 256 and 257 groups), 7-bit weights
    (AVX2: vpmaddubsw) and 8-bit ones (AVX2: 16-bit widening; VNNI: vpdpbusd for both), 1 to 3 rows and 4 past it, A at its extremes,
    int32 and float outputs."""
    force_path(monkeypatch, isa)
    rng = np.random.default_rng(limit)
    for k, n in ((1024, 37), (1028, 37), (20, 9), (3072, 70), (768, 8)):
        weight = np.clip(sparse_weight(rng, k, n, "block1x4", 0.85), -limit, limit)
        weight[:, 0] = rng.choice([-limit, limit], k)  # every group kept
        weight[:, 1] = 0  # none
        weight[: k // 2, 2] = 0
        weight[: (k - 1) // 4 * 4, 3] = 0  # only the last (ragged) group
        columns = pack(weight)
        assert kernels.few_rows_kernel(columns, isa) == "columns", f"{k}x{n} should run on the one-row kernel"
        for m in (1, 2, 3, 4):
            a = rng.integers(0, 256, (2, m, k)).astype(np.uint8)
            a[0] = 255
            a[1, :, ::2] = 0
            for zero_point in (0, 255, int(rng.integers(0, 256))):
                np.testing.assert_array_equal(run_integer(weight, a, zero_point), integer_product(a, zero_point, weight),
                                              err_msg=f"{isa} {k}x{n} m={m} zp={zero_point} limit={limit}")
        if limit == 63 or "avx512vnni" in kernels.supported_isas():  # onnxruntime's MatMulInteger saturates
            # 8-bit weights on AVX2 without VNNI
            assert_float_op_equals_the_dense_chain(rng, columns, weight, rows=(1, 3))


@pytest.mark.parametrize("ratio", [0.0, 0.8])
def test_amx_kernel_equals_the_int64_product_across_its_work_items(ratio, monkeypatch):
    """The AMX path (kernel_amx.cc): work items of 32 rows x 256 columns over the kept 16 x 64 tiles
    of each 32 columns (the pair form: empty tiles neither stored nor multiplied). Shapes cross every
    item and tile edge (N past 256 and not a multiple of 16 or 32, a lone last 16-column panel, rows
    past 32 and not a multiple of 16, ragged K), constant weights and weights fed at run time (the
    pair form built on every run), int32 and float outputs."""
    if "amx" not in kernels.supported_isas():
        pytest.skip(f"this CPU/OS/build has no amx path (has {', '.join(kernels.supported_isas())})")
    monkeypatch.setenv("GRAPHC_ISA", "amx")
    rng = np.random.default_rng(int(ratio * 10) + 23)
    for k, n in ((200, 300), (768, 529), (129, 17), (64, 48), (3100, 33)):
        weight = tile_sparse_weight(rng, k, n, ratio, 127)
        columns = pack(weight)
        fed = integer_model(columns)
        values = {t.name: onnx.numpy_helper.to_array(t) for t in fed.graph.initializer}
        fed.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                               for t in fed.graph.initializer)
        del fed.graph.initializer[:]
        constant, per_run = open_session(integer_model(columns)), open_session(fed)
        for m in (1, 16, 33, 70):
            a = rng.integers(0, 256, (1, m, k)).astype(np.uint8)
            a[0, ::3] = 255
            for zero_point in (0, 255, int(rng.integers(0, 256))):
                feeds = {"A": a, "zp": np.array(zero_point, np.uint8)}
                expected = integer_product(a, zero_point, weight)
                np.testing.assert_array_equal(constant.run(None, feeds)[0], expected, err_msg=f"{k}x{n} m={m}")
                np.testing.assert_array_equal(per_run.run(None, {**feeds, **values})[0], expected,
                                              err_msg=f"{k}x{n} m={m} fed")
        assert_float_op_equals_the_dense_chain(rng, columns, weight, rows=(2, 40))


def test_default_path_on_an_amx_cpu_follows_the_work_of_each_kernel():
    """Without GRAPHC_ISA on a CPU with AMX (ops.cc path_for): AMX from 16 rows; below, AMX unless
    4 x the non-zero 4-group share is under the kept 16 x 64 tile share, then AVX-512 VNNI's (its
    one-row lane kernel below 4 rows, its panels from 4); and the chosen path gives the int64 product."""
    if "amx" not in kernels.supported_isas():
        pytest.skip(f"this CPU/OS/build has no amx path (has {', '.join(kernels.supported_isas())})")
    rng = np.random.default_rng(29)
    dense = rng.integers(-63, 64, (768, 256)).astype(np.int8)
    blocks_80 = sparse_weight(rng, 768, 256, "block1x4", 0.8)  # density 0.2, every tile kept: 0.8 < 1
    scattered_90 = sparse_weight(rng, 768, 256, "unstructured", 0.9)  # density 0.34: 1.37 > 1
    tiles_80 = tile_sparse_weight(rng, 768, 256, 0.8, 63)  # density 0.2, kept tiles 0.2: 0.8 > 0.2
    expected = {1: ("amx", "avx512vnni", "amx", "amx"), 3: ("amx", "avx512vnni", "amx", "amx"),
                8: ("amx", "avx512vnni", "amx", "amx"), 16: ("amx", "amx", "amx", "amx")}
    for rows, paths in expected.items():
        for weight, path in zip((dense, blocks_80, scattered_90, tiles_80), paths):
            assert kernels.default_path(pack(weight), rows) == path, f"{rows} rows"
    for weight in (blocks_80, dense):
        a = rng.integers(0, 256, (1, 3, 768)).astype(np.uint8)
        np.testing.assert_array_equal(run_integer(weight, a, 77), integer_product(a, 77, weight))


def test_default_path_without_amx_is_the_best_vector_path_at_every_row_count():
    """Without AMX the rows do not choose the path: the best this CPU has runs every call."""
    isas = kernels.supported_isas()
    if "amx" in isas:
        pytest.skip("this CPU has AMX: test_default_path_on_an_amx_cpu_follows_the_work_of_each_kernel covers it")
    best = kernels.default_isa()
    assert best == isas[-1]
    rng = np.random.default_rng(31)
    for weight in (rng.integers(-63, 64, (300, 70)).astype(np.int8), sparse_weight(rng, 300, 70, "block1x4", 0.8)):
        for rows in (1, 3, 8, 16, 129):
            assert kernels.default_path(pack(weight), rows) == best, f"{rows} rows"
