"""The context every pass receives: data sources, the original model, options, the report."""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from graphc.data import Dataset, synthetic_dataset
from graphc.report import Report

VERIFY_ROWS = 16


@dataclass
class Context:
    original: onnx.ModelProto  # the model as loaded: teacher and reference
    report: Report
    data: Dataset | None = None  # --data: calibration / sample inputs
    train_data: Dataset | None = None
    eval_data: Dataset | None = None
    metric: str | None = None
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    batch_axes: dict[str, int | None] = field(default_factory=dict)  # --batch-axis items
    threads: int | None = None

    def sample_data(self, rows: int = VERIFY_ROWS) -> Dataset:
        """Inputs to compare models on: the first rows of --data, else synthetic ones."""
        if self.data is not None:
            return self.data.take(rows)
        return synthetic_dataset(self.original, batches=rows, shapes=self.shapes, seed=0,
                                 batch_axes=self.batch_axes)

    @classmethod
    def for_model(cls, model: onnx.ModelProto, **fields) -> Context:
        """A context for running passes on ``model`` outside the pipeline (the Python API,
        tests): ``model`` is the original, the report starts empty."""
        from graphc.stats import model_stats

        return cls(original=model, report=Report(model=model.graph.name or "model", before=model_stats(model)),
                   **fields)
