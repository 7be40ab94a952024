"""graphc.pass_api: declared ordering is checked before anything runs, and a pass's
declared in-place or replacement result is asserted."""

from __future__ import annotations

import pytest

from graphc.errors import GraphcError
from graphc.graph import to_graph
from graphc.model_io import load_model
from graphc.pass_api import Pass, PassResult, check_order, result_graph
from graphc.passes import PASSES
from tests import CNN


def declared(name: str, in_place: bool, **order) -> type[Pass]:
    """A do-nothing pass class with the given declarations (test only)."""
    def run(self, graph, ctx):
        return PassResult(changed=False, graph=None if in_place else graph)

    return type(name.title(), (Pass,), {"name": name, "summary": "test only", "in_place": in_place, "run": run,
                                        **order})


First = declared("first", True, must_run_before={"second": "first must run before second"})
Second = declared("second", False, must_run_after={"third": "second must run after third"})
Third = declared("third", True)


def test_declared_order_holds_or_fails_with_the_declared_reason():
    check_order([First(), Second()])
    check_order([Third(), First(), Second()])
    check_order([First()])  # a pass that is absent constrains nothing
    with pytest.raises(GraphcError, match="^first must run before second$"):
        check_order([Second(), First()])
    with pytest.raises(GraphcError, match="^second must run after third$"):
        check_order([First(), Second(), Third()])


def test_result_kind_is_asserted():
    graph = to_graph(load_model(CNN))
    assert result_graph(First(), graph, PassResult(changed=False)) is graph
    assert result_graph(Second(), graph, PassResult(changed=False, graph=graph)) is graph
    with pytest.raises(AssertionError, match="declared in place"):
        result_graph(First(), graph, PassResult(changed=False, graph=graph))
    with pytest.raises(AssertionError, match="return a new graph"):
        result_graph(Second(), graph, PassResult(changed=False))


def test_every_registered_pass_declares_its_kind():
    for cls in PASSES.values():
        assert isinstance(cls.in_place, bool), cls.name


def test_the_cli_refuses_int8_before_distill_before_loading_anything(tmp_path, capsys):
    from graphc import cli

    missing = tmp_path / "missing.onnx"  # never read: the order is refused first
    assert cli.main(["optimize", str(missing), "--passes", "int8,distill", "-o", str(tmp_path / "o.onnx")]) == 2
    assert capsys.readouterr().err.startswith("graphc optimize: error: distill cannot train through the Q/DQ nodes")
