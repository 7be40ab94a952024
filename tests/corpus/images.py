"""Seeded synthetic images in each corpus CNN's own input range (no image data ships here):
random noise is not what these models see, and on it their outputs degenerate (the text
detector finds nothing: every probability below 1e-5, so any comparison is noise).

- ``open-nsfw``: NHWC, BGR pixels minus the VGG mean (its package's preprocessing):
  blocky low-frequency colour fields with pixel noise;
- ``ppocr-*``: NCHW, ImageNet-normalised dark strokes in rows on a light page (text lines);
- anything else: uniform [0, 1).
"""

from __future__ import annotations

import numpy as np

VGG_MEAN = np.array([104.0, 117.0, 123.0])
IMAGENET_MEAN, IMAGENET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def _blocks(rng, shape) -> np.ndarray:
    _, height, width, _ = shape
    low = rng.random((shape[0], -(-height // 32), -(-width // 32), 3)) * 255
    image = np.repeat(np.repeat(low, 32, axis=1), 32, axis=2)[:, :height, :width]
    return np.clip(image + rng.normal(0, 10, image.shape), 0, 255) - VGG_MEAN


def _text_lines(rng, shape) -> np.ndarray:
    rows, _, height, width = shape
    page = np.full((rows, 3, height, width), 0.9)
    for image in page:
        line = max(2, height // 12)
        for _ in range(max(1, height // (2 * line))):
            top, left = rng.integers(0, max(1, height - line)), rng.integers(0, max(1, width // 3))
            for x in range(left, min(width, left + rng.integers(width // 4, width)), 6):
                image[:, top:top + line, x:x + 3] = 0.1
    return (page - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]


def sample_images(name: str, shape, rows: int, seed: int) -> np.ndarray:
    """``rows`` images of ``shape`` (its first dim is replaced by ``rows``) for model ``name``."""
    rng = np.random.default_rng(seed)
    shape = (rows, *tuple(shape)[1:])
    if name == "open-nsfw":
        values = _blocks(rng, shape)
    elif name.startswith("ppocr"):
        values = _text_lines(rng, shape)
    else:
        values = rng.random(shape)
    return values.astype(np.float32)
