"""Small random-init topologies exported to ONNX: the fixtures of the test suite.

Each builder (``resnet()``, ``bert()``, ...; all in :data:`BUILDERS`) returns a
:class:`Topology`: an eval-mode module, example inputs (name -> tensor) and dynamic axes.
Every module takes its inputs by those names and returns one tensor, exported as
``logits``. Norm layers and zero biases get random values (:func:`randomize_norms`), so
folding them is never an identity.

``export(name, path, dynamo=False)`` writes ``path`` with either exporter:

- ``dynamo=False``: TorchScript exporter, opset 17, ``dynamic_axes``, no constant folding,
  ``TrainingMode.PRESERVE``. BatchNormalization nodes are kept; weights are initialisers
  inside the ``.onnx`` file.
- ``dynamo=True``: ``torch.export`` exporter, opset 18, ``dynamic_shapes``, weights in
  ``<path>.data`` next to the model. The exporter's optimizer (``optimize=True``) fuses
  BatchNormalization into the preceding Conv/Gemm, so by default it is off and only
  constant folding is run; ``optimize=True`` gives the exporter's full output.

:func:`sample_inputs` makes numpy inputs of any batch size / sequence length.

Over 400 lines because it is a catalogue: nine builders of a dozen lines each, one export
function and the inputs they share; splitting it would scatter one table.
"""

from __future__ import annotations

import contextlib
import pathlib
import warnings
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import nn

SEED = 0
NUM_CLASSES = 10
VOCAB = 1000
MAX_POSITIONS = 64
BATCH, SEQ = 2, 16  # example sizes; >1 so that torch.export keeps them dynamic
OPSET_TORCHSCRIPT = 17
OPSET_DYNAMO = 18


class Topology(NamedTuple):
    """An eval-mode module, its example inputs (name -> tensor) and their dynamic axes."""

    model: nn.Module
    inputs: dict[str, torch.Tensor]
    dynamic_axes: dict[str, dict[int, str]]  # inputs and the ``logits`` output


def randomize_norms(model: nn.Module, seed: int = SEED) -> nn.Module:
    """Randomise BatchNorm affine parameters and running statistics, LayerNorm affine
    parameters and all-zero biases (Linear, Conv1D), so folding is never an identity and no two
    initialisers are equal (the TorchScript exporter turns duplicates into Identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.2)
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            elif isinstance(module, nn.LayerNorm):
                module.weight.copy_(1 + torch.randn(module.weight.shape, generator=gen) * 0.1)
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
            elif isinstance(getattr(module, "bias", None), nn.Parameter) and not module.bias.any():
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.02)
    return model


def sample_inputs(name: str, batch: int = BATCH, seed: int = SEED, seq: int = SEQ) -> dict[str, np.ndarray]:
    """Random inputs for topology ``name``: float32 images / vectors, token ids < VOCAB,
    an attention mask of ones with trailing zeros in every row but the first, and
    token types 0 then 1. ``seq`` (text only) must be at most MAX_POSITIONS."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for key in INPUT_NAMES[name]:
        if key in ("image", "pixel_values"):
            out[key] = rng.standard_normal((batch, 3, 32, 32), dtype=np.float32)
        elif key == "x":
            out[key] = rng.standard_normal((batch, 16), dtype=np.float32)
        elif key == "input_ids":
            out[key] = rng.integers(0, VOCAB, (batch, seq), dtype=np.int64)
        elif key == "attention_mask":
            mask = np.ones((batch, seq), dtype=np.int64)
            for row in range(1, batch):
                pad = min(1 + (row - 1) % max(seq // 2, 1), seq - 1)
                mask[row, seq - pad:] = 0
            out[key] = mask
        elif key == "token_type_ids":
            types = np.zeros((batch, seq), dtype=np.int64)
            types[:, seq // 2:] = 1
            out[key] = types
    return out


def _example(name: str) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in sample_inputs(name).items()}


def _image_topology(model: nn.Module, name: str) -> Topology:
    model = randomize_norms(model).eval()
    return Topology(model, _example(name), {"image": {0: "batch"}, "logits": {0: "batch"}})


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


# ----------------------------------------------------------------------------- resnet
class BasicBlock(nn.Module):
    """Two 3x3 Conv-BN, a shortcut (identity or strided 1x1 Conv-BN), Add, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(cin, cout, 3, stride), nn.ReLU(), *_conv_bn(cout, cout))
        self.shortcut = (nn.Sequential(*_conv_bn(cin, cout, 1, stride))
                         if stride != 1 or cin != cout else nn.Identity())
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, 16), nn.ReLU())
        self.blocks = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 32, stride=2),
                                    BasicBlock(32, 32))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, NUM_CLASSES))

    def forward(self, image):
        return self.head(self.blocks(self.stem(image)))


def resnet() -> Topology:
    """Residual CNN: Conv-BN-ReLU stem, 3 residual blocks (one projected), GAP, Linear."""
    torch.manual_seed(SEED)
    return _image_topology(ResNet(), "resnet")


# -------------------------------------------------------------------------- depthwise
class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 project; Add if shapes match."""

    def __init__(self, cin: int, cout: int, stride: int = 1, expand: int = 4):
        super().__init__()
        hidden = cin * expand
        self.body = nn.Sequential(
            *_conv_bn(cin, hidden, 1), nn.ReLU6(),
            *_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(),
            *_conv_bn(hidden, cout, 1))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class MobileNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn(3, 16, 3, 2), nn.ReLU6(),
            InvertedResidual(16, 16), InvertedResidual(16, 24, stride=2), InvertedResidual(24, 24),
            *_conv_bn(24, 64, 1), nn.ReLU6())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, NUM_CLASSES))

    def forward(self, image):
        return self.head(self.features(image))


def depthwise() -> Topology:
    """MobileNetV2-style CNN: inverted residual blocks with depthwise 3x3 convs."""
    torch.manual_seed(SEED)
    return _image_topology(MobileNet(), "depthwise")


# ----------------------------------------------------------------------------- concat
class Inception(nn.Module):
    """Four branches (1x1; 1x1->3x3; 1x1->5x5 as two 3x3; maxpool->1x1) concatenated."""

    def __init__(self, cin: int, width: int):
        super().__init__()
        self.b1 = nn.Sequential(*_conv_bn(cin, width, 1), nn.ReLU())
        self.b2 = nn.Sequential(*_conv_bn(cin, width, 1), nn.ReLU(), *_conv_bn(width, width), nn.ReLU())
        self.b3 = nn.Sequential(*_conv_bn(cin, width // 2, 1), nn.ReLU(),
                                *_conv_bn(width // 2, width), nn.ReLU(), *_conv_bn(width, width), nn.ReLU())
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), *_conv_bn(cin, width, 1), nn.ReLU())

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], dim=1)


class DenseLayer(nn.Module):
    """DenseNet layer: BN-ReLU-Conv3x3 whose output is concatenated to its input."""

    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, growth, 3, 1, 1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.body(x)], dim=1)


class ConcatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn(3, 16), nn.ReLU(),
            Inception(16, 8),                              # 32 channels
            DenseLayer(32, 8), DenseLayer(40, 8),          # 48 channels
            *_conv_bn(48, 32, 1), nn.ReLU(),               # conv after the concat
            nn.MaxPool2d(2),
            Inception(32, 8),                              # 32 channels
            *_conv_bn(32, 32), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, NUM_CLASSES))

    def forward(self, image):
        return self.head(self.features(image))


def concat() -> Topology:
    """Inception/DenseNet-style CNN: branches concatenated along channels, Convs after the
    concats. The DenseNet layers' pre-activation BN follows a Concat, so it cannot be
    folded into a preceding Conv (only 2 of the 19 BNs)."""
    torch.manual_seed(SEED)
    return _image_topology(ConcatNet(), "concat")


# ----------------------------------------------------------------------------- mlp_bn
class MlpBn(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, NUM_CLASSES))

    def forward(self, x):
        return self.net(x)


def mlp_bn() -> Topology:
    """Linear -> BatchNorm1d -> ReLU -> Linear (BN-into-Gemm folding)."""
    torch.manual_seed(SEED)
    model = randomize_norms(MlpBn()).eval()
    return Topology(model, _example("mlp_bn"), {"x": {0: "batch"}, "logits": {0: "batch"}})


# ---------------------------------------------------------------- squeeze-excitation
class SqueezeExcite(nn.Module):
    """x * sigmoid(Conv(ReLU(Conv(GAP(x))))): the channel scale is a broadcasting Mul."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, squeeze, 1), nn.ReLU(),
                                  nn.Conv2d(squeeze, channels, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.gate(x)


class SeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, 16), nn.ReLU())
        self.block = nn.Sequential(*_conv_bn(16, 32, 3, 2), nn.ReLU(), SqueezeExcite(32, 8),
                                   *_conv_bn(32, 32), nn.ReLU(), SqueezeExcite(32, 8))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, NUM_CLASSES))

    def forward(self, image):
        return self.head(self.block(self.stem(image)))


def se() -> Topology:
    """Squeeze-excitation CNN: two SE blocks scaling Conv-BN-ReLU outputs per channel."""
    torch.manual_seed(SEED)
    return _image_topology(SeNet(), "se")


# ------------------------------------------------------------------------- convnext
class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv, LayerNorm over channels (channels-last), Linear 4x, GELU, Linear,
    layer scale, residual Add."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.down = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.down(self.act(self.up(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 4, stride=4)
        self.blocks = nn.Sequential(ConvNeXtBlock(32), ConvNeXtBlock(32))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(32), nn.Linear(32, NUM_CLASSES))

    def forward(self, image):
        return self.head(self.blocks(self.stem(image)))


def convnext() -> Topology:
    """ConvNeXt-style: patchify stem, two blocks with LayerNorm over channels, LN head."""
    torch.manual_seed(SEED)
    return _image_topology(ConvNeXt(), "convnext")


# ---------------------------------------------------------------------- transformers
class BertClassifier(nn.Module):
    """BertForSequenceClassification returning the logits tensor."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.hf(input_ids=input_ids, attention_mask=attention_mask,
                       token_type_ids=token_type_ids).logits


class GptLm(nn.Module):
    """GPT2LMHeadModel (no KV cache) returning the logits tensor."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, input_ids):
        # An explicit all-ones mask: without one, transformers probes position ids for
        # packed sequences with torch.diff, which the TorchScript exporter cannot export.
        mask = torch.ones_like(input_ids)
        return self.hf(input_ids=input_ids, attention_mask=mask, use_cache=False).logits


class VitClassifier(nn.Module):
    """ViTForImageClassification returning the logits tensor."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, pixel_values):
        return self.hf(pixel_values=pixel_values).logits


def bert() -> Topology:
    """2-layer BERT encoder (hidden 64, 4 heads) with a 4-way sequence-classification head."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=MAX_POSITIONS, num_labels=4,
                        attn_implementation="eager")
    torch.manual_seed(SEED)
    model = BertClassifier(randomize_norms(BertForSequenceClassification(config))).eval()
    axes = {n: {0: "batch", 1: "sequence"} for n in INPUT_NAMES["bert"]}
    return Topology(model, _example("bert"), {**axes, "logits": {0: "batch"}})


def gpt() -> Topology:
    """2-layer GPT-2 decoder (n_embd 64, 4 heads) with the tied LM head, no KV cache."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=MAX_POSITIONS,
                        use_cache=False, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1,
                        attn_implementation="eager")
    torch.manual_seed(SEED)
    model = GptLm(randomize_norms(GPT2LMHeadModel(config))).eval()
    return Topology(model, _example("gpt"),
                    {"input_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}})


def vit() -> Topology:
    """2-layer ViT (32x32 images, 8x8 patches, hidden 64, 4 heads), 10 classes."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=64, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=128, num_labels=NUM_CLASSES,
                       attn_implementation="eager")
    torch.manual_seed(SEED)
    model = VitClassifier(randomize_norms(ViTForImageClassification(config))).eval()
    return Topology(model, _example("vit"),
                    {"pixel_values": {0: "batch"}, "logits": {0: "batch"}})


BUILDERS: dict[str, Callable[[], Topology]] = {
    "resnet": resnet, "depthwise": depthwise, "concat": concat, "bert": bert,
    "gpt": gpt, "vit": vit, "mlp_bn": mlp_bn, "se": se, "convnext": convnext,
}
NAMES = tuple(BUILDERS)
BATCHNORM_NAMES = ("resnet", "depthwise", "concat", "mlp_bn", "se")
INPUT_NAMES: dict[str, tuple[str, ...]] = {
    "resnet": ("image",), "depthwise": ("image",), "concat": ("image",),
    "bert": ("input_ids", "attention_mask", "token_type_ids"), "gpt": ("input_ids",),
    "vit": ("pixel_values",), "mlp_bn": ("x",), "se": ("image",), "convnext": ("image",),
}
OUTPUT_NAME = "logits"


def build(name: str) -> Topology:
    """Build the topology called ``name`` (one of :data:`NAMES`)."""
    if name not in BUILDERS:
        raise KeyError(f"unknown topology {name!r}; known: {', '.join(NAMES)}")
    return BUILDERS[name]()


def _dynamic_shapes(topo: Topology) -> dict[str, dict[int, torch.export.Dim]]:
    """The inputs' ``dynamic_axes`` as ``torch.export`` dims, one Dim per axis label."""
    limits = {"sequence": MAX_POSITIONS}
    dims: dict[str, torch.export.Dim] = {}
    shapes: dict[str, dict[int, torch.export.Dim]] = {}
    for name in topo.inputs:
        shapes[name] = {}
        for axis, label in topo.dynamic_axes.get(name, {}).items():
            if label not in dims:
                dims[label] = torch.export.Dim(label, min=1, max=limits.get(label, 1 << 16))
            shapes[name][axis] = dims[label]
    return shapes


@contextlib.contextmanager
def _quiet_export():
    """Silence the exporters' known, harmless warnings (deprecation, tracer, pytree, and
    "axis name ... will not be used" for a Dim shared by several inputs)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints")
        yield


def export(name: str, path: str | pathlib.Path, dynamo: bool = False, *,
           optimize: bool = False) -> pathlib.Path:
    """Export topology ``name`` to ``path`` (and ``<path>.data`` if ``dynamo``); returns it.

    ``optimize`` (dynamo only) runs the exporter's full optimizer, which fuses
    BatchNormalization into Conv/Gemm; without it only constants are folded.
    """
    if optimize and not dynamo:
        raise ValueError("optimize=True needs dynamo=True")
    topo = build(name)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = tuple(topo.inputs.values())
    names = dict(input_names=list(topo.inputs), output_names=[OUTPUT_NAME])
    with torch.no_grad(), _quiet_export():
        if not dynamo:
            torch.onnx.export(topo.model, args, str(path), dynamo=False, opset_version=OPSET_TORCHSCRIPT,
                              dynamic_axes=topo.dynamic_axes, do_constant_folding=False,
                              training=torch.onnx.TrainingMode.PRESERVE, **names)
            return path
        program = torch.onnx.export(topo.model, args, dynamo=True, opset_version=OPSET_DYNAMO,
                                    dynamic_shapes=_dynamic_shapes(topo), optimize=optimize,
                                    verbose=False, **names)
    if not optimize:
        import onnxscript.optimizer

        # Without folding, bias-free Convs get a bias computed by Shape/Expand/CastLike.
        onnxscript.optimizer.fold_constants(program.model)
        onnxscript.optimizer.remove_unused_nodes(program.model)
    program.save(str(path), external_data=True)
    return path


def run_onnxruntime(path: str | pathlib.Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Run ``path`` on CPU with one thread; returns the first output."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, inputs)[0]


def run_torch(name: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Run a freshly built topology ``name`` on numpy ``inputs``."""
    model = build(name).model
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).numpy()
