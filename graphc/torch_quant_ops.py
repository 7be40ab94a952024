"""The quantized operators of graphc's ONNX-on-PyTorch executor (``graphc.torch_executor``):
the ones graphc's ``int8`` pass writes (QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear,
MatMulInteger, ConvInteger) and the QOperator forms of pre-quantized models (QLinearConv,
QLinearMatMul).

Rules:

1. Scale arithmetic is float32 whatever the executor's float dtype (the scales are kept in
   float32 when the rest of a model runs in float16); a DequantizeLinear's output then takes
   the executor's float dtype.
2. QuantizeLinear is ``saturate(round_half_even(x / scale) + zero_point)``, the division and
   rounding onnxruntime's CPU kernel uses; the output type is the zero point's (uint8 without
   one). Per-tensor and per-axis (``axis``) scales.
3. DynamicQuantizeLinear takes the range ``[min(0, min x), max(0, max x)]``, scale = range / 255
   (1 for an all-zero input), zero point = saturate(round(-min / scale)), as the ONNX
   specification and onnxruntime.
4. Integer products are exact. MatMulInteger and ConvInteger subtract the zero points and
   multiply in float64: each product of two 8-bit values minus their zero points is below
   2^16 in magnitude, so a sum of up to 2^37 of them is exact in float64's 53-bit mantissa.
   Where the executor is asked to (``triton_int8``, on a CUDA device), a MatMulInteger with a
   uint8 activation, one activation zero point and a symmetric int8 weight runs on graphc's
   Triton INT8 kernel (``graphc.kernels.triton``), which is exact in int32.
5. QLinearConv / QLinearMatMul accumulate exactly as in rule 4, add the int32 bias, and
   requantize with the float32 multiplier ``x_scale * w_scale / y_scale`` (per output channel for
   per-channel weights), rounding half to even, as onnxruntime's reference path; its vectorised
   kernels may round a few values one level differently.
"""

from __future__ import annotations

import torch

from graphc.torch_ops import convolve, op, torch_dtype

RANGES = {torch.uint8: (0, 255), torch.int8: (-128, 127), torch.int16: (-32768, 32767), torch.int32: (-2**31, 2**31 - 1)}


def per_axis(param: torch.Tensor, rank: int, axis: int) -> torch.Tensor:
    """A per-axis (1-D) quantization parameter shaped to broadcast along ``axis``."""
    if param.dim() == 0 or param.numel() == 1:
        return param.reshape(())
    axis = axis + rank if axis < 0 else axis
    return param.reshape([-1 if i == axis else 1 for i in range(rank)])


def quantize(value: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, dtype: torch.dtype,
             axis: int = 1) -> torch.Tensor:
    low, high = RANGES[dtype]
    rank = value.dim()
    scaled = torch.round(value.float() / per_axis(scale.float(), rank, axis))
    if zero_point is not None:
        scaled = scaled + per_axis(zero_point.float(), rank, axis)
    return torch.clamp(scaled, low, high).to(dtype)


@op("QuantizeLinear")
def quantize_linear(ctx, x, a):
    zero_point = x[2] if len(x) > 2 and x[2] is not None else None
    if a.get("block_size", 0):
        raise ctx.unsupported("blocked quantization (block_size)")
    dtype = zero_point.dtype if zero_point is not None else torch.uint8
    if a.get("output_dtype"):
        dtype = torch_dtype(ctx, a["output_dtype"])
    if dtype not in RANGES:
        raise ctx.unsupported(f"QuantizeLinear to {dtype}")
    return [quantize(x[0], x[1], zero_point, dtype, a.get("axis", 1))]


@op("DequantizeLinear")
def dequantize_linear(ctx, x, a):
    value, scale = x[0], x[1]
    if a.get("block_size", 0):
        raise ctx.unsupported("blocked quantization (block_size)")
    rank, axis = value.dim(), a.get("axis", 1)
    wide = value.float()
    if len(x) > 2 and x[2] is not None:
        wide = wide - per_axis(x[2].float(), rank, axis)
    return [(wide * per_axis(scale.float(), rank, axis)).to(ctx.float_dtype)]


@op("DynamicQuantizeLinear")
def dynamic_quantize_linear(ctx, x, a):
    value = x[0].float()
    low = torch.clamp(value.min(), max=0.0)
    high = torch.clamp(value.max(), min=0.0)
    scale = (high - low) / 255.0
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero_point = torch.clamp(torch.round(-low / scale), 0, 255)
    quantized = torch.clamp(torch.round(value / scale) + zero_point, 0, 255).to(torch.uint8)
    return [quantized, scale.reshape(()), zero_point.to(torch.uint8).reshape(())]


def centred(value: torch.Tensor, zero_point: torch.Tensor | None, rank_axis: int | None = None) -> torch.Tensor:
    wide = value.to(torch.float64)
    if zero_point is None:
        return wide
    zp = zero_point.to(torch.float64)
    if zp.numel() > 1 and rank_axis is not None:
        zp = per_axis(zp, value.dim(), rank_axis)
    return wide - zp


def triton_matmul_integer(ctx, a, b, a_zero_point):
    """Rule 4's GPU path: graphc's Triton dense INT8 kernel, exact in int32."""
    from graphc.kernels.triton.kernels import dense_int8_matmul

    rows = a.reshape(-1, a.shape[-1])
    out = dense_int8_matmul(rows.contiguous(), b.contiguous(), int(a_zero_point.item()) if a_zero_point is not None else 0,
                            64, 64, 64)
    return out.reshape(*a.shape[:-1], b.shape[1])


def fits_triton(ctx, a, b, a_zero_point, b_zero_point) -> bool:
    return (ctx.triton_int8 and a.dtype == torch.uint8 and b.dtype == torch.int8 and b.dim() == 2
            and (a_zero_point is None or a_zero_point.numel() == 1)
            and (b_zero_point is None or not bool(torch.any(b_zero_point != 0))))


@op("MatMulInteger")
def matmul_integer(ctx, x, a):
    left, right = x[0], x[1]
    a_zp = x[2] if len(x) > 2 and x[2] is not None else None
    b_zp = x[3] if len(x) > 3 and x[3] is not None else None
    if fits_triton(ctx, left, right, a_zp, b_zp):
        return [triton_matmul_integer(ctx, left, right, a_zp)]
    lhs = centred(left, a_zp, rank_axis=left.dim() - 2)  # a per-row zero point runs along M
    rhs = centred(right, b_zp, rank_axis=right.dim() - 1)  # a per-column one along N
    return [torch.matmul(lhs, rhs).to(torch.int32)]


@op("ConvInteger")
def conv_integer(ctx, x, a):
    x_zp = x[2] if len(x) > 2 and x[2] is not None else None
    w_zp = x[3] if len(x) > 3 and x[3] is not None else None
    weight = centred(x[1], w_zp, rank_axis=0)
    value = centred(x[0], x_zp)
    # padding adds the zero point, which is 0 once centred: exactly the padded quantized input
    return [convolve(ctx, value, weight, None, a).to(torch.int32)]


def requantize(ctx, acc, x_scale, w_scale, y_scale, y_zero_point, channel_axis):
    multiplier = (x_scale.float() * w_scale.float() / y_scale.float())
    multiplier = per_axis(multiplier, acc.dim(), channel_axis)
    dtype = y_zero_point.dtype if y_zero_point is not None else torch.uint8
    low, high = RANGES[dtype]
    out = torch.round(acc.float() * multiplier)
    if y_zero_point is not None:
        out = out + y_zero_point.float()
    return torch.clamp(out, low, high).to(dtype)


@op("QLinearConv")
def qlinear_conv(ctx, x, a):
    value, x_scale, x_zp, weight, w_scale, w_zp, y_scale, y_zp = x[:8]
    acc = convolve(ctx, centred(value, x_zp), centred(weight, w_zp, rank_axis=0), None, a)
    if len(x) > 8 and x[8] is not None:
        acc = acc + per_axis(x[8].to(torch.float64), acc.dim(), 1)
    return [requantize(ctx, acc, x_scale, w_scale, y_scale, y_zp, 1)]


@op("QLinearMatMul")
def qlinear_matmul(ctx, x, a):
    left, a_scale, a_zp, right, b_scale, b_zp, y_scale, y_zp = x[:8]
    acc = torch.matmul(centred(left, a_zp, rank_axis=left.dim() - 2), centred(right, b_zp, rank_axis=right.dim() - 1))
    return [requantize(ctx, acc, a_scale, b_scale, y_scale, y_zp, acc.dim() - 1)]
