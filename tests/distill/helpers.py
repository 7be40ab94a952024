"""Helpers of the distill tests: independent numpy references of the losses, tiny models,
and running the worker on a directory."""

import pathlib

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from graphc.data import Dataset, model_signature
from graphc.passes.distill import run as distill_run

ROOT = pathlib.Path(__file__).resolve().parents[2]
CNN = ROOT / "models" / "fashion_cnn.onnx"
TEST_SPLIT = ROOT / "models" / "fashion_mnist_test.npz"


def outputs(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0].astype(np.float64)


def reference_loss(s, t, labels, T, alpha, beta):
    """The KD loss written out independently of the worker (float64)."""
    def log_softmax(x):
        m = x.max(1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(1, keepdims=True))

    p_t = np.exp(log_softmax(t / T))
    kl = (p_t * (np.log(p_t) - log_softmax(s / T))).sum(1).mean()
    ce = -log_softmax(s)[np.arange(len(s)), labels].mean()
    return alpha * T * T * kl + (1 - alpha) * ce + beta * ((s - t) ** 2).mean()


def run_in(directory, fashion, python, **config):
    config = {"inputs": ["image"], "threads": 2, "epochs": 1, **config}
    distill_run.prepare(directory, fashion["student"], fashion["teacher"], fashion["train"], fashion["eval"],
                        config, threads=2)
    return distill_run.run_worker(directory, python, config.get("metric"), say=lambda line: None, progress=False)


def worker_batches(rows: int, batch: int, lengths=None) -> list[np.ndarray]:
    """The rows of each step of the worker's first epoch at seed 0 (its rule 4)."""
    from graphc.passes.distill.worker.batches import epoch_batches

    order = np.random.default_rng([0, 1])
    return epoch_batches(order.permutation(rows), batch, lengths, order)


def trained(directory) -> dict:
    with np.load(directory / "trained.npz") as npz:
        return {k: npz[k] for k in npz.files}

def feature_models():
    """x[N,8] -> Gemm -> Reshape [N,2,3]: a rank-3 feature output (the cosine loss flattens each
    sample); the student is the teacher with perturbed weights."""
    rng = np.random.default_rng(3)

    def model(weight, bias):
        graph = helper.make_graph(
            [helper.make_node("Gemm", ["x", "W", "b"], ["h"], transB=1),
             helper.make_node("Reshape", ["h", "shape"], ["y"])], "features",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 3])],
            [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b"),
             numpy_helper.from_array(np.array([0, 2, 3], np.int64), "shape")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    weight, bias = rng.standard_normal((6, 8)).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    teacher = model(weight, bias)
    student = model(weight + rng.standard_normal((6, 8)).astype(np.float32) * 0.5,
                    bias + rng.standard_normal(6).astype(np.float32) * 0.5)
    signature = model_signature(teacher)
    train = Dataset({"x": rng.standard_normal((256, 8)).astype(np.float32)}, None, "train")
    evaluation = Dataset({"x": rng.standard_normal((64, 8)).astype(np.float32)}, None, "eval")
    assert [s.name for s in signature] == ["x"]
    return teacher, student, train, evaluation


def reference_feature_loss(s, t, loss, alpha, beta):
    """cosine: 1 - cos of each flattened sample, averaged; mse: mean squared error (float64)."""
    s, t = s.reshape(len(s), -1), t.reshape(len(t), -1)
    if loss == "cosine":
        main = (1 - (s * t).sum(1) / np.sqrt((s * s).sum(1) * (t * t).sum(1) + 1e-12)).mean()
    else:
        main = ((s - t) ** 2).mean()
    return alpha * main + beta * ((s - t) ** 2).mean()


def pooled_model(name: str, nodes: list, initializers: dict[str, np.ndarray]):
    """``nodes`` computing h [N, L, 4] from ids, then the shared head: h masked by ``mask``,
    summed over L, MatMul(W) -> y [N, 3] (``initializers`` holds W and the nodes' tensors)."""
    head = [helper.make_node("Cast", ["mask"], ["mf"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["mf", "axis2"], ["mu"]),
            helper.make_node("Mul", ["h", "mu"], ["hm"]),
            helper.make_node("ReduceSum", ["hm", "axis1"], ["s"], keepdims=0),
            helper.make_node("MatMul", ["s", "W"], ["y"])]
    constants = {"axis2": np.array([2], np.int64), "axis1": np.array([1], np.int64), **initializers}
    graph = helper.make_graph(
        nodes + head, name,
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "L"]),
         helper.make_tensor_value_info("mask", TensorProto.INT64, ["N", "L"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(value, key) for key, value in constants.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def token_inputs(rng) -> dict[str, np.ndarray]:
    """64 rows of ids < 12 and a mask of 1 to 8 leading ones."""
    mask = np.zeros((64, 8), np.int64)
    for row, length in enumerate(rng.integers(1, 9, 64)):
        mask[row, :length] = 1
    return {"ids": rng.integers(0, 12, (64, 8)), "mask": mask}


def embedding_models():
    """ids, mask [N, L] -> Gather(E) -> masked sum over L -> MatMul(W) -> y [N, 3]: a trained
    embedding table read by Gather (GatherGrad in training); the teacher has other weights."""
    rng = np.random.default_rng(6)

    def model(table, weight):
        return pooled_model("embedding", [helper.make_node("Gather", ["E", "ids"], ["h"])], {"E": table, "W": weight})

    student = model(rng.standard_normal((12, 4)).astype(np.float32), rng.standard_normal((4, 3)).astype(np.float32))
    teacher = model(rng.standard_normal((12, 4)).astype(np.float32), rng.standard_normal((4, 3)).astype(np.float32))
    return student, teacher, token_inputs(rng)


def position_models():
    """ids, mask [N, L] -> Gather(E, ids) + Gather(P, positions[:, :L]) -> masked sum over L ->
    MatMul(W) -> y [N, 3]. The position rows are a [1, 8] buffer sliced to the computed length,
    as Hugging Face BERT exports read them: shape inference cannot tell that the [1, L, 4]
    position embeddings broadcast over the batch (worker/unit_dims.py)."""
    rng = np.random.default_rng(8)

    def model(table, positions, weight):
        nodes = [helper.make_node("Shape", ["ids"], ["ids_shape"]),
                 helper.make_node("Gather", ["ids_shape", "one"], ["length"], axis=0),
                 helper.make_node("Unsqueeze", ["length", "axis0"], ["end"]),
                 helper.make_node("Slice", ["position_ids", "zero", "end", "axis1"], ["pos"]),
                 helper.make_node("Gather", ["P", "pos"], ["p"]),
                 helper.make_node("Gather", ["E", "ids"], ["e"]),
                 helper.make_node("Add", ["e", "p"], ["h"])]
        return pooled_model("positions", nodes, {
            "E": table, "P": positions, "W": weight, "position_ids": np.arange(8, dtype=np.int64)[None],
            "one": np.array(1, np.int64), "zero": np.array([0], np.int64), "axis0": np.array([0], np.int64)})

    def weights():
        return (rng.standard_normal((12, 4)).astype(np.float32), rng.standard_normal((8, 4)).astype(np.float32),
                rng.standard_normal((4, 3)).astype(np.float32))

    student, teacher = model(*weights()), model(*weights())
    return student, teacher, token_inputs(rng)


def adamw_step(values: dict, moments: dict, grads: dict, rate: float, step: int) -> None:
    """One step of onnxblock's AdamW (adam_mode=1, Hugging Face: eps added to sqrt(v) before the
    bias correction; no weight decay) on ``values`` in place, float64."""
    for name, value in values.items():
        m, v = moments.setdefault(name, [np.zeros_like(value), np.zeros_like(value)])
        m[...] = 0.9 * m + 0.1 * grads[name]
        v[...] = 0.999 * v + 0.001 * grads[name] ** 2
        value -= rate * np.sqrt(1 - 0.999 ** (step + 1)) / (1 - 0.9 ** (step + 1)) * m / (np.sqrt(v) + 1e-6)
