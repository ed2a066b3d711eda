"""Augmentations.

Two families, one contract (a callable turning images into a list of views):

* `BatchViewAugment` works on uint8 tensors, a whole batch at a time (one `grid_sample` does the
  random-resized-crop and flip of every image), for in-memory datasets such as Fashion-MNIST. On two
  CPU cores per-image PIL pipelines would cost as much as the training step itself.
* `MultiCropPIL` is the seeds' recipes on PIL images (ImageNet-style ImageFolder data): global views
  with per-view blur/solarize probabilities (MoCo v2, SimSiam, SwAV, MoCo v3/BYOL, DINO, iBOT) plus
  optional local crops (SwAV, DINO, iBOT); `moco_v2_pil_views` is its MoCo v2 setting.

Views are always the global views first, then the local crops (smaller, their own scale range).

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
                 flip=0.5, jitter_p=0.8, brightness=0.4, contrast=0.4, n_views=2,
                 local_crops=0, local_size=None, local_scale=(0.05, 0.25)):
        self.image_size, self.n_views = image_size, n_views
        self.local_crops, self.local_size = local_crops, local_size or image_size
        self.local_scale = tuple(local_scale)
        self.crop_scale, self.log_ratio = tuple(crop_scale), (math.log(ratio[0]), math.log(ratio[1]))
        self.flip, self.jitter_p, self.brightness, self.contrast = flip, jitter_p, brightness, contrast
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def _one_view(self, x: torch.Tensor, size: int | None = None, scale=None) -> torch.Tensor:
        b, size, scale = x.shape[0], size or self.image_size, scale or self.crop_scale
        area = torch.empty(b).uniform_(*scale)
        ratio = torch.exp(torch.empty(b).uniform_(*self.log_ratio))
        w = torch.sqrt(area * ratio).clamp(max=1.0)  # crop size as a fraction of the image side
        h = torch.sqrt(area / ratio).clamp(max=1.0)
        cx = (torch.rand(b) * 2 - 1) * (1 - w)  # crop centre in [-1, 1] coordinates, crop kept inside
        cy = (torch.rand(b) * 2 - 1) * (1 - h)
        sign = torch.where(torch.rand(b) < self.flip, -1.0, 1.0)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2] = w * sign, cx
        theta[:, 1, 1], theta[:, 1, 2] = h, cy
        grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        apply = (torch.rand(b, 1, 1, 1) < self.jitter_p).float()
        bright = 1 + (torch.rand(b, 1, 1, 1) * 2 - 1) * self.brightness * apply
        contr = 1 + (torch.rand(b, 1, 1, 1) * 2 - 1) * self.contrast * apply
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = ((out * bright - mean * bright) * contr + mean * bright).clamp(0, 1)
        return (out - self.mean) / self.std

    def __call__(self, images_uint8: torch.Tensor) -> list[torch.Tensor]:
        x = images_uint8.float().div_(255)
        views = [self._one_view(x) for _ in range(self.n_views)]
        return views + [self._one_view(x, self.local_size, self.local_scale) for _ in range(self.local_crops)]


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


class RandomPILBlur:
    """Gaussian blur with σ ~ U[0.1, 2] applied with probability p, by PIL's own filter (radius = σ) as
    the seeds do; torchvision's GaussianBlur would need a kernel size, which truncates large σ."""

    def __init__(self, p: float, sigma=(0.1, 2.0)):
        self.p, self.sigma = p, sigma

    def __call__(self, img):
        import random

        from PIL import ImageFilter

        if self.p <= 0 or random.random() >= self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))


class MultiCropPIL:
    """img -> [global views..., local views...] with the seeds' augmentations:

    RandomResizedCrop (scale per crop kind), flip, ColorJitter(b, c, s, h) with p=jitter_p, grayscale
    with p=gray_p, Gaussian blur (p per global view / local_blur_p), solarize (p per global view),
    ToTensor, ImageNet normalisation. Flip commutes with the point-wise colour operations and the
    isotropic blur, so the seeds' differing orders give the same distribution.
    """

    def __init__(self, image_size=224, n_global=2, crop_scale=(0.2, 1.0), color_jitter=(0.4, 0.4, 0.4, 0.1),
                 jitter_p=0.8, gray_p=0.2, blur_p=(0.5, 0.5), solarize_p=(0.0, 0.0), flip=0.5,
                 interpolation="bilinear", local_crops=0, local_size=96, local_scale=(0.05, 0.14),
                 local_blur_p=0.5):
        from torchvision import transforms as T

        interp = T.InterpolationMode(interpolation)
        blur_p = list(blur_p) if isinstance(blur_p, (list, tuple)) else [blur_p] * n_global
        solarize_p = list(solarize_p) if isinstance(solarize_p, (list, tuple)) else [solarize_p] * n_global
        if len(blur_p) < n_global or len(solarize_p) < n_global:
            raise ValueError(f"augment.blur_p/solarize_p need one value per global view ({n_global})")
        colour = [T.RandomApply([T.ColorJitter(*color_jitter)], p=jitter_p), T.RandomGrayscale(p=gray_p)]
        finish = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]

        def pipeline(size, scale, blur, solarize):
            steps = [T.RandomResizedCrop(size, scale=tuple(scale), interpolation=interp),
                     T.RandomHorizontalFlip(p=flip), *colour, RandomPILBlur(blur)]
            if solarize > 0:
                steps.append(T.RandomSolarize(128, p=solarize))
            return T.Compose(steps + finish)

        self.views = [pipeline(image_size, crop_scale, blur_p[i], solarize_p[i]) for i in range(n_global)]
        self.views += [pipeline(local_size, local_scale, local_blur_p, 0.0)] * local_crops

    def __call__(self, img):
        return [view(img) for view in self.views]


def multicrop_from_config(augment_cfg, image_size: int, n_global: int) -> MultiCropPIL:
    keys = ("crop_scale", "color_jitter", "jitter_p", "gray_p", "blur_p", "solarize_p", "flip", "interpolation",
            "local_crops", "local_size", "local_scale", "local_blur_p")
    return MultiCropPIL(image_size, n_global, **{k: augment_cfg[k] for k in keys if k in augment_cfg})


def moco_v2_pil_views(image_size: int = 224, crop_scale=(0.2, 1.0), n_views: int = 2):
    """The seed's MoCo v2 augmentation on PIL images; returns a callable img -> [views]."""
    return MultiCropPIL(image_size, n_views, crop_scale=crop_scale)


def eval_pil_transform(image_size: int = 224):
    """Resize(256/224 × size, bicubic) + CenterCrop(size), the seed's evaluation transform."""
    from torchvision import transforms as T

    resize = T.Resize(int(round(image_size * 256 / 224)), interpolation=T.InterpolationMode.BICUBIC)
    return T.Compose([resize, T.CenterCrop(image_size),
                      T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
