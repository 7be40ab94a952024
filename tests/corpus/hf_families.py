"""Small random-init Hugging Face models of the families graphc's own fixtures do not cover
(issue 13, Build 1), each exported with both torch exporters as two corpus models:
``hf-<family>-ts`` and ``hf-<family>-dynamo``.

Families (``transformers`` config classes, seed 0, every size as small as the family allows):

- ``detr``: DetrForObjectDetection on a 2-stage ResNet backbone from ``ResNetConfig`` (no timm,
  no pretrained weights), 1 encoder + 1 decoder layer, 8 queries; 64x64 images; outputs
  ``logits`` [B, 8, 5] and ``pred_boxes`` [B, 8, 4];
- ``swin``: SwinForImageClassification, 2 stages (a shifted window in the first), 32x32;
- ``mobilevit``: MobileViTForImageClassification, 3 MobileViT stages, 64x64;
- ``wav2vec2``: Wav2Vec2ForCTC, 2 feature-extractor convs (group norm), 1 encoder layer,
  1600 samples of audio;
- ``whisper``: the WhisperEncoder alone (2 convs, 1 layer), 16 mel bins x 32 frames;
- ``efficientnet``: EfficientNetForImageClassification, 3 MBConv stages, 32x32;
- ``pplcnet``: PPLCNetForImageClassification, the MobileNetV3-style family that ``transformers``
  has (it has no MobileNetV3): depthwise convolutions, HardSwish, squeeze-excite gates ending in
  HardSigmoid; 64x64.

Norm parameters and zero biases are randomised (``tests.topologies.randomize_norms``; DETR's
frozen BatchNorm buffers too), so folding them is never an identity. The batch axis is the
only dynamic dim (``batch``); every other dim is fixed by the example.

Exporters, each with its defaults (what a user gets):

- ``-ts``: ``torch.onnx.export(dynamo=False, opset_version=17, dynamic_axes=...)``, constant
  folding on, eval mode: weights inside the ``.onnx`` file;
- ``-dynamo``: ``torch.onnx.export(dynamo=True, dynamic_shapes=...)`` at its default opset
  (20 with torch 2.13) with its optimizer on (BatchNormalization fused into Conv), saved with
  the weights in ``<path>.data``.

Every family exports with both exporters (torch 2.13, transformers 5.24); none is left out.

Each model is exported once per process: ``build`` keeps the first file it wrote and returns it
again while it exists. Exports take 0.2-4 s (TorchScript) and 2-13 s (dynamo) here; each model
runs in about a millisecond. ``sample_feeds`` gives seeded inputs for any of them.
"""

from __future__ import annotations

import pathlib
import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from tests.corpus import corpus_model

SEED = 0
BATCH = 2  # the example batch; >1 so that torch.export keeps it dynamic
ORIGIN = "written in tests/corpus/hf_families.py (transformers {cls}, random init, {exporter})"


class Family(NamedTuple):
    build: Callable  # () -> (the HF model, {its one input name: example ndarray})
    outputs: tuple[str, ...]
    hf_class: str
    tags: tuple[str, ...]


def wrapped(model, outputs: tuple[str, ...]):
    """``model`` (eval mode) taking its one input positionally and returning ``outputs`` of its
    output object as a tuple (what the exporters need)."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, inputs):
            result = self.model(inputs)
            return tuple(getattr(result, name) for name in outputs)

    return Wrapped().eval()


def sample_feeds(model, rows: int, seed: int = SEED + 1) -> dict[str, np.ndarray]:
    """Standard-normal float32 inputs for an exported ``model`` (an ``onnx.ModelProto``):
    ``rows`` on the batch axis (the one symbolic dim), the other dims as exported."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        dims = [d.dim_value if d.dim_value else rows for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(dims, dtype=np.float32)
    return feeds


def _images(size: int) -> dict[str, np.ndarray]:
    return {"pixel_values": np.random.default_rng(SEED).standard_normal((BATCH, 3, size, size), dtype=np.float32)}


def _randomized(model):
    """``model`` in eval mode with random norms and biases (frozen BatchNorm buffers too)."""
    import torch

    from tests.topologies import randomize_norms

    gen = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for module in model.modules():
            if type(module).__name__.endswith("FrozenBatchNorm2d"):
                n = module.weight.shape[0]
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.2)
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return randomize_norms(model, SEED).eval()


def _detr():
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    backbone = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic",
                            out_features=["stage1", "stage2"])
    config = DetrConfig(backbone_config=backbone, use_pretrained_backbone=False, d_model=32, encoder_layers=1,
                        decoder_layers=1, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2,
                        decoder_attention_heads=2, num_queries=8, num_labels=4)
    return DetrForObjectDetection(config), _images(64)


def _swin():
    from transformers import SwinConfig, SwinForImageClassification

    config = SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[2, 1], num_heads=[1, 2], window_size=4,
                        mlp_ratio=2.0, drop_path_rate=0.0, num_labels=10)
    return SwinForImageClassification(config), _images(32)


def _mobilevit():
    from transformers import MobileViTConfig, MobileViTForImageClassification

    config = MobileViTConfig(image_size=64, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64],
                             num_attention_heads=2, expand_ratio=2.0, num_labels=10)
    return MobileViTForImageClassification(config), _images(64)


def _wav2vec2():
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    config = Wav2Vec2Config(vocab_size=32, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    audio = np.random.default_rng(SEED).standard_normal((BATCH, 1600), dtype=np.float32)
    return Wav2Vec2ForCTC(config), {"input_values": audio}


def _whisper():
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = WhisperConfig(num_mel_bins=16, d_model=32, encoder_layers=1, encoder_attention_heads=2,
                           encoder_ffn_dim=64, max_source_positions=16)
    features = np.random.default_rng(SEED).standard_normal((BATCH, 16, 32), dtype=np.float32)
    return WhisperEncoder(config), {"input_features": features}


def _efficientnet():
    from transformers import EfficientNetConfig, EfficientNetForImageClassification

    # every width is scaled by width_coefficient (the stem's 32 and the head's 1280 too): 8, 8-16-24, 320
    config = EfficientNetConfig(image_size=32, width_coefficient=0.25, depth_coefficient=1.0, kernel_sizes=[3, 3, 5],
                                in_channels=[32, 32, 64], out_channels=[32, 64, 96], strides=[1, 2, 2],
                                num_block_repeats=[1, 1, 1], expand_ratios=[1, 4, 4], hidden_dim=320,
                                num_labels=10)
    return EfficientNetForImageClassification(config), _images(32)


def _pplcnet():
    from transformers import PPLCNetConfig, PPLCNetForImageClassification

    blocks = [[[3, 8, 16, 1, False]], [[3, 16, 16, 2, False]], [[3, 16, 32, 2, False]], [[5, 32, 32, 2, False]],
              [[5, 32, 64, 2, True], [5, 64, 64, 1, True]]]
    config = PPLCNetConfig(block_configs=blocks, stem_channels=8, class_expand=64, num_labels=10)
    return PPLCNetForImageClassification(config), _images(64)


FAMILIES: dict[str, Family] = {
    "detr": Family(_detr, ("logits", "pred_boxes"), "DetrForObjectDetection", ("detection", "attention", "cnn")),
    "swin": Family(_swin, ("logits",), "SwinForImageClassification", ("attention", "vision")),
    "mobilevit": Family(_mobilevit, ("logits",), "MobileViTForImageClassification",
                        ("attention", "cnn", "silu", "depthwise")),
    "wav2vec2": Family(_wav2vec2, ("logits",), "Wav2Vec2ForCTC", ("audio", "attention", "conv1d")),
    "whisper": Family(_whisper, ("last_hidden_state",), "WhisperEncoder", ("audio", "attention", "conv1d")),
    "efficientnet": Family(_efficientnet, ("logits",), "EfficientNetForImageClassification",
                           ("cnn", "silu", "depthwise")),
    "pplcnet": Family(_pplcnet, ("last_hidden_state",), "PPLCNetForImageClassification",
                      ("cnn", "hardswish", "depthwise")),
}


def export(family: str, path: pathlib.Path, dynamo: bool) -> pathlib.Path:
    """Build ``family`` (seeded) and export it to ``path`` with one exporter; returns ``path``."""
    import torch

    from tests.topologies import _quiet_export

    spec = FAMILIES[family]
    torch.manual_seed(SEED)
    model, example = spec.build()
    module = wrapped(_randomized(model), spec.outputs)
    names = list(example)
    args = tuple(torch.from_numpy(example[n]) for n in names)
    with torch.no_grad(), _quiet_export(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not dynamo:
            axes = {n: {0: "batch"} for n in (*names, *spec.outputs)}
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=17, input_names=names,
                              output_names=list(spec.outputs), dynamic_axes=axes)
            return path
        batch = torch.export.Dim("batch", min=1, max=1024)
        program = torch.onnx.export(module, args, dynamo=True, input_names=names, output_names=list(spec.outputs),
                                    dynamic_shapes=({0: batch},), verbose=False)
    program.save(str(path), external_data=True)
    return path


_EXPORTED: dict[str, pathlib.Path] = {}


def _register(family: str, dynamo: bool) -> None:
    flavour = "dynamo" if dynamo else "ts"
    name = f"hf-{family}-{flavour}"
    exporter = "torch.onnx.export dynamo=True" if dynamo else "torch.onnx.export TorchScript, opset 17"

    def build(directory: pathlib.Path) -> pathlib.Path:
        if name not in _EXPORTED or not _EXPORTED[name].exists():
            _EXPORTED[name] = export(family, pathlib.Path(directory) / f"{name}.onnx", dynamo)
        return _EXPORTED[name]

    tags = (*FAMILIES[family].tags, "hf", "dynamo" if dynamo else "torchscript")
    corpus_model(name, origin=ORIGIN.format(cls=FAMILIES[family].hf_class, exporter=exporter), tags=tags)(build)


for _family in FAMILIES:
    for _dynamo in (False, True):
        _register(_family, _dynamo)
