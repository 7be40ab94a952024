"""The context every pass receives: data sources, the original model, options, the report."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field

import onnx

from graphc.data import Dataset, synthetic_dataset
from graphc.report import Report

VERIFY_ROWS = 16


@dataclass
class Context:
    original: onnx.ModelProto  # the model as loaded: teacher and reference
    model_path: pathlib.Path
    report: Report
    data: Dataset | None = None  # --data: calibration / sample inputs
    train_data: Dataset | None = None
    eval_data: Dataset | None = None
    metric: str | None = None
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    threads: int | None = None
    pass_names: list[str] = field(default_factory=list)  # the whole --passes list, in order

    def runs_before(self, first: str, second: str) -> bool:
        """Whether pass ``first`` appears before pass ``second`` in --passes."""
        names = self.pass_names
        return first in names and second in names and names.index(first) < names.index(second)

    def sample_data(self, rows: int = VERIFY_ROWS) -> Dataset:
        """Inputs to compare models on: the first rows of --data, else synthetic ones."""
        if self.data is not None:
            return self.data.take(rows)
        return synthetic_dataset(self.original, batches=rows, shapes=self.shapes, seed=0)
