"""Per-node onnxruntime CPU times of models profiled side by side, credited back to the nodes
of the graphs that were loaded (``int8``'s speed guard; any pass that decides by measured
time).

onnxruntime's profiler reports kernel times per *executed* node, after its optimiser fused,
re-laid-out and renamed the graph; this module records that executed graph (the session's
``optimized_model_filepath``) and maps its nodes back. Rules:

1. ``profile_models``: every model opens in its own profiled session (all onnxruntime
   optimisations on, ``threads`` intra-op threads, never spinning, so that the idle sessions
   leave the cores alone); ``warmup`` runs each, then the sessions run round-robin on the
   same feeds, as many rounds as fill ``seconds`` per model (``rounds`` bounds them), so a
   load that changes while they run changes all of them alike. A node's time is the median
   of its kernel times over the timed rounds, a model's ``wall_us`` the median of its runs'
   wall times; ``elements`` holds each executed node's first-input element count.
2. Unnamed nodes of the given models are named after their first output before they open
   (``name_nodes``): onnxruntime keeps names, and a name is what maps back.
3. ``time_models``: the same round-robin (the first model rotated every round) without the
   profiler, whose per-node bookkeeping weighs on graphs of many small nodes: each model's
   median wall time per run, in microseconds.
4. ``attribute``: an executed node is credited to the loaded node whose name it bears once
   onnxruntime's affixes are stripped (``fused `` prefix; ``_token_<n>``, ``_nchwc``,
   ``/duplicated`` suffixes), else to the producer of the loaded tensor it is named after or
   writes; a node made by onnxruntime (layout reorders, transposes) is credited to the node
   its first input comes from in the executed graph, else to its first reader. Nodes are
   keyed by their first output's name (unique in a graph); a time that reaches no loaded
   node is credited to ``None``.
"""

from __future__ import annotations

import json
import pathlib
import re
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

import onnxruntime as ort

from graphc.errors import GraphcError, first_line
from graphc.runtime import open_session, register_graphc_ops, session_options

SUFFIXES = re.compile(r"(_token_\d+|_nchwc|/duplicated)$")
PREFIX = "fused "
ROUNDS = (5, 200)


@dataclass(frozen=True)
class ExecutedNode:
    name: str
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass
class Profile:
    """One model's executed graph and the median kernel time (us) of each executed node."""

    executed: dict[str, ExecutedNode]
    times: dict[str, float]
    rounds: int
    wall_us: float = 0.0
    elements: dict[str, int] | None = None

    @property
    def total(self) -> float:
        return float(sum(self.times.values()))


def name_nodes(model: onnx.ModelProto) -> None:
    """Rule 2: give every unnamed node of ``model`` its first output's name."""
    for node in model.graph.node:
        if not node.name and node.output:
            node.name = node.output[0]


def _executed_graph(path: pathlib.Path) -> dict[str, ExecutedNode]:
    model = onnx.load(str(path), load_external_data=False)
    return {n.name: ExecutedNode(n.name, n.op_type, tuple(n.input), tuple(n.output)) for n in model.graph.node}


def _open(model: onnx.ModelProto, directory: pathlib.Path, index: int, threads: int | None):
    model_path = directory / f"model{index}.onnx"
    onnx.save(model, str(model_path))
    options = session_options(threads, spinning=False, profile_prefix=str(directory / f"profile{index}"))
    options.optimized_model_filepath = str(directory / f"executed{index}.onnx")
    register_graphc_ops(model, options)
    try:
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types
        raise GraphcError(f"onnxruntime cannot run the model to profile: {first_line(exc)}") from None
    return session, _executed_graph(directory / f"executed{index}.onnx")


def profile_models(models: Sequence[onnx.ModelProto], feeds: Mapping[str, np.ndarray], threads: int | None = None,
                   seconds: float = 0.25, rounds: tuple[int, int] = ROUNDS, warmup: int = 2) -> list[Profile]:
    """Rule 1 (and 2, which names the given models' unnamed nodes): one Profile per model."""
    with tempfile.TemporaryDirectory(prefix="graphc-profile-") as tmp:
        directory = pathlib.Path(tmp)
        opened = []
        for i, model in enumerate(models):
            name_nodes(model)
            opened.append(_open(model, directory, i, threads))
        feeds = dict(feeds)
        count = _warm_rounds([session for session, _ in opened], feeds, warmup, seconds, rounds)
        walls: list[list[float]] = [[] for _ in opened]
        for _ in range(count):
            for (session, _), wall in zip(opened, walls):
                start = time.perf_counter()
                session.run(None, feeds)
                wall.append((time.perf_counter() - start) * 1e6)
        profiles = []
        for (session, executed), wall in zip(opened, walls):
            events = json.loads(pathlib.Path(session.end_profiling()).read_text())
            durations: dict[str, list[float]] = defaultdict(list)
            elements: dict[str, int] = {}
            for event in events:
                name = event.get("name", "")
                if event.get("cat") == "Node" and name.endswith("_kernel_time"):
                    node = name[: -len("_kernel_time")]
                    durations[node].append(float(event["dur"]))
                    if node not in elements:
                        elements[node] = _first_input_elements(event.get("args", {}))
            times = {name: float(np.median(values[-count:])) for name, values in durations.items()}
            profiles.append(Profile(executed, times, count, float(np.median(wall)), elements))
    return profiles


def _first_input_elements(args: dict) -> int:
    """Element count of an executed node's first input, from its profile event (0: unknown)."""
    shapes = args.get("input_type_shape") or []
    if not shapes or not isinstance(shapes[0], dict) or not shapes[0]:
        return 0
    dims = next(iter(shapes[0].values()))
    return int(np.prod(dims)) if isinstance(dims, list) and dims else 0


def _warm_rounds(sessions: Sequence, feeds: dict[str, np.ndarray], warmup: int, seconds: float,
                 rounds: tuple[int, int]) -> int:
    """Run each session ``warmup`` times (at least once); the number of round-robin rounds that
    fills ``seconds`` per model at the slowest one's last warm-up time, within ``rounds``."""
    slowest = 0.0
    for session in sessions:
        for _ in range(max(warmup, 1)):
            start = time.perf_counter()
            session.run(None, feeds)
        slowest = max(slowest, time.perf_counter() - start)
    return int(np.clip(seconds / max(slowest, 1e-6), *rounds))


def time_models_rounds(models: Sequence[onnx.ModelProto], feeds: Mapping[str, np.ndarray], threads: int | None = None,
                       seconds: float = 0.25, rounds: tuple[int, int] = ROUNDS, warmup: int = 2) -> list[list[float]]:
    """Rule 3's timing: wall microseconds of every run of each model, in round order (round i of
    every model ran back to back, the first model rotating)."""
    sessions = [open_session(model, threads, what="the model to time", spinning=False) for model in models]
    feeds = dict(feeds)
    count = _warm_rounds(sessions, feeds, warmup, seconds, rounds)
    walls: list[list[float]] = [[] for _ in sessions]
    for round_index in range(count):
        for k in range(len(sessions)):
            i = (round_index + k) % len(sessions)
            start = time.perf_counter()
            sessions[i].run(None, feeds)
            walls[i].append((time.perf_counter() - start) * 1e6)
    return walls


def time_models(models: Sequence[onnx.ModelProto], feeds: Mapping[str, np.ndarray], threads: int | None = None,
                seconds: float = 0.25, rounds: tuple[int, int] = ROUNDS, warmup: int = 2) -> list[float]:
    """Rule 3: median wall microseconds per run of each model, timed side by side."""
    return [float(np.median(w)) for w in time_models_rounds(models, feeds, threads, seconds, rounds, warmup)]


def _stripped(name: str) -> str:
    name = name[len(PREFIX):] if name.startswith(PREFIX) else name
    while True:
        shorter = SUFFIXES.sub("", name)
        if shorter == name:
            return name
        name = shorter


def attribute(profile: Profile, model: onnx.ModelProto) -> dict[str | None, float]:
    """Rule 4: microseconds per loaded node of ``model`` (keyed by its first output)."""
    by_name = {n.name: n.output[0] for n in model.graph.node if n.name and n.output}
    by_tensor = {out: n.output[0] for n in model.graph.node if n.output for out in n.output if out}
    executed = profile.executed
    producers = {out: e.name for e in executed.values() for out in e.outputs}
    readers: dict[str, list[str]] = defaultdict(list)
    for e in executed.values():
        for name in e.inputs:
            readers[name].append(e.name)
    owner: dict[str, str | None] = {}

    def direct(e: ExecutedNode) -> str | None:
        base = _stripped(e.name)
        if base in by_name:
            return by_name[base]
        if base in by_tensor:
            return by_tensor[base]
        return next((by_tensor[o] for o in e.outputs if o in by_tensor), None)

    for e in executed.values():
        owner[e.name] = direct(e)
    for _ in range(len(executed)):  # neighbours, to a fixed point
        changed = False
        for e in executed.values():
            if owner[e.name] is not None:
                continue
            up = next((producers[i] for i in e.inputs if i in producers), None)
            found = owner.get(up) if up is not None else None
            if found is None:
                down = next((r for o in e.outputs for r in readers.get(o, ())), None)
                found = owner.get(down) if down is not None else None
            if found is not None:
                owner[e.name] = found
                changed = True
        if not changed:
            break
    result: dict[str | None, float] = defaultdict(float)
    for name, us in profile.times.items():
        result[owner.get(name)] += us
    return dict(result)
