"""Keep the installed ``kernels`` distribution importable from inside a graphc checkout.

graphc's ``kernels/`` folder installs as ``graphc.kernels``, but in a checkout it is also a
top-level package named ``kernels`` whenever the repository root is on ``sys.path``
(``python -m pytest`` and ``python -m graphc`` run there put it first). Hugging Face's hub
kernels are a distribution of that same name, and transformers >= 5.25 depends on it and
imports names from it while it imports a model (``from kernels import CUDAProperties``): with
the checkout's folder found first, every transformers model import failed there.

Rule: when graphc runs from a checkout, a finder placed first on ``sys.meta_path`` resolves the
top-level name ``kernels`` on ``sys.path`` without the entries that would find the checkout's
folder; when no such distribution is installed the normal search goes on (and finds the
folder, which transformers then reports as not viable: it has no version). ``graphc.kernels``
is untouched: it is a different name. Nothing is imported ahead of time.

Written by hand: this is about one name clash between this layout and one distribution; no
library decides which of two same-named packages a process should see.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from pathlib import Path

_CHECKOUT_ROOT = Path(__file__).resolve().parent.parent
_CHECKOUT_KERNELS = _CHECKOUT_ROOT / "kernels"


def _finds_checkout_kernels(entry: str) -> bool:
    try:
        return (Path(entry or ".").resolve() / "kernels") == _CHECKOUT_KERNELS
    except OSError:
        return False


class _InstalledKernelsFinder(importlib.abc.MetaPathFinder):
    """Finds the top-level ``kernels`` package on ``sys.path`` past the checkout root."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "kernels" or path is not None:
            return None
        entries = [entry for entry in sys.path if not _finds_checkout_kernels(entry)]
        return importlib.machinery.PathFinder.find_spec(fullname, entries)


def install() -> None:
    """Place the finder once, only in a checkout (a wheel has no top-level ``kernels/``)."""
    if not (_CHECKOUT_ROOT / "pyproject.toml").is_file() or not (_CHECKOUT_KERNELS / "__init__.py").is_file():
        return
    if any(isinstance(finder, _InstalledKernelsFinder) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _InstalledKernelsFinder())
