"""The optimize pipeline: load once, run passes, check after each, verify, report, save once.

Order of work, so that bad input fails before anything expensive runs:
parse ``--passes`` and build the pass objects -> refuse an output path that is the input ->
load and check the model (onnxruntime must open it) -> load and validate every data source
against the model's inputs (dims ``--shape`` leaves open come from the first batch of
``--data``) -> convert a model older than the passes' ``min_opset`` where that is exact, else
refuse it (``graphc.opsets``; the converted model is the original from then on) -> each
pass's ``check`` -> one run of the input model on the sample inputs (``graphc.checks``;
failing on ``--data`` is bad input; on synthetic inputs it turns the run check off, with a
note) -> run the passes with a progress bar, checking each result (``graphc.checks``: valid,
opens, runs once on the same sample inputs; a failure is a bug, exit 1), an exact pass
compared with its input model on them, and with ``verify`` comparing outputs -> drop the
intermediate shapes the passes inferred (``graph.drop_intermediate_shapes``: they make
onnxruntime pick slower fusions) -> save atomically -> write the report. One session per
model serves its run check, the exact-pass comparison and ``--verify``. Under ``verify``
each pass is held to its declared tolerance against the model it was given (a lossy earlier
pass does not fail a later one); the report shows every stage against the original. The
input file is only read; a failure anywhere leaves no output file.
"""

from __future__ import annotations

import pathlib
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
from tqdm import tqdm

from graphc.checks import BrokenModelError, check_input, check_model, run_checked
from graphc.context import Context
from graphc.data import (Dataset, check_shape_overrides, check_unbatched_agree, load_dataset, model_signature,
                         output_batch_axes, output_names)
from graphc.errors import GraphcError
from graphc.graph import drop_intermediate_shapes, model_header, to_graph, to_model
from graphc.metrics import check_metric, evaluate
from graphc.model_io import (check_output_paths, external_data_files, external_data_name, file_size, load_model,
                             same_file, save_model)
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
    ctx.shapes = {**shapes_from_data(ctx.data, signature), **request.shapes}
    return ctx


def shapes_from_data(data: Dataset | None, signature) -> dict[str, tuple[int, ...]]:
    """The input shapes of one batch of ``data`` (a row, or the model's fixed batch): with
    ``--data`` the dims the model leaves open are known without ``--shape`` (inputs of
    unknown rank, and 0-d ones, are left out)."""
    if data is None:
        return {}
    feeds, _ = next(data.batches(1))
    ranks = {spec.name: len(spec.shape) for spec in signature}
    return {name: tuple(array.shape) for name, array in feeds.items()
            if array.ndim and ranks.get(name) == array.ndim}


def optimize(request: OptimizeRequest) -> Report:
    specs = parse_spec(request.passes)
    passes = build_passes(specs)
    check_order(passes)
    if same_file(request.model, request.output):
        raise GraphcError(f"-o {request.output}: the output must not overwrite the input model")
    weights = {"MODEL's external data" + (f" #{i + 1}" if i else ""): f
               for i, f in enumerate(external_data_files(request.model))}
    check_output_paths({"-o": request.output, "--report": request.report,
                        "-o (its external data, over 2 GB)": external_data_name(request.output)},
                       {"MODEL": request.model, **weights, "--data": request.data, "--train-data": request.train_data,
                        "--eval-data": request.eval_data})
    original = load_model(request.model)
    check_shape_overrides(model_signature(original, request.batch_axes), request.shapes)
    session = check_input(original, str(request.model), request.threads)
    report = Report(model=str(request.model), before=None, output=str(request.output))  # before: once shapes are known
    ctx = build_context(request, original, report)
    report.before = model_stats(original, ctx.shapes, size_bytes=file_size(request.model))
    # converted only where outputs stay bit-equal, so the input session's outputs still stand for it
    ctx.original = original = meet_min_opset(
        original, passes, str(request.model), sample=lambda: next(ctx.sample_data(CHECK_ROWS).batches(CHECK_ROWS))[0],
        run=lambda model, feeds: run_session(open_session(model, request.threads), feeds), note=report.note)
    for p in passes:
        p.check(ctx)

    names = output_names(original)
    check_feeds, checked = _input_run(session, original, ctx, report, str(request.model))
    sample = ctx.sample_data() if request.verify else None
    out_axes = output_batch_axes(original)
    reference = _outputs(session, sample, out_axes) if sample else None
    previous = reference  # a pass is held to its tolerance against its own input model
    session = None

    current = original
    bar = tqdm(passes, desc="graphc", unit="pass", disable=not request.progress, leave=False)
    for p, spec in zip(bar, specs):
        spec_text = spec.text
        bar.set_postfix_str(spec_text)
        start = time.perf_counter()
        template = model_header(current)
        graph = to_graph(current)
        current = None  # the graph holds what it needs: no second copy of the weights during the pass
        result = p.run(graph, ctx)
        candidate = to_model(result_graph(p, graph, result), template)
        seconds = time.perf_counter() - start
        session = check_model(candidate, after=f"pass {spec_text}", threads=request.threads)
        if check_feeds is not None:
            outputs = run_checked(session, check_feeds, f"pass {spec_text}", candidate)
            if p.exact:
                _check_exact(spec_text, p.tolerance(), names, checked, outputs, out_axes)
            checked = outputs
        verify = None
        if sample is not None:
            outputs = _outputs(session, sample, out_axes)
            enforce(spec_text, p.tolerance(), compare(names, previous, outputs, out_axes))
            verify, previous = compare(names, reference, outputs, out_axes), outputs
        session = None
        report.passes.append(PassReport(p.name, spec_text, seconds, result.changed, result.stats,
                                        model_stats(candidate, ctx.shapes), verify, result.details))
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


CHECK_ROWS = 2  # rows of the run check after every pass (and of the exact-pass comparison)


def _input_run(session, model: onnx.ModelProto, ctx: Context, report: Report, what: str):
    """(the inputs of the run check, the input model's outputs on them), or (None, None) with
    a note when there are none. The inputs are the first batch of ``CHECK_ROWS`` rows of
    ``--data``: the input model failing on the user's data is bad input (exit 2). Without
    data they are synthetic, and an input model that cannot run on them (an integer Div by
    the zeros drawn, an Expand to a drawn shape) is not the user's fault: the note says so,
    and ``--data`` turns the check on."""
    try:
        feeds = next(ctx.sample_data(CHECK_ROWS).batches(CHECK_ROWS))[0]
    except GraphcError as exc:
        report.note(f"models not run on sample inputs after each pass (no sample inputs: {exc})")
        return None, None
    if ctx.data is not None:
        return feeds, run_checked(session, feeds, None, model, what=what,
                                  source=f"the first rows of {ctx.data.source}")
    try:
        return feeds, run_checked(session, feeds, None, model, what=what, source="synthetic sample inputs")
    except GraphcError as exc:
        report.note(f"models not run on sample inputs after each pass ({exc}; give --data)")
        return None, None


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
        raise BrokenModelError(f"pass {spec_text} is exact but changed the outputs on {CHECK_ROWS} sample rows "
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
