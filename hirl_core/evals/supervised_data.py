"""Training sets of the supervised evaluations: the evaluation set of a split with a training transform.

    augment:
      random_resized_crop: false  # RandomResizedCrop at data.image_size (scale crop_scale); false: the eval view
      crop_scale: [0.08, 1.0]
      flip: 0.5                   # horizontal flip probability (only with random_resized_crop on PIL data)
      rand_augment: null          # timm's policy string, e.g. rand-m9-mstd0.5-inc1 (the seed's ViT fine-tuning)
      color_jitter: 0.4           # PIL data: timm's jitter (ignored when rand_augment is set, as in timm)
      interpolation: bicubic      # PIL data
      reprob: 0.0                 # timm RandomErasing probability, after normalisation
      remode: pixel               # const | rand | pixel
      recount: 1

Two paths, as for pre-training (hirl_core/data/transforms.py):
* in-memory uint8 tensors (Fashion-MNIST): one batched transform per batch. RandAugment there is
  torchvision's ``transforms.v2.RandAugment`` applied image by image (on a whole batch it would draw one
  op for all images), with ``num_magnitude_bins = 11`` so that magnitude m means timm's m/10 of each
  op's range; timm's ``mstd`` (magnitude noise) and ``inc`` (increasing variants) have no torchvision
  counterpart and are dropped. Crop and flip are one ``grid_sample`` for the batch, as pre-training's.
* ImageFolder (PIL): timm's ``create_transform`` (RandomResizedCrop, flip, ``rand_augment_transform``
  or colour jitter, normalisation, RandomErasing), the seed's recipe.
"""
from __future__ import annotations

import re

import torch

from ..config import ConfigError
from ..data.build import build_eval_dataset
from ..data.datasets import ImageFolderWithIndex, InMemoryEval
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, BatchViewAugment
from ..schema import ERASE_MODES as RE_MODES


def _rand_augment_v2(policy: str):
    """torchvision's RandAugment for a timm policy string ``rand-m9-n2-...`` (n defaults to 2)."""
    from torchvision.transforms import v2

    fields = dict(re.findall(r"-(mstd|inc|m|n|w|p)([\d.]+)", "-" + policy.removeprefix("rand")))
    if not policy.startswith("rand") or "m" not in fields:
        raise ConfigError(f"augment.rand_augment={policy!r} is not a RandAugment policy such as rand-m9-mstd0.5-inc1")
    return v2.RandAugment(num_ops=int(fields.get("n", 2)), magnitude=int(float(fields["m"])), num_magnitude_bins=11)


def _random_erasing(aug):
    if float(aug.get("reprob", 0.0)) <= 0:
        return None
    from timm.data.random_erasing import RandomErasing

    mode = aug.get("remode", "pixel")
    if mode not in RE_MODES:
        raise ConfigError(f"augment.remode={mode!r} is not allowed; allowed: {', '.join(RE_MODES)}")
    return RandomErasing(float(aug["reprob"]), mode=mode, max_count=int(aug.get("recount", 1)), device="cpu")


class BatchTrainTransform:
    """uint8 batch → [RandAugment per image] → [crop + flip] → normalise → [random erasing]."""

    def __init__(self, image_size: int, mean, std, aug):
        self.rand_augment = _rand_augment_v2(aug["rand_augment"]) if aug.get("rand_augment") else None
        crop = bool(aug.get("random_resized_crop", False))
        # no crop: the full image, only flipped (a unit crop at ratio 1 is the identity resampling)
        self.geometry = BatchViewAugment(image_size, mean, std, crop_scale=tuple(aug.get("crop_scale", (0.08, 1.0)))
                                         if crop else (1.0, 1.0), ratio=(3 / 4, 4 / 3) if crop else (1.0, 1.0),
                                         flip=float(aug.get("flip", 0.5)), jitter_p=0.0, n_views=1)
        self.erasing = _random_erasing(aug)

    def __call__(self, images_uint8: torch.Tensor) -> torch.Tensor:
        x = images_uint8
        if self.rand_augment is not None:
            x = torch.stack([self.rand_augment(img) for img in x])
        x = self.geometry(x)[0]
        return self.erasing(x) if self.erasing is not None else x


def is_random(aug) -> bool:
    """Whether the training transform draws anything (if not, a frozen trunk's features are fixed)."""
    return bool(aug.get("random_resized_crop") or aug.get("rand_augment") or float(aug.get("reprob", 0.0)) > 0
                or float(aug.get("flip", 0.5)) > 0)


def build_train_dataset(data, aug, split: str = "train"):
    """The ``split`` images with the training transform ``aug`` (the eval transform when it draws nothing)."""
    base = build_eval_dataset(data, split)
    if not is_random(aug):
        return base
    if isinstance(base, InMemoryEval):
        mean, std = base.transform.mean.flatten().tolist(), base.transform.std.flatten().tolist()
        return InMemoryEval(base.images, base.targets, BatchTrainTransform(data.image_size, mean, std, aug))
    if isinstance(base, ImageFolderWithIndex):
        from timm.data import create_transform

        base.transform = create_transform(
            data.image_size, is_training=True, scale=tuple(aug.get("crop_scale", (0.08, 1.0))),
            hflip=float(aug.get("flip", 0.5)), auto_augment=aug.get("rand_augment"),
            color_jitter=float(aug.get("color_jitter", 0.4)), interpolation=aug.get("interpolation", "bicubic"),
            re_prob=float(aug.get("reprob", 0.0)), re_mode=aug.get("remode", "pixel"),
            re_count=int(aug.get("recount", 1)), mean=IMAGENET_MEAN, std=IMAGENET_STD)
        return base
    raise ConfigError(f"no training transform for a {type(base).__name__} dataset")


def num_classes_of(dataset) -> int:
    """The class count a dataset declares (its class list), else the largest label + 1."""
    classes = getattr(dataset, "classes", None) or getattr(getattr(dataset, "folder", None), "classes", None)
    return len(classes) if classes else int(torch.as_tensor(dataset.targets).max()) + 1
