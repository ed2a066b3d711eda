"""Multi-crop views: global views first, then local crops, on both augmentation paths."""
import numpy as np
import torch
from PIL import Image

from hirl_core.config import Config
from hirl_core.data.transforms import BatchViewAugment, multicrop_from_config


def test_pil_multicrop_from_a_seed_augment_section():
    aug = Config({"crop_scale": [0.25, 1.0], "interpolation": "bicubic", "color_jitter": [0.4, 0.4, 0.2, 0.1],
                  "jitter_p": 0.8, "gray_p": 0.2, "blur_p": [1.0, 0.1], "solarize_p": [0.0, 0.2], "flip": 0.5,
                  "local_crops": 3, "local_size": 16, "local_scale": [0.05, 0.25], "local_blur_p": 0.5})
    views = multicrop_from_config(aug, 32, 2)(Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3),
                                                                                                dtype=np.uint8)))
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3


def test_batched_multicrop_keeps_the_fast_path():
    aug = BatchViewAugment(28, (0.5,), (0.3,), n_views=2, local_crops=4, local_size=14, local_scale=(0.15, 0.4))
    views = aug(torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8))
    assert [tuple(v.shape) for v in views] == [(5, 1, 28, 28)] * 2 + [(5, 1, 14, 14)] * 4
    assert not torch.equal(views[2], views[3])  # independent crops
