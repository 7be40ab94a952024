"""Helpers for nodes with subgraphs (If, Loop, Scan) in an onnx-graphsurgeon graph.

- ``outer_reads(node)``: the tensors of enclosing graphs that a node's subgraphs read by
  name (an ONNX subgraph sees its parents' tensors without listing them as inputs), nested
  subgraphs included. A pass that tracks tensors through ``node.inputs`` alone misses them.
- ``flatten_constant_ifs(graph)``: an ``If`` whose condition is a constant is replaced by the
  nodes of the branch it takes; its outputs become the branch's outputs (the producer
  writes the If's output tensor, or an Identity copies it when the branch output is also
  read inside the branch, repeated, or not produced there); the branch's own tensors are
  renamed when their names are taken. Nested constant Ifs are flattened in turn.
  onnx-graphsurgeon's ``fold_constants(flatten_subgraphs=True)`` (0.6.1) rebinds the outputs
  while it clears them, so an If with two outputs produced by one node loses the second (a
  node then reads a tensor nothing produces: silero-vad's decoder): graphc flattens itself.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphc.graph import unique_name


def subgraphs_of(node: gs.Node) -> list[gs.Graph]:
    """The graph attributes of a node (If branches, Loop/Scan bodies)."""
    found = []
    for value in node.attrs.values():
        if isinstance(value, gs.Graph):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found.extend(v for v in value if isinstance(v, gs.Graph))
    return found


def _reads(graph: gs.Graph, found: dict[str, gs.Tensor]) -> None:
    local = {t.name for t in graph.inputs} | {t.name for n in graph.nodes for t in n.outputs}
    inner: dict[str, gs.Tensor] = {}
    for node in graph.nodes:
        for tensor in node.inputs:
            if tensor.name and tensor.name not in local and not isinstance(tensor, gs.Constant):
                found.setdefault(tensor.name, tensor)
        for sub in subgraphs_of(node):
            _reads(sub, inner)
    for tensor in graph.outputs:
        if tensor.name not in local and not isinstance(tensor, gs.Constant):
            found.setdefault(tensor.name, tensor)
    for name, tensor in inner.items():
        if name not in local:
            found.setdefault(name, tensor)


def outer_reads(node: gs.Node) -> list[gs.Tensor]:
    """Tensors of the enclosing graphs that ``node``'s subgraphs read (none without subgraphs)."""
    found: dict[str, gs.Tensor] = {}
    for sub in subgraphs_of(node):
        _reads(sub, found)
    return list(found.values())


def _branch_tensors(branch: gs.Graph, outer: dict[str, gs.Tensor]) -> list[gs.Tensor]:
    """Tensors the branch owns: what its nodes produce, and the constants it reads that are
    not the outer graph's."""
    owned: dict[int, gs.Tensor] = {}
    for node in branch.nodes:
        for tensor in node.outputs:
            owned[id(tensor)] = tensor
        for tensor in node.inputs:
            if isinstance(tensor, gs.Constant) and outer.get(tensor.name) is not tensor:
                owned[id(tensor)] = tensor
    return list(owned.values())


def flatten_constant_ifs(graph: gs.Graph) -> int:
    """Replace every ``If`` with a constant condition by its taken branch; returns how many."""
    outer = graph.tensors()
    taken = set(outer)
    count = 0
    index = 0
    while index < len(graph.nodes):
        node = graph.nodes[index]
        cond = node.inputs[0] if node.op == "If" and node.inputs else None
        if not isinstance(cond, gs.Constant) or cond.values.size != 1:
            index += 1
            continue
        branch = node.attrs["then_branch" if bool(np.ravel(cond.values)[0]) else "else_branch"]
        for tensor in _branch_tensors(branch, outer):
            if tensor.name in taken:
                tensor.name = unique_name(tensor.name, taken)
            else:
                taken.add(tensor.name)
        outputs = list(node.outputs)
        node.outputs.clear()
        node.inputs.clear()
        nodes = list(branch.nodes)
        inside = {id(n) for n in nodes}
        seen: set[int] = set()
        for out, result in zip(outputs, branch.outputs):
            producer = result.inputs[0] if len(result.inputs) == 1 else None
            rebind = (producer is not None and id(producer) in inside and id(result) not in seen
                      and not result.outputs)
            seen.add(id(result))
            if rebind:
                slot = next(i for i, t in enumerate(producer.outputs) if t is result)
                producer.outputs[slot] = out
            else:
                nodes.append(gs.Node("Identity", name=unique_name(f"{out.name}_identity", taken),
                                     inputs=[result], outputs=[out]))
        graph.nodes[index:index + 1] = nodes
        count += 1
    return count
