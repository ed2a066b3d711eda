"""The `transfer` stage: the whole pre-trained network fine-tuned on another dataset (hirl-method.md §3.5).

The seed's transfer is Places205 (``data.dataset: places205``, 205 classes, the ImageNet fine-tuning
recipes with their own LRs); any ``csv`` dataset works the same way (the demo's is Fashion-MNIST images
the pre-training never saw, in five coarse classes it never named, built on first use:
hirl_core/data/make_transfer_demo.py). ``transfer_top1`` is the best val top-1 over the epochs, and
``transfer_top1_untrained`` the same recipe from the untrained backbone; training, the untrained
reference and resume are hirl_core/evals/supervised.py's (``finetune`` mode).
"""
from __future__ import annotations

from .linear import run_classification


def run_transfer(cfg) -> dict:
    return run_classification(cfg, "transfer", mode="finetune")
