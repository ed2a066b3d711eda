"""Datasets for pre-training and evaluation, built from a stage config's `data` section.

    data:
      dataset: fashion_mnist | imagefolder | csv | places205   (csv, places205: hirl_core/data/csv_dataset.py)
      root: null                  # fashion_mnist: the idx files (default: Debian's package); imagefolder: holds train/ and val/
      train_list: null            # imagefolder: train on these listed files only (imagenet_1percent, imagenet_10percent, a path)
      train_subset: null          # use a fixed random subset of N training images (seeded by subset_seed)
      image_size: 28
      channels: 1                 # 1 keeps Fashion-MNIST grayscale; 3 repeats it
"""
from __future__ import annotations

import numpy as np
import torch

from .csv_dataset import build_csv_dataset, csv_samples
from .datasets import FileListWithIndex, ImageFolderWithIndex, InMemoryEval, InMemoryViews
from .fashion_mnist import load_fashion_mnist
from .paths import check_data, resolve_root
from .subsets import imagenet_list_samples, list_path, read_list
from .transforms import (FASHION_MNIST_MEAN, FASHION_MNIST_STD, BatchEvalTransform, BatchViewAugment,
                         eval_pil_transform, multicrop_from_config)

__all__ = ["build_pretrain_dataset", "build_eval_dataset"]


def _fashion_mnist_tensors(data, split: str, subset: int | None):
    images, labels = load_fashion_mnist(resolve_root(data), "train" if split == "train" else "test")
    if subset:
        order = np.random.default_rng(data.get("subset_seed", 0)).permutation(len(images))[:subset]
        images, labels = images[np.sort(order)], labels[np.sort(order)]
    x = torch.from_numpy(images.copy()).unsqueeze(1)
    channels = data.get("channels", 1)
    if channels == 3:
        x = x.expand(-1, 3, -1, -1).contiguous()
    return x, torch.from_numpy(labels), FASHION_MNIST_MEAN * channels, FASHION_MNIST_STD * channels


def build_pretrain_dataset(data, augment_cfg, n_views: int = 2):
    """The training set yielding (views, index, target): `n_views` global views (the method's) and
    `augment.local_crops` local crops after them (size `augment.local_size`, scale `augment.local_scale`)."""
    check_data(data, splits=("train",))
    size = data.image_size
    if data.dataset == "fashion_mnist":
        x, y, mean, std = _fashion_mnist_tensors(data, "train", data.get("train_subset"))
        # augment.crop_size < image_size trains on smaller crops (cheaper) and evaluates at full size
        aug = BatchViewAugment(augment_cfg.get("crop_size") or size, mean, std, crop_scale=augment_cfg.get("crop_scale", (0.5, 1.0)),
                               flip=augment_cfg.get("flip", 0.5), jitter_p=augment_cfg.get("jitter_p", 0.8),
                               brightness=augment_cfg.get("brightness", 0.4),
                               contrast=augment_cfg.get("contrast", 0.4), n_views=n_views,
                               local_crops=augment_cfg.get("local_crops", 0),
                               local_size=augment_cfg.get("local_size"),
                               local_scale=augment_cfg.get("local_scale", (0.05, 0.25)))
        return InMemoryViews(x, y, aug)
    views = multicrop_from_config(augment_cfg, size, n_views)
    if data.dataset in ("csv", "places205"):  # read one by one, as ImageFolder data
        return FileListWithIndex(*csv_samples(data, "train"), views)
    return ImageFolderWithIndex(f"{resolve_root(data)}/{data.get('train_dir', 'train')}", views)


def build_eval_dataset(data, split: str):
    """`split` in {'train', 'val'} with the evaluation transform, yielding (image, index, target)."""
    check_data(data, splits=(split,))
    size = data.image_size
    if data.dataset == "fashion_mnist":
        subset = data.get("train_subset") if split == "train" else data.get("val_subset")
        x, y, mean, std = _fashion_mnist_tensors(data, split, subset)
        return InMemoryEval(x, y, BatchEvalTransform(size, mean, std))
    if data.dataset in ("csv", "places205"):
        return build_csv_dataset(data, split)
    folder = f"{resolve_root(data)}/{data.get(f'{split}_dir', split)}"
    if split == "train" and data.get("train_list"):  # a fixed labelled subset (semi-supervised): no tree scan
        samples, classes = imagenet_list_samples(read_list(list_path(data.train_list)), folder)
        return FileListWithIndex(samples, classes, eval_pil_transform(size))
    return ImageFolderWithIndex(folder, eval_pil_transform(size))
