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
