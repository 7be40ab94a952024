"""Rule 2 of ``graphc.passes.distill``, the loss, as graph nodes on top of the student
(``loss_block``, the block onnxruntime-training builds the training graph from).

The loss is chosen by ``loss``, explicitly, never guessed: a [batch, 384] embedding and
384-class logits look the same in a graph. Unlabelled data is fine with ``alpha=1`` (the
default); ``alpha < 1`` adds cross-entropy on integer ``labels`` and needs ``loss=kl`` and a
[batch, classes] first output (the pass checks both before training).

Loss on the first graph output ``s`` and the teacher's ``t``, by ``loss``:

- ``kl`` (class logits on the last axis): ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T))
  + (1 - alpha) * CE(s, labels) + beta * MSE(s, t)``; KL is summed over the last axis and
  averaged over all other axes, CE (rank-2 outputs only) and MSE are means;
- ``cosine`` (embeddings, features): ``alpha * mean_i(1 - cos(s_i, t_i)) + beta * MSE(s, t)``,
  where ``s_i``/``t_i`` are sample ``i`` flattened (as ``--metric cosine``) and
  ``cos(a, b) = <a, b> / sqrt(|a|^2 |b|^2 + COSINE_EPS)``;
- ``mse``: ``alpha * MSE(s, t) + beta * MSE(s, t)``.

``T`` is read by ``kl`` only, labels (``alpha < 1``) by ``kl`` only. A term with weight 0
is not built.

Intermediate features (``layers``: tensor names present with the same shape in student
and teacher): ``+ gamma * mean_i(MSE(s_i, t_i) / ms_i)`` where ``s_i`` is the student's
tensor ``layers[i]``, ``t_i`` the teacher's (stored as float16: half the memory, targets
to ~1e-3 relative) and ``ms_i`` the mean of ``t_i^2`` over the whole training data, so
each layer weighs the same whatever its scale (a normalised MSE, TinyBERT-style hidden-
state distillation; TinyBERT, Jiao et al. 2020, matches hidden states with plain MSE).
"""

from __future__ import annotations

from .protocol import LABELS_INPUT, LAYER_INPUT, TEACHER_INPUT, UserError

LOSSES = ("kl", "cosine", "mse")
COSINE_EPS = 1e-12


def loss_block(config: dict, output_name: str, last_dim: int, with_labels: bool,
               layer_scales: list[float] | None = None, layer_ranks: list[int] | None = None):
    import copy

    import onnx
    from onnx import helper
    from onnxruntime.training import onnxblock

    T, alpha, beta = float(config["T"]), float(config["alpha"]), float(config["beta"])
    kind = config["loss"]
    if kind not in LOSSES:
        raise UserError(f"loss={kind!r} is not one of {', '.join(LOSSES)}")
    if kind != "kl" and alpha < 1:
        raise UserError(f"loss={kind} has no cross-entropy term: alpha < 1 (labels) needs loss=kl")

    class KDLoss(onnxblock.Block):
        """Rule 2 as graph nodes on top of the student (built by onnxruntime-training)."""

        def build(self, student):
            graph = self.base.graph
            out = next(o for o in graph.output if o.name == student)
            teacher = copy.deepcopy(out)
            teacher.name = TEACHER_INPUT
            graph.input.append(teacher)
            nodes, terms = [], []

            def const(name, value):
                graph.initializer.append(helper.make_tensor(f"distill_{name}", onnx.TensorProto.FLOAT, [], [value]))
                return f"distill_{name}"

            def add(op, inputs, name, **attrs):
                nodes.append(helper.make_node(op, inputs, [f"distill_{name}"], name=f"distill_{name}_node", **attrs))
                return f"distill_{name}"

            if alpha > 0 and kind == "kl":
                t = const("T", T)
                log_ps = add("LogSoftmax", [add("Div", [student, t], "s_T")], "log_ps", axis=-1)
                log_pt = add("LogSoftmax", [add("Div", [TEACHER_INPUT, t], "t_T")], "log_pt", axis=-1)
                kl = add("Mul", [add("Exp", [log_pt], "pt"), add("Sub", [log_pt, log_ps], "log_ratio")], "kl_el")
                terms.append(add("Mul", [add("ReduceMean", [kl], "kl_mean", keepdims=0),
                                         const("kl_weight", alpha * T * T * last_dim)], "kl_term"))
            elif alpha > 0 and kind == "cosine":
                graph.initializer.append(helper.make_tensor("distill_flat_shape", onnx.TensorProto.INT64, [2],
                                                            [0, -1]))
                graph.initializer.append(helper.make_tensor("distill_axis1", onnx.TensorProto.INT64, [1], [1]))
                s_flat = add("Reshape", [student, "distill_flat_shape"], "s_flat")
                t_flat = add("Reshape", [TEACHER_INPUT, "distill_flat_shape"], "t_flat")

                def row_sum(a, b, name):
                    return add("ReduceSum", [add("Mul", [a, b], f"{name}_el"), "distill_axis1"], name, keepdims=0)

                norms = add("Mul", [row_sum(s_flat, s_flat, "ss"), row_sum(t_flat, t_flat, "tt")], "sstt")
                denominator = add("Sqrt", [add("Add", [norms, const("cos_eps", COSINE_EPS)], "sstt_eps")], "norm")
                cos = add("Div", [row_sum(s_flat, t_flat, "st"), denominator], "cos")
                distance = add("Sub", [const("one", 1.0), add("ReduceMean", [cos], "cos_mean", keepdims=0)],
                               "cos_distance")
                terms.append(add("Mul", [distance, const("cos_weight", alpha)], "cos_term"))
            elif alpha > 0 and kind == "mse":
                diff = add("Sub", [student, TEACHER_INPUT], "main_diff")
                terms.append(add("Mul", [add("ReduceMean", [add("Mul", [diff, diff], "main_sq")], "main_mse",
                                             keepdims=0), const("main_mse_weight", alpha)], "main_mse_term"))
            if alpha < 1 and with_labels:
                labels = copy.deepcopy(out)
                labels.name = LABELS_INPUT
                labels.type.tensor_type.elem_type = onnx.TensorProto.INT64
                del labels.type.tensor_type.shape.dim[-1]
                graph.input.append(labels)
                nodes.append(helper.make_node("SoftmaxCrossEntropyLoss", [student, LABELS_INPUT],
                                              ["distill_ce", "distill_ce_logp"], name="distill_ce_node",
                                              reduction="mean"))
                terms.append(add("Mul", ["distill_ce", const("ce_weight", 1.0 - alpha)], "ce_term"))
            if beta > 0:
                diff = add("Sub", [student, TEACHER_INPUT], "diff")
                terms.append(add("Mul", [add("ReduceMean", [add("Mul", [diff, diff], "sq")], "mse", keepdims=0),
                                         const("mse_weight", beta)], "mse_term"))
            layers, gamma = list(config["layers"]), float(config["gamma"])
            if layers and gamma > 0:
                layer_terms = []
                for i, name in enumerate(layers):
                    target = LAYER_INPUT.format(i)
                    graph.input.append(helper.make_tensor_value_info(
                        target, onnx.TensorProto.FLOAT, [f"distill_l{i}_d{k}" for k in range(layer_ranks[i])]))
                    diff = add("Sub", [name, target], f"l{i}_diff")
                    mse = add("ReduceMean", [add("Mul", [diff, diff], f"l{i}_sq")], f"l{i}_mse", keepdims=0)
                    layer_terms.append(add("Mul", [mse, const(f"l{i}_weight", gamma / len(layers) / layer_scales[i])],
                                           f"l{i}_term"))
                total = layer_terms[0]
                for k, term in enumerate(layer_terms[1:]):
                    total = add("Add", [total, term], f"layer_sum{k}")
                terms.append(total)
            if not terms:
                raise UserError("the loss has no term: alpha=0 needs labels, or give beta > 0")
            loss = terms[0]
            for k, term in enumerate(terms[1:]):
                loss = add("Add", [loss, term], f"loss_sum{k}")
            graph.node.extend(nodes)
            return loss

    return KDLoss()
