"""The optimize pipeline: load once, run passes, check after each, verify, report, save once.

Order of work, so that bad input fails before anything expensive runs:
parse ``--passes`` and build the pass objects -> refuse an output path that is the input ->
load and check the model (onnxruntime must open it) -> load and validate every data source
against the model's inputs -> convert a model older than the passes' ``min_opset`` where that is
exact, else refuse it (``graphc.opsets``; the converted model is the original from then on) ->
each pass's ``check`` -> run the passes with a progress bar,
checking (and with ``verify`` comparing outputs) after each -> drop the intermediate shapes the
passes inferred (``graph.drop_intermediate_shapes``: they make onnxruntime pick slower fusions)
-> save atomically -> write the report. Under ``verify`` each pass is held to its declared tolerance against the model it was
given (a lossy earlier pass does not fail a later one); the report shows every stage against
the original. The input file is only read; a failure anywhere leaves no output file.
"""

from __future__ import annotations

import pathlib
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
from tqdm import tqdm

from graphc.checks import BrokenModelError, check_input, check_model
from graphc.context import Context
from graphc.data import (Dataset, check_shape_overrides, check_unbatched_agree, load_dataset, model_signature,
                         output_batch_axes, output_names)
from graphc.errors import GraphcError
from graphc.graph import drop_intermediate_shapes, model_header, to_graph, to_model
from graphc.metrics import check_metric, evaluate
from graphc.model_io import check_output_paths, file_size, load_model, same_file, save_model
from graphc.opsets import meet_min_opset
from graphc.pass_api import check_order, result_graph
from graphc.passes import build_passes
from graphc.report import PassReport, Report
from graphc.runtime import open_session, run_session
from graphc.spec import parse_spec
from graphc.stats import model_stats
from graphc.verify import compare, enforce


@dataclass
class OptimizeRequest:
    model: pathlib.Path
    passes: str
    output: pathlib.Path
    data: pathlib.Path | None = None
    train_data: pathlib.Path | None = None
    eval_data: pathlib.Path | None = None
    metric: str | None = None
    verify: bool = False
    report: pathlib.Path | None = None
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    batch_axes: dict[str, int | None] = field(default_factory=dict)  # --batch-axis NAME=AXIS|none
    threads: int | None = None
    progress: bool = True
    bench: bool = False


def _load_data(path: pathlib.Path | None, signature) -> Dataset | None:
    return load_dataset(path, signature) if path is not None else None


def build_context(request: OptimizeRequest, model: onnx.ModelProto, report: Report) -> Context:
    signature = model_signature(model, request.batch_axes)
    ctx = Context(original=model, report=report,
                  data=_load_data(request.data, signature),
                  train_data=_load_data(request.train_data, signature),
                  eval_data=_load_data(request.eval_data, signature),
                  metric=request.metric, shapes=request.shapes, batch_axes=dict(request.batch_axes),
                  threads=request.threads)
    check_unbatched_agree({"--data": ctx.data, "--train-data": ctx.train_data, "--eval-data": ctx.eval_data})
    if (ctx.eval_data is None) != (ctx.metric is None):
        raise GraphcError("--eval-data and --metric go together: give both or neither")
    if ctx.metric is not None:
        check_metric(ctx.metric, ctx.eval_data, has_reference=True)
    return ctx


def optimize(request: OptimizeRequest) -> Report:
    specs = parse_spec(request.passes)
    passes = build_passes(specs)
    check_order(passes)
    if same_file(request.model, request.output):
        raise GraphcError(f"-o {request.output}: the output must not overwrite the input model")
    check_output_paths({"-o": request.output, "--report": request.report},
                       {"MODEL": request.model, "--data": request.data, "--train-data": request.train_data,
                        "--eval-data": request.eval_data})
    original = load_model(request.model)
    check_shape_overrides(model_signature(original, request.batch_axes), request.shapes)
    check_input(original, str(request.model))
    before = model_stats(original, request.shapes, size_bytes=file_size(request.model))
    report = Report(model=str(request.model), before=before, output=str(request.output))
    ctx = build_context(request, original, report)
    ctx.original = original = meet_min_opset(
        original, passes, str(request.model), sample=lambda: _exact_feeds(ctx.sample_data(EXACT_ROWS)),
        run=lambda model, feeds: run_session(open_session(model, request.threads), feeds), note=report.note)
    for p in passes:
        p.check(ctx)

    names = output_names(original)
    sample = ctx.sample_data() if request.verify else None
    exact_sample = _exact_sample(ctx, report) if sample is None and any(p.exact for p in passes) else None
    out_axes = output_batch_axes(original)
    reference = _outputs(open_session(original, request.threads), sample, out_axes) if sample else None
    previous = reference  # a pass is held to its tolerance against its own input model

    current = original
    bar = tqdm(passes, desc="graphc", unit="pass", disable=not request.progress, leave=False)
    for p, spec in zip(bar, specs):
        spec_text = spec.text
        bar.set_postfix_str(spec_text)
        start = time.perf_counter()
        template = model_header(current)
        exact_reference = _exact_reference(current, exact_sample, spec_text, report, request.threads) \
            if p.exact and exact_sample is not None else None
        graph = to_graph(current)
        current = None  # the graph holds what it needs: no second copy of the weights during the pass
        result = p.run(graph, ctx)
        candidate = to_model(result_graph(p, graph, result), template)
        seconds = time.perf_counter() - start
        check_model(candidate, after=f"pass {spec_text}")
        if exact_reference is not None:
            _check_exact(spec_text, p.tolerance(), names, exact_reference,
                         run_session(open_session(candidate, request.threads), _exact_feeds(exact_sample)), out_axes)
        verify = None
        if sample is not None:
            outputs = _outputs(open_session(candidate, request.threads), sample, out_axes)
            enforce(spec_text, p.tolerance(), compare(names, previous, outputs, out_axes))
            verify, previous = compare(names, reference, outputs, out_axes), outputs
        report.passes.append(PassReport(p.name, spec_text, seconds, result.changed, result.stats,
                                        model_stats(candidate, request.shapes), verify, result.details))
        current = candidate

    drop_intermediate_shapes(current)  # written as exported: see drop_intermediate_shapes
    if ctx.metric is not None:
        report.metrics[ctx.metric] = _metric_before_after(current, ctx, request.threads)
    save_model(current, request.output)
    if report.passes:
        report.passes[-1].after.size_bytes = file_size(request.output)
    if request.bench:
        from graphc.bench import bench

        before, after = bench([request.model, request.output], threads=request.threads, data=request.data,
                              shapes=request.shapes, batch=1, runs=30, batch_axes=request.batch_axes)
        report.latency = {"before_p50_ms": before.p50_ms, "after_p50_ms": after.p50_ms,
                          "speedup": before.p50_ms / after.p50_ms, "threads": request.threads}
    if request.report is not None:
        try:
            report.write_json(request.report)
        except BaseException:  # no output at all when the report cannot be written
            pathlib.Path(request.output).unlink(missing_ok=True)
            raise
    return report


EXACT_ROWS = 2


def _exact_sample(ctx: Context, report: Report) -> Dataset | None:
    """The rows an exact pass is checked on without --verify (None, with a note, if none)."""
    try:
        return ctx.sample_data(EXACT_ROWS)
    except GraphcError as exc:
        report.note(f"exact passes not checked on sample inputs: {exc}")
        return None


def _exact_reference(model: onnx.ModelProto, sample: Dataset, spec_text: str, report: Report,
                     threads: int | None) -> list | None:
    """The outputs of an exact pass's input model on ``sample`` (None, with a note, if the
    model cannot run on them)."""
    try:
        return run_session(open_session(model, threads), _exact_feeds(sample))
    except GraphcError as exc:
        report.note(f"pass {spec_text}: not checked on sample inputs, the input model does not run on them: {exc}")
        return None


def _exact_feeds(sample: Dataset) -> dict:
    """One run's inputs: the first batch (an input's first axis need not be a batch)."""
    return next(sample.batches(EXACT_ROWS))[0]


def _check_exact(spec_text: str, tolerance, names, before: list, after: list, axes=None) -> None:
    """An exact pass left the outputs equal, or within its tolerance where they are numbers,
    else BrokenModelError (exit 1)."""
    try:
        if all(b.shape == a.shape and b.dtype == a.dtype and np.array_equal(b, a, equal_nan=b.dtype.kind in "fc")
               for b, a in zip(before, after)):
            return
        if any(b.dtype.kind not in "biufc" for b in before):
            raise GraphcError("--verify: a non-numeric output changed")
        enforce(spec_text, tolerance, compare(names, before, after, axes))
    except GraphcError as exc:
        raise BrokenModelError(f"pass {spec_text} is exact but changed the outputs on {EXACT_ROWS} sample rows "
                               f"({str(exc).removeprefix('--verify: ')})") from None


def _outputs(session, dataset: Dataset, axes: dict[str, int | None]) -> list:
    """Every output on ``dataset``, batches joined along the output's batch axis (one with
    no batch axis, e.g. 0-d: the batches' values stacked)."""
    chunks = [run_session(session, feeds) for feeds, _ in dataset.batches(64)]
    joined = []
    for i, name in enumerate(o.name for o in session.get_outputs()):
        axis = axes.get(name, 0)
        parts = [c[i] for c in chunks]
        ok = axis is not None and all(p.ndim > axis for p in parts)
        if len(parts) == 1:
            joined.append(parts[0])
        else:
            joined.append(np.concatenate(parts, axis=axis) if ok else np.stack(parts))
    return joined


def _metric_before_after(model: onnx.ModelProto, ctx: Context, threads: int | None) -> dict[str, float]:
    """The metric of the original and of ``model`` on --eval-data (one original session)."""
    original = open_session(ctx.original, threads)
    optimized = open_session(model, threads)

    def run_original(feeds):
        return run_session(original, feeds)

    def run_optimized(feeds):
        return run_session(optimized, feeds)

    axis = output_batch_axes(ctx.original).get(ctx.original.graph.output[0].name, 0)
    return {"before": evaluate(run_original, ctx.eval_data, ctx.metric, reference=run_original, output_axis=axis),
            "after": evaluate(run_optimized, ctx.eval_data, ctx.metric, reference=run_original, output_axis=axis)}
