"""Datasets yielding `(views, index, target)` for pre-training and `(image, index, target)` for evaluation.

The index is the sample's position in the dataset: HIRL looks up each image's cluster labels by it.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset


class _InMemory(Dataset):
    """Images held as one uint8 tensor [N, C, H, W], transformed a whole batch at a time.

    `__getitems__` lets the DataLoader transform a batch in one call (torch >= 2.2 uses it when
    present), which is what keeps the CPU demo fast; `__getitem__` is the same thing for one image.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, transform):
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.__getitems__([i])[0]

    def _sample(self, out, j: int):
        raise NotImplementedError

    def __getitems__(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.long)
        out = self.transform(self.images[idx])
        return [(self._sample(out, j), int(i), int(self.targets[i])) for j, i in enumerate(idx)]


class InMemoryViews(_InMemory):
    """Pre-training: `transform` is a batch augmentation returning a list of views."""

    def _sample(self, views, j: int):
        return [v[j] for v in views]


class InMemoryEval(_InMemory):
    """Evaluation: `transform` returns one batch tensor."""

    def _sample(self, x, j: int):
        return x[j]


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


class _FileList:
    """What ImageFolderWithIndex reads of torchvision's ImageFolder (samples, classes, loader), for
    images named by a list instead of found by scanning a tree."""

    def __init__(self, samples, classes, mode: str):
        self.samples, self.classes, self.mode = list(samples), list(classes), mode
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def loader(self, path: str):
        from PIL import Image

        with open(path, "rb") as f:
            return Image.open(f).convert(self.mode)


class FileListWithIndex(ImageFolderWithIndex):
    """Images named by (path, label) pairs (a CSV dataset, the ImageNet 1 %/10 % lists), read and
    transformed exactly as ImageFolder ones, so every transform built for those applies."""

    def __init__(self, samples, classes, transform, channels: int = 3):
        self.folder = _FileList(samples, classes, "L" if channels == 1 else "RGB")
        self.transform = transform
        self.targets = torch.as_tensor(self.folder.targets, dtype=torch.long)
