"""``graphc inspect --sparsity``: every MatMul/Gemm/Conv weight of the main graph (float, or
int8 behind DequantizeLinear or in a QOperator/dynamic integer op), its sparsity and whether
its zeros conform to each pattern the kernels read (``CHECKED``; ``graphc.sparsity`` rules 1-2).
An int8 weight's zero is its zero point; graphc's sparse ops (``sparse-int8``) are read
back from their compressed form (``graphc.kernels.layout``)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from graphc import sparsity
from graphc.kernels import DOMAIN, WEIGHT_INPUTS
from graphc.kernels.layout import BlockColumns
from graphc.report import markdown_table

CHECKED = ("2:4", "1x4", "4x1", "16x4", "8x4", "16x64")  # 8x4, 16x64: the AVX2 kernels' fastest at one row
# op -> (weight input, zero-point input or None)
INTEGER_WEIGHTS = {"MatMulInteger": (1, 3), "DynamicQuantizeMatMul": (1, 3), "MatMulIntegerToFloat": (1, 5),
                   "ConvInteger": (1, 3), "QLinearConv": (3, 5), "QLinearMatMul": (3, 5)}


def _pattern(text: str) -> sparsity.Pattern:
    return sparsity.Pattern.parse(text) if ":" in text else sparsity.Pattern.parse("block", text)


def _layout(node: onnx.NodeProto) -> sparsity.Layout:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
        return sparsity.Layout("conv", int(attrs.get("group", 1)))
    return sparsity.Layout("nk" if node.op_type == "Gemm" and attrs.get("transB", 0) else "kn")


def _centred(values: np.ndarray, zero_point: np.ndarray | None, layout: sparsity.Layout) -> np.ndarray:
    """Integer weights minus their zero point (per tensor or per output channel)."""
    values = values.astype(np.int32)
    if zero_point is None or zero_point.size == 0:
        return values
    zp = zero_point.astype(np.int32)
    if zp.size > 1:
        zp = zp.reshape((-1,) + (1,) * (values.ndim - 1)) if layout.kind != "kn" else zp.reshape(1, -1)
    return values - zp


def sparsity_summary(model: onnx.ModelProto, shapes=None) -> list[dict]:
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}

    def array(name: str) -> np.ndarray | None:
        return numpy_helper.to_array(inits[name]) if name in inits else None

    rows = []
    for node in model.graph.node:
        weight = None
        layout = _layout(node)
        if node.op_type in ("MatMul", "Gemm", "Conv") and len(node.input) > 1:
            name = node.input[1]
            weight = array(name)
            source = producers.get(name)
            if weight is None and source is not None and source.op_type == "DequantizeLinear":
                q = array(source.input[0])
                zp = array(source.input[2]) if len(source.input) > 2 and source.input[2] else None
                weight = None if q is None else _centred(q, zp, layout)
            if weight is not None and weight.dtype.kind not in "fi":
                weight = None
        elif node.op_type in WEIGHT_INPUTS and node.domain == DOMAIN and all(
                name in inits for name in node.input[WEIGHT_INPUTS[node.op_type]:][:3]):
            k = next(a.i for a in node.attribute if a.name == "K")
            col_ptr, block_k, values = (array(name) for name in node.input[WEIGHT_INPUTS[node.op_type]:][:3])
            weight = BlockColumns(k, col_ptr.size - 1, col_ptr, block_k, values).dense()
        elif node.op_type in INTEGER_WEIGHTS:
            w_index, zp_index = INTEGER_WEIGHTS[node.op_type]
            q = array(node.input[w_index]) if len(node.input) > w_index else None
            zp = array(node.input[zp_index]) if len(node.input) > zp_index and node.input[zp_index] else None
            weight = None if q is None else _centred(q, zp, layout)
        if weight is None or (layout.kind == "kn" and weight.ndim != 2) or (layout.kind == "conv" and weight.ndim < 3):
            continue
        view = sparsity.to_view(weight, layout)
        zeros = int((view == 0).sum())
        weight_name = node.input[WEIGHT_INPUTS[node.op_type] + 2] if node.op_type in WEIGHT_INPUTS else node.input[1]
        row = {"node": node.name or node.output[0], "op": node.op_type, "weight": weight_name,
               "shape": list(weight.shape), "weights": int(view.size), "sparsity": round(zeros / view.size, 4),
               "conforms": {}}
        if zeros:
            row["conforms"] = {text: sparsity.conforms(view, _pattern(text)) for text in CHECKED}
        rows.append(row)
    return rows


def sparsity_text(rows: list[dict]) -> str:
    if not rows:
        return "sparsity: no MatMul/Gemm/Conv weights"
    total = sum(r["weights"] for r in rows)
    zeros = sum(r["sparsity"] * r["weights"] for r in rows)
    sparse = sum(1 for r in rows if r["sparsity"] > 0)
    head = (f"sparsity: {len(rows)} layers, {sparse} with zeros, {zeros / total:.1%} of their "
            f"{total:,} weights zero")

    def mark(value) -> str:
        return "" if value is None else ("yes" if value else "no")

    table = [["node", "op", "shape", "sparsity", *CHECKED]]
    table += [[r["node"], r["op"], "x".join(map(str, r["shape"])), f"{r['sparsity']:.1%}",
               *(mark(r["conforms"].get(text)) for text in CHECKED)] for r in rows]
    return head + "\n" + markdown_table(table)
