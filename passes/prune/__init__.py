"""``prune``: structured pruning that physically removes channels, heads and FFN neurons.

Rules (rule -> the module whose docstring states it, beside the functions that apply it):

1. Analysis: constants folded, then the channel dependency graph groups coupled channels;
   only unblocked groups of two or more units are prunable -> ``plan`` (``analyse``).
   The graph: ``channel_graph`` (the sweep and its op-rule table), ``channel_groups``
   (groups, members, merges); the rules per op family: ``rules_weights`` (Conv, Gemm,
   MatMul, Gather), ``rules_elementwise`` (pass-through, broadcasting), ``rules_norms``
   (normalisations, Softmax, reductions), ``rules_concat_split`` (Concat, Split, Slice,
   Pad), ``rules_reshape`` (Transpose, reshapes, heads).
2. Importance per unit (``by=l1|l2|activation|taylor``) -> ``scores``.
3. Selection of the units to remove (``ratio``, ``target``, ``scope``, ``max_layer_ratio``,
   ``round_to``, ``latency``) -> ``selection``; the layer times it reads (``latency=true``,
   ``target=latency``, ``profile``) -> ``layer_times``.
4. Removal of every slice of a removed unit (model inputs and outputs keep their shapes)
   -> ``removal``.
5. ``recalibrate=true`` with ``--data``: BatchNormalization statistics re-estimated on the
   pruned model -> ``graphc.bn_recalibrate`` (shared with ``sparsify``).

Quantized layers (a weight read through DequantizeLinear, or a QOperator op such as
QLinearConv or MatMulInteger) are left as they are: their scales and zero points would have to
shrink with their channels; the report says how many (``quantized_layers``).

``graphc inspect --prune-groups`` (the groups and what blocks each) -> ``inspect``.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import onnx_graphsurgeon as gs

from graphc.errors import GraphcError
from graphc.graph import infer_shapes
from graphc.pass_api import InspectSection, Pass, PassResult
from graphc.bn_recalibrate import recalibrate_batchnorm
from graphc.passes.prune.inspect import prune_groups, prune_groups_text
from graphc.passes.prune.layer_times import load_layer_times
from graphc.passes.prune.plan import PrunePlan, analyse, plan_pruning
from graphc.passes.prune.removal import apply_pruning
from graphc.verify import Tolerance

if TYPE_CHECKING:
    from graphc.context import Context

__all__ = ["PruneOptions", "PrunePass", "PrunePlan", "analyse", "apply_pruning", "plan_pruning"]


@dataclass(frozen=True)
class PruneOptions:
    ratio: float = field(default=0.3, metadata={"min": 0.0, "max": 0.95,
                                                "help": "share of the prunable cost to remove (see target)"})
    by: Literal["l1", "l2", "activation", "taylor"] = field(default="l2", metadata={"help": "importance score"})
    target: Literal["params", "macs", "latency"] = field(default="params", metadata={
        "help": "what ratio measures: parameters, MACs, or measured time (latency profiles the model once)"})
    scope: Literal["global", "uniform"] = field(default="global", metadata={
        "help": "rank units across all groups, or remove ratio of every group"})
    max_layer_ratio: float = field(default=0.9, metadata={"min": 0.0, "max": 0.99,
                                                          "help": "most units any one group may lose"})
    round_to: int = field(default=8, metadata={"min": 1, "help": "kept channels a multiple of this (1: exact ratio; "
                                                                "8 keeps onnxruntime's fast blocked Conv/GEMM paths)"})
    hidden: bool = field(default=False, metadata={"help": "also prune the transformer hidden size (inexact)"})
    latency: bool = field(default=False, metadata={"help": "rank by importance x measured speed: channels of layers "
                                                           "slow per MAC go first (profiles the model once)"})
    profile: str = field(default="", metadata={"help": "layer-times JSON for latency=true / target=latency: read "
                                                      "if it exists, else measured and written there"})
    recalibrate: bool = field(default=False, metadata={"help": "re-estimate BatchNorm statistics on --data"})


class PrunePass(Pass):
    name = "prune"
    summary = "structured pruning of channels, attention heads and FFN neurons (physically removed)"
    Options = PruneOptions
    main_option = "ratio"
    in_place = False
    inspect = InspectSection(
        flag="prune-groups", key="prune_groups", collect=prune_groups, render=prune_groups_text,
        help="list the channel groups prune sees: kind, units, origin, and what blocks a group")

    def tolerance(self) -> Tolerance:
        return Tolerance()  # pruning changes outputs by design; distill wins accuracy back

    def check(self, ctx: Context) -> None:
        needs_data = self.options.by in ("activation", "taylor") or self.options.recalibrate
        if needs_data and ctx.data is None:
            raise GraphcError(f"prune:by={self.options.by}{':recalibrate=true' if self.options.recalibrate else ''} "
                              f"needs --data (inputs to measure activations on)")
        uses_times = self.options.latency or self.options.target == "latency"
        if self.options.profile and not uses_times:
            raise GraphcError(f"prune:profile={self.options.profile} is only read with latency=true or target=latency")
        if self.options.profile and pathlib.Path(self.options.profile).exists():
            load_layer_times(self.options.profile)  # refuse a malformed file before any work
        if self.options.latency and self.options.scope == "uniform":
            raise GraphcError("prune:latency=true reorders units across groups; scope=uniform removes the same share "
                              "of every group, so it would change nothing (use scope=global)")

    def run(self, graph: gs.Graph, ctx: Context) -> PassResult:
        quantized = quantized_layers(graph)
        if quantized:
            ctx.report.note(f"prune: {quantized} quantized layers (Q/DQ or QOperator weights) left as they are: "
                            f"their scales and zero points would have to shrink with their channels")
        plan = plan_pruning(graph, self.options, shapes=ctx.shapes, data=ctx.data, threads=ctx.threads)
        stats = plan.stats()
        if quantized:
            stats["quantized_layers_kept"] = quantized
        if not plan.removed:  # the given graph is returned untouched
            ctx.report.note(plan.nothing_message())
            return PassResult(changed=False, stats=stats, graph=graph, details={"groups": plan.group_table()})
        apply_pruning(plan)
        pruned = infer_shapes(plan.graph)
        if self.options.recalibrate:
            stats["bn_recalibrated"] = recalibrate_batchnorm(pruned, ctx.data, threads=ctx.threads)
        return PassResult(changed=True, stats=stats, graph=pruned, details={"groups": plan.group_table()})


QOPERATOR_LAYERS = frozenset({"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm",
                              "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM"})


def quantized_layers(graph: gs.Graph) -> int:
    """Layers with quantized weights: QOperator layers, and Conv/ConvTranspose/Gemm/MatMul/Gather
    whose weight (or table) is a DequantizeLinear output."""
    def dequantized(tensor: gs.Tensor) -> bool:
        return len(tensor.inputs) == 1 and tensor.inputs[0].op == "DequantizeLinear"

    count = 0
    for node in graph.nodes:
        if node.op in QOPERATOR_LAYERS:
            count += 1
        elif node.op in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(node.inputs) > 1:
            count += dequantized(node.inputs[1])
        elif node.op == "Gather" and node.inputs:
            count += dequantized(node.inputs[0])
    return count
