"""The --passes language: strict parsing and typed options."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from graphc.errors import GraphcError
from graphc.passes import PASSES, build_passes
from graphc.spec import PassSpec, build_options, parse_spec


@dataclass(frozen=True)
class DemoOptions:
    ratio: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0})
    by: Literal["l1", "l2"] = "l1"
    epochs: int = field(default=3, metadata={"min": 1})
    verbose: bool = False


def options(text: str, main: str | None = "ratio") -> DemoOptions:
    (spec,) = parse_spec(text)
    return build_options(DemoOptions, spec, main)


def test_three_forms_parse_to_typed_options():
    assert options("demo") == DemoOptions()
    assert options("demo:0.25") == DemoOptions(ratio=0.25)
    assert options("demo:ratio=0.3:by=l2:epochs=5:verbose=yes") == DemoOptions(0.3, "l2", 5, True)
    assert options("demo:0.3:by=l2:epochs=5") == DemoOptions(0.3, "l2", 5)  # main value, then key=value


def test_several_passes_keep_order_and_text():
    specs = parse_spec("fold, prune:ratio=0.5:by=l2,int8:calib=entropy")
    assert [s.name for s in specs] == ["fold", "prune", "int8"]
    assert specs[1] == PassSpec("prune", {"ratio": "0.5", "by": "l2"}, "prune:ratio=0.5:by=l2")


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("fold,,fold", "empty pass"),
    ("demo:", "empty value"),
    (":0.5", "missing pass name"),
    ("demo:ratio=0.5:0.3", "is not key=value"),
    ("demo:ratio=0.1:ratio=0.2", "given twice"),
    ("demo:ratio=", "is not key=value"),
    ("demo:0.3:l2", "'l2' is not key=value"),
    ("demo:0.3:ratio=0.2", "ratio given twice \\(demo:VALUE is demo:ratio=VALUE\\)"),
])
def test_malformed_specs_are_refused(text, message):
    with pytest.raises(GraphcError, match=message):
        options(text)


@pytest.mark.parametrize("text, message", [
    ("demo:speed=3", "has no option 'speed' \\(options: ratio, by, epochs, verbose\\)"),
    ("demo:ratio=abc", "'abc' is not a valid float"),
    ("demo:1.5", "out of range"),
    ("demo:by=l3", "'l3' is not one of l1, l2"),
    ("demo:epochs=2.5", "not a valid int"),
    ("demo:epochs=0", "out of range"),
    ("demo:verbose=maybe", "not a valid bool"),
    ("demo:ratio=nan", "not a valid float"),
])
def test_bad_option_values_name_the_valid_ones(text, message):
    with pytest.raises(GraphcError, match=message):
        options(text)


def test_positional_value_needs_a_main_option():
    with pytest.raises(GraphcError, match="has no main option"):
        options("demo:0.5", main=None)


def test_unknown_pass_lists_registered_passes():
    with pytest.raises(GraphcError, match=r"unknown pass 'prun' \(passes: .*fold"):
        build_passes(parse_spec("fold,prun:0.5"))
    assert "fold" in PASSES


def test_globs_options_parse_match_and_refuse_empty_patterns():
    from graphc.passes.int8 import Int8Options
    from graphc.spec import Globs

    options = build_options(Int8Options, parse_spec("int8:exclude=Gemm+/head/*")[0], "calib")
    assert isinstance(options.exclude, Globs) and list(options.exclude) == ["Gemm", "/head/*"]
    assert str(options.exclude) == "Gemm+/head/*"
    assert options.exclude.matches("/head/MatMul") and options.exclude.matches("x", "Gemm")
    assert not options.exclude.matches("/body/MatMul", "MatMul")
    assert Int8Options().exclude == Globs() and not Int8Options().exclude
    assert list(Int8Options(exclude="a+ b").exclude) == ["a", "b"]  # direct construction parses too
    with pytest.raises(GraphcError, match=r"^pass 'int8': exclude='a\+\+b' has an empty pattern"):
        build_options(Int8Options, parse_spec("int8:exclude=a++b")[0], "calib")


def test_a_number_after_key_value_continues_the_value():
    """``sparsify:pattern=2:4``: the N:M form reads as one value; elsewhere the joined value
    is still checked by its type."""
    (spec,) = parse_spec("sparsify:0.5:pattern=2:4:by=wanda")
    assert spec.options == {"pattern": "2:4", "by": "wanda"} and spec.positional == "0.5"
    (built,) = build_passes(parse_spec("sparsify:pattern=2:4"))
    assert built.options.pattern == "2:4" and built.options.target_ratio == 0.5
    with pytest.raises(GraphcError, match="'0.5:3' is not a valid float"):
        options("demo:ratio=0.5:3")
    with pytest.raises(GraphcError, match="'3' is not key=value"):
        options("demo:0.5:3")  # no key=value before it: nothing to continue
