"""From a checkout, the top-level name ``kernels`` is the installed distribution, not kernels/."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _installed_kernels_distribution() -> bool:
    try:
        importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _run_from_root(code: str) -> subprocess.CompletedProcess:
    # `python -c` puts the current folder (the checkout root) first on sys.path, as `python -m pytest` does
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not _installed_kernels_distribution(), reason="no `kernels` distribution installed to shadow")
def test_transformers_imports_a_model_from_the_checkout_root():
    result = _run_from_root(
        "import graphc, kernels, transformers\n"
        "from transformers import BertConfig, BertModel\n"
        "print(kernels.__file__)"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert Path(result.stdout.strip()).resolve().parent != ROOT / "kernels"


def test_graphc_kernels_is_still_the_checkout_folder():
    result = _run_from_root("import graphc.kernels as k; print(k.__file__)")
    assert result.returncode == 0, result.stderr[-2000:]
    assert Path(result.stdout.strip()).resolve() == ROOT / "kernels" / "__init__.py"
