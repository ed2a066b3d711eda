"""The `finetune` stage: the whole pre-trained network plus a linear head, trained end to end (§3.3).

The recipe is the config's: layer-wise LR decay for ViTs (``optimizer.layer_decay``), drop path
(``drop_path_rate``), timm Mixup/CutMix with soft-target CE or label smoothing, RandAugment and random
erasing (``augment``), model EMA (``model_ema.decay``), AdamW or SGD; hirl_core/evals/supervised.py
trains it (and the untrained reference) with the shared lifecycle.
"""
from __future__ import annotations

from .linear import run_classification


def run_finetune(cfg) -> dict:
    return run_classification(cfg, "finetune", mode="finetune")
