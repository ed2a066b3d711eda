"""Torch-free checks that a stage's data is there, so bad paths fail before anything is submitted."""
from __future__ import annotations

import os
from pathlib import Path

from ..config import ConfigError
from .csv_dataset import csv_file
from .fashion_mnist import default_root, missing_files

DATASETS = ("fashion_mnist", "imagefolder", "csv", "places205")
# data.make_if_missing: demo datasets a stage builds itself when its root is not there yet
MADE_IF_MISSING = ("fashion_mnist_coarse5",)
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
    if name in ("csv", "places205"):
        return _check_csv(data, splits, root)
    if not root:
        raise ConfigError("data.root is not set; the imagefolder dataset needs the folder holding train/ and val/")
    for split in splits:
        folder = Path(root) / data.get(f"{split}_dir", split)
        if not folder.is_dir():
            raise ConfigError(f"dataset path {str(folder)!r} does not exist (data.root={root!r}, "
                              f"expected {split}/<class>/<image> inside it)")


def _check_csv(data, splits, root) -> None:
    """The split CSVs are there, or the stage will make them (a demo dataset whose source is there)."""
    name = data.get("dataset")
    if not root:
        raise ConfigError(f"data.root is not set; the {name} dataset needs the folder holding its CSV files")
    missing = [csv_file(data, split) for split in splits if not csv_file(data, split).is_file()]
    if not missing:
        return
    made = data.get("make_if_missing")
    if made in MADE_IF_MISSING:  # built from Fashion-MNIST at stage start: that must be there
        if missing_files(default_root()):
            raise ConfigError(f"data.make_if_missing={made!r} builds {root!r} from Fashion-MNIST, not found in "
                              f"{default_root()!r}: " + HOW_TO_GET_DEMO_DATA)
        return
    expected = (f"{csv_file(data, 'train').parent.name}/{{train,val}}_places205.csv" if name == "places205"
                else "train.csv and val.csv (data.train_csv, data.val_csv)")
    raise ConfigError(f"dataset file {str(missing[0])!r} does not exist (data.root={root!r}, expected {expected} inside it)")
