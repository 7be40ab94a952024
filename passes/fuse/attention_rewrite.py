"""Rule 3 of ``fuse``: each attention site becomes one onnxruntime fused attention node.

The site's Q, K, V (the projections' rank-3 outputs, still separate MatMuls for ``int8``,
``prune`` and ``sparsify``) feed the fused node, whose output replaces the site's rank-3
output; the layout nodes, the scores MatMul, scale, mask Add, Softmax and context MatMul
go. By mask kind (rule 2):

- no mask: ``com.microsoft.MultiHeadAttention(q, k, v)`` (``num_heads``, ``scale``);
  onnxruntime runs it with its flash-attention CPU kernel;
- ``causal``: the same with ``unidirectional=1``;
- ``padding`` of input ``m``: ``com.microsoft.GroupQueryAttention`` with ``causal=0``,
  ``kv_num_heads = num_heads``, ``seqlens_k`` = tokens per row - 1 and
  ``total_sequence_length`` = the mask's length: the kernel reads only each row's first
  ``seqlens_k + 1`` keys, so padding costs nothing. A row with no token at all reads every
  key (the kernel refuses an empty row; the original's output for such a row is the
  softmax over all keys too with a finite mask value such as -1e4, a plain average of the
  values with float32's lowest, which Hugging Face writes; either way the row has no
  content). Keys may be padded anywhere: the keys
  and values are gathered so that each row's tokens come first, in order
  (``padding="any"``, the default; attention sums over keys, so their order does not
  change the result). ``padding="right"`` skips the gather for inputs known to be padded
  on the right only (what Hugging Face tokenizers write by default); a left-padded row then
  attends to the wrong keys. The mask algebra is built once per mask input
  (``PaddingPlan``), not once per layer;
- ``bias``: ``MultiHeadAttention`` with the site's additive term, expanded once per site to
  ``[B or 1, H or 1, S, S_kv]``, as its ``attention_bias`` (exactly the original's
  values).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from graphc.graph import unique_name
from graphc.passes.fuse.attention_sites import AttentionSite
from graphc.passes.fuse.masks import MaskKind

MS_DOMAIN = "com.microsoft"


class NodeMaker:
    """Adds nodes to ``graph`` with fresh, readable tensor names under a prefix."""

    def __init__(self, graph: gs.Graph):
        self.graph = graph
        self.taken = set(graph.tensors())

    def name(self, base: str) -> str:
        return unique_name(base, self.taken)

    def const(self, base: str, values) -> gs.Constant:
        return gs.Constant(self.name(base), np.asarray(values))

    def node(self, op: str, inputs: Sequence, base: str, outputs: int = 1, dtype=None, domain: str | None = None,
             **attrs) -> list[gs.Variable]:
        outs = [gs.Variable(self.name(f"{base}_out{i}" if outputs > 1 else base), dtype=dtype) for i in range(outputs)]
        self.graph.nodes.append(gs.Node(op, name=self.name(base + "_node"), attrs=attrs, inputs=list(inputs),
                                        outputs=outs, domain=domain))
        return outs


@dataclass
class PaddingPlan:
    """What the fused nodes of one padding-mask input share, built once: ``lengths``,
    ``seqlens_k`` (int32 [B], tokens - 1), ``total`` (int32 scalar, the mask's length) and, for
    ``padding="any"``, ``order`` (int64 [B, S, 1]: per row, its token positions first)."""

    seqlens_k: gs.Variable
    total: gs.Variable
    order: gs.Variable | None
    lengths: gs.Variable  # int32 [B]: tokens per row (a row without any: the mask's length)


def padding_plan(make: NodeMaker, mask: gs.Variable, any_padding: bool) -> PaddingPlan:
    """Rule 3's shared mask algebra for one padding-mask input (opset 13 forms)."""
    base = mask.name + "/fuse"
    valid = make.node("Cast", [mask], f"{base}/valid", dtype=np.bool_, to=9)[0]  # 9: BOOL, nonzero -> true
    valid32 = make.node("Cast", [valid], f"{base}/valid_i32", dtype=np.int32, to=6)[0]
    lengths = make.node("ReduceSum", [valid32, make.const(f"{base}/axes", np.array([1], np.int64))],
                        f"{base}/lengths", dtype=np.int32, keepdims=0)[0]
    shape = make.node("Shape", [mask], f"{base}/shape", dtype=np.int64)[0]
    length = make.node("Gather", [shape, make.const(f"{base}/axis1", np.array(1, np.int64))], f"{base}/length",
                       dtype=np.int64, axis=0)[0]
    total = make.node("Cast", [length], f"{base}/total", dtype=np.int32, to=6)[0]
    # a row with no token reads every key (the kernel refuses a length of 0)
    empty = make.node("Equal", [lengths, make.const(f"{base}/zero32", np.array(0, np.int32))], f"{base}/empty",
                      dtype=np.bool_)[0]
    lengths = make.node("Where", [empty, total, lengths], f"{base}/lengths_or_all", dtype=np.int32)[0]
    seqlens_k = make.node("Sub", [lengths, make.const(f"{base}/one", np.array(1, np.int32))], f"{base}/seqlens_k",
                          dtype=np.int32)[0]
    order = None
    if any_padding:
        # sort key: tokens before padding, each group in position order: valid * S + (S - 1 - position)
        positions = make.node("Range", [make.const(f"{base}/zero", np.array(0, np.int64)), length,
                                        make.const(f"{base}/step", np.array(1, np.int64))],
                              f"{base}/positions", dtype=np.int64)[0]
        valid64 = make.node("Cast", [valid], f"{base}/valid_i64", dtype=np.int64, to=7)[0]
        scaled = make.node("Mul", [valid64, length], f"{base}/valid_x_length", dtype=np.int64)[0]
        last = make.node("Sub", [length, make.const(f"{base}/one64", np.array(1, np.int64))], f"{base}/last",
                         dtype=np.int64)[0]
        reverse = make.node("Sub", [last, positions], f"{base}/reverse_positions", dtype=np.int64)[0]
        key = make.node("Add", [scaled, reverse], f"{base}/sort_key", dtype=np.int64)[0]
        k = make.node("Reshape", [length, make.const(f"{base}/one_dim", np.array([1], np.int64))], f"{base}/k",
                      dtype=np.int64)[0]
        _, indices = make.node("TopK", [key, k], f"{base}/topk", outputs=2, dtype=np.int64, axis=-1, largest=1,
                               sorted=1)
        order = make.node("Unsqueeze", [indices, make.const(f"{base}/axis2", np.array([2], np.int64))],
                          f"{base}/order", dtype=np.int64)[0]
    return PaddingPlan(seqlens_k, total, order, lengths)


def _detach(site: AttentionSite) -> None:
    """The site's output loses its producer (the site's nodes become dead: cleanup drops them)."""
    for node in site.nodes:
        if any(t is site.out for t in node.outputs):
            node.outputs.clear()  # a layout node: its one output is the site's output


def fuse_site(make: NodeMaker, site: AttentionSite, kind: MaskKind, plans: Mapping[str, PaddingPlan]) -> str:
    """Rewrite one site (rule 3); returns the fused op's name."""
    base = site.name + "/fused"
    dtype = site.out.dtype or np.float32
    _detach(site)
    common = dict(num_heads=site.heads, scale=float(site.scale))
    if kind.kind == "padding":
        plan = plans[kind.input]
        k, v = site.k, site.v
        if plan.order is not None:
            k = make.node("GatherND", [site.k, plan.order], f"{base}/keys_tokens_first", dtype=dtype, batch_dims=1)[0]
            v = make.node("GatherND", [site.v, plan.order], f"{base}/values_tokens_first", dtype=dtype,
                          batch_dims=1)[0]
        present = [gs.Variable(make.name(f"{base}/present_{x}"), dtype=dtype) for x in "kv"]
        make.graph.nodes.append(gs.Node(
            "GroupQueryAttention", name=make.name(base), domain=MS_DOMAIN,
            attrs=dict(common, kv_num_heads=site.heads, causal=0),
            inputs=[site.q, k, v, gs.Variable.empty(), gs.Variable.empty(), plan.seqlens_k, plan.total],
            outputs=[site.out, *present]))
        return "GroupQueryAttention"
    inputs = [site.q, site.k, site.v]
    attrs = dict(common)
    if kind.kind == "causal":
        attrs["unidirectional"] = 1
    elif kind.kind == "bias":
        inputs += [gs.Variable.empty(), gs.Variable.empty(), _expanded_bias(make, site, base)]
    make.graph.nodes.append(gs.Node("MultiHeadAttention", name=make.name(base), domain=MS_DOMAIN, attrs=attrs,
                                    inputs=inputs, outputs=[site.out]))
    return "MultiHeadAttention"


def _expanded_bias(make: NodeMaker, site: AttentionSite, base: str) -> gs.Variable:
    """The site's additive term broadcast to [B or 1, H or 1, S, S_kv] (what the op reads)."""
    bias = site.bias
    def dim(tensor, axis, name):
        shape = make.node("Shape", [tensor], f"{base}/{name}_shape", dtype=np.int64)[0]
        return make.node("Gather", [shape, make.const(f"{base}/{name}_axis", np.array([axis], np.int64))],
                         f"{base}/{name}_dim", dtype=np.int64, axis=0)[0]
    bias_shape = make.node("Shape", [bias], f"{base}/bias_shape", dtype=np.int64)[0]
    lead = make.node("Slice", [bias_shape, make.const(f"{base}/s0", np.array([0], np.int64)),
                               make.const(f"{base}/s2", np.array([2], np.int64))], f"{base}/bias_lead", dtype=np.int64)[0]
    target = make.node("Concat", [lead, dim(site.q, 1, "query"), dim(site.k, 1, "key")], f"{base}/bias_target",
                       dtype=np.int64, axis=0)[0]
    return make.node("Expand", [bias, target], f"{base}/attention_bias", dtype=bias.dtype or np.float32)[0]
