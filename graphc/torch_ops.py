"""The float and shape operators of graphc's ONNX-on-PyTorch executor (``graphc.torch_executor``):
one function per ONNX operator, ``fn(ctx, inputs, attrs) -> list of outputs``, torch tensors
in and out. The quantized operators are in ``graphc.torch_quant_ops``.

Rules every operator here follows:

1. Semantics are ONNX's, opsets 11 to 21. Where an opset moved an attribute to an input
   (Squeeze/Unsqueeze/Reduce* axes, Split sizes, Clip bounds, Pad pads), both forms are read.
2. Shape-valued inputs (Reshape's shape, Slice's starts, Expand's shape, ...) are int64 tensors,
   read back as Python ints (one device sync each on a GPU).
3. A float tensor carries ``ctx.float_dtype`` (float32, or float16 when the executor runs a
   FP32 model in half precision); ``Cast(to=FLOAT)`` gives that dtype too. Constants going to
   float16 are clamped to its finite range (``to_float_dtype``). LayerNormalization
   computes its statistics in float32 (``stash_type=1``, as onnxruntime).
4. Integer Div truncates toward zero and Cast from float to integer truncates, as onnxruntime's
   C++ casts do; QuantizeLinear is where rounding to nearest lives.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from onnx import TensorProto, numpy_helper

OPS: dict[tuple[str, str], callable] = {}

ONNX_TO_TORCH = {
    TensorProto.FLOAT: torch.float32, TensorProto.DOUBLE: torch.float64, TensorProto.FLOAT16: torch.float16,
    TensorProto.BFLOAT16: torch.bfloat16, TensorProto.INT8: torch.int8, TensorProto.UINT8: torch.uint8,
    TensorProto.INT16: torch.int16, TensorProto.INT32: torch.int32, TensorProto.INT64: torch.int64,
    TensorProto.BOOL: torch.bool,
}


def op(*names: str, domain: str = ""):
    def register(fn):
        for name in names:
            OPS[(domain, name)] = fn
        return fn
    return register


def torch_dtype(ctx, onnx_type: int) -> torch.dtype:
    if onnx_type == TensorProto.FLOAT:
        return ctx.float_dtype
    if onnx_type not in ONNX_TO_TORCH:
        raise ctx.unsupported(f"tensor type {TensorProto.DataType.Name(onnx_type)}")
    return ONNX_TO_TORCH[onnx_type]


def to_float_dtype(ctx, value: torch.Tensor) -> torch.Tensor:
    """A float32 tensor in ``ctx.float_dtype``; to float16, finite values are clamped to its range
    (+-65504) first, so an exporter's ``finfo(float32).min`` mask constant stays finite (as
    onnxconverter-common's float16 conversion does) and ``0 * min`` stays 0, not NaN."""
    if value.dtype != torch.float32 or ctx.float_dtype == torch.float32:
        return value
    if ctx.float_dtype == torch.float16:
        value = torch.where(torch.isfinite(value), value.clamp(-65504.0, 65504.0), value)
    return value.to(ctx.float_dtype)


def tensor_from_proto(ctx, proto) -> torch.Tensor:
    array = numpy_helper.to_array(proto)
    value = torch.from_numpy(np.array(array, copy=True)).to(ctx.device)  # keeps 0-d arrays 0-d
    return to_float_dtype(ctx, value)


def ints(value) -> list[int]:
    return [int(v) for v in value.reshape(-1).tolist()]


def axis_of(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def axes_arg(inputs, attrs, position: int = 1):
    """Axes from the input at ``position`` (newer opsets) or the ``axes`` attribute, else None."""
    if len(inputs) > position and inputs[position] is not None:
        return ints(inputs[position])
    return attrs.get("axes")


# --- element-wise ---------------------------------------------------------------------------

def _div(a, b):
    if a.dtype.is_floating_point:
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


BINARY = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": _div,
    "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le, "GreaterOrEqual": torch.ge,
    "And": torch.logical_and, "Or": torch.logical_or, "Xor": torch.logical_xor,
}
for _name, _fn in BINARY.items():
    op(_name)(lambda ctx, x, a, _fn=_fn: [_fn(x[0], x[1])])


@op("Pow")
def pow_(ctx, x, a):
    return [torch.pow(x[0], x[1]).to(x[0].dtype)]


@op("Mod")
def mod(ctx, x, a):
    return [torch.fmod(x[0], x[1]) if a.get("fmod", 0) else torch.remainder(x[0], x[1])]


VARIADIC = {"Max": torch.maximum, "Min": torch.minimum, "Sum": torch.add}
for _name, _fn in VARIADIC.items():
    op(_name)(lambda ctx, x, a, _fn=_fn: [functools.reduce(_fn, x)])


@op("Mean")
def mean(ctx, x, a):
    return [functools.reduce(torch.add, x) / len(x)]


UNARY = {
    "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf, "Exp": torch.exp,
    "Log": torch.log, "Sqrt": torch.sqrt, "Neg": torch.neg, "Abs": torch.abs, "Reciprocal": torch.reciprocal,
    "Floor": torch.floor, "Ceil": torch.ceil, "Not": torch.logical_not, "IsNaN": torch.isnan, "Sign": torch.sign,
    "Sin": torch.sin, "Cos": torch.cos, "Round": torch.round, "Softsign": F.softsign, "HardSwish": F.hardswish,
}
for _name, _fn in UNARY.items():
    op(_name)(lambda ctx, x, a, _fn=_fn: [_fn(x[0])])


@op("Identity", "Dropout")
def identity(ctx, x, a):
    outputs = [x[0]]
    if ctx.node_outputs > 1:  # Dropout's mask: all kept at inference
        outputs.append(torch.ones_like(x[0], dtype=torch.bool))
    return outputs


@op("IsInf")
def isinf(ctx, x, a):
    value = x[0]
    positive, negative = a.get("detect_positive", 1), a.get("detect_negative", 1)
    return [(torch.isposinf(value) & bool(positive)) | (torch.isneginf(value) & bool(negative))]


@op("LeakyRelu")
def leaky_relu(ctx, x, a):
    return [F.leaky_relu(x[0], a.get("alpha", 0.01))]


@op("Elu")
def elu(ctx, x, a):
    return [F.elu(x[0], a.get("alpha", 1.0))]


@op("Selu")
def selu(ctx, x, a):
    alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
    return [gamma * torch.where(x[0] > 0, x[0], alpha * (torch.exp(x[0]) - 1))]


@op("Softplus")
def softplus(ctx, x, a):
    return [F.softplus(x[0])]


@op("HardSigmoid")
def hard_sigmoid(ctx, x, a):
    return [torch.clamp(a.get("alpha", 0.2) * x[0] + a.get("beta", 0.5), 0, 1)]


@op("PRelu")
def prelu(ctx, x, a):
    return [torch.where(x[0] >= 0, x[0], x[0] * x[1])]


@op("Clip")
def clip(ctx, x, a):
    low = x[1] if len(x) > 1 and x[1] is not None else a.get("min")
    high = x[2] if len(x) > 2 and x[2] is not None else a.get("max")
    value = x[0]
    if low is not None:
        value = torch.maximum(value, torch.as_tensor(low, dtype=value.dtype, device=value.device))
    if high is not None:
        value = torch.minimum(value, torch.as_tensor(high, dtype=value.dtype, device=value.device))
    return [value]


@op("Where")
def where(ctx, x, a):
    return [torch.where(x[0], x[1], x[2])]


@op("Gelu")
def gelu(ctx, x, a):
    return [F.gelu(x[0], approximate=a.get("approximate", "none"))]


def _softmax_like(ctx, x, a, fn):
    value = x[0]
    rank = value.dim()
    if ctx.opset >= 13:
        return [fn(value, axis_of(a.get("axis", -1), rank))]
    axis = axis_of(a.get("axis", 1), rank)  # opsets < 13: over everything from ``axis`` on
    rows = math.prod(value.shape[:axis])
    return [fn(value.reshape(rows, -1), 1).reshape(value.shape)]


@op("Softmax")
def softmax(ctx, x, a):
    return _softmax_like(ctx, x, a, torch.softmax)


@op("LogSoftmax")
def log_softmax(ctx, x, a):
    return _softmax_like(ctx, x, a, torch.log_softmax)


@op("Cast")
def cast(ctx, x, a):
    if a["to"] == TensorProto.FLOAT and x[0].dtype == torch.float32:
        return [to_float_dtype(ctx, x[0])]
    return [x[0].to(torch_dtype(ctx, a["to"]))]


@op("CastLike")
def cast_like(ctx, x, a):
    return [x[0].to(x[1].dtype)]


# --- shapes and indexing ----------------------------------------------------------------------

def _shape_tensor(ctx, values) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.int64, device=ctx.device)


@op("Shape")
def shape(ctx, x, a):
    dims = list(x[0].shape)
    start, end = a.get("start", 0), a.get("end", len(dims))
    return [_shape_tensor(ctx, dims[start:end])]


@op("Size")
def size(ctx, x, a):
    return [torch.tensor(x[0].numel(), dtype=torch.int64, device=ctx.device)]


@op("Reshape")
def reshape(ctx, x, a):
    target = ints(x[1])
    if not a.get("allowzero", 0):
        target = [x[0].shape[i] if d == 0 else d for i, d in enumerate(target)]
    return [x[0].reshape(tuple(target))]


@op("Flatten")
def flatten(ctx, x, a):
    value = x[0]
    axis = axis_of(a.get("axis", 1), value.dim())
    return [value.reshape(math.prod(value.shape[:axis]), math.prod(value.shape[axis:]))]


@op("Transpose")
def transpose(ctx, x, a):
    perm = a.get("perm") or list(reversed(range(x[0].dim())))
    return [x[0].permute(perm)]


@op("Squeeze")
def squeeze(ctx, x, a):
    value = x[0]
    axes = axes_arg(x, a)
    if axes is None:
        return [value.reshape(tuple(d for d in value.shape if d != 1))]
    drop = {axis_of(axis, value.dim()) for axis in axes}
    return [value.reshape(tuple(d for i, d in enumerate(value.shape) if i not in drop))]


@op("Unsqueeze")
def unsqueeze(ctx, x, a):
    value = x[0]
    axes = sorted(axis_of(axis, value.dim() + len(axes_arg(x, a))) for axis in axes_arg(x, a))
    dims = list(value.shape)
    for axis in axes:
        dims.insert(axis, 1)
    return [value.reshape(tuple(dims))]


@op("Concat")
def concat(ctx, x, a):
    return [torch.cat(list(x), dim=axis_of(a["axis"], x[0].dim()))]


@op("Split")
def split(ctx, x, a):
    value = x[0]
    axis = axis_of(a.get("axis", 0), value.dim())
    sizes = ints(x[1]) if len(x) > 1 and x[1] is not None else a.get("split")
    if sizes is None:
        parts = a.get("num_outputs", ctx.node_outputs)
        chunk = -(-value.shape[axis] // parts)
        sizes = [min(chunk, value.shape[axis] - i * chunk) for i in range(parts)]
    return list(torch.split(value, sizes, dim=axis))


@op("Slice")
def slice_(ctx, x, a):
    value = x[0]
    if len(x) > 1:
        starts, ends = ints(x[1]), ints(x[2])
        axes = ints(x[3]) if len(x) > 3 and x[3] is not None else list(range(len(starts)))
        steps = ints(x[4]) if len(x) > 4 and x[4] is not None else [1] * len(starts)
    else:  # opset < 10
        starts, ends = a["starts"], a["ends"]
        axes, steps = a.get("axes", list(range(len(starts)))), [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = axis_of(axis, value.dim())
        dim = value.shape[axis]
        start = start + dim if start < 0 else start
        end = end + dim if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), dim), min(max(end, 0), dim)
            index = [slice(None)] * axis + [slice(start, end, step)]
            value = value[tuple(index)]
        else:
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
            picks = torch.arange(start, end, step, device=value.device)
            value = value.index_select(axis, picks)
    return [value]


def _wrap(indices, dim):
    return torch.where(indices < 0, indices + dim, indices)


@op("Gather")
def gather(ctx, x, a):
    value, indices = x
    axis = axis_of(a.get("axis", 0), value.dim())
    picked = value.index_select(axis, _wrap(indices.to(torch.int64), value.shape[axis]).reshape(-1))
    return [picked.reshape((*value.shape[:axis], *indices.shape, *value.shape[axis + 1:]))]


@op("GatherElements")
def gather_elements(ctx, x, a):
    value, indices = x
    axis = axis_of(a.get("axis", 0), value.dim())
    return [torch.gather(value, axis, _wrap(indices.to(torch.int64), value.shape[axis]))]


@op("GatherND")
def gather_nd(ctx, x, a):
    value, indices = x[0], x[1].to(torch.int64)
    batch = a.get("batch_dims", 0)
    batch_shape = value.shape[:batch]
    rows = math.prod(batch_shape)
    depth = indices.shape[-1]
    inner = indices.shape[batch:-1]
    flat_value = value.reshape(rows, *value.shape[batch:])
    flat_indices = indices.reshape(rows, -1, depth)
    limits = torch.tensor(flat_value.shape[1:1 + depth], device=value.device)
    flat_indices = torch.where(flat_indices < 0, flat_indices + limits, flat_indices)
    row = torch.arange(rows, device=value.device).view(rows, 1).expand(rows, flat_indices.shape[1])
    picked = flat_value[(row, *(flat_indices[..., j] for j in range(depth)))]
    return [picked.reshape((*batch_shape, *inner, *flat_value.shape[1 + depth:]))]


@op("Expand")
def expand(ctx, x, a):
    value = x[0]
    target = torch.broadcast_shapes(tuple(value.shape), tuple(ints(x[1])))
    return [value.expand(target)]


@op("Tile")
def tile(ctx, x, a):
    return [x[0].repeat(ints(x[1]))]


@op("ConstantOfShape")
def constant_of_shape(ctx, x, a):
    fill = a.get("value")
    if fill is None:
        return [torch.zeros(ints(x[0]), dtype=ctx.float_dtype, device=ctx.device)]
    template = tensor_from_proto(ctx, fill)
    return [torch.full(ints(x[0]), template.reshape(-1)[0].item(), dtype=template.dtype, device=ctx.device)]


@op("Range")
def range_(ctx, x, a):
    start, limit, delta = (v.item() for v in x)
    return [torch.arange(start, limit, delta, dtype=x[0].dtype, device=ctx.device)]


@op("Constant")
def constant(ctx, x, a):
    if "value" in a:
        return [tensor_from_proto(ctx, a["value"])]
    if "value_float" in a:
        return [torch.tensor(a["value_float"], dtype=ctx.float_dtype, device=ctx.device)]
    if "value_floats" in a:
        return [torch.tensor(a["value_floats"], dtype=ctx.float_dtype, device=ctx.device)]
    if "value_int" in a:
        return [torch.tensor(a["value_int"], dtype=torch.int64, device=ctx.device)]
    if "value_ints" in a:
        return [torch.tensor(a["value_ints"], dtype=torch.int64, device=ctx.device)]
    raise ctx.unsupported("a Constant without a tensor, float or int value")


@op("Pad")
def pad(ctx, x, a):
    value = x[0]
    pads = ints(x[1]) if len(x) > 1 and x[1] is not None else a["pads"]
    fill = x[2].item() if len(x) > 2 and x[2] is not None else a.get("value", 0.0)
    rank = value.dim()
    axes = [axis_of(v, rank) for v in ints(x[3])] if len(x) > 3 and x[3] is not None else list(range(rank))
    begins, ends = dict(zip(axes, pads[:len(axes)])), dict(zip(axes, pads[len(axes):]))
    torch_pads = torch_pad_list([begins.get(i, 0) for i in range(rank)], [ends.get(i, 0) for i in range(rank)])
    mode = a.get("mode", "constant")
    mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode]
    if mode == "constant":
        return [F.pad(value, torch_pads, value=fill)]
    while torch_pads[-2:] == [0, 0] and len(torch_pads) > 2:  # torch pads at most the last 3 axes here
        torch_pads = torch_pads[:-2]
    return [F.pad(value, torch_pads, mode=mode)]


@op("ArgMax", "ArgMin")
def arg_extreme(ctx, x, a):
    value = x[0]
    axis = axis_of(a.get("axis", 0), value.dim())
    keep = bool(a.get("keepdims", 1))
    fn = torch.argmax if ctx.op_type == "ArgMax" else torch.argmin
    if a.get("select_last_index", 0):
        flipped = fn(value.flip(axis), dim=axis, keepdim=keep)
        return [value.shape[axis] - 1 - flipped]
    return [fn(value, dim=axis, keepdim=keep)]


@op("TopK")
def topk(ctx, x, a):
    value = x[0]
    axis = axis_of(a.get("axis", -1), value.dim())
    values, indices = torch.topk(value, int(x[1].reshape(-1)[0].item()), dim=axis,
                                 largest=bool(a.get("largest", 1)), sorted=bool(a.get("sorted", 1)))
    return [values, indices]


@op("NonZero")
def nonzero(ctx, x, a):
    return [torch.nonzero(x[0]).T.contiguous()]


@op("Einsum")
def einsum(ctx, x, a):
    return [torch.einsum(a["equation"], *x)]


@op("CumSum")
def cumsum(ctx, x, a):
    value = x[0]
    axis = axis_of(int(x[1].item()), value.dim())
    if a.get("reverse", 0):
        value = value.flip(axis)
    out = torch.cumsum(value, dim=axis).to(value.dtype)
    if a.get("exclusive", 0):
        out = out - value
    return [out.flip(axis) if a.get("reverse", 0) else out]


# --- reductions -------------------------------------------------------------------------------

def _reduce(ctx, x, a, fn):
    value = x[0]
    axes = axes_arg(x, a)
    keep = bool(a.get("keepdims", 1))
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            return [value]
        axes = list(range(value.dim()))
    axes = sorted(axis_of(axis, value.dim()) for axis in axes)
    return [fn(value, axes, keep)]


def _prod(value, axes, keep):
    for axis in reversed(axes):
        value = torch.prod(value, dim=axis, keepdim=keep)
    return value


REDUCE = {
    "ReduceMean": lambda v, ax, k: torch.mean(v, dim=ax, keepdim=k),
    "ReduceSum": lambda v, ax, k: torch.sum(v, dim=ax, keepdim=k, dtype=v.dtype),
    "ReduceMax": lambda v, ax, k: torch.amax(v, dim=ax, keepdim=k),
    "ReduceMin": lambda v, ax, k: torch.amin(v, dim=ax, keepdim=k),
    "ReduceProd": _prod,
    "ReduceSumSquare": lambda v, ax, k: torch.sum(v * v, dim=ax, keepdim=k),
    "ReduceL2": lambda v, ax, k: torch.sqrt(torch.sum(v * v, dim=ax, keepdim=k)),
    "ReduceL1": lambda v, ax, k: torch.sum(v.abs(), dim=ax, keepdim=k),
    "ReduceLogSumExp": lambda v, ax, k: torch.logsumexp(v, dim=ax, keepdim=k),
}
for _name, _fn in REDUCE.items():
    op(_name)(lambda ctx, x, a, _fn=_fn: _reduce(ctx, x, a, _fn))


# --- neural-network layers ----------------------------------------------------------------------

def spatial_pads(ctx, a, in_dims, kernel, strides, dilations):
    """ONNX pads as (begins, ends) per spatial axis, auto_pad resolved."""
    n = len(in_dims)
    auto = a.get("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s, d in zip(in_dims, kernel, strides, dilations):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            begins.append(small if auto == "SAME_UPPER" else large)
            ends.append(large if auto == "SAME_UPPER" else small)
        return begins, ends
    if auto == "VALID":
        return [0] * n, [0] * n
    pads = a.get("pads", [0] * (2 * n))
    return list(pads[:n]), list(pads[n:])


def torch_pad_list(begins, ends) -> list[int]:
    """ONNX's per-axis begin and end pads, first axis first, as F.pad's list (last axis first)."""
    torch_pads = []
    for b, e in zip(reversed(begins), reversed(ends)):
        torch_pads += [b, e]
    return torch_pads


def padded(value, begins, ends, fill=0.0):
    """``value`` padded on its trailing (spatial) axes."""
    return F.pad(value, torch_pad_list(begins, ends), value=fill)


CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def convolve(ctx, value, weight, bias, a):
    n = weight.dim() - 2
    if n not in CONV:
        raise ctx.unsupported(f"a {n}-d convolution")
    kernel = a.get("kernel_shape", list(weight.shape[2:]))
    strides, dilations = a.get("strides", [1] * n), a.get("dilations", [1] * n)
    begins, ends = spatial_pads(ctx, a, list(value.shape[2:]), kernel, strides, dilations)
    if begins != ends:
        value, padding = padded(value, begins, ends), 0
    else:
        padding = begins
    return CONV[n](value, weight, bias, stride=strides, padding=padding, dilation=dilations, groups=a.get("group", 1))


@op("Conv")
def conv(ctx, x, a):
    return [convolve(ctx, x[0], x[1], x[2] if len(x) > 2 else None, a)]


POOL = {1: (F.max_pool1d, F.avg_pool1d), 2: (F.max_pool2d, F.avg_pool2d), 3: (F.max_pool3d, F.avg_pool3d)}


@op("MaxPool", "AveragePool")
def pool(ctx, x, a):
    value = x[0]
    n = value.dim() - 2
    kernel = a["kernel_shape"]
    strides, dilations = a.get("strides", [1] * n), a.get("dilations", [1] * n)
    begins, ends = spatial_pads(ctx, a, list(value.shape[2:]), kernel, strides, dilations)
    ceil = bool(a.get("ceil_mode", 0))
    max_pool, avg_pool = POOL[n]
    symmetric = begins == ends and all(2 * p <= k for p, k in zip(begins, kernel))
    if ctx.op_type == "MaxPool":
        if ctx.node_outputs > 1:
            raise ctx.unsupported("MaxPool's Indices output")
        if not symmetric:
            value, begins = padded(value, begins, ends, float("-inf")), [0] * n
        return [max_pool(value, kernel, strides, begins, dilations, ceil_mode=ceil)]
    if any(d != 1 for d in dilations):
        raise ctx.unsupported("a dilated AveragePool")
    include_pad = bool(a.get("count_include_pad", 0))
    if symmetric:
        return [avg_pool(value, kernel, strides, begins, ceil_mode=ceil, count_include_pad=include_pad)]
    # asymmetric pads: average of the padded input over the windows' count of real (or all) cells
    sums = avg_pool(padded(value, begins, ends), kernel, strides, 0, ceil_mode=ceil, count_include_pad=True)
    if include_pad:
        return [sums]
    ones = padded(torch.ones_like(value[:1, :1]), begins, ends)
    return [sums / avg_pool(ones, kernel, strides, 0, ceil_mode=ceil, count_include_pad=True)]


@op("GlobalAveragePool")
def global_average_pool(ctx, x, a):
    return [x[0].mean(dim=tuple(range(2, x[0].dim())), keepdim=True)]


@op("GlobalMaxPool")
def global_max_pool(ctx, x, a):
    return [x[0].amax(dim=tuple(range(2, x[0].dim())), keepdim=True)]


@op("BatchNormalization")
def batch_normalization(ctx, x, a):
    if a.get("training_mode", 0) or ctx.node_outputs > 1:
        raise ctx.unsupported("BatchNormalization in training mode")
    value, scale, bias, mean, var = x[:5]
    return [F.batch_norm(value, mean, var, scale, bias, training=False, eps=a.get("epsilon", 1e-5))]


@op("InstanceNormalization")
def instance_normalization(ctx, x, a):
    return [F.instance_norm(x[0], weight=x[1], bias=x[2], eps=a.get("epsilon", 1e-5))]


def layer_norm(value, scale, bias, axis, epsilon):
    dims = tuple(range(axis, value.dim()))
    wide = value.float()
    mean = wide.mean(dim=dims, keepdim=True)
    centred = wide - mean
    inv_std = torch.rsqrt((centred * centred).mean(dim=dims, keepdim=True) + epsilon)
    out = (centred * inv_std).to(value.dtype) * scale
    return (out + bias if bias is not None else out), mean, inv_std


@op("LayerNormalization")
def layer_normalization(ctx, x, a):
    value = x[0]
    axis = axis_of(a.get("axis", -1), value.dim())
    out, mean, inv_std = layer_norm(value, x[1], x[2] if len(x) > 2 else None, axis, a.get("epsilon", 1e-5))
    return [out, mean, inv_std][:ctx.node_outputs]


@op("Gemm")
def gemm(ctx, x, a):
    left = x[0].T if a.get("transA", 0) else x[0]
    right = x[1].T if a.get("transB", 0) else x[1]
    out = left @ right
    alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
    if alpha != 1.0:
        out = out * alpha
    if len(x) > 2 and x[2] is not None:
        out = out + (x[2] * beta if beta != 1.0 else x[2])
    return [out]


@op("MatMul")
def matmul(ctx, x, a):
    return [torch.matmul(x[0], x[1])]


# --- onnxruntime's com.microsoft fusions that graphc's fuse pass writes -----------------------------

@op("Gelu", domain="com.microsoft")
def ms_gelu(ctx, x, a):
    return [F.gelu(x[0])]


@op("BiasGelu", domain="com.microsoft")
def ms_bias_gelu(ctx, x, a):
    return [F.gelu(x[0] + x[1])]


@op("FastGelu", domain="com.microsoft")
def ms_fast_gelu(ctx, x, a):
    value = x[0] + x[1] if len(x) > 1 and x[1] is not None else x[0]
    return [F.gelu(value, approximate="tanh")]


@op("SkipLayerNormalization", domain="com.microsoft")
def ms_skip_layer_normalization(ctx, x, a):
    total = x[0] + x[1]
    if len(x) > 4 and x[4] is not None:
        total = total + x[4]
    out, mean, inv_std = layer_norm(total, x[2], x[3] if len(x) > 3 else None, total.dim() - 1,
                                    a.get("epsilon", 1e-12))
    return [out, mean, inv_std, total][:ctx.node_outputs]


def _heads(value, heads):
    """[B, S, H*D] -> [B, H, S, D]"""
    b, s, hd = value.shape
    return value.reshape(b, s, heads, hd // heads).transpose(1, 2)


def _merge_heads(value):
    """[B, H, S, D] -> [B, S, H*D]"""
    b, h, s, d = value.shape
    return value.transpose(1, 2).reshape(b, s, h * d)


def _attend(q, k, v, scale, bias=None, keep=None):
    """softmax(q k^T * scale + bias) v, the softmax in float32; keys outside ``keep`` get -1e30,
    so a query with no key to read averages them all instead of becoming NaN."""
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale
    if bias is not None:
        scores = scores + bias.float()
    if keep is not None:
        scores = scores.masked_fill(~keep, -1e30)
    return torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v)


@op("MultiHeadAttention", domain="com.microsoft")
def ms_multi_head_attention(ctx, x, a):
    """The forms graphc's fuse pass writes: 3-D query/key/value, optional attention_bias
    (input 5), ``unidirectional`` (causal); no packed QKV, no key padding mask, no past."""
    given = [i for i, t in enumerate(x) if t is not None]
    if any(i in (3, 4) or i > 5 for i in given) or x[0].dim() != 3 or x[1] is None or x[1].dim() != 3:
        raise ctx.unsupported("MultiHeadAttention other than 3-D q/k/v with an optional attention_bias")
    if ctx.node_outputs > 1:
        raise ctx.unsupported("MultiHeadAttention's present key/value outputs")
    heads = a["num_heads"]
    q, k, v = _heads(x[0], heads), _heads(x[1], heads), _heads(x[2], heads)
    scale = a.get("scale", 0.0) or 1.0 / math.sqrt(q.shape[-1])
    keep = None
    if a.get("unidirectional", 0):
        s, length = q.shape[2], k.shape[2]
        keep = torch.ones(s, length, dtype=torch.bool, device=q.device).tril(length - s)
    bias = x[5] if len(x) > 5 else None
    return [_merge_heads(_attend(q, k, v, scale, bias, keep))]


@op("GroupQueryAttention", domain="com.microsoft")
def ms_group_query_attention(ctx, x, a):
    """Without past key/value or rotary embedding: each row's queries read its first
    ``seqlens_k + 1`` keys (all of them before its own position when ``causal``); key/value
    heads are shared by ``num_heads / kv_num_heads`` query heads. The present outputs are the
    row's keys and values, [B, kv_heads, L, D]."""
    if (len(x) > 3 and x[3] is not None) or (len(x) > 4 and x[4] is not None) or a.get("do_rotary", 0) \
            or any(t is not None for t in x[7:]) or a.get("local_window_size", -1) != -1 or a.get("softcap", 0.0):
        raise ctx.unsupported("GroupQueryAttention with a past, rotary embedding, a local window or softcap")
    heads, kv_heads = a["num_heads"], a["kv_num_heads"]
    q, k, v = _heads(x[0], heads), _heads(x[1], kv_heads), _heads(x[2], kv_heads)
    scale = a.get("scale", 0.0) or 1.0 / math.sqrt(q.shape[-1])
    group = heads // kv_heads
    k_all, v_all = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    rows, s, length = q.shape[0], q.shape[2], k.shape[2]
    valid = x[5].reshape(rows, 1).to(torch.int64) + 1  # keys per row
    positions = torch.arange(length, device=q.device)
    keep = (positions.view(1, 1, length) < valid.view(rows, 1, 1))  # [B, 1, L]
    if a.get("causal", 0):
        # query i of a row with n tokens sits at position n - S + i
        query_pos = valid.view(rows, 1, 1) - s + torch.arange(s, device=q.device).view(1, s, 1)
        keep = keep & (positions.view(1, 1, length) <= query_pos)
    out = _attend(q, k_all, v_all, scale, None, keep.unsqueeze(1))
    return [_merge_heads(out), k, v][:ctx.node_outputs]
