"""The pass contract (see DESIGN.md): what every pass under ``passes/`` implements.

A pass declares, as class attributes:

- ``name`` (the ``--passes`` word), ``summary``, an ``Options`` dataclass (its
  ``name:key=value`` options; ``main_option`` is the one ``name:VALUE`` sets);
- ``in_place``: True when ``run`` edits the graph it is given and returns
  ``PassResult(graph=None)``; False when it returns a replacement graph in
  ``PassResult.graph`` (always, even when nothing changed). The pipeline asserts it;
- ``must_run_before`` / ``must_run_after``: pass name -> the one-line reason, checked by
  the pipeline against the whole ``--passes`` list before anything is loaded
  (``check_order``);
- ``inspect``: an optional ``InspectSection`` that gives ``graphc inspect`` a flag and a
  section, so the driver never names a pass;
- ``exact``: True for a pass that must not change outputs (beyond float rounding): the
  pipeline then runs its input and output models on two sample rows after it, ``--verify``
  or not, and a change beyond ``tolerance()`` is a bug in graphc (exit 1);
- ``min_opset``: the lowest default-domain opset the pass rewrites (0: any); the pipeline
  converts an older model first where that is exact, else refuses it (``graphc.opsets``).

It implements ``tolerance()`` (what ``--verify`` holds it to, ``graphc.verify.Tolerance``),
``check(ctx)`` (preconditions on the context, before any pass runs) and ``run(graph, ctx)``.
A pass is pure with respect to everything but its graph and ``ctx.report``. Passes never
import each other; what two of them share lives in ``graphc``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import onnx
import onnx_graphsurgeon as gs

from graphc.errors import GraphcError
from graphc.verify import Tolerance

if TYPE_CHECKING:
    from graphc.context import Context


@dataclass
class PassResult:
    """What a pass did: ``changed`` and named statistics for the report."""

    changed: bool
    stats: dict[str, Any] = field(default_factory=dict)
    graph: gs.Graph | None = None  # the replacement graph of a pass with in_place = False
    details: dict[str, Any] = field(default_factory=dict)  # for the JSON report only


@dataclass(frozen=True)
class NoOptions:
    """A pass without options."""


@dataclass(frozen=True)
class InspectSection:
    """A pass's section of ``graphc inspect``: ``--<flag>`` adds ``collect(model, shapes)``
    under ``key`` in the JSON, and ``render(value)`` after the text description."""

    flag: str
    key: str
    help: str
    collect: Callable[[onnx.ModelProto, Mapping[str, tuple[int, ...]]], Any]
    render: Callable[[Any], str]


class Pass(abc.ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    main_option: ClassVar[str | None] = None
    in_place: ClassVar[bool]
    must_run_before: ClassVar[Mapping[str, str]] = {}
    must_run_after: ClassVar[Mapping[str, str]] = {}
    inspect: ClassVar[InspectSection | None] = None
    exact: ClassVar[bool] = False
    min_opset: ClassVar[int] = 0

    def __init__(self, options: Any = None):
        self.options = options if options is not None else self.Options()

    def tolerance(self) -> Tolerance:
        """The output tolerance ``--verify`` holds this pass to."""
        return Tolerance()

    def check(self, ctx: Context) -> None:
        """Raise GraphcError if the pass cannot run with this context (before any pass runs)."""

    @abc.abstractmethod
    def run(self, graph: gs.Graph, ctx: Context) -> PassResult:
        """Rewrite ``graph`` in place (``in_place``) or return a new one in the result."""


def check_order(passes: Sequence[Pass]) -> None:
    """Every pass's declared ordering holds in ``passes`` (the whole ``--passes`` list)."""
    positions: dict[str, list[int]] = {}
    for i, p in enumerate(passes):
        positions.setdefault(p.name, []).append(i)
    for i, p in enumerate(passes):
        for other, reason in p.must_run_before.items():
            if any(j < i for j in positions.get(other, ())):
                raise GraphcError(reason)
        for other, reason in p.must_run_after.items():
            if any(j > i for j in positions.get(other, ())):
                raise GraphcError(reason)


def result_graph(p: Pass, given: gs.Graph, result: PassResult) -> gs.Graph:
    """The graph a pass left, after asserting it kept its declared ``in_place`` kind."""
    if p.in_place and result.graph is not None:
        raise AssertionError(f"pass {p.name} is declared in place but returned a new graph")
    if not p.in_place and result.graph is None:
        raise AssertionError(f"pass {p.name} is declared to return a new graph but returned none")
    return given if p.in_place else result.graph
