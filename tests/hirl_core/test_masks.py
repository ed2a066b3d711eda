"""Block-wise masks: shapes, the ratio reached, and the per-image ratio draw."""
import random

import numpy as np
import torch

from hirl_core.methods.masking import batch_block_masks, block_mask, draw_ratio


def test_block_mask_shape_and_ratio():
    rng = random.Random(0)
    ratios = []
    for _ in range(200):
        m = block_mask(14, 14, 0.3, rng=rng)
        assert m.shape == (14, 14) and m.dtype == bool
        assert m.sum() <= round(0.3 * 196)  # never overshoots the target
        ratios.append(m.mean())
    assert 0.27 < np.mean(ratios) <= round(0.3 * 196) / 196  # and (nearly) reaches it
    assert block_mask(14, 14, 0.0, rng=rng).sum() == 0


def test_masks_are_blocks_not_scattered_patches():
    m = block_mask(14, 14, 0.2, rng=random.Random(1))
    rows, cols = np.nonzero(m)
    # a scattered mask of 39 patches would touch almost every row; blocks touch few
    assert len(set(rows)) < 14 and m.sum() > 0


def test_ratio_draw_follows_the_seed_setting():
    rng = random.Random(0)
    draws = np.array([draw_ratio([0.0, 0.3], [0.0, 0.2], rng) for _ in range(4000)])
    assert 0.45 < np.mean(draws == 0) < 0.55  # half the images unmasked
    nz = draws[draws > 0]
    assert nz.min() >= 0.1 and nz.max() <= 0.5 and abs(nz.mean() - 0.3) < 0.01


def test_batch_masks():
    masks = batch_block_masks(8, 7, 5, [0.4], [0.0], rng=random.Random(2))
    assert masks.shape == (8, 7, 5) and masks.dtype == torch.bool
    assert (masks.flatten(1).sum(1) <= 14).all() and masks.any()
