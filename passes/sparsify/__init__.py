"""``sparsify``: weights of MatMul, Gemm and Conv layers set to zero; the model stays a valid
dense ONNX model (the kernels that turn the zeros into speed read this pass's output).

Rules, each in the module that applies it:

1. Which layers (``exclude``, ``min_size``; a weight shared with any other reader, such as a
   tied embedding table, stays dense): ``graphc.weight_layers``.
2. The view of each weight (outputs x the reduction axis: MatMul ``B [K, N]`` and Gemm
   ``transB=0`` reduce over B's axis 0, Gemm ``transB=1`` over axis 1, Conv over the input
   channel at each kernel tap, im2col with channels innermost), the patterns
   (``pattern=unstructured|N:M|block`` with ``block=RxC``: R outputs by C consecutive
   reduction positions), the scores (``by=magnitude|wanda``) and the choice
   (``ratio``, ``scope=uniform|global``, ``max_layer_ratio``; ties broken by position, so the
   same model gives the same bytes): ``graphc.sparsity``. With ``N:M`` the pattern fixes
   the ratio at ``1 - N/M`` (a ``ratio`` other than that and the default 0.5 is refused). A layer whose view
   does not divide into the pattern's groups or blocks stays dense, with the reason.
3. Wanda's activation norms: one streamed run over ``--data`` (``graphc.weight_layers.
   channel_norms``, the tensor tap).
4. Zeroing: only the chosen weights change, to exactly 0 (the rest keep their bytes); a
   weight already zero counts toward the ratio.
5. ``recalibrate=true`` with ``--data``: BatchNormalization statistics re-estimated on the
   sparse model (``graphc.bn_recalibrate``), which one-shot sparsity of a CNN needs most.

Order: before ``int8`` (``int8`` keeps a zero weight exactly zero: symmetric weights, zero
point 0); ``prune`` may run before or after it; ``distill`` after it keeps every zero
(``distill:keep_zeros``). ``graphc inspect --sparsity`` lists every layer's sparsity and the
patterns it conforms to (``inspect``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import onnx_graphsurgeon as gs

from graphc import sparsity
from graphc.bn_recalibrate import recalibrate_batchnorm
from graphc.errors import GraphcError
from graphc.pass_api import InspectSection, Pass, PassResult
from graphc.passes.sparsify.inspect import sparsity_summary, sparsity_text
from graphc.spec import Globs, normalise_globs
from graphc.verify import Tolerance
from graphc.weight_layers import channel_norms, computed_weights, dense_summary, pattern_layers

if TYPE_CHECKING:
    from graphc.context import Context

DEFAULT_RATIO = 0.5


@dataclass(frozen=True)
class SparsifyOptions:
    ratio: float = field(default=DEFAULT_RATIO, metadata={
        "min": 0.0, "max": 0.99, "help": "share of the chosen layers' weights set to zero (N:M fixes it at 1-N/M)"})
    pattern: str = field(default="unstructured", metadata={
        "help": "unstructured, N:M (at most N non-zeros in every M along the reduction axis, e.g. 2:4) or block"})
    block: str = field(default="1x4", metadata={
        "help": "with pattern=block: RxC, R outputs by C consecutive reduction positions (1x4, 4x1, 16x4)"})
    by: Literal["magnitude", "wanda"] = field(default="magnitude", metadata={
        "help": "score: |w|, or |w| x the input channel's L2 norm over --data (wanda)"})
    scope: Literal["uniform", "global"] = field(default="uniform", metadata={
        "help": "every layer gets the ratio, or rank across layers after normalising each layer's scores"})
    max_layer_ratio: float = field(default=0.98, metadata={
        "min": 0.0, "max": 1.0, "help": "scope=global: the most any one layer loses"})
    exclude: Globs = field(default=Globs(), metadata={
        "help": "initializer- or node-name globs joined by '+' left dense"})
    min_size: int = field(default=1024, metadata={"min": 0, "help": "layers with fewer weights stay dense"})
    recalibrate: bool = field(default=False, metadata={"help": "re-estimate BatchNorm statistics on --data (rule 5)"})

    def __post_init__(self):
        normalise_globs(self)
        parsed = sparsity.Pattern.parse(self.pattern, self.block)  # ValueError: a clear message
        implied = parsed.implied_ratio()
        if implied is not None and self.ratio != DEFAULT_RATIO and abs(self.ratio - implied) > 1e-9:
            raise ValueError(f"pattern={self.pattern} zeroes {parsed.m - parsed.n} of every {parsed.m} weights "
                             f"(ratio {implied:g}); ratio={self.ratio:g} contradicts it (drop ratio=)")
        if self.block != "1x4" and parsed.kind != "block":
            raise ValueError(f"block={self.block} is read only with pattern=block")

    @property
    def parsed(self) -> sparsity.Pattern:
        return sparsity.Pattern.parse(self.pattern, self.block)

    @property
    def target_ratio(self) -> float:
        implied = self.parsed.implied_ratio()
        return self.ratio if implied is None else implied


class SparsifyPass(Pass):
    name = "sparsify"
    summary = "weights of MatMul/Gemm/Conv set to zero: unstructured, N:M or block (magnitude or wanda)"
    Options = SparsifyOptions
    main_option = "ratio"
    in_place = True
    must_run_before = {"int8": "sparsify after int8 is refused: it zeroes float weights, and int8 has "
                               "quantized them; put sparsify first, e.g. --passes sparsify:0.5,int8"}
    inspect = InspectSection(flag="sparsity", key="sparsity", collect=sparsity_summary, render=sparsity_text,
                             help="every MatMul/Gemm/Conv weight: its sparsity and the patterns it conforms to")

    def tolerance(self) -> Tolerance:
        return Tolerance()  # zeroing weights changes outputs by design; distill wins accuracy back

    def check(self, ctx: Context) -> None:
        if self.options.by == "wanda" and ctx.data is None:
            raise GraphcError("sparsify:by=wanda needs --data (inputs to measure each layer's input "
                              "channel norms on)")
        if self.options.recalibrate and ctx.data is None:
            raise GraphcError("sparsify:recalibrate=true needs --data (inputs to re-estimate BatchNorm statistics on)")

    def run(self, graph: gs.Graph, ctx: Context) -> PassResult:
        o = self.options
        pattern = o.parsed
        fitting, views, dense = pattern_layers(graph, pattern, o.exclude, o.min_size)
        computed = computed_weights(graph)
        if computed:
            ctx.report.note(f"sparsify: {computed} MatMul/Gemm/Conv weights are computed from constants (e.g. a "
                            f"Transpose of an initializer) and stay dense; run fold first (--passes fold,sparsify)")
        if not fitting:
            ctx.report.note(f"sparsify: no layer to sparsify ({dense_summary(dense) or 'no MatMul/Gemm/Conv weight'})")
            return PassResult(changed=False, stats={"layers_sparsified": 0, "layers_dense": len(dense)})
        norms = channel_norms(graph, fitting, ctx.data, ctx.threads) if o.by == "wanda" else {}
        score_views = [sparsity.scores(view, layer.layout, norms.get(layer.name))
                       for view, layer in zip(views, fitting)]
        masks = sparsity.choose(score_views, pattern, o.target_ratio, o.scope, o.max_layer_ratio,
                                per_row=o.by == "wanda")
        rows, zeros_before, total = [], 0, 0
        for layer, view, keep in zip(fitting, views, masks):
            values = np.asarray(layer.tensor.values)
            zeros_before += int((values == 0).sum())
            sparse_view = np.where(keep, view, np.zeros((), dtype=view.dtype))
            layer.tensor.values = sparsity.from_view(sparse_view, layer.layout, values.shape).astype(values.dtype)
            zeros = int((sparse_view == 0).sum())
            total += view.size
            rows.append({"layer": layer.name, "op": layer.op, "shape": list(values.shape), "weights": view.size,
                         "zeros": zeros, "sparsity": round(zeros / view.size, 4),
                         "skippable": sparsity.skippable(sparse_view, pattern)})
        zeros_after = sum(r["zeros"] for r in rows)
        stats = {"pattern": str(pattern), "by": o.by, "layers_sparsified": len(fitting), "layers_dense": len(dense),
                 "sparsity": round(zeros_after / total, 4),
                 "weights_zero": int(zeros_after), "kernel_skippable": sum(r["skippable"] for r in rows)}
        if o.recalibrate:
            stats["bn_recalibrated"] = recalibrate_batchnorm(graph, ctx.data, threads=ctx.threads)
        if dense:
            ctx.report.note(f"sparsify: {len(dense)} layers left dense ({dense_summary(dense)})")
        return PassResult(changed=zeros_after > zeros_before, stats=stats,
                          details={"layers": rows, "dense": [{"layer": d.name, "reason": d.skip} for d in dense]})

