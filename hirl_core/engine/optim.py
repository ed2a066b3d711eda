"""Optimisers and per-iteration schedules.

    optimizer:
      name: sgd | adamw
      lr: 0.03              # base LR for a total batch of 256; scaled by total_batch / 256 (the seed's rule)
      weight_decay: 1e-4
      momentum: 0.9         # sgd
      betas: [0.9, 0.999]   # adamw
      scale_lr: true
    schedule:
      warmup_epochs: 0
      min_lr: 0.0
"""
from __future__ import annotations

import math

import torch

from ..config import ConfigError

OPTIMIZERS = ("sgd", "adamw")


def param_groups(model: torch.nn.Module, weight_decay: float):
    """Two groups: no weight decay on biases and normalisation parameters (1-D tensors)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def scaled_lr(opt_cfg, total_batch: int) -> float:
    lr = float(opt_cfg.lr)
    return lr * total_batch / 256 if opt_cfg.get("scale_lr", True) else lr


def build_optimizer(opt_cfg, model: torch.nn.Module, total_batch: int) -> torch.optim.Optimizer:
    name = str(opt_cfg.name).lower()
    lr, wd = scaled_lr(opt_cfg, total_batch), float(opt_cfg.get("weight_decay", 0.0))
    if name == "sgd":
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=lr, momentum=opt_cfg.get("momentum", 0.9), weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(param_groups(model, wd), lr=lr, betas=tuple(opt_cfg.get("betas", (0.9, 0.999))))
    raise ConfigError(f"unknown optimizer.name {opt_cfg.name!r}; allowed: {', '.join(OPTIMIZERS)}")


def cosine_lr(base_lr: float, step: int, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0) -> float:
    """Linear warm-up to base_lr, then half-cosine down to min_lr, evaluated per iteration."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
