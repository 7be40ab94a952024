"""graphc's isolated training environment: a venv with onnxruntime-training for ``distill``.

Why isolated: PyPI ``onnxruntime-training-cpu`` (last release 1.19.2, wheels for Python
3.8-3.11) installs the module name ``onnxruntime`` and would replace the normal
``onnxruntime`` graphc runs on, so it lives in its own venv and the distillation worker
(``passes/distill/worker/``) runs there as a subprocess.

Rules:

- Location: ``$GRAPHC_HOME/training-venv`` (``GRAPHC_HOME`` defaults to
  ``~/.cache/graphc``).
- Reproducible: ``python -m venv`` and ``pip install`` of ``PINS``, the complete set of
  exact versions (onnx 1.17 because the optimizer model onnx >= 1.18 generates carries an IR
  version onnxruntime 1.19.2 refuses; numpy 1.x, which 1.19.2 was built against). No torch:
  the worker imports onnxruntime.training's submodules without the package ``__init__``
  that pulls it in.
- Ready means: the venv's Python exists, its marker file ``graphc-training.json`` records
  exactly ``PINS``, and it was written only after the worker's ``--probe`` imported
  everything. ``setup`` is idempotent: a ready environment is left alone (``force``
  rebuilds it); anything else is rebuilt from scratch.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Callable

from graphc.errors import GraphcError

PINS = (
    "onnxruntime-training-cpu==1.19.2",
    "onnx==1.17.0",
    "numpy==1.26.4",
    "protobuf==7.36.2",
    "flatbuffers==25.12.19",
    "sympy==1.14.0",
    "mpmath==1.3.0",
    "packaging==26.4",
    "cerberus==1.3.8",
    "h5py==3.16.0",
)
SUPPORTED_PYTHON = ((3, 8), (3, 11))  # the wheels of onnxruntime-training-cpu 1.19.2
MARKER = "graphc-training.json"
SETUP_COMMAND = "graphc setup training"
# the distill pass's worker, a folder run by path; graphc.passes is located, not imported (it imports every pass)
PASSES_DIR = pathlib.Path(importlib.util.find_spec("graphc.passes").submodule_search_locations[0])
WORKER = PASSES_DIR / "distill" / "worker"


def graphc_home() -> pathlib.Path:
    return pathlib.Path(os.environ.get("GRAPHC_HOME") or pathlib.Path.home() / ".cache" / "graphc")


def env_dir() -> pathlib.Path:
    return graphc_home() / "training-venv"


def env_python(directory: pathlib.Path | None = None) -> pathlib.Path:
    return (directory or env_dir()) / "bin" / "python"


def ready(directory: pathlib.Path | None = None) -> dict | None:
    """The marker of a ready environment, else None."""
    directory = directory or env_dir()
    try:
        marker = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not env_python(directory).exists() or marker.get("pins") != list(PINS):
        return None
    return marker


def require() -> pathlib.Path:
    """The training environment's Python, or a GraphcError saying how to create it."""
    if ready() is None:
        raise GraphcError(f"distill needs graphc's training environment (onnxruntime-training-cpu 1.19.2), "
                          f"which is missing or outdated at {env_dir()}; create it with: {SETUP_COMMAND}")
    return env_python()


def _python_version(python: str) -> tuple[int, int]:
    try:
        out = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"], check=True,
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        raise GraphcError(f"--python {python}: cannot run it") from None
    major, minor = map(int, out.split())
    return major, minor


def _run(command: list[str], what: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [ln for ln in (result.stderr or result.stdout).strip().splitlines() if ln.strip()
                 and not ln.startswith("WARNING: Location")]
        raise GraphcError(f"{what} failed: {lines[-1] if lines else f'exit status {result.returncode}'}")
    return result.stdout


def setup(python: str | None = None, force: bool = False, say: Callable[[str], None] = print) -> dict:
    """Create (or confirm) the training environment; returns its marker."""
    directory = env_dir()
    marker = None if force else ready(directory)
    if marker is not None:
        say(f"training environment ready at {directory} (onnxruntime {marker['versions']['onnxruntime']}, "
            f"onnx {marker['versions']['onnx']}, numpy {marker['versions']['numpy']}); nothing to do")
        return marker
    python = python or sys.executable
    version = _python_version(python)
    if not SUPPORTED_PYTHON[0] <= version <= SUPPORTED_PYTHON[1]:
        raise GraphcError(f"{python} is Python {version[0]}.{version[1]}; onnxruntime-training-cpu 1.19.2 has "
                          f"wheels for Python 3.8-3.11 only: run {SETUP_COMMAND} --python /path/to/python3.11")
    if directory.exists():
        say(f"removing the incomplete or outdated environment at {directory}")
        shutil.rmtree(directory)
    say(f"creating a venv at {directory} with {python} (Python {version[0]}.{version[1]})")
    directory.parent.mkdir(parents=True, exist_ok=True)
    _run([python, "-m", "venv", str(directory)], "python -m venv")
    say("installing " + " ".join(PINS))
    _run([str(env_python(directory)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
          *PINS], "pip install")
    versions = json.loads(_run([str(env_python(directory)), str(WORKER), "--probe"], "the worker's import probe"))
    marker = {"pins": list(PINS), "versions": versions, "python": python}
    tmp = directory / (MARKER + ".tmp")
    tmp.write_text(json.dumps(marker, indent=1) + "\n")
    os.replace(tmp, directory / MARKER)
    say(f"training environment ready at {directory} (onnxruntime {versions['onnxruntime']}, "
        f"onnx {versions['onnx']}, numpy {versions['numpy']})")
    return marker
