"""The pass contract (see DESIGN.md): what every pass under ``passes/`` implements.

A pass has a command-line ``name``, an ``Options`` dataclass (its ``name:key=value``
options; ``main_option`` is the one ``name:VALUE`` sets), a declared output ``tolerance``
that ``--verify`` enforces, ``check(ctx)`` for preconditions that must hold before the
pipeline starts, and ``run(graph, ctx) -> PassResult`` that edits the graph. Passes never
import each other; shared helpers live in ``graphc``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import onnx_graphsurgeon as gs

if TYPE_CHECKING:
    from graphc.context import Context


@dataclass(frozen=True)
class Tolerance:
    """How far a pass may move the model's outputs from the original (None: not checked)."""

    max_rel_error: float | None = None  # max |new - ref| / max |ref|, per output
    min_cosine: float | None = None  # mean per-sample cosine similarity, per output
    min_top1_agreement: float | None = None  # share of samples with the same argmax


@dataclass
class PassResult:
    """What a pass did: ``changed`` and named statistics for the report."""

    changed: bool
    stats: dict[str, Any] = field(default_factory=dict)
    graph: gs.Graph | None = None  # a replacement graph; None: the given graph was edited
    details: dict[str, Any] = field(default_factory=dict)  # for the JSON report only


@dataclass(frozen=True)
class NoOptions:
    """A pass without options."""


class Pass(abc.ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    main_option: ClassVar[str | None] = None

    def __init__(self, options: Any = None):
        self.options = options if options is not None else self.Options()

    def tolerance(self) -> Tolerance:
        """The output tolerance ``--verify`` holds this pass to."""
        return Tolerance()

    def check(self, ctx: Context) -> None:
        """Raise GraphcError if the pass cannot run with this context (before any pass runs)."""

    @abc.abstractmethod
    def run(self, graph: gs.Graph, ctx: Context) -> PassResult:
        """Rewrite ``graph`` in place (or return a new one in the result)."""
