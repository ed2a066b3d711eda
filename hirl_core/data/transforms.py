"""Augmentations.

Two families, one contract (a callable turning images into a list of views):

* `BatchViewAugment` works on uint8 tensors, a whole batch at a time (one `grid_sample` does the
  random-resized-crop and flip of every image), for in-memory datasets such as Fashion-MNIST. On two
  CPU cores per-image PIL pipelines would cost as much as the training step itself.
* `moco_v2_pil_views` is the seed's MoCo v2 recipe on PIL images (ImageNet-style ImageFolder data).

MoCo v2 scaled to 28 px grayscale (what changed and why):
* crop scale (0.5, 1) instead of (0.2, 1): a 20 % crop of a 28 px garment keeps ~12 px, too little
  object to contrast; the demo's untrained baseline is strong and over-aggressive crops lose to it;
* colour jitter reduces to brightness + contrast (no saturation/hue on one channel), grayscale-p is moot;
* Gaussian blur is off: σ ∈ [0.1, 2] on a 28 px image erases most of the texture that tells
  shirts from pullovers;
* horizontal flip, output size and normalisation are unchanged in kind (dataset mean/std).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)


class BatchViewAugment:
    """Random-resized-crop + flip + brightness/contrast jitter on a batch of uint8 images."""

    def __init__(self, image_size: int, mean, std, crop_scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3),
                 flip=0.5, jitter_p=0.8, brightness=0.4, contrast=0.4, n_views=2):
        self.image_size, self.n_views = image_size, n_views
        self.crop_scale, self.log_ratio = tuple(crop_scale), (math.log(ratio[0]), math.log(ratio[1]))
        self.flip, self.jitter_p, self.brightness, self.contrast = flip, jitter_p, brightness, contrast
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def _one_view(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        area = torch.empty(b).uniform_(*self.crop_scale)
        ratio = torch.exp(torch.empty(b).uniform_(*self.log_ratio))
        w = torch.sqrt(area * ratio).clamp(max=1.0)  # crop size as a fraction of the image side
        h = torch.sqrt(area / ratio).clamp(max=1.0)
        cx = (torch.rand(b) * 2 - 1) * (1 - w)  # crop centre in [-1, 1] coordinates, crop kept inside
        cy = (torch.rand(b) * 2 - 1) * (1 - h)
        sign = torch.where(torch.rand(b) < self.flip, -1.0, 1.0)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2] = w * sign, cx
        theta[:, 1, 1], theta[:, 1, 2] = h, cy
        grid = F.affine_grid(theta, [b, x.shape[1], self.image_size, self.image_size], align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        apply = (torch.rand(b, 1, 1, 1) < self.jitter_p).float()
        bright = 1 + (torch.rand(b, 1, 1, 1) * 2 - 1) * self.brightness * apply
        contr = 1 + (torch.rand(b, 1, 1, 1) * 2 - 1) * self.contrast * apply
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = ((out * bright - mean * bright) * contr + mean * bright).clamp(0, 1)
        return (out - self.mean) / self.std

    def __call__(self, images_uint8: torch.Tensor) -> list[torch.Tensor]:
        x = images_uint8.float().div_(255)
        return [self._one_view(x) for _ in range(self.n_views)]


class BatchEvalTransform:
    """Resize (if needed) + normalise, for features of in-memory datasets."""

    def __init__(self, image_size: int, mean, std):
        self.image_size = image_size
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def __call__(self, images_uint8: torch.Tensor) -> torch.Tensor:
        x = images_uint8.float().div_(255)
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std


def moco_v2_pil_views(image_size: int = 224, crop_scale=(0.2, 1.0), n_views: int = 2):
    """The seed's MoCo v2 augmentation on PIL images; returns a callable img -> [views]."""
    from torchvision import transforms as T

    blur_kernel = 2 * (image_size // 20) + 1  # ~10 % of the side, odd, as in SimCLR/MoCo v2
    one = T.Compose([
        T.RandomResizedCrop(image_size, scale=tuple(crop_scale)),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([T.GaussianBlur(blur_kernel, sigma=(0.1, 2.0))], p=0.5),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    return lambda img: [one(img) for _ in range(n_views)]


def eval_pil_transform(image_size: int = 224):
    """Resize(256/224 × size) + CenterCrop(size), the seed's evaluation transform."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(int(round(image_size * 256 / 224))), T.CenterCrop(image_size),
                      T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
