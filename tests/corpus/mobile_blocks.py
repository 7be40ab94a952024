"""Small random-init CNNs with the activation blocks of mobile and detector backbones
(issue 13, item 5: SiLU / HardSwish / sigmoid-gated blocks and depthwise convolutions),
written with torch and exported with ``torch.onnx.export`` (TorchScript exporter, opset 17:
HardSwish and HardSigmoid stay single ops, SiLU becomes ``x * Sigmoid(x)``).

- ``silu-detector``: a YOLOv8-style backbone at 1x3x160x160: Conv-BN-SiLU, C2f blocks
  (Split, bottlenecks with residual Adds, Concat), an SPPF (MaxPools, Concat);
- ``hardswish-mobilenet``: a MobileNetV3-style network at 1x3x160x160: HardSwish stem,
  inverted residuals with depthwise 3x3 and 5x5 convolutions, squeeze-excite gates
  (GlobalAveragePool -> Conv -> ReLU -> Conv -> HardSigmoid -> Mul), a pooled classifier;
- ``silu-efficientnet``: EfficientNet-lite-style MBConv blocks at 1x3x160x160: depthwise
  convolutions, SiLU, sigmoid-gated squeeze-excite.

Height and width are dynamic (``--shape image=1x3x{H}x{W}``; the corpus passes 160x160, the
speed benchmark also 640x640). Seeded (torch.manual_seed(0)); each about 1-2 MB, built in
about two seconds.
"""

from __future__ import annotations

import pathlib

from tests.corpus import corpus_model

SIZE = 160
ORIGIN = "written in tests/corpus/mobile_blocks.py"


def _nets():
    import torch
    from torch import nn

    def conv_bn(cin, cout, k=3, s=1, groups=1, act=None):
        layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if act is not None:
            layers.append(act())
        return nn.Sequential(*layers)

    class Bottleneck(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.a, self.b = conv_bn(c, c, act=nn.SiLU), conv_bn(c, c, act=nn.SiLU)

        def forward(self, x):
            return x + self.b(self.a(x))

    class C2f(nn.Module):
        def __init__(self, cin, cout, n=1):
            super().__init__()
            self.c = cout // 2
            self.cv1 = conv_bn(cin, 2 * self.c, 1, act=nn.SiLU)
            self.m = nn.ModuleList(Bottleneck(self.c) for _ in range(n))
            self.cv2 = conv_bn((2 + n) * self.c, cout, 1, act=nn.SiLU)

        def forward(self, x):
            y = list(self.cv1(x).split((self.c, self.c), 1))
            for m in self.m:
                y.append(m(y[-1]))
            return self.cv2(torch.cat(y, 1))

    class SPPF(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.cv1, self.cv2 = conv_bn(c, c // 2, 1, act=nn.SiLU), conv_bn(c * 2, c, 1, act=nn.SiLU)
            self.pool = nn.MaxPool2d(5, 1, 2)

        def forward(self, x):
            x = self.cv1(x)
            a = self.pool(x)
            b = self.pool(a)
            return self.cv2(torch.cat([x, a, b, self.pool(b)], 1))

    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(conv_bn(3, 16, 3, 2, act=nn.SiLU), conv_bn(16, 32, 3, 2, act=nn.SiLU),
                                      C2f(32, 32), conv_bn(32, 64, 3, 2, act=nn.SiLU), C2f(64, 64, 2),
                                      conv_bn(64, 128, 3, 2, act=nn.SiLU), C2f(128, 128), SPPF(128))
            self.head = nn.Conv2d(128, 20, 1)

        def forward(self, x):
            return self.head(self.body(x))

    class SqueezeExcite(nn.Module):
        def __init__(self, c, gate, act=nn.ReLU):
            super().__init__()
            squeezed = max(8, c // 4)
            self.fc1, self.act, self.fc2, self.gate = nn.Conv2d(c, squeezed, 1), act(), nn.Conv2d(squeezed, c, 1), gate()

        def forward(self, x):
            return x * self.gate(self.fc2(self.act(self.fc1(nn.functional.adaptive_avg_pool2d(x, 1)))))

    class InvertedResidual(nn.Module):
        def __init__(self, cin, hidden, cout, k, s, act, gate=None, se_act=nn.ReLU):
            super().__init__()
            layers = [conv_bn(cin, hidden, 1, act=act), conv_bn(hidden, hidden, k, s, groups=hidden, act=act)]
            if gate is not None:
                layers.append(SqueezeExcite(hidden, gate, se_act))
            layers.append(conv_bn(hidden, cout, 1))
            self.block, self.residual = nn.Sequential(*layers), s == 1 and cin == cout

        def forward(self, x):
            y = self.block(x)
            return x + y if self.residual else y

    class MobileNet(nn.Module):
        def __init__(self):
            super().__init__()
            hs = nn.Hardswish
            self.body = nn.Sequential(
                conv_bn(3, 16, 3, 2, act=hs),
                InvertedResidual(16, 64, 24, 3, 2, nn.ReLU),
                InvertedResidual(24, 72, 24, 3, 1, nn.ReLU),
                InvertedResidual(24, 96, 40, 5, 2, hs, nn.Hardsigmoid),
                InvertedResidual(40, 120, 40, 5, 1, hs, nn.Hardsigmoid),
                InvertedResidual(40, 240, 80, 3, 2, hs),
                InvertedResidual(80, 200, 80, 3, 1, hs),
                InvertedResidual(80, 480, 112, 5, 1, hs, nn.Hardsigmoid),
                conv_bn(112, 480, 1, act=hs))
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(480, 256), hs(),
                                      nn.Linear(256, 10))

        def forward(self, x):
            return self.head(self.body(x))

    class EfficientNet(nn.Module):
        def __init__(self):
            super().__init__()
            silu, sig = nn.SiLU, nn.Sigmoid
            self.body = nn.Sequential(
                conv_bn(3, 32, 3, 2, act=silu),
                InvertedResidual(32, 32, 16, 3, 1, silu, sig, silu),
                InvertedResidual(16, 96, 24, 3, 2, silu, sig, silu),
                InvertedResidual(24, 144, 24, 3, 1, silu, sig, silu),
                InvertedResidual(24, 144, 40, 5, 2, silu, sig, silu),
                InvertedResidual(40, 240, 80, 3, 2, silu, sig, silu),
                InvertedResidual(80, 480, 112, 5, 1, silu, sig, silu),
                conv_bn(112, 640, 1, act=silu))
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(640, 10))

        def forward(self, x):
            return self.head(self.body(x))

    return {"silu-detector": Detector, "hardswish-mobilenet": MobileNet, "silu-efficientnet": EfficientNet}


def export(name: str, directory: pathlib.Path) -> pathlib.Path:
    import torch

    path = pathlib.Path(directory) / f"{name}.onnx"
    if path.exists():
        return path
    torch.manual_seed(0)
    net = _nets()[name]().eval()
    with torch.no_grad():
        for module in net.modules():  # non-trivial BatchNorm statistics, as a trained net has
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
        torch.onnx.export(net, torch.randn(1, 3, SIZE, SIZE), str(path), input_names=["image"],
                          output_names=["output"],
                          dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch"}},
                          opset_version=17, dynamo=False)
    return path


for _name, _tags in [("silu-detector", ("cnn", "silu")), ("hardswish-mobilenet", ("cnn", "hardswish", "depthwise")),
                     ("silu-efficientnet", ("cnn", "silu", "depthwise"))]:
    corpus_model(_name, origin=ORIGIN, tags=_tags, cli_args=("--shape", f"image=1x3x{SIZE}x{SIZE}"))(
        lambda directory, _n=_name: export(_n, directory))
