"""``fuse``: attention subgraphs become onnxruntime's fused CPU attention ops (exact).

Run it after ``fold`` and before ``int8`` (``--passes fold,fuse,int8``): the Q, K, V and
output projections stay separate MatMuls, so ``int8`` quantizes them as before. ``prune``
and ``distill`` run before it (the fused ops are onnxruntime contrib ops, which neither
prune's head groups nor the training engines read).

Rules, each in the module that applies it:

1. attention sites: Softmax-centred scaled dot-product attention in the layouts the torch
   exporters write (eager and SDPA, both exporters, fused QKV split): ``attention_sites``
2. each site's additive mask classified from its values on probe inputs (padding, causal,
   other): ``masks``
3. each site rewritten into ``MultiHeadAttention`` (no mask, causal, other masks as its
   attention bias) or ``GroupQueryAttention`` (padding masks: only each row's tokens are
   read, the mask algebra done once per input): ``attention_rewrite``
4. every fused site is run against the original on the probe inputs (each mask input set
   to full, right-padded, left-padded and holed rows); a site whose output moves by more
   than ``SITE_TOLERANCE`` relative to its largest magnitude is put back as it was, with a
   note: ``checks``
5. ``unpad``: the layers between the embeddings and the head run on each row's tokens only,
   kept where no model output moves on the probes (a head that reads padded positions keeps
   the padding, with a note): ``unpad``
6. ``norms``: residual Add + LayerNormalization into SkipLayerNormalization (``norms``), the
   erf and tanh GELUs into BiasGelu / Gelu / FastGelu where onnxruntime does not fuse them
   itself (``gelu``; shapes from ``shapes``); with ``norms=auto`` (the default) kept only
   when the model with them is measured faster here, at batch 1, than without them
   (``norms.faster_variant``; a timing-dependent choice, as int8's speed guard)

Refuses to touch: nodes in subgraphs, sites rule 1 leaves alone (the report lists each
Softmax left and why), models without attention (returned unchanged, with a note).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import onnx_graphsurgeon as gs

from graphc.graph import infer_shapes, to_graph, to_model
from graphc.pass_api import InspectSection, Pass, PassResult
from graphc.passes.fuse.attention_rewrite import NodeMaker, fuse_site, padding_plan
from graphc.passes.fuse.attention_sites import AttentionSite, data_inputs, find_sites
from graphc.passes.fuse.checks import output_errors, probe_inputs, site_errors, site_values
from graphc.passes.fuse.gelu import erf_gelu, tanh_gelu
from graphc.passes.fuse.inspect import attention_summary, attention_text
from graphc.passes.fuse.norms import faster_variant, skip_layer_norm
from graphc.passes.fuse.shapes import symbolic_shapes
from graphc.passes.fuse.unpad import projection_input, token_region, unpad
from graphc.passes.fuse.masks import MaskKind, classify, mask_inputs
from graphc.verify import Tolerance

SITE_TOLERANCE = 1e-4
NORMS_MARGIN = 0.03  # rule 6 keeps the rewrites when at least 3% faster (the timing's noise)
NORMS_SECONDS = 0.5  # per model
NOTE_REASONS = 5


@dataclass(frozen=True)
class FuseOptions:
    attention: bool = field(default=True, metadata={"help": "fuse attention sites (rules 1-4)"})
    padding: Literal["any", "right"] = field(default="any", metadata={
        "help": "padding masks: 'any' (exact for every 0/1 mask) or 'right' (skips a gather per layer; "
                "wrong for left-padded rows)"})
    norms: Literal["auto", "on", "off"] = field(default="auto", metadata={
        "help": "SkipLayerNormalization / BiasGelu / FastGelu rules (6): 'auto' keeps them where measured faster "
                "here at batch 1"})
    unpad: bool = field(default=True, metadata={
        "help": "run the layers between embeddings and head on the tokens only (rule 5; kept only where "
                "the outputs do not move)"})


class FusePass(Pass):
    name = "fuse"
    summary = "attention subgraphs into onnxruntime's fused CPU attention (exact; projections stay MatMuls)"
    Options = FuseOptions
    in_place = False
    exact = True
    min_opset = 13
    must_run_after = {
        "prune": "prune must run before fuse: prune's head groups read the unfused attention layout",
        "distill": "distill must run before fuse: the training engines do not run onnxruntime's fused attention ops",
    }
    inspect = InspectSection(
        flag="attention", key="attention", collect=attention_summary, render=attention_text,
        help="list every Softmax as fuse sees it: an attention site (heads, head size, scale, mask) or why not")
    must_run_before = {
        "int8": "fuse must run before int8: it matches the float attention subgraph; int8 then quantizes the "
                "projections fuse keeps",
    }

    def tolerance(self) -> Tolerance:
        return Tolerance(max_rel_error=1e-4, min_cosine=0.99999, abs_floor=1e-6)

    def run(self, graph: gs.Graph, ctx) -> PassResult:
        if not self.options.attention:
            return PassResult(changed=False, stats={"attention_sites": 0}, graph=graph)
        graph = infer_shapes(graph)
        sites, skipped = find_sites(graph)
        stats: dict = {"attention_sites": len(sites), "softmax_left": len(skipped)}
        _note_skipped(ctx, skipped)
        if not sites:
            ctx.report.note("fuse: no attention site found; the model is unchanged")
            return PassResult(changed=False, stats={**stats, "fused": 0}, graph=graph)
        original = to_model(graph, ctx.original)
        masks = mask_inputs(original)
        probes = probe_inputs(ctx, original, masks, right_only=self.options.padding == "right")
        values = site_values(original, sites, probes, ctx.threads)
        kinds = {site.name: _kind(site, values, probes, masks) for site in sites}
        fused, ops, _ = _fused_graph(original, set(kinds), kinds, self.options.padding == "any")
        errors = site_errors(to_model(fused, ctx.original), sites, values, probes, ctx.threads)
        bad = {name for name, error in errors.items() if error > SITE_TOLERANCE}
        for name in sorted(bad):
            ctx.report.note(f"fuse: site {name} left unfused: its fused form moved its output by "
                            f"{errors[name]:.2g} relative (tolerance {SITE_TOLERANCE:g})")
        if bad:
            fused, ops, _ = _fused_graph(original, set(kinds) - bad, kinds, self.options.padding == "any")
        stats["unpadded"] = False
        if self.options.unpad and ops:
            fused, stats["unpadded"] = _try_unpad(ctx, original, fused, set(ops), kinds, self.options.padding == "any",
                                                  values, probes)
        if self.options.norms != "off":
            fused = _norm_rules(ctx, fused, self.options.norms, stats)
        counts: dict[str, int] = {}
        for op in ops.values():
            counts[op] = counts.get(op, 0) + 1
        mask_counts: dict[str, int] = {}
        for name in ops:
            mask_counts[kinds[name].kind] = mask_counts.get(kinds[name].kind, 0) + 1
        stats.update(fused=len(ops), reverted=len(bad), **{f"fused_{op}": n for op, n in sorted(counts.items())},
                     **{f"mask_{kind}": n for kind, n in sorted(mask_counts.items())})
        details = {"sites": {name: {"op": ops[name], "mask": kinds[name].kind, "mask_input": kinds[name].input}
                             for name in ops},
                   "left": skipped, "reverted": {name: errors[name] for name in bad}}
        return PassResult(changed=bool(ops), stats=stats, graph=infer_shapes(fused), details=details)


def _kind(site: AttentionSite, values, probes, masks) -> MaskKind:
    if site.bias is None:
        return MaskKind("none")
    bias = values[site.bias.name]
    if bias.ndim != 4:
        return MaskKind("unsupported")
    return classify(bias, probes, masks, data_inputs(site.bias))


def _norm_rules(ctx, graph: gs.Graph, mode: str, stats: dict) -> gs.Graph:
    """Rule 6: the norm and GELU rewrites, kept (``auto``) where measured faster here."""
    unfused = to_model(graph, ctx.original)
    candidate = to_graph(unfused)
    shapes = symbolic_shapes(candidate)
    counts = {"skip_layer_norm": skip_layer_norm(candidate, shapes),
              "erf_gelu": erf_gelu(candidate, shapes), "tanh_gelu": tanh_gelu(candidate, shapes)}
    stats.update({f"norms_{k}": v for k, v in counts.items()})
    if not any(counts.values()):
        return graph
    if mode == "on":
        return infer_shapes(candidate)
    feeds, _ = next(ctx.sample_data(1).batches(1))
    models = {"unfused": unfused, "fused": to_model(candidate, ctx.original)}
    kept, times = faster_variant(models, feeds, ctx.threads, margin=NORMS_MARGIN, seconds=NORMS_SECONDS)
    stats["norms_kept"] = kept == "fused"
    ctx.report.note(f"fuse norms=auto (batch 1, us per run: without {times['unfused']:.0f}, with "
                    f"{times['fused']:.0f}): {'kept' if kept == 'fused' else 'not kept'}")
    return infer_shapes(candidate) if kept == "fused" else graph


def _try_unpad(ctx, original, fused, names, kinds, any_padding, values, probes):
    """Rule 5 on top of the fused sites, kept when no model output moves on the probes."""
    inputs = {kinds[n].input for n in names}
    if len(inputs) != 1 or any(kinds[n].kind != "padding" for n in names):
        return fused, False
    candidate, _, why = _fused_graph(original, names, kinds, any_padding, unpad_input=inputs.pop())
    if candidate is None:
        ctx.report.note(f"fuse: padding kept ({why})")
        return fused, False
    outputs = [t.name for t in candidate.outputs]
    errors = output_errors(to_model(candidate, ctx.original), outputs, values, probes, ctx.threads)
    moved = {name: e for name, e in errors.items() if e > SITE_TOLERANCE}
    if moved:
        name = max(moved, key=moved.get)
        ctx.report.note(f"fuse: padding kept: output {name!r} reads padded positions (it moved by "
                        f"{moved[name]:.2g} relative without them)")
        return fused, False
    return candidate, True


def _fused_graph(original, names: set[str], kinds: dict[str, MaskKind], any_padding: bool,
                 unpad_input: str | None = None):
    """A fresh graph of ``original`` with the sites called ``names`` fused; op per site. With
    ``unpad_input`` rule 5 is applied too: (graph, ops, None), or (None, None, why not)."""
    graph = infer_shapes(to_graph(original))
    sites = {s.name: s for s in find_sites(graph)[0]}
    make = NodeMaker(graph)
    plans = {}
    inputs = {t.name: t for t in graph.inputs}
    ops = {}
    for name in sorted(names):
        site, kind = sites.get(name), kinds[name]
        if site is None or kind.kind == "unsupported":
            continue
        if kind.kind == "padding" and kind.input not in plans:
            plans[kind.input] = padding_plan(make, inputs[kind.input], any_padding)
        ops[name] = fuse_site(make, site, kind, plans)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    if unpad_input is None:
        return graph, ops, None
    attention = [n for n in graph.nodes if n.op == "GroupQueryAttention"]
    entry = projection_input(attention[0].inputs[0]) if attention else None
    if entry is None or entry.shape is None or len(entry.shape) != 3:
        return None, None, "the first attention's input is not a [batch, sequence, hidden] projection input"
    region = token_region(graph, entry, plans[unpad_input])
    if len(region.attention) != len(attention):
        return None, None, f"{len(attention) - len(region.attention)} attention sites are outside the token region"
    unpad(graph, make, region, plans[unpad_input], inputs[unpad_input])
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return graph, ops, None


def _note_skipped(ctx, skipped: dict[str, str]) -> None:
    if not skipped:
        return
    by_reason: dict[str, list[str]] = {}
    for name, reason in skipped.items():
        by_reason.setdefault(reason, []).append(name)
    for reason, names in list(by_reason.items())[:NOTE_REASONS]:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        ctx.report.note(f"fuse: {len(names)} Softmax left unfused ({shown}): {reason}")
