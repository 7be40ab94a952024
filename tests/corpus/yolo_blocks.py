"""A small YOLOv8-style detector backbone written here (torch, TorchScript exporter, opset 17),
for the patterns a YOLOv8 export has and prune must survive (issue 13):

- Conv-BN-SiLU blocks (SiLU exported as ``x * Sigmoid(x)``);
- two C2f blocks of equal width: ``cv1(x).split((c, c), 1)``, a residual bottleneck on the
  second half, ``cv2(cat(...))``. The exporter writes one split-sizes initializer that both
  Splits read (the builder asserts it);
- an SPPF block: ``cv1``, three chained 5x5 stride-1 MaxPools, and a Concat of the four
  (one channel group in four copies: every removed channel goes from every copy);
- a Concat of one tensor with itself before the head (the same tensor twice).

Weights are seeded, BatchNorm statistics randomised (not identity), and the second C2f's
``cv1`` and the first bottleneck's ``cv2`` scaled down so the two C2f blocks lose different
channel counts (the shared split sizes must then differ per Split). 64x64 input, ~80 K
parameters, exports in about a second.
"""

from __future__ import annotations

import pathlib
import warnings

import onnx

from tests.corpus import corpus_model


def _network():
    import torch
    from torch import nn

    class Conv(nn.Module):
        def __init__(self, c1, c2, k=1, s=1):
            super().__init__()
            self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
            self.bn = nn.BatchNorm2d(c2)
            self.act = nn.SiLU()

        def forward(self, x):
            return self.act(self.bn(self.conv(x)))

    class Bottleneck(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.cv1, self.cv2 = Conv(c, c, 3), Conv(c, c, 3)

        def forward(self, x):
            return x + self.cv2(self.cv1(x))

    class C2f(nn.Module):
        def __init__(self, c1, c2, n=1):
            super().__init__()
            self.c = c2 // 2
            self.cv1 = Conv(c1, 2 * self.c)
            self.cv2 = Conv((2 + n) * self.c, c2)
            self.m = nn.ModuleList(Bottleneck(self.c) for _ in range(n))

        def forward(self, x):
            y = list(self.cv1(x).split((self.c, self.c), 1))
            y.extend(m(y[-1]) for m in self.m)
            return self.cv2(torch.cat(y, 1))

    class SPPF(nn.Module):
        def __init__(self, c1, c2):
            super().__init__()
            c = c1 // 2
            self.cv1, self.cv2 = Conv(c1, c), Conv(4 * c, c2)
            self.m = nn.MaxPool2d(5, 1, 2)

        def forward(self, x):
            y = [self.cv1(x)]
            y.extend(self.m(y[-1]) for _ in range(3))
            return self.cv2(torch.cat(y, 1))

    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(Conv(3, 16, 3, 2), Conv(16, 32, 3, 2), C2f(32, 32), C2f(32, 32),
                                          Conv(32, 64, 3, 2), SPPF(64, 64))
            self.neck = Conv(64, 32)
            self.head = nn.Conv2d(64, 8, 1)

        def forward(self, x):
            y = self.neck(self.backbone(x))
            return self.head(torch.cat([y, y], 1))

    torch.manual_seed(0)
    net = Detector().eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
        net.backbone[3].cv1.conv.weight.mul_(0.2)
        net.backbone[2].m[0].cv2.conv.weight.mul_(0.2)
    return net


@corpus_model("yolo-c2f-sppf", origin="written in tests/corpus/yolo_blocks.py (torch, TorchScript exporter)",
              tags=("cnn", "yolo", "shared-initializer", "repeated-concat"))
def build(directory: pathlib.Path) -> pathlib.Path:
    import torch

    path = pathlib.Path(directory) / "yolo_c2f_sppf.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_network(), torch.randn(1, 3, 64, 64), str(path), opset_version=17, dynamo=False,
                          input_names=["images"], output_names=["out"])
    splits = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Split"]
    assert len(splits) == 2 and splits[0].input[1] == splits[1].input[1], "the two Splits must share their sizes"
    return path
