"""The optimize report: model statistics before/after and one row per pass.

Written as JSON (``--report``) and printed as a Markdown table.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from graphc.model_io import write_text_atomically
from graphc.stats import ModelStats, human, human_bytes
from graphc.verify import OutputComparison


@dataclass
class PassReport:
    name: str
    spec: str
    seconds: float
    changed: bool
    stats: dict[str, Any]
    after: ModelStats
    verify: list[OutputComparison] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"name": self.name, "spec": self.spec, "seconds": round(self.seconds, 3),
                "changed": self.changed, "stats": self.stats, "details": self.details, "after": self.after.as_dict(),
                "verify": None if self.verify is None else [v.as_dict() for v in self.verify]}


@dataclass
class Report:
    model: str
    before: ModelStats
    passes: list[PassReport] = field(default_factory=list)
    output: str | None = None
    notes: list[str] = field(default_factory=list)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> {before, after}
    latency: dict[str, float] = field(default_factory=dict)  # --bench: p50 before/after, batch 1

    @property
    def after(self) -> ModelStats:
        return self.passes[-1].after if self.passes else self.before

    def note(self, text: str) -> None:
        self.notes.append(text)

    def as_dict(self) -> dict:
        return {"model": self.model, "output": self.output, "before": self.before.as_dict(),
                "after": self.after.as_dict(), "passes": [p.as_dict() for p in self.passes],
                "metrics": self.metrics, "latency": self.latency, "notes": self.notes}

    def write_json(self, path: str | os.PathLike) -> None:
        """Write the JSON report atomically."""
        write_text_atomically(path, json.dumps(self.as_dict(), indent=2) + "\n")

    def markdown(self) -> str:
        rows = [["stage", "nodes", "params", "MACs", "size", "time", "verify (rel err / cos / top-1)", "details"],
                _stats_row("original", self.before, "", None, {})]
        for p in self.passes:
            rows.append(_stats_row(p.spec, p.after, f"{p.seconds:.1f}s", p.verify,
                                   p.stats if p.changed else {"changed": False}))
        b, a = self.before, self.after
        ratios = (f"after/before: size {_ratio(a.size_bytes, b.size_bytes)}, params {_ratio(a.params, b.params)}, "
                  f"MACs {_ratio(a.macs, b.macs)}, nodes {a.nodes}/{b.nodes}")
        lines = [markdown_table(rows), "", ratios]
        for metric, values in self.metrics.items():
            lines.append(f"{metric}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
        if self.latency:
            lines.append(f"latency p50 (batch 1, interleaved): {self.latency['before_p50_ms']:.3f} ms -> "
                         f"{self.latency['after_p50_ms']:.3f} ms ({self.latency['speedup']:.2f}x)")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _ratio(after: float, before: float) -> str:
    return f"{after / before:.3f}x" if before else "n/a"


def _verify_cell(verify: list[OutputComparison] | None) -> str:
    if verify is None:
        return ""
    worst_rel = max(v.max_rel_error for v in verify)
    worst_cos = min(v.cosine for v in verify)
    top1 = [v.top1_agreement for v in verify if v.top1_agreement is not None]
    cell = f"{worst_rel:.2e} / {worst_cos:.6f}"
    return cell + (f" / {min(top1):.1%}" if top1 else "")


def _stats_row(stage: str, stats: ModelStats, seconds: str, verify, details: dict) -> list[str]:
    macs = human(stats.macs) + ("+?" if stats.uncounted else "")
    detail = ", ".join(f"{k}={v}" for k, v in details.items())
    return [stage, str(stats.nodes), human(stats.params), macs, human_bytes(stats.size_bytes), seconds,
            _verify_cell(verify), detail]


def markdown_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    fmt = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, rows[1:])])

