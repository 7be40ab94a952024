"""graphc's graph-rewrite passes, registered by command-line name.

A pass is a package ``passes/<name>/`` (its ``__init__.py`` holds the pass class, its options
and the numbered rule index; the modules beside it hold what only that pass uses) or, for a
small pass, one module (``fold.py``). Passes never import each other.
"""

from __future__ import annotations

from collections.abc import Sequence

from graphc.errors import GraphcError
from graphc.pass_api import Pass
from graphc.passes.fold import FoldPass
from graphc.passes.prune import PrunePass
from graphc.passes.int8 import Int8Pass
from graphc.passes.distill import DistillPass
from graphc.passes.fuse import FusePass
from graphc.passes.sparsify import SparsifyPass
from graphc.passes.sparse_int8 import SparseInt8Pass
from graphc.spec import PassSpec, build_options

PASSES: dict[str, type[Pass]] = {cls.name: cls for cls in (FoldPass, PrunePass, Int8Pass, DistillPass, FusePass, SparsifyPass,
                                                    SparseInt8Pass)}


def build_passes(specs: Sequence[PassSpec]) -> list[Pass]:
    """Pass objects for parsed ``--passes`` items; unknown names are an error."""
    passes = []
    for spec in specs:
        cls = PASSES.get(spec.name)
        if cls is None:
            raise GraphcError(f"unknown pass {spec.name!r} (passes: {', '.join(sorted(PASSES))})")
        passes.append(cls(build_options(cls.Options, spec, cls.main_option)))
    return passes
