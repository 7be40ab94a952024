"""``graphc inspect --quant``: every compute node of a model and how it runs (the pass's
``InspectSection``, hooked on ``Int8Pass.inspect``)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx

from graphc.ops import INTEGER_OPS, WEIGHTED_OPS
from graphc.report import markdown_table



def quantization_summary(model) -> list[dict]:
    """Every compute node of a model and how it runs: ``static`` (data and weight through
    DequantizeLinear), ``weight-only``, ``dynamic`` (MatMulInteger/ConvInteger fed by
    DynamicQuantizeLinear), ``integer`` (an already fused integer op) or ``fp32``, with the
    weight's bit width (7 when its int8 values stay within +-64) and the activation type."""
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}

    def dq_source(name):
        node = producers.get(name)
        return node if node is not None and node.op_type == "DequantizeLinear" else None

    def bits(name):
        if name not in inits:
            return None
        values = onnx.numpy_helper.to_array(inits[name])
        if values.dtype != np.int8:
            return None
        return 7 if values.size and np.abs(values.astype(np.int16)).max() <= 64 else 8

    rows = []
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS | INTEGER_OPS:
            continue
        row = {"node": node.name or node.output[0], "op": node.op_type, "state": "fp32", "weight_bits": None,
               "activation": None}
        if node.op_type in ("MatMulInteger", "ConvInteger"):
            data = producers.get(node.input[0])
            row["state"] = "dynamic" if data is not None and data.op_type == "DynamicQuantizeLinear" else "integer"
            row["weight_bits"] = bits(node.input[1])
            row["activation"] = "uint8"
        elif node.op_type in INTEGER_OPS:
            row["state"] = "integer"
        elif len(node.input) > 1:
            weight, data = dq_source(node.input[1]), dq_source(node.input[0])
            if weight is not None:
                row["weight_bits"] = bits(weight.input[0])
                row["state"] = "static" if data is not None else "weight-only"
                if data is not None and len(data.input) > 2 and data.input[2] in inits:
                    row["activation"] = str(onnx.numpy_helper.to_array(inits[data.input[2]]).dtype)
            elif node.input[1] not in inits:
                row["reason"] = "weight is an activation"
        rows.append(row)
    return rows


def quantization_text(rows: list[dict]) -> str:
    counts = Counter(r["state"] for r in rows)
    head = "quantization: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) if rows else \
        "quantization: no compute nodes"
    table = [["node", "op", "state", "weight bits", "activation"]]
    table += [[r["node"], r["op"], r["state"] + (f" ({r['reason']})" if r.get("reason") else ""),
               str(r["weight_bits"] or ""), r["activation"] or ""] for r in rows]
    return head + ("\n" + markdown_table(table) if rows else "")
