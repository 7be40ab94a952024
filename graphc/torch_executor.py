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
5. Shape arithmetic stays on the host (``host_nodes``): Shape and Size, and the integer ops whose
   inputs are all such values or small integer constants (Gather, Concat, Unsqueeze, Cast, Add,
   ...), run on the CPU, and the inputs ops read as Python values (``SHAPE_SLOTS``: Reshape's
   shape, Slice's starts, reduction axes, ...) are given the host value: no device sync. A host
   value in any other slot is copied to the device once per run; a host result over 4096
   elements goes to the device at once. On the CPU both are the same device and nothing moves.
   ``tests/driver/test_torch_executor.py`` runs models on torch's ``meta`` device, which holds
   no data: any shape read from the device would fail there.
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

# rule 5: the ops that may run on the host when every input is a host value
HOST_OPS = {"Shape", "Size", "Constant", "Gather", "Unsqueeze", "Squeeze", "Concat", "Reshape", "Cast", "Add",
            "Sub", "Mul", "Div", "Mod", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And",
            "Or", "Where", "Range", "Slice", "ConstantOfShape", "Expand", "Min", "Max", "Neg", "Abs", "Identity",
            "ReduceProd", "ReduceSum", "ReduceMax", "ReduceMin", "Floor", "Ceil", "Sqrt", "Tile", "Flatten"}
INTEGER_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT8, onnx.TensorProto.UINT8,
                 onnx.TensorProto.INT16, onnx.TensorProto.BOOL}
# the inputs an op reads as Python values (shapes, axes, sizes, starts): a host value stays there
SHAPE_SLOTS = {"Reshape": {1}, "Slice": {1, 2, 3, 4}, "Expand": {1}, "Tile": {1}, "ConstantOfShape": {0},
               "Range": {0, 1, 2}, "Split": {1}, "Squeeze": {1}, "Unsqueeze": {1}, "Pad": {1, 2, 3}, "TopK": {1},
               "ReduceSum": {1}, "ReduceMean": {1}, "ReduceMax": {1}, "ReduceMin": {1}, "ReduceProd": {1},
               "ReduceSumSquare": {1}, "ReduceL1": {1}, "ReduceL2": {1}, "ReduceLogSumExp": {1}, "CumSum": {1}}
SMALL = 1024  # integer initializers / Constant values up to this many elements get a host copy
MOVE_NOW = 4096  # a host result over this many elements goes to the device at once
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
        if (_domain(node), node.op_type) not in OPS:  # If, Loop and Scan have no entry
            missing.add(f"{node.domain or 'ai.onnx'}::{node.op_type}")
    return sorted(missing)


def host_nodes(steps: list[Step], host_names: set[str]) -> set[int]:
    """Rule 5: the steps that run on the host: Shape and Size, a Constant with a small integer
    value, and a HOST_OPS step whose every input is a host value (a small integer initializer or
    a host step's output)."""
    from onnx import numpy_helper

    chosen, host = set(), set(host_names)
    for index, step in enumerate(steps):
        if step.domain or step.op_type not in HOST_OPS:
            continue
        if step.op_type == "Constant":
            value = step.attrs.get("value")
            array = numpy_helper.to_array(value) if value is not None else None
            ok = (array is not None and array.dtype.kind in "iub" and array.size <= SMALL) \
                or "value_int" in step.attrs or "value_ints" in step.attrs
        elif step.op_type in ("Shape", "Size"):
            ok = True
        else:
            ok = all(not name or name in host for name in step.inputs) and any(step.inputs)
        if ok:
            chosen.add(index)
            host.update(name for name in step.outputs if name)
    return chosen


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
        self.host = torch.device("cpu")
        host_context = NodeContext(self.host, torch.float32, opset, False)
        self.host_constants = {t.name: tensor_from_proto(host_context, t) for t in graph.initializer
                               if t.data_type in INTEGER_TYPES and np.prod(t.dims, dtype=np.int64) <= SMALL}
        self.host_nodes = host_nodes(self.steps, set(self.host_constants))
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
        host_values = dict(self.host_constants)  # rule 5: the host copies, by name
        ctx = self.context
        for index, step in enumerate(self.steps):
            ctx.op_type, ctx.node_name, ctx.node_outputs = step.op_type, step.name, len(step.outputs)
            on_host = index in self.host_nodes
            if on_host:
                inputs = [host_values[name] if name in host_values else values[name] if name else None
                          for name in step.inputs]
                # a host value that went to the device (MOVE_NOW) takes its readers there too
                on_host = step.op_type in ("Shape", "Size") or all(t is None or t.device == self.host for t in inputs)
            if not on_host:
                shape_slots = SHAPE_SLOTS.get(step.op_type, ()) if not step.domain else ()
                inputs = [None if not name else host_values[name] if slot in shape_slots and name in host_values
                          else self._on_device(name, values, host_values) for slot, name in enumerate(step.inputs)]
            while inputs and inputs[-1] is None:
                inputs.pop()
            ctx.device = self.host if on_host else self.device
            try:
                outputs = OPS[(step.domain, step.op_type)](ctx, inputs, step.attrs)
            finally:
                ctx.device = self.device
            for name, value in zip(step.outputs, outputs):
                if not name:
                    continue
                if on_host and value.device == self.host and self.host != self.device and value.numel() <= MOVE_NOW:
                    host_values[name] = value
                else:
                    values[name] = value.to(self.device) if on_host else value
            for name in step.frees:
                values.pop(name, None)
                if name not in self.host_constants:
                    host_values.pop(name, None)
        return [self._on_device(name, values, host_values) for name in self.output_names]

    def _on_device(self, name: str, values: dict, host_values: dict) -> torch.Tensor:
        """A value for a device node: its device copy, made once per run from a host value."""
        if name not in values:
            values[name] = host_values[name].to(self.device)
        return values[name]

    def run_numpy(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            outputs = self.run(feeds)
        return [(o.float() if o.dtype in (torch.float16, torch.bfloat16) else o).cpu().numpy() for o in outputs]
