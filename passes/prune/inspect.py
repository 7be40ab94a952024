"""``graphc inspect --prune-groups``: the channel groups of a model as prune sees them."""

from __future__ import annotations

from graphc.graph import to_graph
from graphc.passes.prune.plan import analyse
from graphc.passes.prune.selection import CostModel
from graphc.report import markdown_table
from graphc.stats import human


def prune_groups(model, shapes) -> list[dict]:
    """The channel groups of ``model`` as prune sees them, with what blocks each."""
    channel_graph = analyse(to_graph(model), dict(shapes))
    rows = []
    for group in sorted(channel_graph.groups.values(), key=lambda g: g.id):
        status = f"blocked: {group.blocked}" if group.blocked else (
            "prunable" if group.units >= 2 else "single unit")
        rows.append({"group": group.id, "kind": group.kind, "units": group.units,
                     "unit_channels": group.channels_per_unit, "origin": group.origin,
                     "params": int(CostModel([group], channel_graph.shapes, "params").total), "status": status})
    return rows


def prune_groups_text(groups: list[dict]) -> str:
    """The rows of ``prune_groups`` as the text section of ``graphc inspect``."""
    prunable = sum(1 for g in groups if g["status"] == "prunable")
    table = [["group", "kind", "units x channels", "params", "origin", "status"]]
    table += [[str(g["group"]), g["kind"], f"{g['units']} x {g['unit_channels']}", human(g["params"]),
               g["origin"], g["status"]] for g in groups]
    return f"prune groups: {len(groups)} ({prunable} prunable)\n" + markdown_table(table)
