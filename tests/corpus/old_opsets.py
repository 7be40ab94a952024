"""Corpus models at opsets below 13, as older exporters write them: a small CNN exported with
``torch.onnx.export(opset_version=11 / 12, dynamo=False)``. Its Split, Squeeze and Unsqueeze
take their sizes/axes as attributes (inputs from opset 13), so int8 (opset 13+) needs a
conversion."""

from __future__ import annotations

import pathlib

from tests.corpus import corpus_model

SHAPE = (1, 3, 16, 16)


def _export(path: pathlib.Path, opset: int) -> pathlib.Path:
    import torch
    from torch import nn

    class SmallCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
            self.left = nn.Conv2d(8, 8, 3, padding=1)
            self.right = nn.Conv2d(8, 8, 1)
            self.head = nn.Linear(16, 5)

        def forward(self, x):
            h = self.stem(x)
            a, b = torch.split(h, 8, dim=1)  # Split with a 'split' attribute below opset 13
            h = torch.cat([torch.relu(self.left(a)), torch.sigmoid(self.right(b))], dim=1)
            pooled = h.mean(dim=(2, 3), keepdim=True).squeeze(3).squeeze(2)  # Squeeze with 'axes'
            return self.head(pooled).unsqueeze(1)  # Unsqueeze with 'axes'

    torch.manual_seed(opset)
    model = SmallCNN().eval()
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):  # non-trivial statistics, so BN folding shows
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
        torch.onnx.export(model, torch.randn(*SHAPE), str(path), opset_version=opset, dynamo=False,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    return path


@corpus_model("cnn-opset11", origin="written in tests/corpus/old_opsets.py (torch.onnx.export, opset 11)",
              tags=("opset<13", "cnn"))
def build_opset11(directory: pathlib.Path) -> pathlib.Path:
    return _export(directory / "cnn_opset11.onnx", 11)


@corpus_model("cnn-opset12", origin="written in tests/corpus/old_opsets.py (torch.onnx.export, opset 12)",
              tags=("opset<13", "cnn"))
def build_opset12(directory: pathlib.Path) -> pathlib.Path:
    return _export(directory / "cnn_opset12.onnx", 12)
