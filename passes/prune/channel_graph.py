"""The channel dependency graph: which channels of which tensors must be removed together.

Hand-written because no library builds one on ONNX (Torch-Pruning's DepGraph needs the
PyTorch module). One forward sweep in topological order annotates every tensor axis that
carries prunable channels with ``(group, index)`` pairs (``channel_groups``: the groups,
their members and merges). Each op type has one rule function in ``RULES`` (op type ->
rule, in the spirit of Torch-Pruning's ``PrunerBox``); the rules of each op family stand in
its module's docstring:

- ``rules_weights``: Conv, ConvTranspose, Gemm, MatMul, Gather (producers, consumers,
  depthwise Conv, attention MatMul);
- ``rules_elementwise``: activations, pooling, Resize (pass-through) and broadcasting
  element-wise ops (residuals, squeeze-excitation scales);
- ``rules_norms``: BatchNormalization, InstanceNormalization, LayerNormalization, Softmax,
  reductions;
- ``rules_concat_split``: Concat, Split, Slice, Pad;
- ``rules_reshape``: Transpose, Flatten, Reshape, Squeeze, Unsqueeze (hidden -> heads).

Rules of the sweep itself ("block" makes a group unprunable, with a reason):

- a node runs its rule when one of its inputs is annotated; the producers (Conv,
  ConvTranspose, Gemm, MatMul, Gather) always run, since they may start a group;
- Shape and Size read sizes only and are safe;
- an op without a rule blocks the groups of its annotated inputs ("unknown op");
- a node with subgraphs (If, Loop, Scan) blocks the groups of the tensors its subgraphs read
  from the outer graph by name (``graphc.subgraphs.outer_reads``): prune does not follow
  channels into a subgraph, so they must keep their size (an If whose condition folds to a
  constant was already replaced by its branch, ``plan.analyse``);
- a channel that reaches a graph output blocks its group.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx_graphsurgeon as gs

from graphc.subgraphs import outer_reads
from graphc.passes.prune.channel_groups import GroupBook, Shape
from graphc.passes.prune.rules_concat_split import concat, pad, slice_op, split
from graphc.passes.prune.rules_elementwise import ELEMENTWISE, POOLING, UNARY, elementwise, passthrough
from graphc.passes.prune.rules_norms import REDUCTIONS, batchnorm, instancenorm, layernorm, reduction, softmax
from graphc.passes.prune.rules_reshape import reshape, transpose
from graphc.passes.prune.rules_weights import conv, conv_transpose, gather, gemm, matmul

Rule = Callable[["ChannelGraph", gs.Node], None]

RULES: dict[str, Rule] = {
    **{op: passthrough for op in UNARY | POOLING | {"Resize", "Upsample"}},
    **{op: elementwise for op in ELEMENTWISE | {"Expand"}},
    **{op: reduction for op in REDUCTIONS},
    "Conv": conv, "ConvTranspose": conv_transpose, "Gemm": gemm, "MatMul": matmul, "Gather": gather,
    "BatchNormalization": batchnorm, "InstanceNormalization": instancenorm, "LayerNormalization": layernorm,
    "Softmax": softmax, "LogSoftmax": softmax,
    "Concat": concat, "Split": split, "Slice": slice_op, "Pad": pad,
    "Transpose": transpose, "Flatten": reshape, "Reshape": reshape, "Squeeze": reshape, "Unsqueeze": reshape,
}
PRODUCERS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Gather")  # run even without an annotated input
SIZE_ONLY = {"Shape", "Size"}


class ChannelGraph(GroupBook):
    """Groups of coupled channels of a graph (see the module docstring for the rules)."""

    def __init__(self, graph: gs.Graph, shapes: dict[str, Shape], allow_hidden_norm: bool = False):
        super().__init__()
        self.graph = graph
        self.shapes = shapes
        self.allow_hidden_norm = allow_hidden_norm
        self._sweep()

    def shape(self, tensor: gs.Tensor) -> Shape | None:
        if isinstance(tensor, gs.Constant):
            return tuple(tensor.values.shape)
        return self.shapes.get(tensor.name)

    def _sweep(self) -> None:
        for node in self.graph.nodes:
            for tensor in outer_reads(node):
                for pairs in self.annotations(tensor.name).values():
                    for gid, _ in pairs:
                        self.block(gid, f"read inside a subgraph of {node.op} {node.name} (prune does not "
                                        f"follow channels into subgraphs)")
            annotated = any(self.annotations(t.name) for t in node.inputs)
            rule = RULES.get(node.op)
            if node.op in SIZE_ONLY:
                continue
            if rule is None:
                if annotated:
                    self.block_all(node, "unknown op")
                continue
            if annotated or node.op in PRODUCERS:
                rule(self, node)
        for output in self.graph.outputs:
            for pairs in self.annotations(output.name).values():
                for gid, _ in pairs:
                    self.block(gid, f"reaches graph output {output.name!r}")
