"""Data sources: .npz, a directory of .npy, synthetic inputs; validation messages."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from graphc.data import load_dataset, model_signature, parse_shapes, synthetic_dataset
from graphc.errors import GraphcError


def image_model(batch="N") -> onnx.ModelProto:
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["image"], ["y"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def token_model() -> onnx.ModelProto:
    """input_ids indexes a 50-row embedding table; mask and type ids are plain inputs."""
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
              for n in ("input_ids", "attention_mask", "token_type_ids")]
    table = helper.make_tensor("table", TensorProto.FLOAT, [50, 4], np.ones(200, np.float32))
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["emb"]),
             helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("Cast", ["token_type_ids"], ["t"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["m", "t"], ["s"]),
             helper.make_node("Unsqueeze", ["s", "axes"], ["s3"]),
             helper.make_node("Mul", ["emb", "s3"], ["out"])]
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [2])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "sequence", 4])
    graph = helper.make_graph(nodes, "g", inputs, [out], initializer=[table, axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_npz_with_labels_loads_and_batches(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, image=np.zeros((10, 3, 8, 8), np.float32), labels=np.arange(10))
    data = load_dataset(path, model_signature(image_model()))
    assert len(data) == 10 and data.labels.tolist() == list(range(10))
    sizes = [len(feeds["image"]) for feeds, _ in data.batches(4)]
    assert sizes == [4, 4, 2]


def test_npy_directory_loads(tmp_path):
    np.save(tmp_path / "image.npy", np.ones((3, 3, 8, 8), np.float32))
    np.save(tmp_path / "labels.npy", np.array([1, 2, 3]))
    data = load_dataset(tmp_path, model_signature(image_model()))
    assert data.inputs["image"].shape == (3, 3, 8, 8) and data.labels.tolist() == [1, 2, 3]


@pytest.mark.parametrize("arrays, message", [
    ({"img": np.zeros((2, 3, 8, 8), np.float32)}, "'img' is not an input of the model \\(inputs: image"),
    ({"image": np.zeros((2, 3, 8, 8), np.float64)}, "input 'image' has dtype float64, the model expects float32"),
    ({"image": np.zeros((2, 3, 9, 8), np.float32)},
     r"input 'image' has shape \[2, 3, 9, 8\], the model expects \[N, 3, 8, 8\] \(axis 2: 9 != 8\)"),
    ({"image": np.zeros((2, 8, 8), np.float32)}, r"expects \[N, 3, 8, 8\] \(rank 4\)"),
    ({"image": np.zeros((2, 3, 8, 8), np.float32), "labels": np.zeros(3)}, "labels has 3 rows, the inputs have 2"),
    ({}, "missing input 'image'"),
])
def test_wrong_name_dtype_shape_name_the_input(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays) if arrays else np.savez(path, other_unused=np.zeros(1))
    if not arrays:
        message = "'other_unused' is not an input"
    with pytest.raises(GraphcError, match=message):
        load_dataset(path, model_signature(image_model()))


def test_fixed_batch_needs_whole_batches(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, image=np.zeros((3, 3, 8, 8), np.float32))
    with pytest.raises(GraphcError, match="not a multiple of the model's fixed batch 2"):
        load_dataset(path, model_signature(image_model(batch=2)))


def test_unreadable_files_are_clear_errors(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(GraphcError, match="cannot read as .npz"):
        load_dataset(tmp_path / "junk.npz", model_signature(image_model()))
    with pytest.raises(GraphcError, match="no such file"):
        load_dataset(tmp_path / "missing.npz", model_signature(image_model()))
    (tmp_path / "empty").mkdir()
    with pytest.raises(GraphcError, match="holds no .npy files"):
        load_dataset(tmp_path / "empty", model_signature(image_model()))


def test_synthetic_tokens_are_valid_ids_and_masks_ones():
    data = synthetic_dataset(token_model(), batches=3, shapes=parse_shapes(["sequence=16"]))
    ids = data.inputs["input_ids"]
    assert ids.shape == (3, 16) and ids.dtype == np.int64
    assert ids.min() >= 0 and ids.max() < 50 and len(np.unique(ids)) > 5
    assert (data.inputs["attention_mask"] == 1).all() and (data.inputs["token_type_ids"] == 0).all()
    assert [f["input_ids"].shape for f, _ in data.batches()] == [(1, 16)] * 3


def test_synthetic_shapes_from_flag_and_defaults():
    data = synthetic_dataset(image_model(), shapes=parse_shapes(["image=4x3x8x8"]))
    assert data.inputs["image"].shape == (4, 3, 8, 8) and data.inputs["image"].dtype == np.float32
    assert synthetic_dataset(token_model()).inputs["input_ids"].shape == (1, 64)
    with pytest.raises(GraphcError, match=r"--shape image: \[4, 3, 9, 8\] does not fit"):
        synthetic_dataset(image_model(), shapes=parse_shapes(["image=4x3x9x8"]))
    with pytest.raises(GraphcError, match="not an input or a dynamic dim"):
        synthetic_dataset(image_model(), shapes=parse_shapes(["pixels=1x3x8x8"]))
    with pytest.raises(GraphcError, match="expected NAME=DIMxDIMx"):
        parse_shapes(["image=1x3xAx8"])


def _scalar_input_model():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    rate = helper.make_tensor_value_info("rate", TensorProto.INT64, [])
    return helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x, rate],
                                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])]))


def test_a_scalar_input_goes_with_every_batch_unchanged():
    signature = model_signature(_scalar_input_model())
    assert [s.scalar for s in signature] == [False, True]
    from graphc.data import validate

    dataset = validate({"x": np.arange(20, dtype=np.float32).reshape(5, 4), "rate": np.int64(16000)}, signature, "d")
    assert len(dataset) == 5 and len(dataset.take(2)) == 2 and dataset.take(2).inputs["rate"] == 16000
    batches = [feeds for feeds, _ in dataset.batches(2)]
    assert [len(f["x"]) for f in batches] == [2, 2, 1] and all(f["rate"] == 16000 for f in batches)
    synthetic = synthetic_dataset(_scalar_input_model(), batches=3)
    assert synthetic.inputs["rate"].shape == () and len(synthetic) == 3


def test_scalar_inputs_refuse_rows_and_tensors_refuse_scalars():
    from graphc.data import validate

    signature = model_signature(_scalar_input_model())
    with pytest.raises(GraphcError, match=r"input 'rate' has shape \[5\], the model expects a scalar"):
        validate({"x": np.zeros((5, 4), np.float32), "rate": np.zeros(5, np.int64)}, signature, "d")
    with pytest.raises(GraphcError, match=r"input 'x' is a scalar, the model expects \[n, 4\]"):
        validate({"x": np.float32(1), "rate": np.int64(1)}, signature, "d")


# ------------------------------------------------------------------ batch axes (issue 13)
def _signature_of(*inputs):
    """A model with ``inputs`` (name, elem type, dims) feeding one Identity each."""
    infos = [helper.make_tensor_value_info(n, t, dims) for n, t, dims in inputs]
    nodes = [helper.make_node("Identity", [n], [f"{n}_out"]) for n, _, _ in inputs]
    outputs = [helper.make_tensor_value_info(f"{n}_out", t, dims) for n, t, dims in inputs]
    return helper.make_model(helper.make_graph(nodes, "g", infos, outputs),
                             opset_imports=[helper.make_opsetid("", 17)])


F, I64 = TensorProto.FLOAT, TensorProto.INT64


@pytest.mark.parametrize("inputs, axes", [
    # rule 3: the name at axis 0 of the first input with a named axis 0, wherever it appears
    ([("input", F, ["batch", "sequence"]), ("state", F, [2, "batch", 128]), ("sr", I64, [])],
     {"input": 0, "state": 1, "sr": None}),
    ([("state", F, [2, "batch", 128]), ("input", F, ["batch", 512])], {"state": 1, "input": 0}),
    # rule 4: fixed axis 0 and one unnamed dynamic dim, beside an input with a dynamic axis 0
    ([("input", F, [None, None]), ("state", F, [2, None, 128]), ("sr", I64, [])],
     {"input": 0, "state": 1, "sr": None}),
    # rule 5: axis 0 (a fixed batch, a differently named dim, two dynamic dims)
    ([("image", F, [1, 3, 8, 8]), ("state", F, [2, None, 128])], {"image": 0, "state": 0}),
    ([("input", F, ["batch", 4]), ("table", F, [3, "rows", 4])], {"input": 0, "table": 0}),
    ([("input", F, [None, 4]), ("grid", F, [2, None, None])], {"input": 0, "grid": 0}),
])
def test_batch_axes_follow_the_documented_rules(inputs, axes):
    assert {s.name: s.batch_axis for s in model_signature(_signature_of(*inputs))} == axes


def test_batch_axis_flag_sets_and_checks_axes():
    from graphc.data import parse_batch_axes

    model = _signature_of(("input", F, ["batch", 512]), ("table", F, [3, "rows", 4]), ("sr", I64, []))
    assert parse_batch_axes(["table=1", "sr=none,input=0"]) == {"table": 1, "sr": None, "input": 0}
    signature = model_signature(model, parse_batch_axes(["table=none"]))
    assert [s.batch_axis for s in signature] == [0, None, None]
    for items, message in [(["table"], "expected NAME=AXIS"), (["table=-1"], "expected NAME=AXIS"),
                           (["table=x"], "expected NAME=AXIS"), (["=1"], "expected NAME=AXIS")]:
        with pytest.raises(GraphcError, match=message):
            parse_batch_axes(items)
    for items, message in [({"tabel": 1}, r"--batch-axis tabel: not an input of the model \(inputs: input, table, sr\)"),
                           ({"table": 3}, r"input 'table' is \[3, rows, 4\] \(rank 3\); give an axis from 0 to 2"),
                           ({"sr": 0}, r"'sr' is a scalar \(0-d\); only sr=none fits")]:
        with pytest.raises(GraphcError, match=message):
            model_signature(model, items)


def _state_model():
    return _signature_of(("input", F, ["batch", 6]), ("state", F, [2, "batch", 3]), ("sr", I64, []))


def test_natural_layout_validates_and_batches_on_each_axis():
    from graphc.data import validate

    rng = np.random.default_rng(0)
    arrays = {"input": rng.standard_normal((5, 6)).astype(np.float32),
              "state": rng.standard_normal((2, 5, 3)).astype(np.float32), "sr": np.array(16000)}
    dataset = validate(arrays, model_signature(_state_model()), "d.npz")
    assert len(dataset) == 5 and dataset.axes == {"input": 0, "state": 1, "sr": None}
    batches = [feeds for feeds, _ in dataset.batches(2)]
    assert [f["state"].shape for f in batches] == [(2, 2, 3), (2, 2, 3), (2, 1, 3)]
    np.testing.assert_array_equal(np.concatenate([f["state"] for f in batches], axis=1), arrays["state"])
    assert all(f["sr"] == 16000 for f in batches)
    assert dataset.take(3).inputs["state"].shape == (2, 3, 3) and len(dataset.take(3)) == 3
    # a state laid out batch-first is refused with the axes and the flag that changes them
    with pytest.raises(GraphcError, match=r"input 'state' has shape \[5, 2, 3\], the model expects \[2, batch, 3\] "
                                          r"\(axis 0: 5 != 2\); batch axes: input: 0, state: 1, sr: none; set one "
                                          r"with --batch-axis NAME=AXIS or NAME=none"):
        validate({**arrays, "state": arrays["state"].transpose(1, 0, 2).copy()}, model_signature(_state_model()),
                 "d.npz")
    with pytest.raises(GraphcError, match=r"input 'state' has 4 rows \(axis 1 of \[2, 4, 3\]\), input 'input' has 5; "
                                          r"batch axes: input: 0, state: 1, sr: none; set one with --batch-axis"):
        validate({**arrays, "state": arrays["state"][:, :4]}, model_signature(_state_model()), "d.npz")
    with pytest.raises(GraphcError, match=r"has shape \[2, 5, 4\], the model expects \[2, batch, 3\] \(axis 2"):
        validate({**arrays, "state": np.zeros((2, 5, 4), np.float32)}, model_signature(_state_model()), "d.npz")


def test_an_input_without_batch_axis_goes_whole_and_must_agree_across_sources():
    from graphc.data import check_unbatched_agree, validate

    model = _signature_of(("input", F, ["batch", 6]), ("table", F, [3, "rows", 4]))
    signature = model_signature(model, {"table": None})
    table = np.arange(12 * 3, dtype=np.float32).reshape(3, 3, 4)
    dataset = validate({"input": np.zeros((4, 6), np.float32), "table": table}, signature, "a.npz")
    assert len(dataset) == 4 and all(f["table"] is table for f, _ in dataset.batches(3))
    other = validate({"input": np.zeros((2, 6), np.float32), "table": table + 1}, signature, "b.npz")
    check_unbatched_agree({"--data": dataset, "--train-data": dataset, "--eval-data": None})
    with pytest.raises(GraphcError, match=r"input 'table' has no batch axis .* --data and --eval-data give different"):
        check_unbatched_agree({"--data": dataset, "--eval-data": other})
    with pytest.raises(GraphcError, match=r"\(axis 0: 2 != 3\)"):
        validate({"input": np.zeros((4, 6), np.float32), "table": np.zeros((2, 3, 4), np.float32)}, signature, "c.npz")


def _rate_model():
    """sr (0-d int64) reaches Equal(., 8000) through Reshape and Gather, as silero-vad's
    ifless export does; x [batch, 4] and state [2, batch, 3] pass through."""
    nodes = [helper.make_node("Reshape", ["sr", "minus_one"], ["sr1"]),
             helper.make_node("Gather", ["sr1", "zero"], ["sr0"]),
             helper.make_node("Equal", ["sr0", "rate"], ["ok"]),
             helper.make_node("Cast", ["ok"], ["okf"], to=F),
             helper.make_node("Mul", ["x", "okf"], ["y"]),
             helper.make_node("Identity", ["state"], ["stateN"])]
    inits = [helper.make_tensor("minus_one", I64, [1], [-1]), helper.make_tensor("zero", I64, [], [0]),
             helper.make_tensor("rate", I64, [], [8000])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, ["batch", 4]),
                                           helper.make_tensor_value_info("state", F, [2, "batch", 3]),
                                           helper.make_tensor_value_info("sr", I64, [])],
                              [helper.make_tensor_value_info("y", F, ["batch", 4]),
                               helper.make_tensor_value_info("stateN", F, [2, "batch", 3])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_synthetic_inputs_follow_batch_axes_and_take_the_compared_scalar():
    import onnxruntime as ort

    from graphc.data import accepted_scalars, synthetic_feeds

    model = _rate_model()
    assert accepted_scalars(model) == {"sr": 8000}
    data = synthetic_dataset(model, batches=3)
    assert {k: v.shape for k, v in data.inputs.items()} == {"x": (3, 4), "state": (2, 3, 3), "sr": ()}
    assert data.inputs["sr"] == 8000 and data.inputs["sr"].dtype == np.int64 and len(data) == 3
    assert [f["state"].shape for f, _ in data.batches()] == [(2, 1, 3)] * 3
    feeds = synthetic_feeds(model, {}, batch=5)
    assert feeds["state"].shape == (2, 5, 3) and feeds["x"].shape == (5, 4)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_array_equal(y, feeds["x"])  # the accepted rate: the model's main branch
    # --batch-axis state=none (its dims then come from --shape): one state whole with every batch
    with pytest.raises(GraphcError, match=r"input 'state' has dynamic axis 1 \(batch\) .* --shape state="):
        synthetic_dataset(model, batches=3, batch_axes={"state": None})
    whole = synthetic_dataset(model, batches=3, batch_axes={"state": None}, shapes={"state": (2, 1, 3)})
    assert whole.inputs["state"].shape == (2, 1, 3) and len(whole) == 3


def test_batch_axis_flag_errors_are_one_line_exit_2_on_every_verb(tmp_path, capsys):
    from graphc import cli

    path = tmp_path / "m.onnx"
    onnx.save(_state_model(), str(path))
    np.savez(tmp_path / "d.npz", input=np.zeros((2, 6), np.float32), state=np.zeros((2, 2, 3), np.float32),
             sr=np.array(16000))
    verbs = [["optimize", path, "--passes", "fold", "-o", tmp_path / "o.onnx"], ["inspect", path],
             ["bench", path, "--runs", "1", "--warmup", "0"], ["eval", path, "--data", tmp_path / "d.npz",
                                                              "--metric", "cosine", "--reference", path]]
    for verb in verbs:
        for flag, message in [("stat=1", "--batch-axis stat: not an input"), ("state=7", "give an axis from 0 to 2"),
                              ("state:1", "expected NAME=AXIS")]:
            assert cli.main([*map(str, verb), "--batch-axis", flag]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and message in err[0], (verb[0], flag, err)
    assert not (tmp_path / "o.onnx").exists()
    for verb in verbs:  # and the natural layout works on each
        assert cli.main([*map(str, verb), *(["--data", str(tmp_path / "d.npz")] if verb[0] in ("optimize", "bench")
                                            else [])]) == 0, (verb[0], capsys.readouterr().err)


def test_metrics_take_samples_on_the_first_outputs_batch_axis():
    """cosine of a [2, batch, 3] first output with batch row 0 unchanged and row 1 negated:
    per batch row 1 and -1 (mean 0); taken along axis 0, each 'sample' mixes both rows."""
    from graphc.data import Dataset
    from graphc.metrics import evaluate

    state = np.arange(1, 13, dtype=np.float32).reshape(2, 2, 3)
    flipped = state.copy()
    flipped[:, 1] *= -1  # batch row 1 reversed, row 0 unchanged
    data = Dataset({"x": np.zeros((2, 1), np.float32)}, None, "d")
    on_axis_1 = evaluate(lambda f: [flipped], data, "cosine", reference=lambda f: [state], output_axis=1)
    on_axis_0 = evaluate(lambda f: [flipped], data, "cosine", reference=lambda f: [state])
    assert on_axis_1 == pytest.approx(0.0, abs=1e-9)
    assert on_axis_0 != pytest.approx(0.0, abs=1e-3)
