"""The corpus of models from the wild (issue 13): real exports shipped in packages and models
written here for the patterns real exporters produce.

Every module in this folder registers its models with ``@corpus_model(name, ...)`` on a
function ``build(directory) -> pathlib.Path`` that writes (or locates) the ONNX file and
returns its path; ``CORPUS`` maps each name to its ``CorpusModel``. One module per family, so
modules can be added without touching this file.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pathlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CorpusModel:
    name: str
    build: Callable[[pathlib.Path], pathlib.Path]
    origin: str  # where it comes from: "package X" or "written in tests/corpus/Y.py"
    tags: frozenset[str] = field(default_factory=frozenset)  # e.g. "stateful", "subgraph", "opset11", "int8"
    cli_args: tuple[str, ...] = ()  # extra CLI arguments every verb needs (e.g. --shape, --batch-axis)


CORPUS: dict[str, CorpusModel] = {}


def corpus_model(name: str, origin: str, tags=(), cli_args=()):
    def register(build):
        if name in CORPUS:
            raise ValueError(f"corpus model {name!r} registered twice")
        CORPUS[name] = CorpusModel(name, build, origin, frozenset(tags), tuple(cli_args))
        return build
    return register


def packaged_file(distribution: str, relative: str) -> pathlib.Path:
    """A file shipped inside an installed distribution (no import of the package needed)."""
    path = pathlib.Path(importlib.metadata.distribution(distribution).locate_file(relative))
    if not path.is_file():
        raise FileNotFoundError(f"{distribution} does not ship {relative}")
    return path


for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("test_"):
        importlib.import_module(f"{__name__}.{_module.name}")
