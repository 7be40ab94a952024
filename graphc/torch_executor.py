"""graphc's ONNX-on-PyTorch executor: runs an ONNX model node by node with torch operations, on
any device torch has (a CUDA GPU included), in float32 or in float16.

It is the engine for what onnxruntime's CPU wheel cannot do here: graphc's QDQ models on a
GPU (the GPU check script, ``benchmarks/gpu_check.py``), with a float16 run of the FP32 model
beside them. Written by hand because no library does it: onnx2torch (the one ONNX-to-torch
converter, last release 2024) has no QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear,
MatMulInteger or ConvInteger and imports torchvision; onnxruntime-gpu's wheel (over 200 MB)
does not fit what the GPU machine can carry; ``onnx.reference`` runs numpy on the CPU.

Rules:

1. The model is checked before anything runs: every node's operator must be in the op table
   (``graphc.torch_ops``, ``graphc.torch_quant_ops``); otherwise one error names every missing
   operator (control flow, If/Loop/Scan, and graphc's own ``ai.graphc`` ops are not run here:
   run the model from before ``sparse-int8``). The ``com.microsoft`` ops graphc's ``fuse`` pass
   writes are run (GroupQueryAttention, MultiHeadAttention, SkipLayerNormalization, BiasGelu,
   FastGelu, Gelu) in the forms it writes them; another form is refused when the node runs.
2. Nodes run in graph order (ONNX requires it topologically sorted); a value is freed after its
   last reader.
3. ``half=True`` runs a FP32 model in float16: float32 inputs and initializers become float16,
   except the scales of Q/DQ nodes, which stay float32 (``graphc.torch_quant_ops`` rule 1).
4. Outputs come back as torch tensors on the device; ``run_numpy`` takes and returns numpy
   arrays and casts float16 outputs back to float32.
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx import helper

import graphc.torch_quant_ops  # noqa: F401  (registers the quantized operators)
from graphc.errors import GraphcError
from graphc.torch_ops import OPS, tensor_from_proto, to_float_dtype

CONTROL_FLOW = {"If", "Loop", "Scan"}
SCALE_SLOTS = {"QuantizeLinear": (1,), "DequantizeLinear": (1,), "QLinearConv": (1, 4, 6), "QLinearMatMul": (1, 4, 6)}


class UnsupportedModel(GraphcError):
    """The model uses an operator (or a form of one) the torch executor does not run."""


@dataclass
class NodeContext:
    """What an operator function may read besides its inputs and attributes."""

    device: torch.device
    float_dtype: torch.dtype
    opset: int
    triton_int8: bool
    op_type: str = ""
    node_name: str = ""
    node_outputs: int = 1

    def unsupported(self, what: str) -> UnsupportedModel:
        return UnsupportedModel(f"the torch executor does not run {what} (node '{self.node_name}', {self.op_type})")


@dataclass
class Step:
    op_type: str
    domain: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict
    frees: list[str] = field(default_factory=list)


def _domain(node: onnx.NodeProto) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


def _attribute(attribute: onnx.AttributeProto):
    value = helper.get_attribute_value(attribute)
    return value.decode() if isinstance(value, bytes) else value


def missing_operators(model: onnx.ModelProto) -> list[str]:
    """Rule 1: the ``domain::op`` names of the model's operators the executor cannot run."""
    missing = set()
    for node in model.graph.node:
        if (_domain(node), node.op_type) not in OPS or node.op_type in CONTROL_FLOW:
            missing.add(f"{node.domain or 'ai.onnx'}::{node.op_type}")
    return sorted(missing)


class TorchExecutor:
    """Run an ONNX model with torch: ``TorchExecutor(model, device="cuda").run({"x": tensor})``."""

    def __init__(self, model: onnx.ModelProto | str | os.PathLike, device: str | torch.device = "cpu",
                 half: bool = False, triton_int8: bool | None = None):
        if not isinstance(model, onnx.ModelProto):
            model = onnx.load(str(pathlib.Path(model)))
        missing = missing_operators(model)
        if missing:
            raise UnsupportedModel(f"the torch executor has no implementation of {', '.join(missing)}")
        self.device = torch.device(device)
        opset = next((imp.version for imp in model.opset_import if imp.domain in ("", "ai.onnx")), 13)
        if triton_int8 is None:
            triton_int8 = self.device.type == "cuda"
        self.context = NodeContext(self.device, torch.float16 if half else torch.float32, opset, triton_int8)
        graph = model.graph
        self.input_names = [i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}]
        self.output_names = [o.name for o in graph.output]
        keep_float32 = {node.input[slot] for node in graph.node for slot in SCALE_SLOTS.get(node.op_type, ())
                        if slot < len(node.input)}
        full = NodeContext(self.device, torch.float32, opset, triton_int8)
        self.constants = {t.name: tensor_from_proto(full if t.name in keep_float32 else self.context, t)
                          for t in graph.initializer}
        self.steps = [Step(n.op_type, _domain(n), n.name or f"{n.op_type}_{i}", list(n.input), list(n.output),
                           {a.name: _attribute(a) for a in n.attribute})
                      for i, n in enumerate(graph.node)]
        self._plan_frees()

    def _plan_frees(self) -> None:
        """Rule 2: each value is dropped after the step that reads it last."""
        last = {}
        for index, step in enumerate(self.steps):
            for name in step.inputs:
                if name:
                    last[name] = index
        keep = set(self.output_names) | set(self.constants)
        for name, index in last.items():
            if name not in keep:
                self.steps[index].frees.append(name)

    def _feed(self, value) -> torch.Tensor:
        tensor = torch.as_tensor(value).to(self.device) if not isinstance(value, torch.Tensor) else value.to(self.device)
        return to_float_dtype(self.context, tensor)

    def run(self, feeds: dict) -> list[torch.Tensor]:
        missing = [name for name in self.input_names if name not in feeds]
        if missing:
            raise GraphcError(f"no value given for input(s) {', '.join(missing)}")
        values = dict(self.constants)
        values.update({name: self._feed(feeds[name]) for name in self.input_names})
        ctx = self.context
        for step in self.steps:
            ctx.op_type, ctx.node_name, ctx.node_outputs = step.op_type, step.name, len(step.outputs)
            inputs = [values[name] if name else None for name in step.inputs]
            while inputs and inputs[-1] is None:
                inputs.pop()
            outputs = OPS[(step.domain, step.op_type)](ctx, inputs, step.attrs)
            for name, value in zip(step.outputs, outputs):
                if name:
                    values[name] = value
            for name in step.frees:
                values.pop(name, None)
        return [values[name] for name in self.output_names]

    def run_numpy(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            outputs = self.run(feeds)
        return [(o.float() if o.dtype in (torch.float16, torch.bfloat16) else o).cpu().numpy() for o in outputs]
