"""The TensorRT plan of ``graphc build --target tensorrt``: the QDQ graph checked against what
TensorRT's explicit quantization accepts, and the builder configuration recorded as data.

Rules (each violation names its node; any violation refuses the build):

1. ``int8:target=tensorrt``'s rules hold (``graphc.passes.int8.tensorrt_violations``): zero points
   int8 0, Q/DQ only where TensorRT fuses them, float biases.
2. Every DequantizeLinear that feeds a Conv/Gemm/MatMul weight reads a constant int8 initializer.
3. No ``ai.graphc`` op: TensorRT cannot run graphc's sparse ops, and needs none. Its own
   sparse kernels take 2:4 weights, so build from the model before ``sparse-int8``, sparsified with
   ``sparsify:pattern=2:4``.
4. With ``sparse_weights``: every weight that is at least half zeros conforms to 2:4 along its
   reduction axis (``graphc inspect --sparsity``'s check), else TensorRT runs it dense.
5. Every input with a symbolic dim gets an optimization profile: ``opt`` and ``max`` from
   ``--shape``, ``min`` the same with each symbolic dim at 1. An input left without one is a
   violation.

The configuration: precision flags (int8 where the graph has Q/DQ, else none: fp32),
``sparse_weights``, the workspace in bytes, the profiles. A TensorRT builder is not on PyPI: the
``tensorrt`` and ``tensorrt-rtx`` packages there are 16-18 KB source stubs that download from
NVIDIA's own index. So the engine is built only where a ``tensorrt`` module imports, and
otherwise the manifest says why there is none.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx

from graphc.errors import GraphcError


def _violations(model: onnx.ModelProto, sparse_weights: bool) -> list[str]:
    from graphc.kernels import DOMAIN
    from graphc.passes.int8 import tensorrt_violations
    from graphc.passes.sparsify.inspect import sparsity_summary

    problems = [f"node {n.name or n.op_type!r}: {n.op_type} is graphc's sparse op ({DOMAIN}); TensorRT cannot run "
                f"it: build from the model before sparse-int8 (TensorRT's 2:4 kernels take sparsify:pattern=2:4)"
                for n in model.graph.node if n.domain == DOMAIN]
    if problems:
        return problems  # rule 3 first: the other checks do not know the op
    problems += tensorrt_violations(model)
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1:
            dq = producers.get(node.input[1])
            if dq is not None and dq.op_type == "DequantizeLinear":
                weight = inits.get(dq.input[0])
                if weight is None or weight.data_type != onnx.TensorProto.INT8:
                    problems.append(f"node {node.name!r}: its weight's DequantizeLinear {dq.name!r} does not read a "
                                    f"constant int8 initializer")
    if sparse_weights:
        for row in sparsity_summary(model):
            if row["sparsity"] >= 0.5 and row["conforms"].get("2:4") is not True:
                problems.append(f"node {row['node']!r}: weight {100 * row['sparsity']:.0f}% zero but not 2:4 along its "
                                f"reduction axis; TensorRT's sparse weights need 2:4 (sparsify:pattern=2:4)")
    return problems


def _profiles(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> tuple[list[dict], list[str]]:
    initializers = {t.name for t in model.graph.initializer}
    profile, problems = {}, []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        symbolic = [not d.HasField("dim_value") for d in dims]
        if not any(symbolic):
            continue
        given = shapes.get(value.name)
        if given is None or len(given) != len(dims):
            problems.append(f"input {value.name!r} has dynamic dims; give --shape {value.name}=" +
                            "x".join(d.dim_param or "N" if s else str(d.dim_value) for d, s in zip(dims, symbolic)) +
                            " (the optimization profile's opt and max)")
            continue
        profile[value.name] = {"min": [1 if s else int(g) for g, s in zip(given, symbolic)],
                               "opt": [int(g) for g in given], "max": [int(g) for g in given]}
    return ([profile] if profile else []), problems


def plan(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]] | None = None, sparse_weights: bool = False,
         workspace_mb: int = 1024) -> dict:
    """Rules 1-5; the builder configuration, or a GraphcError naming the first violation."""
    from graphc.ops import QDQ_OPS

    problems = _violations(model, sparse_weights)
    profiles, missing = _profiles(model, shapes or {})
    problems += missing
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise GraphcError(f"not buildable for TensorRT: {problems[0]}{more}")
    int8 = any(n.op_type in QDQ_OPS for n in model.graph.node)
    return {"precision": {"int8": int8, "fp16": False}, "sparse_weights": sparse_weights,
            "workspace_bytes": int(workspace_mb) * 2**20, "profiles": profiles}


def build_engine(onnx_path, config: dict, engine_path) -> str | None:
    """The engine (``graphc.tensorrt_engine``) where a TensorRT builder imports, and None; else the
    reason there is none, as the manifest's note."""
    from graphc import tensorrt_engine

    trt = tensorrt_engine.builder_module()
    if trt is None:
        return ("no TensorRT builder here: the tensorrt and tensorrt-rtx packages on PyPI are source stubs that "
                "download from NVIDIA's index; the manifest's builder configuration is the recipe for trtexec")
    tensorrt_engine.build(trt, onnx_path, config, engine_path)
    return None
