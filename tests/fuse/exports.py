"""Exports for the fuse tests beside ``tests/topologies.py``'s: the 2-layer BERT fixture with
Hugging Face's SDPA attention (what ``from_pretrained`` gives by default: the exporters
write the decomposed SDPA, with ``Where(IsNaN(p), 0, p)`` after each Softmax), both torch
exporters, and inputs whose rows are padded differently (right, left, holes, full)."""

from __future__ import annotations

import pathlib

import numpy as np

from tests import topologies


def export_bert_sdpa(path: pathlib.Path, dynamo: bool) -> pathlib.Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=topologies.VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=topologies.MAX_POSITIONS, num_labels=4,
                        attn_implementation="sdpa")
    torch.manual_seed(topologies.SEED)
    model = topologies.BertClassifier(topologies.randomize_norms(BertForSequenceClassification(config))).eval()
    example = tuple(torch.from_numpy(v) for v in topologies.sample_inputs("bert").values())
    names = list(topologies.INPUT_NAMES["bert"])
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    with torch.no_grad(), topologies._quiet_export():
        if not dynamo:
            torch.onnx.export(model, example, str(path), dynamo=False, opset_version=17, input_names=names,
                              output_names=["logits"], dynamic_axes={**axes, "logits": {0: "batch"}})
            return path
        batch, sequence = torch.export.Dim("batch", min=1), torch.export.Dim("sequence", min=1, max=512)
        program = torch.onnx.export(model, example, dynamo=True, input_names=names, output_names=["logits"],
                                    dynamic_shapes={n: {0: batch, 1: sequence} for n in ("input_ids", "attention_mask",
                                                                                         "token_type_ids")})
    program.save(str(path), external_data=True)
    return path


def padded_rows(feeds: dict[str, np.ndarray], mask: str = "attention_mask") -> dict[str, np.ndarray]:
    """``feeds`` with the mask rows full, right-padded, left-padded and holed, cycled."""
    feeds = dict(feeds)
    rows, length = feeds[mask].shape
    patterns = np.ones((rows, length), feeds[mask].dtype)
    for r in range(rows):
        if r % 4 == 1:
            patterns[r, length - 1 - r % (length - 1):] = 0
        elif r % 4 == 2:
            patterns[r, : 1 + r % (length // 2)] = 0
        elif r % 4 == 3:
            patterns[r, 2::3] = 0
    feeds[mask] = patterns
    return feeds


def export_tiny_embedder(path: pathlib.Path, dynamo: bool, hidden_states: bool = False) -> pathlib.Path:
    """A 2-layer random-init BERT with MiniLM's sentence-embedding head (mask-weighted mean,
    L2-normalised; ``models/minilm.py``), eager attention; with ``hidden_states`` its output
    is every position's hidden state instead."""
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=topologies.VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=topologies.MAX_POSITIONS,
                        attn_implementation="eager")
    torch.manual_seed(topologies.SEED)
    bert = topologies.randomize_norms(BertModel(config, add_pooling_layer=False)).eval()

    class Embedder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
            if hidden_states:
                return h
            mask = attention_mask.unsqueeze(-1).to(h.dtype)
            emb = (h * mask).sum(dim=1) / torch.clamp(mask.sum(dim=1), min=1e-9)
            return torch.nn.functional.normalize(emb, p=2, dim=1)

    model = Embedder().eval()
    example = tuple(torch.from_numpy(v) for v in topologies.sample_inputs("bert").values())
    names = list(topologies.INPUT_NAMES["bert"])
    with torch.no_grad(), topologies._quiet_export():
        if not dynamo:
            torch.onnx.export(model, example, str(path), dynamo=False, opset_version=17, input_names=names,
                              output_names=["embedding"],
                              dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names},
                                            "embedding": {0: "batch"}})
            return path
        batch, sequence = torch.export.Dim("batch", min=1), torch.export.Dim("sequence", min=1, max=512)
        program = torch.onnx.export(model, example, dynamo=True, input_names=names,
                                    dynamic_shapes={n: {0: batch, 1: sequence} for n in ("input_ids", "attention_mask",
                                                                                         "token_type_ids")})
    from graphc.models.minilm import tidy_dynamo_graph

    tidy_dynamo_graph(program.model)  # names the output "embedding" (as the MiniLM recipe's)
    program.save(str(path), external_data=True)
    return path
