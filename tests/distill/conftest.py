"""Fixtures of the distill tests: the real training environment and the Fashion-MNIST CNN
pruned by half (the student) with data.

``training_python`` creates the training environment when missing (about 30 s, idempotent);
the tests that need it are skipped only when it cannot be installed (no package index, no
Python 3.11).
"""

import numpy as np
import onnx
import pytest

from graphc import training_env
from graphc.context import Context
from graphc.data import load_dataset, model_signature
from graphc.errors import GraphcError
from graphc.graph import to_graph, to_model
from graphc.passes.prune import PruneOptions, PrunePass
from tests.distill.helpers import CNN, TEST_SPLIT


@pytest.fixture(scope="session")
def training_python():
    try:
        training_env.setup(say=lambda line: None)
    except GraphcError as exc:
        pytest.skip(f"the training environment cannot be installed here: {exc}")
    return training_env.env_python()


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    """1024 train / 512 eval rows of the test split, and the CNN pruned by half (the student)."""
    root = tmp_path_factory.mktemp("distill")
    with np.load(TEST_SPLIT) as npz:
        np.savez(root / "train.npz", image=npz["image"][:1024], labels=npz["labels"][:1024])
        np.savez(root / "eval.npz", image=npz["image"][1024:1536], labels=npz["labels"][1024:1536])
    teacher = onnx.load(str(CNN))
    # Context.for_model is what the make_context fixture returns (a function-scoped fixture
    # cannot serve this module-scoped one)
    result = PrunePass(PruneOptions(ratio=0.5)).run(to_graph(teacher), Context.for_model(teacher))
    student = to_model(result.graph, teacher)
    onnx.save(student, root / "pruned.onnx")
    signature = model_signature(teacher)
    return {"root": root, "teacher": teacher, "student": student,
            "train": load_dataset(root / "train.npz", signature), "eval": load_dataset(root / "eval.npz", signature)}
