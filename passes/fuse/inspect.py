"""``graphc inspect --attention``: every Softmax of a model as ``fuse`` rule 1 sees it (the
pass's ``InspectSection``, hooked on ``FusePass.inspect``): an attention site with its heads,
head size, scale and whether it has an additive mask, or the reason rule 1 leaves it; and
the fused attention nodes already in the model. Structural only: which kind a mask is (rule
2) and whether a site's fused form matches (rule 4) are read on probe runs by the pass."""

from __future__ import annotations

import onnx

from graphc.graph import infer_shapes, to_graph
from graphc.ops import ATTENTION_OPS
from graphc.passes.fuse.attention_sites import find_sites
from graphc.report import markdown_table


def attention_summary(model: onnx.ModelProto, shapes=None) -> list[dict]:
    graph = infer_shapes(to_graph(model))
    sites, skipped = find_sites(graph)
    rows = [{"softmax": s.name, "state": "fusable", "heads": s.heads, "head_size": s.head_size,
             "scale": round(s.scale, 6), "mask": s.bias is not None, "reason": ""} for s in sites]
    rows += [{"softmax": name, "state": "left", "heads": None, "head_size": None, "scale": None, "mask": None,
              "reason": reason} for name, reason in skipped.items()]
    rows += [{"softmax": n.name or n.output[0], "state": f"fused ({n.op_type})", "heads": _heads(n), "head_size": None,
              "scale": None, "mask": None, "reason": ""} for n in model.graph.node if n.op_type in ATTENTION_OPS]
    return rows


def _heads(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "num_heads"), None)


def attention_text(rows: list[dict]) -> str:
    if not rows:
        return "attention: no Softmax and no fused attention node"
    table = [["node", "state", "heads", "head size", "scale", "mask", "why left"]]
    for r in rows:
        table.append([r["softmax"], r["state"], "" if r["heads"] is None else str(r["heads"]),
                      "" if r["head_size"] is None else str(r["head_size"]), "" if r["scale"] is None else f"{r['scale']:g}",
                      "" if r["mask"] is None else ("yes" if r["mask"] else "no"), r["reason"]])
    fusable = sum(r["state"] == "fusable" for r in rows)
    return f"attention: {fusable} of {len(rows)} fusable by fuse\n" + markdown_table(table)
