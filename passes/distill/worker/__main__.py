"""The worker's entry point: ``<training venv>/bin/python <graphc.passes.distill>/worker
WORKDIR`` trains on WORKDIR (``loop.train``; exit status 3 with error.json for a graph that
cannot be trained), ``... --probe`` prints the versions of what the worker imports
(``graphc setup training`` checks the venv with it).

Run by its folder's path, since graphc is not installed in the training venv (there is no
``python -m graphc...`` there): Python then runs this file as ``__main__`` without a
package, so ``_package`` first imports the folder itself as the package ``distill_worker``,
and the modules beside this one import one another relatively, as they do inside graphc.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import pathlib
import sys
import traceback

import numpy as np

PACKAGE = "distill_worker"  # the name of this folder as a package when it is run by path


def _package() -> str:
    """The package the worker's modules are imported from: this file's own when it has one,
    else this folder, imported as ``PACKAGE``."""
    if __package__:
        return __package__
    here = pathlib.Path(__file__).resolve().parent
    spec = importlib.util.spec_from_file_location(PACKAGE, here / "__init__.py",
                                                  submodule_search_locations=[str(here)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package
    spec.loader.exec_module(package)
    return PACKAGE


_PACKAGE = _package()
loop = importlib.import_module(f"{_PACKAGE}.loop")
protocol = importlib.import_module(f"{_PACKAGE}.protocol")


def import_training() -> None:
    """Import onnxruntime.training without its package ``__init__``.

    Why: that ``__init__`` imports ``optim`` (the FP16 optimizer of ORTModule), which
    imports torch; on-device training (``api``, ``onnxblock``, ``artifacts``) never uses
    it, and a 700 MB torch in the training venv would buy nothing.
    """
    import types

    import onnxruntime

    if "onnxruntime.training" not in sys.modules:
        package = types.ModuleType("onnxruntime.training")
        package.__path__ = [str(pathlib.Path(onnxruntime.__file__).parent / "training")]
        sys.modules["onnxruntime.training"] = package


def probe() -> dict:
    """Versions of what the worker imports (``graphc setup training`` checks the venv with it)."""
    import_training()
    import onnx
    import onnxruntime
    from onnxruntime.training import artifacts, onnxblock  # noqa: F401
    from onnxruntime.training.api import CheckpointState, Module, Optimizer  # noqa: F401

    return {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__, "numpy": np.__version__,
            "python": ".".join(map(str, sys.version_info[:3]))}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--probe"]:
        print(json.dumps(probe()))
        return 0
    if len(argv) != 1:
        print("usage: worker WORKDIR | --probe", file=sys.stderr)
        return 2
    workdir = pathlib.Path(argv[0]).resolve()
    os.chdir(workdir)  # onnxblock writes temporary files into the working directory
    import_training()
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # the gradient builder logs every transformer
    try:
        loop.train(workdir)
    except protocol.UserError as exc:
        protocol.atomic_json(workdir / "error.json", {"message": str(exc)})
        return 3
    except Exception:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
