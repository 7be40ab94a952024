"""Recipe for the bundled model: a small residual CNN trained on Fashion-MNIST.

Reproducible (fixed seed, single-threaded data order) and offline: the data are the idx
files of the Debian package ``dataset-fashion-mnist``. Writes

- ``models/fashion_cnn.onnx``: input ``image`` uint8 [N, 1, 28, 28] (raw pixels; the
  normalisation is inside the graph), output ``logits`` float32 [N, 10]. Exported with the
  TorchScript exporter (``dynamo=False``), BatchNorm kept as separate nodes (no export-time
  fusion) so the ``fold`` pass has real work to do;
- ``models/fashion_mnist_test.npz``: the full 10k test split, ``image`` uint8 and ``labels``
  int64 (uint8 keeps it a few MB);
- ``models/fashion_mnist_calib.npz``: 512 train-split images with labels (a seeded sample),
  calibration data that is not the test set;
- ``models/fashion_mnist_train.npz`` (only with ``--write-train``, not committed): the
  60k train split in the same format, for passes that train.

Usage: ``python models/fashion_cnn.py [--epochs 4] [--out-dir models]``
"""

from __future__ import annotations

import argparse
import gzip
import pathlib
import time

import numpy as np

IDX_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST train-split pixel statistics (x / 255)


def read_idx(path: pathlib.Path) -> np.ndarray:
    """Read one gzip'd idx file (the MNIST container format) into a uint8 array."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 [N,1,28,28], labels int64 [N]) for ``train`` or ``t10k``."""
    if not IDX_DIR.is_dir():
        raise SystemExit(f"error: {IDX_DIR} not found; install it: apt-get install dataset-fashion-mnist")
    images = read_idx(IDX_DIR / f"{split}-images-idx3-ubyte.gz")[:, None, :, :]
    labels = read_idx(IDX_DIR / f"{split}-labels-idx1-ubyte.gz").astype(np.int64)
    return images, labels


def write_calibration_split(images: np.ndarray, labels: np.ndarray, path: pathlib.Path,
                            rows: int = 512, seed: int = 0) -> None:
    """A seeded sample of the train split, for calibration (int8) and --data."""
    pick = np.sort(np.random.default_rng(seed).choice(len(images), rows, replace=False))
    np.savez_compressed(path, image=images[pick], labels=labels[pick])


def build_model():
    from torch import nn

    def conv_bn(cin, cout, stride=1):
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)]

    class ResidualBlock(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.body = nn.Sequential(*conv_bn(channels, channels), nn.ReLU(),
                                      *conv_bn(channels, channels))
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(x + self.body(x))

    class FashionCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                *conv_bn(1, 24), nn.ReLU(),
                *conv_bn(24, 32, 2), nn.ReLU(), ResidualBlock(32),
                *conv_bn(32, 64, 2), nn.ReLU(), ResidualBlock(64),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            )
            self.dropout = nn.Dropout(0.1)
            self.classifier = nn.Linear(64, 10)

        def forward(self, image):
            x = (image.float() / 255.0 - MEAN) / STD
            return self.classifier(self.dropout(self.features(x)))

    return FashionCNN()


def train(model, images, labels, epochs: int, seed: int):
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    x_all = torch.from_numpy(images)
    y_all = torch.from_numpy(labels)
    batch = 128
    steps = epochs * ((len(x_all) + batch - 1) // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x_all), generator=gen)
        flips = torch.rand(len(x_all), generator=gen) < 0.5
        t0, total = time.time(), 0.0
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            x = x_all[idx]
            x = torch.where(flips[idx, None, None, None], x.flip(-1), x)  # horizontal flip
            loss = loss_fn(model(x), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / len(order):.4f} ({time.time() - t0:.0f} s)")
    model.eval()


def export(model, path: pathlib.Path) -> None:
    import torch

    example = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(
        model, (example,), str(tmp), dynamo=False, opset_version=17,
        input_names=["image"], output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        training=torch.onnx.TrainingMode.PRESERVE,  # keep BatchNorm nodes unfused
        do_constant_folding=False,
    )
    tmp.replace(path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", type=pathlib.Path, default=pathlib.Path(__file__).parent)
    ap.add_argument("--write-train", action="store_true", help="also write the train split npz")
    args = ap.parse_args(argv)

    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    train_x, train_y = load_split("train")
    test_x, test_y = load_split("t10k")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.write_train:
        np.savez_compressed(args.out_dir / "fashion_mnist_train.npz", image=train_x, labels=train_y)
    write_calibration_split(train_x, train_y, args.out_dir / "fashion_mnist_calib.npz")

    model = build_model()
    train(model, train_x, train_y, args.epochs, args.seed)
    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(test_x[i:i + 1000])) for i in range(0, 10000, 1000)])
    acc = (logits.argmax(1).numpy() == test_y).mean()
    print(f"torch test top-1: {acc:.4f}")

    export(model, args.out_dir / "fashion_cnn.onnx")
    np.savez_compressed(args.out_dir / "fashion_mnist_test.npz", image=test_x, labels=test_y)
    print(f"wrote {args.out_dir / 'fashion_cnn.onnx'} and {args.out_dir / 'fashion_mnist_test.npz'}")


if __name__ == "__main__":
    main()
