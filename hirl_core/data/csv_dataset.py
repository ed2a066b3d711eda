"""Image datasets listed in CSV files: a generic ``path,label`` CSV and the seed's Places205 layout.

    data:
      dataset: csv                  # root holds train.csv and val.csv (names: train_csv, val_csv)
      root: /data/my_transfer
      image_root: null              # paths in the CSV are relative to this (null: the CSV's folder)
    data:
      dataset: places205            # root holds trainvalsplit_places205/{train,val}_places205.csv
      root: /data/places205         # and data/vision/torralba/deeplearning/images256/ (the seed's tree)
      image_root: null              # null: that images256 folder, or root itself if the paths start there
    and for either:
      in_memory: false              # true: load all images once as uint8 (small images; batched transforms)
      mean: null                    # in_memory: the normalisation (null: ImageNet's; its grey mean for 1 channel)
      std: null
      make_if_missing: null         # fashion_mnist_coarse5: the demo's transfer set, built in root on first use

Generic CSV lines are ``path,label`` (a ``path,label`` header line is allowed); labels are either all
integers (used as they are) or class names (indexed in sorted order, taken from the train CSV so train
and val agree). Places205 lines are ``<relative path> <label>``, space-separated, integer labels 0-204.

The datasets yield ``(image, index, target)`` like the ImageFolder ones and take the same PIL
transforms (hirl_core/data/transforms.py); ``data.channels: 1`` reads images as grayscale.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..config import ConfigError

PLACES205_SPLIT_DIR = "trainvalsplit_places205"
PLACES205_IMAGES = "data/vision/torralba/deeplearning/images256"
CHECK_ALL_UP_TO = 200_000   # above this many images, an evenly spaced 1,000 are checked (a stat is slow on NFS)


def csv_file(data, split: str) -> Path:
    """The CSV of ``split`` for a ``csv`` or ``places205`` data section (paths only; torch-free)."""
    root = Path(os.path.expanduser(str(data.get("root") or "")))
    if data.get("dataset") == "places205":
        return root / PLACES205_SPLIT_DIR / f"{split}_places205.csv"
    return root / data.get(f"{split}_csv", f"{split}.csv")


def _rows(path: Path, sep: str | None) -> list[tuple[int, list[str]]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if line and not line.startswith("#"):
                rows.append((number, [part.strip() for part in (line.rsplit(sep, 1) if sep else line.rsplit(None, 1))]))
    if rows and [p.lower() for p in rows[0][1]] == ["path", "label"]:
        rows = rows[1:]
    for number, parts in rows:
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise ConfigError(f"{path}, line {number}: expected '<path>{sep or ' '}<label>', got {' '.join(parts)!r}")
    return rows


def _is_int(text: str) -> bool:
    return text.lstrip("+-").isdigit()


def read_label_csv(path: str | os.PathLike, classes: list[str] | None = None, sep: str | None = ","):
    """([(relative or absolute path, label)], classes) of one CSV.

    ``classes`` None: integer labels stay as they are (classes = "0".."max"), class names are indexed in
    sorted order. Given (the train CSV's), every name must be one of them."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"CSV file {str(path)!r} does not exist")
    rows = _rows(path, sep)
    if not rows:
        raise ConfigError(f"CSV file {str(path)!r} lists no images")
    labels = [parts[1] for _, parts in rows]
    if all(_is_int(label) for label in labels):
        values = [int(label) for label in labels]
        if min(values) < 0:
            raise ConfigError(f"{path}: label {min(values)} is negative; labels must be >= 0 or class names")
        if classes is None:
            classes = [str(i) for i in range(max(values) + 1)]
        return [(parts[0], v) for (_, parts), v in zip(rows, values)], classes
    if classes is None:
        classes = sorted(set(labels))
    index = {name: i for i, name in enumerate(classes)}
    unknown = next((label for label in labels if label not in index), None)
    if unknown is not None:
        raise ConfigError(f"{path}: class {unknown!r} is not among the train CSV's {len(classes)} classes")
    return [(parts[0], index[label]) for (_, parts), label in zip(rows, labels)], classes


def _image_root(data, csv_path: Path, first: str) -> Path:
    if data.get("image_root"):
        return Path(os.path.expanduser(str(data.image_root)))
    if data.get("dataset") != "places205":
        return csv_path.parent
    root = Path(os.path.expanduser(str(data.root)))
    images = root / PLACES205_IMAGES
    # the released CSVs list paths relative to images256/; a tree re-rooted by hand may list them from root
    return images if (images / first).exists() or not (root / first).exists() else root


def check_images_exist(samples, where) -> None:
    """One line naming how many listed images are missing and the first, if any are."""
    step = 1 if len(samples) <= CHECK_ALL_UP_TO else len(samples) // 1000
    checked = samples[::step]
    missing = [path for path, _ in checked if not os.path.isfile(path)]
    if missing:
        of = f"{len(checked)} listed" if step == 1 else f"{len(checked)} checked (every {step}th) of {len(samples)} listed"
        raise ConfigError(f"{len(missing)} of {of} images are missing under {str(where)!r} (first: {missing[0]!r})")


def csv_samples(data, split: str) -> tuple[list[tuple[str, int]], list[str]]:
    """([(absolute path, label)], classes) of ``split`` of a ``csv`` or ``places205`` data section."""
    places = data.get("dataset") == "places205"
    sep = None if places else ","
    classes = None
    if split != "train":  # the label space is the train CSV's
        _, classes = read_label_csv(csv_file(data, "train"), sep=sep)
    path = csv_file(data, split)
    rel, classes = read_label_csv(path, classes, sep=sep)
    too_big = next((label for _, label in rel if label >= len(classes)), None)
    if too_big is not None:
        raise ConfigError(f"{path}: label {too_big} is not below the train CSV's {len(classes)} classes")
    root = _image_root(data, path, rel[0][0])
    samples = [(str(root / p) if not os.path.isabs(p) else p, label) for p, label in rel]
    check_images_exist(samples, root)
    return samples, classes


def _normalisation(data, channels: int):
    from .transforms import IMAGENET_MEAN, IMAGENET_STD

    if data.get("mean") is not None or data.get("std") is not None:
        mean, std = tuple(data.get("mean") or ()), tuple(data.get("std") or ())
        if len(mean) != channels or len(std) != channels:
            raise ConfigError(f"data.mean={list(mean)} and data.std={list(std)} need {channels} value(s) each "
                              f"(data.channels={channels})")
        return mean, std
    if channels == 1:  # ImageNet's statistics averaged over the colour channels
        return (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)
    return IMAGENET_MEAN, IMAGENET_STD


def load_uint8(samples, image_size: int, channels: int):
    """All images as one uint8 tensor [N, C, S, S] (resized to S = image_size where they differ)."""
    import numpy as np
    import torch
    from PIL import Image

    out = np.empty((len(samples), image_size, image_size, channels), dtype=np.uint8)
    for j, (path, _) in enumerate(samples):
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            if img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.BILINEAR)
            out[j] = np.asarray(img).reshape(image_size, image_size, channels)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def build_csv_dataset(data, split: str):
    """The ``split`` of a ``csv``/``places205`` data section with the evaluation transform.

    ``data.in_memory: true`` (small images, such as the demo's) loads every image once into a uint8
    tensor and uses the batched transforms of Fashion-MNIST; otherwise images are read per sample
    through the ImageFolder path (PIL, the seed's transforms), which needs 3 channels."""
    from .datasets import FileListWithIndex, InMemoryEval
    from .transforms import BatchEvalTransform, eval_pil_transform

    if data.get("make_if_missing") and not csv_file(data, split).is_file():
        from .make_transfer_demo import NAME, make_transfer_demo

        if data.make_if_missing != NAME:
            raise ConfigError(f"data.make_if_missing={data.make_if_missing!r} is not allowed; allowed: {NAME}")
        make_transfer_demo(data.root)  # the demo's transfer data: built on first use, atomically
    samples, classes = csv_samples(data, split)
    channels = data.get("channels", 3)
    if data.get("in_memory"):
        import torch

        mean, std = _normalisation(data, channels)
        targets = torch.as_tensor([label for _, label in samples], dtype=torch.long)
        dataset = InMemoryEval(load_uint8(samples, data.image_size, channels), targets,
                               BatchEvalTransform(data.image_size, mean, std))
        dataset.classes = classes
        return dataset
    if channels != 3 or data.get("mean") is not None or data.get("std") is not None:
        raise ConfigError(f"data.channels={channels} and data.mean/std need data.in_memory: true for the "
                          f"{data.dataset} dataset (images read one by one take the seed's RGB ImageNet transforms)")
    return FileListWithIndex(samples, classes, eval_pil_transform(data.image_size))
