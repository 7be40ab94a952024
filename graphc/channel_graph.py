"""The channel dependency graph: which channels of which tensors must be removed together.

Hand-written because no library builds one on ONNX (Torch-Pruning's DepGraph needs the
PyTorch module). One forward sweep in topological order annotates every tensor axis that
carries prunable channels with ``(group, index)`` pairs; ``index[c]`` lists the positions
channel ``c`` of the group occupies on that axis (-1: absent). Channels are elementary
(one output column of the producing weight); a group's ``unit`` is how many consecutive
channels must go together (a whole attention head is ``head_dim`` channels).

Rules (``x`` is an annotated input, "block" makes the group unprunable with a reason):

- producers start a group: Conv / ConvTranspose (group 1) output channels, Gemm and
  MatMul with a constant 2-D weight (output columns), Gather from a constant table
  (embedding columns). Their weight (and bias) slices are ``producer`` members;
- consumers: the input-channel slices of Conv (group 1), ConvTranspose, Gemm and
  constant-weight MatMul weights are ``consumer`` members: cutting them cuts exactly the
  removed channels' contribution;
- depthwise Conv (group == in == out channels) passes channels through (weight axis 0);
  other grouped Convs block;
- pass-through with the same axes: activations, Cast, Identity, Dropout, Clip, pooling,
  BatchNormalization and InstanceNormalization (their per-channel parameters are sliced),
  Resize, Pad and Slice off the channel axis;
- element-wise Add/Sub/Mul/Div/Max/Min/Where/PRelu broadcast: two annotated inputs on one
  axis are coupled (residuals, squeeze-excitation scales); a per-channel constant is
  sliced; an unannotated variable of full size on that axis blocks;
- Concat along the channel axis offsets its inputs' channels; Split partitions them;
  Transpose permutes axes; Squeeze/Unsqueeze/Flatten/Reshape re-map them, expanding a
  channel to a block of positions (Flatten into Gemm) or coarsening the group's unit until
  every unit maps to whole indices of one output axis (hidden -> heads x head_dim); the
  Reshape's target-shape entry for that axis must be -1 or a constant, which is updated;
- MatMul of two activations (attention) couples batch axes like element-wise ops (Q, K and
  V heads); an annotated contraction axis blocks;
- LayerNormalization, Softmax and reductions over an annotated axis block (they mix
  channels), unless ``hidden=True`` allows LayerNormalization (its scale/bias are sliced;
  not exact);
- a channel that reaches a graph output, an unknown op, or a shape the sweep cannot resolve
  blocks its group; Shape reads sizes only and is safe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from graphc.graph import constant_values

UNARY = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Celu", "HardSigmoid", "HardSwish", "Softplus",
         "Softsign", "Gelu", "Erf", "Clip", "Identity", "Dropout", "Cast", "CastLike", "Neg", "Abs", "Sqrt", "Exp",
         "Log", "Reciprocal", "Mish", "ThresholdedRelu", "Round", "Floor", "Ceil", "Sign", "Not", "IsNaN", "Sin",
         "Cos", "QuickGelu", "FastGelu", "BiasGelu", "Swish"}
POOLING = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"}
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "Where", "PRelu", "Equal",
               "Greater", "Less", "And", "Or"}
REDUCTIONS = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceL1", "ReduceProd",
              "ReduceSumSquare", "ReduceLogSumExp", "ArgMax", "ArgMin"}
SIZE_ONLY = {"Shape", "Size"}

KIND_PRIORITY = ["channels", "neurons", "heads", "hidden"]  # a merged group takes the highest

Shape = tuple[int, ...]


@dataclass
class Member:
    """Where a group's channels sit: an activation, or a constant input of a node."""

    kind: str  # "activation" | "producer" | "consumer" | "parameter"
    tensor: str  # tensor name (activation) or the constant's name
    axis: int
    index: np.ndarray  # [channels, per], -1 = absent
    node: gs.Node | None = None  # for constants: the node that reads it, and which input
    input_index: int | None = None


@dataclass
class ChannelGroup:
    id: int
    size: int
    origin: str  # the node that produced the channels first
    kind: str = "channels"  # channels | heads | neurons | hidden
    unit_of: np.ndarray | None = None  # channel -> unit label (0..units-1), channels removed together
    members: list[Member] = field(default_factory=list)
    reshapes: list[tuple[gs.Node, int]] = field(default_factory=list)  # (Reshape node, output axis)
    splits: list[tuple[gs.Node, int]] = field(default_factory=list)  # (Split node, output index)
    blocked: str | None = None

    def __post_init__(self):
        if self.unit_of is None:
            self.unit_of = np.arange(self.size, dtype=np.int64)

    @property
    def units(self) -> int:
        return int(self.unit_of.max()) + 1 if self.size else 0

    @property
    def channels_per_unit(self) -> int:
        return self.size // self.units if self.units else 0

    def channels_of(self, units) -> np.ndarray:
        """The channels of the given unit labels."""
        return np.flatnonzero(np.isin(self.unit_of, np.asarray(list(units), dtype=np.int64)))

    def join(self, a: np.ndarray, b: np.ndarray) -> None:
        """Put channels ``a[i]`` and ``b[i]`` in the same unit (and their units with them)."""
        self.unit_of = _join_labels(self.unit_of, self.unit_of[a], self.unit_of[b])

    def params(self) -> list[Member]:
        return [m for m in self.members if m.kind != "activation"]

    def describe(self) -> str:
        state = f"blocked: {self.blocked}" if self.blocked else "prunable"
        unit = f" of {self.channels_per_unit}" if self.units < self.size else ""
        return f"group {self.id} ({self.kind}, {self.units} units{unit}, from {self.origin}): {state}"


class ChannelGraph:
    """Groups of coupled channels of a graph (see the module docstring for the rules)."""

    def __init__(self, graph: gs.Graph, shapes: dict[str, Shape], allow_hidden_norm: bool = False):
        self.graph = graph
        self.shapes = shapes
        self.allow_hidden_norm = allow_hidden_norm
        self.groups: dict[int, ChannelGroup] = {}
        self._parent: dict[int, tuple[int, np.ndarray]] = {}  # merged group -> (target, channel map)
        self._ann: dict[str, dict[int, list[tuple[int, np.ndarray]]]] = {}
        self._sweep()

    # -- group bookkeeping -------------------------------------------------------------------

    def _new_group(self, size: int, origin: str, kind: str = "channels") -> ChannelGroup:
        group = ChannelGroup(len(self.groups) + len(self._parent), size, origin, kind)
        self.groups[group.id] = group
        return group

    def _root(self, gid: int) -> int:
        while gid in self._parent:
            gid = self._parent[gid][0]
        return gid

    def _resolve(self, gid: int, index: np.ndarray) -> tuple[int, np.ndarray]:
        """Follow merges: the live group and ``index`` re-expressed in its channels."""
        while gid in self._parent:
            target, channel_map = self._parent[gid]
            moved = np.full((self.groups[self._root(target)].size, index.shape[1]), -1, dtype=np.int64)
            valid = channel_map >= 0
            moved[channel_map[valid]] = index[valid]
            gid, index = target, moved
        return gid, index

    def annotations(self, tensor: str) -> dict[int, list[tuple[int, np.ndarray]]]:
        """Live (group, index) pairs per axis of a tensor."""
        result: dict[int, list[tuple[int, np.ndarray]]] = {}
        for axis, pairs in self._ann.get(tensor, {}).items():
            merged: dict[int, np.ndarray] = {}
            for gid, index in pairs:
                root, moved = self._resolve(gid, index)
                merged[root] = _overlay(merged[root], moved) if root in merged else moved
            result[axis] = list(merged.items())
        return result

    def _annotate(self, tensor: str, axis: int, gid: int, index: np.ndarray) -> None:
        gid, index = self._resolve(gid, index)
        self._ann.setdefault(tensor, {}).setdefault(axis, []).append((gid, index))
        self.groups[gid].members.append(Member("activation", tensor, axis, index))

    def _param(self, kind: str, node: gs.Node, input_index: int, axis: int, gid: int, index: np.ndarray) -> None:
        gid, index = self._resolve(gid, index)
        tensor = node.inputs[input_index]
        self.groups[gid].members.append(Member(kind, tensor.name, axis, index, node, input_index))

    def block(self, gid: int, reason: str) -> None:
        gid = self._root(gid)
        if self.groups[gid].blocked is None:
            self.groups[gid].blocked = reason

    def _block_all(self, node: gs.Node, reason: str) -> None:
        for tensor in node.inputs:
            for pairs in self.annotations(tensor.name).values():
                for gid, _ in pairs:
                    self.block(gid, f"{reason} ({node.op} {node.name})")

    def _merge(self, a: int, ia: np.ndarray, b: int, ib: np.ndarray, where: str) -> None:
        """Couple group ``a`` with ``b``: channels at the same position of one axis are one."""
        a, ia = self._resolve(a, ia)
        b, ib = self._resolve(b, ib)
        if a == b and np.array_equal(ia, ib):
            return
        if ia.shape[1] != 1 or ib.shape[1] != 1:
            self.block(a, f"coupling of expanded channels at {where}")
            self.block(b, f"coupling of expanded channels at {where}")
            return
        occ_a, occ_b = _occurrences(ia[:, 0]), _occurrences(ib[:, 0])
        if a == b:  # one group meeting itself (fused Q/K/V split into parts): join their units
            if set(occ_a) != set(occ_b):
                return self.block(a, f"channels meet themselves unevenly at {where}")
            keys = sorted(occ_a)
            self.groups[a].join(np.array([occ_a[k] for k in keys]), np.array([occ_b[k] for k in keys]))
            if self.groups[a].units < 2:
                self.block(a, f"all channels coupled into one unit at {where}")
            return
        if not set(occ_a) <= set(occ_b):
            if set(occ_b) <= set(occ_a):
                return self._merge(b, ib, a, ia, where)
            self.block(a, f"partially overlapping channels at {where}")
            self.block(b, f"partially overlapping channels at {where}")
            return
        channel_map = np.full(self.groups[a].size, -1, dtype=np.int64)
        for key, c in occ_a.items():
            channel_map[c] = occ_b[key]
        ga, gb = self.groups[a], self.groups[b]
        for member in ga.members:
            moved = np.full((gb.size, member.index.shape[1]), -1, dtype=np.int64)
            valid = channel_map >= 0
            moved[channel_map[valid]] = member.index[valid]
            gb.members.append(Member(member.kind, member.tensor, member.axis, moved, member.node, member.input_index))
        mapped = np.flatnonzero(channel_map >= 0)  # a's units carry over: channels of one a-unit join
        for label in np.unique(ga.unit_of[mapped]):
            targets = channel_map[mapped[ga.unit_of[mapped] == label]]
            gb.join(targets[:1].repeat(len(targets)), targets)
        if ga.id < gb.id:
            gb.origin = ga.origin
        gb.reshapes += ga.reshapes
        gb.splits += ga.splits
        gb.blocked = gb.blocked or ga.blocked
        gb.kind = max(ga.kind, gb.kind, key=KIND_PRIORITY.index)
        del self.groups[a]
        self._parent[a] = (b, channel_map)

    # -- the sweep ----------------------------------------------------------------------------

    def _shape(self, tensor: gs.Tensor) -> Shape | None:
        if isinstance(tensor, gs.Constant):
            return tuple(tensor.values.shape)
        return self.shapes.get(tensor.name)

    def _sweep(self) -> None:
        handlers: dict[str, Callable[[gs.Node], None]] = {}
        for op in UNARY | POOLING:
            handlers[op] = self._passthrough
        for op in ELEMENTWISE:
            handlers[op] = self._elementwise
        for op in REDUCTIONS:
            handlers[op] = self._reduction
        handlers.update({
            "Conv": self._conv, "ConvTranspose": self._conv_transpose, "Gemm": self._gemm, "MatMul": self._matmul,
            "BatchNormalization": self._batchnorm, "InstanceNormalization": self._instancenorm,
            "LayerNormalization": self._layernorm, "Softmax": self._softmax, "LogSoftmax": self._softmax,
            "Concat": self._concat, "Split": self._split, "Transpose": self._transpose, "Flatten": self._reshape,
            "Reshape": self._reshape, "Squeeze": self._reshape, "Unsqueeze": self._reshape, "Gather": self._gather,
            "Pad": self._pad, "Slice": self._slice, "Resize": self._passthrough, "Upsample": self._passthrough,
            "Expand": self._elementwise,
        })
        for node in self.graph.nodes:
            annotated = any(self.annotations(t.name) for t in node.inputs)
            handler = handlers.get(node.op)
            if node.op in SIZE_ONLY:
                continue
            if handler is None:
                if annotated:
                    self._block_all(node, "unknown op")
                continue
            if annotated or node.op in ("Conv", "ConvTranspose", "Gemm", "MatMul", "Gather"):
                handler(node)
        for output in self.graph.outputs:
            for pairs in self.annotations(output.name).values():
                for gid, _ in pairs:
                    self.block(gid, f"reaches graph output {output.name!r}")

    # -- handlers -----------------------------------------------------------------------------

    def _copy(self, source: str, target: str, axis_map: Callable[[int], int | None] = lambda a: a,
              skip: tuple[int, ...] = ()) -> None:
        """Carry annotations to ``target``; an axis mapped to None blocks, one in ``skip`` ends."""
        for axis, pairs in self.annotations(source).items():
            if axis in skip:
                continue
            new_axis = axis_map(axis)
            for gid, index in pairs:
                if new_axis is None:
                    self.block(gid, f"axis dropped between {source!r} and {target!r}")
                else:
                    self._annotate(target, new_axis, gid, index)

    def _passthrough(self, node: gs.Node) -> None:
        for tensor in node.inputs[1:]:
            for pairs in self.annotations(tensor.name).values():
                for gid, _ in pairs:
                    self.block(gid, f"used as a parameter of {node.op} {node.name}")
        self._copy(node.inputs[0].name, node.outputs[0].name)
        if node.op in POOLING or node.op in ("Resize", "Upsample"):
            for axis, pairs in self.annotations(node.inputs[0].name).items():
                if axis >= 2 or axis == 0:
                    for gid, _ in pairs:
                        self.block(gid, f"{node.op} on an annotated spatial axis ({node.name})")

    def _start_group(self, node: gs.Node, weight_input: int, out_axis_in_weight: int, size: int,
                     out_tensor: gs.Tensor, out_axis: int, bias_input: int | None = None, kind: str = "channels"):
        group = self._new_group(size, f"{node.op} {node.name}", kind)
        identity = np.arange(size, dtype=np.int64)[:, None]
        self._param("producer", node, weight_input, out_axis_in_weight, group.id, identity)
        if bias_input is not None and len(node.inputs) > bias_input and node.inputs[bias_input].name:
            bias = constant_values(node.inputs[bias_input])
            if bias is None:
                self.block(group.id, f"non-constant bias of {node.name}")
            elif np.asarray(bias).size > 1:
                self._param("producer", node, bias_input, np.asarray(bias).ndim - 1, group.id, identity)
        self._annotate(out_tensor.name, out_axis, group.id, identity)
        return group

    def _consume(self, node: gs.Node, x: gs.Tensor, x_axis: int, weight_input: int, weight_axis: int,
                 other_axes_ok: bool = False) -> None:
        """The channels on ``x_axis`` are cut by the weight's ``weight_axis`` slices."""
        for axis, pairs in self.annotations(x.name).items():
            for gid, index in pairs:
                if axis == x_axis:
                    self._param("consumer", node, weight_input, weight_axis, gid, index)
                elif not other_axes_ok:
                    self.block(gid, f"annotated axis {axis} into {node.op} {node.name}")

    def _conv(self, node: gs.Node) -> None:
        weight = constant_values(node.inputs[1])
        if weight is None:
            return self._block_all(node, "non-constant weight")
        groups = int(node.attrs.get("group", 1))
        out_channels, per_group = weight.shape[0], weight.shape[1]
        x = node.inputs[0]
        if groups == 1:
            self._consume(node, x, 1, 1, 1)
            self._start_group(node, 1, 0, out_channels, node.outputs[0], 1, bias_input=2)
        elif per_group == 1 and groups == out_channels:  # depthwise: channel i -> channel i
            for axis, pairs in self.annotations(x.name).items():
                for gid, index in pairs:
                    if axis != 1:
                        self.block(gid, f"annotated axis {axis} into {node.name}")
                        continue
                    self._param("parameter", node, 1, 0, gid, index)
                    if len(node.inputs) > 2 and node.inputs[2].name:
                        self._param("parameter", node, 2, 0, gid, index)
                    self._annotate(node.outputs[0].name, 1, gid, index)
        else:
            self._block_all(node, "grouped convolution")

    def _conv_transpose(self, node: gs.Node) -> None:
        weight = constant_values(node.inputs[1])
        if weight is None or int(node.attrs.get("group", 1)) != 1:
            return self._block_all(node, "grouped or non-constant ConvTranspose")
        self._consume(node, node.inputs[0], 1, 1, 0)
        self._start_group(node, 1, 1, weight.shape[1], node.outputs[0], 1, bias_input=2)

    def _gemm(self, node: gs.Node) -> None:
        weight = constant_values(node.inputs[1])
        if weight is None or node.attrs.get("transA", 0):
            return self._block_all(node, "Gemm with non-constant weight or transA")
        trans_b = int(node.attrs.get("transB", 0))
        self._consume(node, node.inputs[0], 1, 1, 1 if trans_b else 0)
        features = weight.shape[0 if trans_b else 1]
        self._start_group(node, 1, 0 if trans_b else 1, features, node.outputs[0], 1, bias_input=2)

    def _matmul(self, node: gs.Node) -> None:
        a, b = node.inputs[0], node.inputs[1]
        weight = constant_values(b)
        a_shape = self._shape(a)
        if weight is not None and np.asarray(weight).ndim == 2:
            if a_shape is None:
                return self._block_all(node, "unknown input rank")
            rank = len(a_shape)
            self._consume(node, a, rank - 1, 1, 0, other_axes_ok=True)
            self._copy(a.name, node.outputs[0].name, skip=(rank - 1,))
            self._start_group(node, 1, 1, weight.shape[1], node.outputs[0], rank - 1, kind="neurons")
            return
        if constant_values(a) is not None:
            return self._block_all(node, "MatMul with a constant left operand")
        b_shape = self._shape(b)
        if a_shape is None or b_shape is None or len(a_shape) < 2 or len(b_shape) < 2:
            return self._block_all(node, "MatMul of unknown or 1-D shapes")
        out = node.outputs[0].name
        rank = max(len(a_shape), len(b_shape))
        ann_a, ann_b = self.annotations(a.name), self.annotations(b.name)
        for pairs in (ann_a.get(len(a_shape) - 1, []), ann_b.get(len(b_shape) - 2, [])):
            for gid, _ in pairs:
                self.block(gid, f"contracted by {node.name}")
        batch_a = {ax + rank - len(a_shape): v for ax, v in ann_a.items() if ax < len(a_shape) - 2}
        batch_b = {ax + rank - len(b_shape): v for ax, v in ann_b.items() if ax < len(b_shape) - 2}
        self._couple_axes([batch_a, batch_b], [a_shape, b_shape], rank, out, node, batch_only=rank - 2)
        for pairs in ann_a.get(len(a_shape) - 2, []):
            self._annotate(out, rank - 2, *pairs)
        for pairs in ann_b.get(len(b_shape) - 1, []):
            self._annotate(out, rank - 1, *pairs)

    def _gather(self, node: gs.Node) -> None:
        table = constant_values(node.inputs[0])
        axis = int(node.attrs.get("axis", 0))
        if table is not None and np.asarray(table).ndim == 2 and axis == 0:
            out_shape = self._shape(node.outputs[0])
            if out_shape is None:
                return
            self._start_group(node, 0, 1, table.shape[1], node.outputs[0], len(out_shape) - 1, kind="hidden")
            return
        data_shape = self._shape(node.inputs[0])
        idx_shape = self._shape(node.inputs[1])
        if data_shape is None or idx_shape is None:
            return self._block_all(node, "unknown shapes")
        axis %= len(data_shape)
        for ax, pairs in self.annotations(node.inputs[0].name).items():
            for gid, index in pairs:
                if ax == axis:
                    self.block(gid, f"gathered along its channel axis by {node.name}")
                else:
                    new = ax if ax < axis else ax - 1 + len(idx_shape)
                    self._annotate(node.outputs[0].name, new, gid, index)

    def _norm_params(self, node: gs.Node, inputs: Iterable[int]) -> None:
        for axis, pairs in self.annotations(node.inputs[0].name).items():
            for gid, index in pairs:
                if axis != 1:
                    self.block(gid, f"annotated axis {axis} into {node.op} {node.name}")
                    continue
                for i in inputs:
                    if i < len(node.inputs) and node.inputs[i].name:
                        self._param("parameter", node, i, 0, gid, index)
                self._annotate(node.outputs[0].name, 1, gid, index)

    def _batchnorm(self, node: gs.Node) -> None:
        if node.attrs.get("training_mode", 0) or any(t.outputs for t in node.outputs[1:]):
            return self._block_all(node, "BatchNormalization in training mode")
        if any(constant_values(t) is None for t in node.inputs[1:5]):
            return self._block_all(node, "non-constant BatchNormalization parameters")
        self._norm_params(node, (1, 2, 3, 4))

    def _instancenorm(self, node: gs.Node) -> None:
        self._norm_params(node, (1, 2))

    def _layernorm(self, node: gs.Node) -> None:
        shape = self._shape(node.inputs[0])
        if shape is None:
            return self._block_all(node, "unknown rank")
        first = int(node.attrs.get("axis", -1)) % len(shape)
        for axis, pairs in self.annotations(node.inputs[0].name).items():
            for gid, index in pairs:
                if axis >= first and not self.allow_hidden_norm:
                    self.block(gid, f"normalized together by LayerNormalization {node.name}")
                elif axis >= first:
                    for i in (1, 2):
                        if i < len(node.inputs) and node.inputs[i].name:
                            self._param("parameter", node, i, axis - first, gid, index)
                self._annotate(node.outputs[0].name, axis, gid, index)

    def _softmax(self, node: gs.Node) -> None:
        shape = self._shape(node.inputs[0])
        if shape is None:
            return self._block_all(node, "unknown rank")
        axis = int(node.attrs.get("axis", -1)) % len(shape)
        self._copy(node.inputs[0].name, node.outputs[0].name, lambda a: None if a == axis else a)

    def _reduction(self, node: gs.Node) -> None:
        shape = self._shape(node.inputs[0])
        if shape is None:
            return self._block_all(node, "unknown rank")
        axes = node.attrs.get("axes")
        if axes is None and len(node.inputs) > 1 and node.inputs[1].name:
            axes = constant_values(node.inputs[1])
            if axes is None:
                return self._block_all(node, "non-constant reduction axes")
        if node.op in ("ArgMax", "ArgMin"):
            axes = [node.attrs.get("axis", 0)]
        rank = len(shape)
        axes = sorted(int(a) % rank for a in (range(rank) if axes is None or len(axes) == 0 else np.ravel(axes)))
        keep = int(node.attrs.get("keepdims", 1))

        def new_axis(a: int) -> int | None:
            if a in axes:
                return None
            return a if keep else a - sum(1 for r in axes if r < a)

        self._copy(node.inputs[0].name, node.outputs[0].name, new_axis)

    def _couple_axes(self, per_input: list[dict], shapes: list[Shape], rank: int, out: str, node: gs.Node,
                     batch_only: int | None = None) -> None:
        """Broadcast rule: couple annotated inputs per output axis; block on untracked ones."""
        for out_axis in range(rank if batch_only is None else batch_only):
            pairs = [(i, p) for i, ann in enumerate(per_input) for p in ann.get(out_axis, [])]
            if not pairs:
                continue
            annotated_inputs = {i for i, _ in pairs}
            for i, shape in enumerate(shapes):
                if i in annotated_inputs or shape is None:
                    continue
                k = out_axis - (rank - len(shape))
                if k >= 0 and shape[k] != 1:
                    for _, (gid, _) in pairs:
                        self.block(gid, f"meets an untracked tensor on axis {out_axis} at {node.op} {node.name}")
            first_gid, first_index = pairs[0][1]
            for _, (gid, index) in pairs[1:]:
                self._merge(gid, index, first_gid, first_index, f"{node.op} {node.name}")
            self._annotate(out, out_axis, first_gid, first_index)

    def _elementwise(self, node: gs.Node) -> None:
        shapes = [self._shape(t) if t.name else None for t in node.inputs]
        out_shape = self._shape(node.outputs[0])
        if out_shape is None or any(s is None for s, t in zip(shapes, node.inputs) if t.name):
            return self._block_all(node, "unknown shapes")
        rank = len(out_shape)
        per_input = []
        for i, tensor in enumerate(node.inputs):
            ann = self.annotations(tensor.name) if tensor.name else {}
            per_input.append({ax + rank - len(shapes[i]): v for ax, v in ann.items()})
        if node.op == "Expand":
            per_input, shapes = per_input[:1], shapes[:1]
        for i, tensor in enumerate(node.inputs[: len(per_input)]):  # per-channel constants are sliced
            values = constant_values(tensor)
            if values is None:
                continue
            for out_axis in {ax for ann in per_input for ax in ann}:
                k = out_axis - (rank - len(shapes[i]))
                if k >= 0 and shapes[i][k] != 1:
                    for ann in per_input:
                        for gid, index in ann.get(out_axis, []):
                            self._param("parameter", node, i, k, gid, index)
                    shapes[i] = tuple(1 if j == k else d for j, d in enumerate(shapes[i]))  # handled
        self._couple_axes(per_input, shapes, rank, node.outputs[0].name, node)

    def _concat(self, node: gs.Node) -> None:
        out_shape = self._shape(node.outputs[0])
        if out_shape is None:
            return self._block_all(node, "unknown shapes")
        rank = len(out_shape)
        axis = int(node.attrs["axis"]) % rank
        offset = 0
        per_input, shapes = [], []
        for tensor in node.inputs:
            shape = self._shape(tensor)
            if shape is None:
                return self._block_all(node, "unknown input shape")
            shapes.append(shape)
            for ax, pairs in self.annotations(tensor.name).items():
                if ax == axis:
                    for gid, index in pairs:
                        self._annotate(node.outputs[0].name, axis, gid, np.where(index >= 0, index + offset, -1))
            per_input.append({ax: v for ax, v in self.annotations(tensor.name).items() if ax != axis})
            offset += shape[axis]
        self._couple_axes(per_input, [tuple(1 if j == axis else d for j, d in enumerate(s)) for s in shapes],
                          rank, node.outputs[0].name, node)

    def _split(self, node: gs.Node) -> None:
        shape = self._shape(node.inputs[0])
        if shape is None:
            return self._block_all(node, "unknown shape")
        if len(node.inputs) > 1 and node.inputs[1].name and constant_values(node.inputs[1]) is None:
            return self._block_all(node, "non-constant split sizes")
        axis = int(node.attrs.get("axis", 0)) % len(shape)
        sizes = [self._shape(t) for t in node.outputs]
        if any(s is None for s in sizes):
            return self._block_all(node, "unknown output shapes")
        start = 0
        for out, out_shape in zip(node.outputs, sizes):
            stop = start + out_shape[axis]
            for ax, pairs in self.annotations(node.inputs[0].name).items():
                for gid, index in pairs:
                    if ax != axis:
                        self._annotate(out.name, ax, gid, index)
                        continue
                    inside = (index >= start) & (index < stop)
                    if inside.any():
                        self._annotate(out.name, ax, gid, np.where(inside, index - start, -1))
                        self.groups[self._root(gid)].splits.append((node, node.outputs.index(out)))
            start = stop

    def _transpose(self, node: gs.Node) -> None:
        shape = self._shape(node.inputs[0])
        if shape is None:
            return self._block_all(node, "unknown rank")
        perm = node.attrs.get("perm") or list(reversed(range(len(shape))))
        inverse = {p: i for i, p in enumerate(perm)}
        self._copy(node.inputs[0].name, node.outputs[0].name, lambda a: inverse[a])

    def _pad(self, node: gs.Node) -> None:
        pads = node.attrs.get("pads")
        if pads is None and len(node.inputs) > 1:
            pads = constant_values(node.inputs[1])
        shape = self._shape(node.inputs[0])
        if pads is None or shape is None or (len(node.inputs) > 3 and node.inputs[3].name):
            return self._block_all(node, "non-constant pads or axes")
        pads = np.ravel(pads)
        rank = len(shape)
        for axis, pairs in self.annotations(node.inputs[0].name).items():
            if pads[axis] or pads[axis + rank]:
                for gid, _ in pairs:
                    self.block(gid, f"padded along its channel axis by {node.name}")
        self._copy(node.inputs[0].name, node.outputs[0].name)

    def _slice(self, node: gs.Node) -> None:
        shape = self._shape(node.inputs[0])
        if shape is None or len(node.inputs) < 3:
            return self._block_all(node, "unknown slice")
        starts = constant_values(node.inputs[1])
        axes = constant_values(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name else None
        if axes is None:
            if starts is None:
                return self._block_all(node, "non-constant slice")
            axes = range(len(np.ravel(starts)))
        sliced = {int(a) % len(shape) for a in np.ravel(axes)}
        out_shape = self._shape(node.outputs[0])
        for axis, pairs in self.annotations(node.inputs[0].name).items():
            if axis in sliced and (out_shape is None or out_shape[axis] != shape[axis]):
                for gid, _ in pairs:
                    self.block(gid, f"sliced along its channel axis by {node.name}")
        self._copy(node.inputs[0].name, node.outputs[0].name)

    def _reshape(self, node: gs.Node) -> None:
        """Flatten / Reshape / Squeeze / Unsqueeze: re-map by matching flat positions."""
        in_shape, out_shape = self._shape(node.inputs[0]), self._shape(node.outputs[0])
        if in_shape is None or out_shape is None or 0 in in_shape:
            return self._block_all(node, "unknown shapes")
        for axis, pairs in self.annotations(node.inputs[0].name).items():
            for gid, index in pairs:
                self._remap_axis(node, in_shape, out_shape, axis, gid, index)

    def _remap_axis(self, node, in_shape: Shape, out_shape: Shape, axis: int, gid: int, index: np.ndarray) -> None:
        gid, index = self._resolve(gid, index)
        group = self.groups[gid]
        segment = _segment(in_shape, out_shape, axis)
        if segment is None:
            return self.block(gid, f"{node.op} {node.name} mixes the channel axis with others")
        (i0, i1), (o0, o1) = segment
        in_dims, out_dims = in_shape[i0:i1], out_shape[o0:o1]
        flat = np.arange(int(np.prod(in_dims))).reshape(in_dims)
        positions = [np.sort(np.take(flat, index[c][index[c] >= 0], axis=axis - i0).ravel())
                     for c in range(group.size)]
        for labels in _coarsenings(group):
            for j in range(len(out_dims)):
                mapped = _clean_map(positions, labels, out_dims, j)
                if mapped is None:
                    continue
                if not np.array_equal(labels, group.unit_of):
                    group.unit_of = labels
                    if len(out_dims) > 1:
                        group.kind = max(group.kind, "heads", key=KIND_PRIORITY.index)
                if node.op == "Reshape":
                    entry = _shape_entry(node, o0 + j)
                    if entry == "dynamic":
                        return self.block(gid, f"target shape of {node.name} is computed at run time")
                    if entry == "constant":
                        group.reshapes.append((node, o0 + j))
                return self._annotate(node.outputs[0].name, o0 + j, gid, mapped)
        self.block(gid, f"{node.op} {node.name} splits channels across axes")


def _occurrences(positions: np.ndarray) -> dict[tuple[int, int], int]:
    """(position, k) -> the channel that is the k-th to sit at that position. Channels of one
    head share a position; pairing them by rank couples head with head."""
    seen: dict[int, int] = {}
    result = {}
    for c, p in enumerate(positions.tolist()):
        if p >= 0:
            result[(p, seen.get(p, 0))] = c
            seen[p] = seen.get(p, 0) + 1
    return result


def _overlay(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.shape != b.shape:
        return np.concatenate([a, b], axis=1)
    return np.where(a >= 0, a, b)


def _segment(in_shape: Shape, out_shape: Shape, axis: int):
    """The smallest aligned input/output axis ranges with equal products containing ``axis``."""
    i = o = 0
    while i < len(in_shape) or o < len(out_shape):
        start_i, start_o = i, o
        pi = po = 1
        if i < len(in_shape):
            pi, i = pi * in_shape[i], i + 1
        if o < len(out_shape):
            po, o = po * out_shape[o], o + 1
        while pi != po:
            if pi < po and i < len(in_shape):
                pi, i = pi * in_shape[i], i + 1
            elif po < pi and o < len(out_shape):
                po, o = po * out_shape[o], o + 1
            else:
                return None
        if start_i <= axis < i:
            return (start_i, i), (start_o, o)
    return None


def _canonical(labels: np.ndarray) -> np.ndarray:
    """Relabel 0..k-1 in order of first appearance."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))
    return rank[inverse].astype(np.int64)


def _join_labels(labels: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Union of the labels ``a[i]`` and ``b[i]`` (union-find over labels)."""
    parent = np.arange(int(labels.max()) + 1)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for u, v in zip(a.tolist(), b.tolist()):
        ru, rv = find(u), find(v)
        if ru != rv:
            parent[max(ru, rv)] = min(ru, rv)
    return _canonical(np.array([find(x) for x in labels.tolist()]))


def _coarsenings(group: ChannelGroup):
    """The group's partition, then joined with ever larger contiguous blocks (finest first)."""
    yield group.unit_of
    channels = np.arange(group.size)
    for block in range(2, group.size):
        if group.size % block == 0:
            labels = _join_labels(group.unit_of, channels, channels - channels % block)
            if int(labels.max()) >= 1:
                yield labels


def _clean_map(positions: list[np.ndarray], labels: np.ndarray, out_dims: Shape, j: int) -> np.ndarray | None:
    """Per-channel indices on output axis ``j`` if every unit owns whole slices of it."""
    stride = int(np.prod(out_dims[j + 1:]))
    other = int(np.prod(out_dims)) // out_dims[j]
    rows: list[np.ndarray] = [np.array([-1])] * len(positions)
    for label in range(int(labels.max()) + 1):
        members = np.flatnonzero(labels == label)
        block = np.unique(np.concatenate([positions[c] for c in members]))
        if block.size == 0:
            continue
        coords = np.unique((block // stride) % out_dims[j])
        if block.size != coords.size * other:
            return None
        for c in members:
            own = np.unique((positions[c] // stride) % out_dims[j]) if members.size == 1 else coords
            rows[c] = own if positions[c].size else np.array([-1])
    width = max(len(r) for r in rows)
    return np.array([np.pad(r, (0, width - len(r)), constant_values=-1) for r in rows], dtype=np.int64)


def _shape_entry(node: gs.Node, position: int) -> str:
    """How a Reshape's target shape sets ``position``: 'minus_one', 'constant', 'follows'
    (read at run time from the Reshape's own input, so it tracks pruning) or 'dynamic'."""
    shape_input = node.inputs[1]
    values = constant_values(shape_input)
    if values is not None:
        return "minus_one" if int(np.ravel(values)[position]) == -1 else "constant"
    producer = shape_input.inputs[0] if len(shape_input.inputs) == 1 else None
    if producer is None or producer.op != "Concat":
        return "dynamic"
    offset = 0
    for piece in producer.inputs:
        piece_values = constant_values(piece)
        length = np.asarray(piece_values).size if piece_values is not None else 1
        if offset <= position < offset + length:
            if piece_values is None:
                return "follows" if _reads_shape_of(piece, node.inputs[0]) else "dynamic"
            return "minus_one" if int(np.ravel(piece_values)[position - offset]) == -1 else "constant"
        offset += length
    return "dynamic"


def _reads_shape_of(tensor: gs.Tensor, source: gs.Tensor, depth: int = 4) -> bool:
    """Whether ``tensor`` is a dim of ``Shape(source)`` (through Gather/Unsqueeze/Cast/Slice)."""
    node = tensor.inputs[0] if len(tensor.inputs) == 1 else None
    if node is None or depth == 0:
        return False
    if node.op == "Shape":
        return node.inputs[0] is source
    if node.op in ("Gather", "Unsqueeze", "Cast", "Slice", "Squeeze"):
        return _reads_shape_of(node.inputs[0], source, depth - 1)
    return False
