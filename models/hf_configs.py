"""Random-init ``transformers`` ResNet-50, BERT-base and DistilBERT-base (seed 0), exported with
``torch.onnx.export(dynamo=False, opset 17)``, and random inputs for them.

- ResNet-50: ``ResNetForImageClassification(ResNetConfig())``, input ``pixel_values``
  [batch, 3, 224, 224], output ``logits``;
- BERT-base: ``BertForSequenceClassification(BertConfig(attn_implementation="eager"))``,
  inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` [batch, sequence], output
  ``logits``;
- DistilBERT-base: ``DistilBertForSequenceClassification(DistilBertConfig(attn_implementation=
  "eager"))``, inputs ``input_ids``, ``attention_mask`` [batch, sequence], output ``logits``.

The anchors of ``benchmarks/prune.py`` and ``benchmarks/int8.py``; both build offline from
config classes (``benchmarks/transformer.py`` too). Usage:
``python -m graphc.models.hf_configs resnet50|bert|distilbert -o PATH``.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

SEQUENCE = 128
BERT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
DISTILBERT_INPUTS = ("input_ids", "attention_mask")


def bert_feeds(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, 30522, (rows, SEQUENCE), dtype=np.int64),
            "attention_mask": np.ones((rows, SEQUENCE), np.int64),
            "token_type_ids": np.zeros((rows, SEQUENCE), np.int64)}


def distilbert_feeds(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    return {k: v for k, v in bert_feeds(rows, seed).items() if k in DISTILBERT_INPUTS}


def image_feeds(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    return {"pixel_values": np.random.default_rng(seed).standard_normal((rows, 3, 224, 224), dtype=np.float32)}


def logits_module(model, names):
    """``model`` taking plain positional tensors and returning the logits only (for export)."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return self.model(**dict(zip(names, inputs))).logits

    return Logits().eval()


def export_onnx(model, example: dict, path: pathlib.Path, dynamic: dict[str, dict[int, str]]) -> pathlib.Path:
    import warnings

    import torch

    names = list(example)
    axes = {**dynamic, "logits": {0: "batch"}}
    tmp = path.with_name(path.name + ".tmp.onnx")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's tracer warnings
        torch.onnx.export(logits_module(model, names), tuple(torch.from_numpy(example[n]) for n in names), str(tmp),
                          dynamo=False, opset_version=17, input_names=names, output_names=["logits"],
                          dynamic_axes=axes)
    tmp.replace(path)
    return path


def hf_resnet50():
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    return ResNetForImageClassification(ResNetConfig()).eval()


def hf_bert():
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(attn_implementation="eager")).eval()


def hf_distilbert():
    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    return DistilBertForSequenceClassification(DistilBertConfig(attn_implementation="eager")).eval()


def export_distilbert(model, path: pathlib.Path) -> pathlib.Path:
    return export_onnx(model, distilbert_feeds(2), path, {n: {0: "batch", 1: "sequence"} for n in DISTILBERT_INPUTS})


def export_resnet(model, path: pathlib.Path) -> pathlib.Path:
    return export_onnx(model, image_feeds(1), path, {"pixel_values": {0: "batch"}})


def export_bert(model, path: pathlib.Path) -> pathlib.Path:
    return export_onnx(model, bert_feeds(2), path, {n: {0: "batch", 1: "sequence"} for n in BERT_INPUTS})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=["resnet50", "bert", "distilbert"])
    ap.add_argument("-o", "--output", type=pathlib.Path, required=True, help="ONNX file to write")
    args = ap.parse_args(argv)
    if args.model == "resnet50":
        export_resnet(hf_resnet50(), args.output)
    elif args.model == "distilbert":
        export_distilbert(hf_distilbert(), args.output)
    else:
        export_bert(hf_bert(), args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
