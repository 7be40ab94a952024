"""The ``--passes`` language and typed pass options.

Grammar (strict)::

    SPEC    := PASS ("," PASS)*
    PASS    := NAME | NAME ":" VALUE (":" KEY "=" VALUE)* | NAME ":" KEY "=" VALUE (":" KEY "=" VALUE)*

``NAME:VALUE`` sets the pass's main option (``prune:0.5`` is ``prune:ratio=0.5``; more
options may follow it: ``prune:0.5:by=taylor``). Options
are the fields of the pass's options dataclass; values are typed by the field (int, float,
bool as true/false/1/0/yes/no, str, or a ``Literal`` of choices) and range-checked with the
field metadata ``min``/``max``. A number after a ``KEY=VALUE`` continues that value
(``sparsify:pattern=2:4`` sets ``pattern`` to ``2:4``). A ``Globs`` field takes ``fnmatch`` patterns joined by
``+`` (``int8:exclude=*attention*+Conv_3``; an empty pattern is an error). An empty item, a repeated key, an unknown key or a value
that does not parse is an error naming the valid choices.
"""

from __future__ import annotations

import dataclasses
import typing
from fnmatch import fnmatchcase
from dataclasses import dataclass
from typing import Any

from graphc.errors import GraphcError

MAX_PASSES = 64  # a --passes list longer than this is refused (each pass reloads the graph)
SHOWN_CHARS = 60


def shown(value: str) -> str:
    """``value`` as echoed in an error: quoted, cut to a short prefix."""
    return repr(value) if len(value) <= SHOWN_CHARS else repr(value[:SHOWN_CHARS]) + f"... ({len(value)} chars)"


TRUE_WORDS = {"true", "1", "yes", "on"}
FALSE_WORDS = {"false", "0", "no", "off"}


class Globs(tuple):
    """Case-sensitive ``fnmatch`` patterns, written joined by ``+`` (``*word_embeddings*+*bias``)."""

    @classmethod
    def parse(cls, text: str, key: str = "globs") -> Globs:
        """``text`` split at ``+``; ValueError on an empty pattern (``key`` names the option)."""
        if not text:
            return cls()
        patterns = [p.strip() for p in text.split("+")]
        if not all(patterns):
            raise ValueError(f"{key}={text!r} has an empty pattern (join patterns with '+')")
        return cls(patterns)

    def matches(self, *names: str) -> bool:
        """Whether any pattern matches any of ``names``."""
        return any(fnmatchcase(name, pattern) for pattern in self for name in names)

    def __str__(self) -> str:
        return "+".join(self)


@dataclass(frozen=True)
class PassSpec:
    """One parsed item of ``--passes``: the pass name and its raw option strings."""

    name: str
    options: dict[str, str]
    text: str
    positional: str | None = None  # the VALUE of NAME:VALUE


def parse_spec(text: str) -> list[PassSpec]:
    if not text or not text.strip():
        raise GraphcError("--passes is empty; give passes joined by ',' (e.g. --passes fold,prune:0.5)")
    items = text.split(",")
    if len(items) > MAX_PASSES:
        raise GraphcError(f"--passes has {len(items)} passes; at most {MAX_PASSES} are run in one command")
    specs = []
    for item in items:
        item = item.strip()
        if not item:
            raise GraphcError(f"--passes {text!r}: empty pass between commas")
        name, *parts = item.split(":")
        if not name:
            raise GraphcError(f"--passes item {item!r}: missing pass name")
        options: dict[str, str] = {}
        positional = None
        if parts and "=" not in parts[0]:
            positional, parts = parts[0], parts[1:]
            if not positional:
                raise GraphcError(f"--passes item {item!r}: empty value after ':'")
        if parts:
            last = None
            for part in parts:
                if last is not None and part.isdigit():  # pattern=2:4: a number after ':' continues the value
                    options[last] += ":" + part
                    continue
                key, sep, value = part.partition("=")
                if not sep or not key or not value:
                    raise GraphcError(f"--passes item {item!r}: {part!r} is not key=value "
                                      f"(write {name}:VALUE or {name}:key=value[:key=value...])")
                if key in options:
                    raise GraphcError(f"--passes item {item!r}: option {key!r} given twice")
                options[key] = value
                last = key
        specs.append(PassSpec(name, options, item, positional))
    return specs


def _choices(tp: Any) -> tuple | None:
    return typing.get_args(tp) if typing.get_origin(tp) is typing.Literal else None


def describe_type(tp: Any) -> str:
    if tp is Globs:
        return "globs"
    choices = _choices(tp)
    if choices:
        return "|".join(str(c) for c in choices)
    return getattr(tp, "__name__", str(tp))


def coerce(value: str, tp: Any, field: dataclasses.Field, where: str) -> Any:
    """Turn the option string ``value`` into the field's type, or raise a clear error."""
    choices = _choices(tp)
    if choices:
        if value not in choices:
            raise GraphcError(f"{where}: {shown(value)} is not one of {', '.join(map(str, choices))}")
        return value
    if tp is Globs:
        return value  # parsed by the options' __post_init__ (normalise_globs): errors name the pass
    try:
        if tp is bool:
            lowered = value.lower()
            if lowered not in TRUE_WORDS | FALSE_WORDS:
                raise ValueError
            result: Any = lowered in TRUE_WORDS
        elif tp is int:
            result = int(value)
        elif tp is float:
            result = float(value)
            if result != result or result in (float("inf"), float("-inf")):
                raise ValueError
        else:
            result = str(value)
    except ValueError:
        raise GraphcError(f"{where}: {shown(value)} is not a valid {describe_type(tp)}") from None
    low, high = field.metadata.get("min"), field.metadata.get("max")
    if low is not None and result < low or high is not None and result > high:
        raise GraphcError(f"{where}: {value} is out of range [{low}, {high}]")
    return result


def normalise_globs(options: Any) -> None:
    """In an options dataclass's ``__post_init__``: every ``Globs`` field given as a
    ``+``-joined string becomes ``Globs`` (ValueError on an empty pattern)."""
    hints = typing.get_type_hints(type(options))
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if hints[f.name] is Globs and not isinstance(value, Globs):
            object.__setattr__(options, f.name, Globs.parse(value, f.name))


def build_options(options_cls: type, spec: PassSpec, main_option: str | None) -> Any:
    """Instantiate ``options_cls`` from a PassSpec, strictly."""
    fields = {f.name: f for f in dataclasses.fields(options_cls)}
    hints = typing.get_type_hints(options_cls)
    raw = dict(spec.options)
    if spec.positional is not None:
        if main_option is None:
            raise GraphcError(f"pass {spec.name!r} has no main option; use {spec.name}:key=value "
                              f"(options: {', '.join(fields) or 'none'})")
        if main_option in raw:
            raise GraphcError(f"--passes item {spec.text!r}: {main_option} given twice ({spec.name}:VALUE is "
                              f"{spec.name}:{main_option}=VALUE)")
        raw[main_option] = spec.positional
    values = {}
    for key, value in raw.items():
        if key not in fields:
            raise GraphcError(f"pass {spec.name!r} has no option {key!r} (options: {', '.join(fields) or 'none'})")
        values[key] = coerce(value, hints[key], fields[key], f"{spec.name}:{key}")
    try:
        return options_cls(**values)
    except ValueError as exc:  # cross-field checks in __post_init__
        raise GraphcError(f"pass {spec.name!r}: {exc}") from None


def describe_options(options_cls: type, main_option: str | None) -> list[str]:
    """One help line per option: name, type/choices, default, help text."""
    hints = typing.get_type_hints(options_cls)
    lines = []
    for f in dataclasses.fields(options_cls):
        main = " (main option)" if f.name == main_option else ""
        low, high = f.metadata.get("min"), f.metadata.get("max")
        bounds = (f" in [{low}, {high}]" if low is not None and high is not None
                  else f" >= {low}" if low is not None else f" <= {high}" if high is not None else "")
        lines.append(f"{f.name}={describe_type(hints[f.name])}{bounds}, default {f.default}{main}: "
                     f"{f.metadata.get('help', '')}")
    return lines
