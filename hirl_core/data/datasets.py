"""Datasets yielding `(views, index, target)` for pre-training and `(image, index, target)` for evaluation.

The index is the sample's position in the dataset: HIRL looks up each image's cluster labels by it.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset


class InMemoryViews(Dataset):
    """Images held as one uint8 tensor [N, C, H, W]; views made by a batch augmentation.

    `__getitems__` lets the DataLoader augment a whole batch in one call (torch >= 2.2 uses it when
    present), which is what keeps the CPU demo fast; `__getitem__` is the same thing for one image.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, augment):
        self.images, self.targets, self.augment = images, targets, augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.__getitems__([i])[0]

    def __getitems__(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.long)
        views = self.augment(self.images[idx])
        return [([v[j] for v in views], int(i), int(self.targets[i])) for j, i in enumerate(idx)]


class InMemoryEval(Dataset):
    def __init__(self, images: torch.Tensor, targets: torch.Tensor, transform):
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.__getitems__([i])[0]

    def __getitems__(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self.transform(self.images[idx])
        return [(x[j], int(i), int(self.targets[i])) for j, i in enumerate(idx)]


class ImageFolderWithIndex(Dataset):
    """The seed's ImageFolder layout (root/<class>/<image>) with the sample index returned."""

    def __init__(self, root: str, transform):
        from torchvision.datasets import ImageFolder

        self.folder = ImageFolder(root)
        self.transform = transform
        self.targets = torch.as_tensor(self.folder.targets)

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int):
        path, target = self.folder.samples[i]
        return self.transform(self.folder.loader(path)), i, target
