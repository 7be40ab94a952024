"""``sparse-int8``: quantized MatMul/Gemm layers whose int8 weights are sparse become graphc's
``ai.graphc.SparseMatMulIntegerToFloat`` (or ``SparseMatMulInteger``), which skip the zeros
(``kernels/cpu``).

Run it after ``int8`` (``--passes sparsify:0.8,int8,sparse-int8``). The rules, each in the
module that applies it:

1. the dynamic form (``MatMulInteger``, with the Cast and scale Mul after it) lowered to the
   sparse op, bit-identical: ``lowering``
2. the static QDQ form (``DequantizeLinear -> MatMul/Gemm``) lowered to the sparse op with the
   scales and the Gemm bias inside: ``lowering``
3. which layers pay off (``max_density``: the share of 4-groups along K that hold a non-zero)
   and every reason a layer stays dense: ``lowering``; on top of ``max_density``, what this
   CPU's kernel path was measured to need: ``payoff``
4. the compressed weight form: ``graphc.kernels.layout``

A session of the result needs graphc's kernel library: every session graphc opens registers it
(``graphc.runtime``); other apps call ``graphc.kernels.register(options)`` or
``SessionOptions.register_custom_ops_library(graphc.kernels.library_path())``.
Refuses to touch: nodes in subgraphs (If/Loop/Scan bodies), Conv (no sparse Conv kernel yet).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import onnx
import onnx_graphsurgeon as gs

from graphc.graph import unique_namer
from graphc.kernels import DOMAIN
from graphc.kernels.layout import pack
from graphc.pass_api import Pass, PassResult
from graphc.passes.sparse_int8.lowering import candidates, lower_dynamic, lower_static
from graphc.passes.sparse_int8.payoff import machine_refusal
from graphc.verify import Tolerance

if TYPE_CHECKING:
    from graphc.context import Context


@dataclass(frozen=True)
class SparseInt8Options:
    max_density: float = field(default=0.5, metadata={
        "min": 0.0, "max": 1.0,
        "help": "a layer is lowered when at most this share of its 4-groups along K hold a non-zero"})


class SparseInt8Pass(Pass):
    name = "sparse-int8"
    summary = "quantized MatMul/Gemm with sparse int8 weights -> graphc's sparse INT8 op (kernels/cpu)"
    Options = SparseInt8Options
    main_option = "max_density"
    in_place = True
    exact = True
    must_run_after = {
        "int8": "sparse-int8 reads the int8 weights that int8 writes; put it after int8, "
                "e.g. --passes sparsify:0.8,int8,sparse-int8",
        "sparsify": "sparsify after sparse-int8 is refused: it zeroes float weights, and sparse-int8 has compressed "
                    "the int8 ones; put sparsify first, e.g. --passes sparsify:0.8,int8,sparse-int8",
        "prune": "prune after sparse-int8 is refused: it cannot resize graphc's sparse op; prune first",
        "distill": "distill after sparse-int8 is refused: the training engines cannot run graphc's sparse op; "
                   "distill first, e.g. --passes sparsify:0.8,distill,int8,sparse-int8",
        "fuse": "fuse after sparse-int8 is refused: it matches attention through the projection MatMuls; fuse first",
    }

    def tolerance(self) -> Tolerance:
        return Tolerance()  # the same integers; float rounding only (rule 2)

    def run(self, graph: gs.Graph, ctx: Context) -> PassResult:
        names = unique_namer(graph)
        rows, lowered = [], 0
        stored_before = stored_after = 0
        for c in candidates(graph):
            if not c.reason:
                c.columns = pack(c.weight)
                if c.density > self.options.max_density:
                    c.reason = f"{c.density:.0%} of its 4-groups hold a non-zero (max_density={self.options.max_density:g})"
                else:
                    c.reason = machine_refusal(c.columns, c.density)
            row = {"node": c.node.name or c.node.op, "op": c.node.op, "form": c.form}
            if c.weight is not None and c.columns is not None:
                k, n = c.weight.shape
                row.update({"shape": [k, n], "density": round(c.density, 4),
                            "sparsity": round(float((c.weight == 0).mean()), 4)})
            if c.reason:
                row["dense"] = c.reason
            else:
                dense_bytes = c.weight.size
                compressed = c.columns.values.nbytes + c.columns.block_k.nbytes + c.columns.col_ptr.nbytes
                row["bytes"] = [dense_bytes, compressed]
                stored_before += dense_bytes
                stored_after += compressed
                row["lowered_to"] = (lower_dynamic if c.form == "dynamic" else lower_static)(graph, c, names)
                lowered += 1
            rows.append(row)
        dense = [r for r in rows if "dense" in r]
        if dense:
            reasons: dict[str, int] = {}
            for r in dense:
                key = r["dense"] if "max_density" not in r["dense"] else f"denser than max_density={self.options.max_density:g}"
                reasons[key] = reasons.get(key, 0) + 1
            ctx.report.note("sparse-int8: " + f"{len(dense)} layers stay dense (" +
                            "; ".join(f"{count}: {why}" for why, count in reasons.items()) + ")")
        if lowered:
            if graph.import_domains is None:
                graph.import_domains = [onnx.helper.make_opsetid("", graph.opset)]
            if not any(d.domain == DOMAIN for d in graph.import_domains):
                graph.import_domains.append(onnx.helper.make_opsetid(DOMAIN, 1))
            graph.cleanup().toposort()
        stats = {"layers_lowered": lowered, "layers_dense": len(dense),
                 "weight_bytes": [stored_before, stored_after]}
        return PassResult(changed=lowered > 0, stats=stats, details={"layers": rows})
