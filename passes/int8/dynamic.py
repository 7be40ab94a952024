"""Rule 5: dynamic nodes.

``DynamicQuantizeLinear(x) -> MatMulInteger(x_q, W_q, x_zp) -> Cast -> Mul(x_scale * w_scale)``
(+ ``Add(beta * C)`` for a Gemm bias), the form onnxruntime fuses into DynamicQuantizeMatMul.
One DynamicQuantizeLinear per tensor, shared by every dynamic node reading it.
``target=tensorrt`` has no dynamic form: all static (rule 1).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from graphc.graph import constant_values
from graphc.passes.int8.weights import WeightCache


def quantize_dynamic_node(graph: gs.Graph, node: gs.Node, weights: WeightCache, names: Callable[[str], str],
                          shared: dict[int, list[gs.Variable]]) -> None:
    """Rule 5: DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul (-> Add for a Gemm bias)."""
    const, w_scale, axis = weights.quantized(node)
    x, y = node.inputs[0], node.outputs[0]
    base = node.name or node.op
    weight = const
    if node.op == "Gemm" and int(node.attrs.get("transB", 0)):  # MatMulInteger wants [K, N]
        weight = gs.Constant(names(f"{const.name}_t"), np.ascontiguousarray(const.values.T))
    new_nodes = []
    if id(x) not in shared:
        shared[id(x)] = [gs.Variable(names(f"{x.name}_dyn_q"), dtype=np.uint8),
                         gs.Variable(names(f"{x.name}_dyn_scale"), dtype=np.float32),
                         gs.Variable(names(f"{x.name}_dyn_zero_point"), dtype=np.uint8)]
        new_nodes.append(gs.Node("DynamicQuantizeLinear", names(f"{x.name}_dyn_quant"), {}, [x], shared[id(x)]))
    x_q, x_scale, x_zero = shared[id(x)]
    acc = gs.Variable(names(f"{base}_int32"), dtype=np.int32)
    acc_f = gs.Variable(names(f"{base}_int32_float"), dtype=np.float32)
    scales = gs.Variable(names(f"{base}_scales"), dtype=np.float32)
    factor = w_scale.astype(np.float64)
    if node.op == "Gemm":
        factor = factor * float(node.attrs.get("alpha", 1.0))
    new_nodes += [
        gs.Node("MatMulInteger", names(f"{base}_matmul_integer"), {}, [x_q, weight, x_zero], [acc]),
        gs.Node("Cast", names(f"{base}_cast"), {"to": 1}, [acc], [acc_f]),
        gs.Node("Mul", names(f"{base}_scale_product"), {},
                [x_scale, gs.Constant(names(f"{base}_weight_scale"), factor.astype(np.float32))], [scales]),
    ]
    bias = node.inputs[2] if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2].name else None
    node.outputs.clear()
    node.inputs.clear()
    if bias is None:
        new_nodes.append(gs.Node("Mul", names(f"{base}_rescale"), {}, [acc_f, scales], [y]))
    else:
        scaled = gs.Variable(names(f"{base}_rescaled"), dtype=np.float32)
        beta = float(node.attrs.get("beta", 1.0))
        if beta != 1.0:
            values = constant_values(bias)
            if values is None:
                c = gs.Variable(names(f"{base}_beta_c"), dtype=np.float32)
                new_nodes.append(gs.Node("Mul", names(f"{base}_beta"), {},
                                         [bias, gs.Constant(names(f"{base}_beta_value"),
                                                            np.array(beta, dtype=np.float32))], [c]))
                bias = c
            else:
                bias = gs.Constant(names(f"{base}_bias_beta"), (np.asarray(values) * beta).astype(np.float32))
        new_nodes.append(gs.Node("Mul", names(f"{base}_rescale"), {}, [acc_f, scales], [scaled]))
        new_nodes.append(gs.Node("Add", names(f"{base}_bias"), {}, [scaled, bias], [y]))
    graph.nodes.extend(new_nodes)
