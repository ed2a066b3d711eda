"""Torch-free checks that a stage's data is there, so bad paths fail before anything is submitted."""
from __future__ import annotations

import os
from pathlib import Path

from ..config import ConfigError
from .fashion_mnist import default_root, missing_files

DATASETS = ("fashion_mnist", "imagefolder")
HOW_TO_GET_DEMO_DATA = (
    "install it with `apt-get install dataset-fashion-mnist` (as root), or set HIRL_FASHION_MNIST to a "
    "directory holding the four Fashion-MNIST idx files, or point DATA= at an ImageFolder tree "
    "(DATA/train/<class>/*.jpg, DATA/val/<class>/*.jpg)")


def resolve_root(data) -> str:
    root = data.get("root")
    if data.get("dataset") == "fashion_mnist" and not root:
        return default_root()
    return os.path.expanduser(str(root)) if root else ""


def check_data(data, splits=("train",)) -> None:
    """Raise ConfigError (one line) when the data a stage needs is missing."""
    name = data.get("dataset")
    if name not in DATASETS:
        raise ConfigError(f"unknown data.dataset {name!r}; allowed: {', '.join(DATASETS)}")
    root = resolve_root(data)
    if name == "fashion_mnist":
        missing = missing_files(root)
        if missing:
            raise ConfigError(f"Fashion-MNIST not found in {root!r} (missing {', '.join(missing)}): "
                              + HOW_TO_GET_DEMO_DATA)
        return
    if not root:
        raise ConfigError("data.root is not set; the imagefolder dataset needs the folder holding train/ and val/")
    for split in splits:
        folder = Path(root) / data.get(f"{split}_dir", split)
        if not folder.is_dir():
            raise ConfigError(f"dataset path {str(folder)!r} does not exist (data.root={root!r}, "
                              f"expected {split}/<class>/<image> inside it)")
