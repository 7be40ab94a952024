"""``graphc inspect``: what a model is, as a dict (for --json) and as text."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

import onnx

from graphc.data import model_signature
from graphc.model_io import file_size
from graphc.report import markdown_table
from graphc.stats import human, human_bytes, model_stats


def _value_info(value_info: onnx.ValueInfoProto) -> dict:
    tensor_type = value_info.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor_type.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name if tensor_type.elem_type else "?"
    return {"name": value_info.name, "dtype": dtype, "shape": dims}


def describe(model: onnx.ModelProto, path: pathlib.Path, shapes: Mapping[str, tuple[int, ...]]) -> dict:
    signature = {s.name for s in model_signature(model)}
    stats = model_stats(model, shapes, size_bytes=file_size(path))
    return {
        "model": str(path),
        "ir_version": model.ir_version,
        "opsets": {imp.domain or "ai.onnx": imp.version for imp in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": [_value_info(v) for v in model.graph.input if v.name in signature],
        "outputs": [_value_info(v) for v in model.graph.output],
        **stats.as_dict(),
    }


def _uncounted(info: dict) -> str:
    """Why MACs are missing, pointing at ``--shape`` (empty when every compute node counted)."""
    uncounted = info["uncounted_nodes"]
    if not uncounted:
        return ""
    if info.get("macs_unknown"):
        return f"; {len(uncounted)} compute nodes not counted: {info['macs_unknown']}"
    return (f"; {len(uncounted)} compute nodes not counted (unknown shapes: concrete input shapes with "
            f"--shape NAME=DxD... may resolve them)")


def render(info: dict) -> str:
    lines = [f"model: {info['model']}",
             f"ir_version {info['ir_version']}, opsets: "
             + ", ".join(f"{d} {v}" for d, v in info["opsets"].items())
             + (f", producer: {info['producer']}" if info["producer"] else "")]
    for kind in ("inputs", "outputs"):
        lines.append(f"{kind}:")
        lines += [f"  {v['name']}: {v['dtype']} {v['shape']}" for v in info[kind]]
    lines.append(f"params: {info['params']:,} ({human(info['params'])})")
    lines.append(f"size: {human_bytes(info['size_bytes'])} ({info['size_bytes']:,} bytes)")
    lines.append(f"MACs (one batch): {info['macs']:,} ({human(info['macs'])}){_uncounted(info)}")
    lines += [f"  {note}" for note in info["macs_notes"]]
    rows = [["op", "count", "MACs", "share"]]
    total = info["macs"] or 1
    for op, count in info["ops"].items():
        macs = info["macs_by_op"].get(op)
        rows.append([op, str(count), "" if macs is None else human(macs),
                     "" if macs is None else f"{macs / total:.1%}"])
    lines += [f"nodes: {info['nodes']}", markdown_table(rows)]
    return "\n".join(lines)

