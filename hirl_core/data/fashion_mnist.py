"""Fashion-MNIST read straight from the original idx files (Debian: dataset-fashion-mnist).

Reading the idx format ourselves avoids torchvision's expected `<root>/FashionMNIST/raw/` layout and
any download attempt; the files may be gzipped (as Debian ships them) or plain.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
from pathlib import Path

DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def default_root() -> str:
    return os.environ.get("HIRL_FASHION_MNIST", DEBIAN_ROOT)


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        for where in (root, root / "FashionMNIST" / "raw"):
            if (where / name).is_file():
                return where / name
    return None


def missing_files(root: str | os.PathLike) -> list[str]:
    """Names of the idx files not found under `root` (empty when the data is complete)."""
    root = Path(root)
    return [stem for pair in _FILES.values() for stem in pair if _find(root, stem) is None]


def _read_idx(path: Path):
    import numpy as np  # here, not at the top: the orchestrator imports this module for `missing_files`

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = raw[0:2], raw[2], raw[3]
    if zero != b"\x00\x00" or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    shape = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(shape):
        raise ValueError(f"{path}: truncated idx file ({data.size} of {math.prod(shape)} bytes)")
    return data.reshape(shape)


def load_fashion_mnist(root: str | os.PathLike, split: str):
    """(images uint8 [N, 28, 28], labels int64 [N]) of `split` in {'train', 'test'}."""
    root = Path(root)
    img_stem, lbl_stem = _FILES[split]
    img_path, lbl_path = _find(root, img_stem), _find(root, lbl_stem)
    if img_path is None or lbl_path is None:
        raise FileNotFoundError(f"Fashion-MNIST {split} idx files not found under {root}")
    images, labels = _read_idx(img_path), _read_idx(lbl_path).astype("int64")
    if len(images) != len(labels):
        raise ValueError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels")
    return images, labels
