"""Block-wise masks for masked image modelling (BEiT's generator, as iBOT uses it for global crops).

Per image a mask ratio is drawn (`pred_ratio`/`pred_ratio_var` pairs: one pair chosen uniformly, the
ratio uniform in [r - v, r + v], or exactly r when v = 0), then rectangles of random area (at least
`min_patches`) and log-uniform aspect ratio are added until the target count of masked patches is
reached; a rectangle may overlap earlier ones but must add at least one new patch and must not
overshoot the target. Ten failed placements in a row end the image (the count then falls short, so
the realised ratio is at most the target).

Python's `random` drives it (the engine re-seeds it per epoch and rank, so resumed runs replay the
same masks); numpy holds the grid.
"""
from __future__ import annotations

import math
import random

import numpy as np
import torch


def draw_ratio(pred_ratio, pred_ratio_var, rng: random.Random | None = None) -> float:
    rng = rng or random
    ratios = pred_ratio if isinstance(pred_ratio, (list, tuple)) else [pred_ratio]
    variances = pred_ratio_var if isinstance(pred_ratio_var, (list, tuple)) else [pred_ratio_var]
    if len(ratios) != len(variances):
        raise ValueError("pred_ratio and pred_ratio_var need the same length")
    r, v = rng.choice(list(zip(ratios, variances)))
    if v > r:
        raise ValueError(f"pred_ratio_var {v} exceeds pred_ratio {r}")
    return rng.uniform(r - v, r + v) if v > 0 else float(r)


def block_mask(height: int, width: int, ratio: float, aspect=(0.3, 1 / 0.3), min_patches: int = 4,
               rng: random.Random | None = None) -> np.ndarray:
    """A [height, width] bool mask with at most round(ratio * height * width) patches set."""
    rng = rng or random
    mask = np.zeros((height, width), dtype=bool)
    target = int(round(ratio * height * width))
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    count = 0
    while count < target:
        room, added = target - count, 0
        for _ in range(10):
            area = rng.uniform(min_patches, room)
            a = math.exp(rng.uniform(*log_aspect))
            h, w = int(round(math.sqrt(area * a))), int(round(math.sqrt(area / a)))
            if not (0 < h < height and 0 < w < width):
                continue
            top, left = rng.randint(0, height - h), rng.randint(0, width - w)
            new = h * w - int(mask[top:top + h, left:left + w].sum())
            if 0 < new <= room:
                mask[top:top + h, left:left + w] = True
                added = new
                break
        if added == 0:
            break
        count += added
    return mask


def batch_block_masks(batch: int, height: int, width: int, pred_ratio, pred_ratio_var,
                      aspect=(0.3, 1 / 0.3), rng: random.Random | None = None) -> torch.Tensor:
    """[batch, height, width] bool masks, each image with its own drawn ratio."""
    masks = [block_mask(height, width, draw_ratio(pred_ratio, pred_ratio_var, rng), aspect, rng=rng)
             for _ in range(batch)]
    return torch.from_numpy(np.stack(masks))
