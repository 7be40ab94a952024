"""Rules 2 and 4: weights and biases of the quantized compute nodes.

Weights (rule 2): per output channel (``per_channel=false``: per tensor), symmetric, s8, zero
point 0, ``scale = max|w| / qmax`` (an all-zero channel gets scale 1). ``qmax`` is 127, except
``target=ort`` on a CPU whose u8 x s8 products saturate (AVX2 without VNNI, see
``graphc.cpu_features``): 63 (7-bit weights), unless ``weight_bits`` says otherwise. Axis:
Conv 0, ConvTranspose 1 (per tensor when grouped), Gemm 0 with ``transB=1`` else 1, MatMul 1.
The int8 weight is an initializer read by a DequantizeLinear.

Bias (rule 4): a static Conv/Gemm bias becomes int32 with scale ``s_x * s_w`` (per channel,
zero point 0; ``beta`` folded in) for ``target=ort``; it stays float for TensorRT.

A static MatMul's bias Add stays a float Add after the fused MatMulIntegerToFloat (onnxruntime's
QDQ fusion of ``DQ -> MatMul`` takes no bias). Writing it as ``Reshape(x, [-1, K]) -> Gemm
(int32 bias) -> Reshape(back)``, which onnxruntime fuses into one QGemm, was measured no faster
on MiniLM (batch 1: 1.50x vs 1.52x FP32; batch 32: 1.57x vs 1.63x): the reshapes cost what
the Adds saved, so the pass keeps the MatMul form.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from graphc.cpu_features import default_weight_bits
from graphc.graph import constant_values, swap_tensor

if TYPE_CHECKING:
    from graphc.passes.int8 import Int8Options
    from graphc.passes.int8.activations import QParams


def weight_bits(opts: Int8Options) -> int:
    """Rule 2: the weights' bit width (8 for TensorRT; ``weight_bits``, auto: by the CPU)."""
    if opts.target == "tensorrt":
        return 8  # GPUs accumulate u8/s8 products in 32 bits
    return default_weight_bits() if opts.weight_bits == "auto" else int(opts.weight_bits)


def weight_qmax(bits: int) -> int:
    """The largest |int8 value| a weight of ``bits`` bits takes."""
    return 127 if bits == 8 else 63


def weight_axis(node: gs.Node, weight: np.ndarray) -> int | None:
    """The output-channel axis of a compute node's weight (None: per tensor only)."""
    if node.op == "Conv":
        return 0
    if node.op == "ConvTranspose":
        return 1 if int(node.attrs.get("group", 1)) == 1 else None
    if node.op == "Gemm":
        return 0 if int(node.attrs.get("transB", 0)) else 1
    return weight.ndim - 1  # MatMul [K, N]


QUANTIZE_CHUNK_ELEMENTS = 2**22  # float64 work arrays of 32 MB: the peak is the weight and its int8 copy


def _chunks(length: int, per_item: int):
    step = max(1, QUANTIZE_CHUNK_ELEMENTS // max(per_item, 1))
    return (slice(start, min(start + step, length)) for start in range(0, length, step))


def quantize_weight(weight: np.ndarray, axis: int | None, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Rule 2: symmetric s8 weight and its scale (per ``axis``, or one scale). Computed in
    float64, a block of the leading axis at a time, so a weight of several GB needs no
    float64 copy of itself (the blocks give the same values as the whole)."""
    w = np.asarray(weight)
    if w.ndim == 0 or w.size == 0:
        peak = np.abs(w.astype(np.float64)).max() if w.size else 0.0
        scale = np.where(peak > 0, peak / qmax, 1.0)
        q = np.clip(np.round(w.astype(np.float64) / scale), -qmax, qmax).astype(np.int8)
        return q, np.asarray(scale, dtype=np.float32)
    per_row = w[0].size
    if axis is None:
        peak = np.array(max(np.abs(w[rows].astype(np.float64)).max() for rows in _chunks(len(w), per_row)))
    else:
        peak = np.zeros(w.shape[axis], dtype=np.float64)
        for rows in _chunks(len(w), per_row):
            block = np.abs(w[rows].astype(np.float64))
            if axis == 0:
                peak[rows] = block.reshape(block.shape[0], -1).max(axis=1)
            else:
                np.maximum(peak, np.moveaxis(block, axis, 0).reshape(w.shape[axis], -1).max(axis=1), out=peak)
    scale = np.where(peak > 0, peak / qmax, 1.0)
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis] = -1
    divisor = scale.reshape(shape)
    q = np.empty(w.shape, dtype=np.int8)
    for rows in _chunks(len(w), per_row):
        part = divisor[rows] if axis == 0 else divisor
        q[rows] = np.clip(np.round(w[rows].astype(np.float64) / part), -qmax, qmax)
    return q, scale.astype(np.float32)


class WeightCache:
    """Quantized weights, one per (weight tensor, axis), read through a DequantizeLinear."""

    def __init__(self, names: Callable[[str], str], qmax: int, per_channel: bool):
        self.names, self.qmax, self.per_channel = names, qmax, per_channel
        self.cache: dict[tuple[int, int | None], tuple[gs.Constant, np.ndarray, int | None]] = {}
        self.nodes: list[gs.Node] = []  # DequantizeLinear nodes to add to the graph

    def quantized(self, node: gs.Node) -> tuple[gs.Constant, np.ndarray, int | None]:
        """(int8 weight constant, scales, axis) for ``node``'s weight."""
        tensor = node.inputs[1]
        weight = np.asarray(constant_values(tensor))
        axis = weight_axis(node, weight) if self.per_channel else None
        key = (id(tensor), axis)
        if key not in self.cache:
            q, scale = quantize_weight(weight, axis, self.qmax)
            const = gs.Constant(self.names(f"{tensor.name}_quantized"), q)
            self.cache[key] = (const, scale, axis)
        return self.cache[key]

    def dequantized(self, node: gs.Node) -> tuple[gs.Variable, np.ndarray]:
        """A DQ node's output reading the int8 weight (for static nodes) and the scales."""
        const, scale, axis = self.quantized(node)
        out = gs.Variable(self.names(f"{node.inputs[1].name}_dequantized"), dtype=np.float32)
        zero = np.zeros_like(scale, dtype=np.int8)
        attrs = {"axis": axis} if axis is not None else {}
        dq = gs.Node("DequantizeLinear", self.names(f"{node.name or node.op}_weight_dq"), attrs,
                     [const, gs.Constant(self.names(f"{const.name}_scale"), scale),
                      gs.Constant(self.names(f"{const.name}_zero_point"), zero)], [out])
        self.nodes.append(dq)
        return out, scale


def quantize_static_node(node: gs.Node, params: dict[str, QParams], weights: WeightCache, target: str,
                         names: Callable[[str], str]) -> None:
    """Rules 2 and 4 for one static node: weight through DQ, bias int32 through DQ (ort)."""
    dq_weight, w_scale = weights.dequantized(node)
    swap_tensor(node.inputs, node.inputs[1], dq_weight)
    bias_index = 2
    x_params = params.get(node.inputs[0].name)
    if (target == "ort" and x_params is not None and len(node.inputs) > bias_index
            and node.inputs[bias_index].name and node.op in ("Conv", "ConvTranspose", "Gemm")):
        _quantize_bias(node, float(x_params.scale), w_scale, names, weights.nodes)


def _quantize_bias(node: gs.Node, x_scale: float, w_scale: np.ndarray, names: Callable[[str], str],
                   pending) -> None:
    """Rule 4: the bias as int32 through a DequantizeLinear of scale ``x_scale * w_scale``."""
    bias = constant_values(node.inputs[2])
    if bias is None:
        return
    bias = np.asarray(bias, dtype=np.float64)
    channels = w_scale.size
    if node.op == "Gemm":
        beta = float(node.attrs.get("beta", 1.0))
        if bias.size not in (1, channels) or (bias.ndim == 2 and bias.shape[0] != 1) or bias.ndim > 2:
            return  # a per-row bias: keep it float
        bias = np.broadcast_to(bias.reshape(-1), (channels,)) * beta if channels > 1 else bias.reshape(-1) * beta
    if bias.ndim != 1:
        return
    if w_scale.size == 1 and bias.size > 1:
        scale = np.full(bias.size, float(w_scale) * x_scale)
    else:
        scale = w_scale.astype(np.float64) * x_scale
    limit = 2**31 - 1
    q = np.clip(np.round(bias / scale), -limit, limit).astype(np.int32)
    out = gs.Variable(names(f"{node.inputs[2].name}_dequantized"), dtype=np.float32)
    dq = gs.Node("DequantizeLinear", names(f"{node.name or node.op}_bias_dq"), {"axis": 0},
                 [gs.Constant(names(f"{node.inputs[2].name}_quantized"), q),
                  gs.Constant(names(f"{node.inputs[2].name}_scale"), scale.astype(np.float32)),
                  gs.Constant(names(f"{node.inputs[2].name}_zero_point"), np.zeros(q.size, dtype=np.int32))],
                 [out])
    pending.append(dq)
    swap_tensor(node.inputs, node.inputs[2], out)
    if node.op == "Gemm":
        node.attrs["beta"] = 1.0
