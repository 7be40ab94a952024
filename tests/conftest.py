"""Shared fixtures: ONNX exports of the topologies in ``tests/topologies.py``, their inputs,
and a pass context.

The tests are a package (``tests/__init__.py``, one sub-package per pass plus ``driver``), so
pytest puts the repository root on ``sys.path`` and every test imports
``tests.topologies`` / ``tests.builders`` and ``graphc.models`` by name.
"""

from __future__ import annotations

import os
import pathlib
import time

import pytest

# kernels/triton's tests run the kernels under Triton's interpreter on a machine without a GPU;
# Triton reads this once, when something first imports it (torch's exporters may), so it is set
# before any test module is imported
if not pathlib.Path("/dev/nvidia0").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from graphc.context import Context
from tests import topologies

_EXPORT_SECONDS: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter):
    if _EXPORT_SECONDS:
        times = ", ".join(f"{key} {sec:.1f}s" for key, sec in _EXPORT_SECONDS.items())
        terminalreporter.write_line(f"topology exports: {times}")


@pytest.fixture(scope="session")
def onnx_model(tmp_path_factory):
    """Factory ``onnx_model(name, dynamo=False, optimize=False) -> Path``.

    Each (name, flavour) is exported at most once per session; dynamo exports have their
    weights in ``<path>.data`` beside the model.
    """
    import torch

    torch.set_num_threads(1)  # the exports are small; leave the cores to other jobs
    root = tmp_path_factory.mktemp("topologies")
    cache: dict[tuple[str, bool, bool], pathlib.Path] = {}

    def get(name: str, dynamo: bool = False, optimize: bool = False) -> pathlib.Path:
        key = (name, bool(dynamo), bool(optimize))
        if key not in cache:
            flavour = ("dynamo-opt" if optimize else "dynamo") if dynamo else "torchscript"
            start = time.perf_counter()
            cache[key] = topologies.export(name, root / f"{name}-{flavour}.onnx", dynamo=dynamo,
                                           optimize=optimize)
            _EXPORT_SECONDS[f"{name}/{flavour}"] = time.perf_counter() - start
        return cache[key]

    return get


@pytest.fixture(scope="session")
def sample_inputs():
    """Factory ``sample_inputs(name, batch=2, seed=0, seq=16) -> {input name: ndarray}``."""
    return topologies.sample_inputs


@pytest.fixture
def make_context():
    """Factory ``make_context(model, **fields) -> Context``: the context a pass receives in
    the pipeline (with an empty report), for tests that run a pass by hand."""
    return Context.for_model
