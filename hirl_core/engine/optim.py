"""Optimisers and per-iteration schedules.

    optimizer:
      name: sgd | adamw | lars
      lr: 0.03              # base LR for a total batch of 256; scaled by total_batch / 256 (the seed's rule)
      weight_decay: 1e-4
      weight_decay_end: null  # set: cosine weight-decay schedule from weight_decay to this (DINO/iBOT)
      momentum: 0.9         # sgd, lars
      betas: [0.9, 0.999]   # adamw
      trust_coefficient: 0.001  # lars
      exclude_1d: null      # biases and norm parameters (1-D): no weight decay, no LARS adaptation;
                            # null = the optimiser's default (adamw, lars: true; sgd: false)
      scale_lr: true
    schedule:
      warmup_epochs: 0
      warmup_start_lr: null # absolute; null: ramp from base_lr / warmup_steps (linear from ~0)
      min_lr: 0.0           # absolute
      by_epoch: false       # true: the LR changes once per epoch (cosine over the floored epoch index)

Parameters named by the method's `fixed_lr_prefixes` keep the scaled base LR throughout (SimSiam's
predictor); `set_lr` skips them and `set_weight_decay` touches only groups that carry weight decay.
"""
from __future__ import annotations

import math

import torch

from ..config import ConfigError
from ..schema import OPTIMIZERS  # the names live with the config schema, which the orchestrator checks
from .lars import LARS


def param_groups(model: torch.nn.Module, weight_decay: float, exclude_1d: bool = True,
                 fixed_lr_prefixes=(), lr: float | None = None):
    """Parameter groups by (excluded from decay?, fixed LR?); empty groups are dropped. Each group
    carries `wd_schedule` (follows the weight-decay schedule), `lars_exclude` and `fix_lr`."""
    buckets: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        excluded = exclude_1d and p.ndim <= 1
        fixed = any(name.startswith(prefix) for prefix in fixed_lr_prefixes)
        buckets.setdefault((excluded, fixed), []).append(p)
    groups = []
    for (excluded, fixed), params in sorted(buckets.items()):
        group = {"params": params, "weight_decay": 0.0 if excluded else weight_decay,
                 "wd_schedule": not excluded, "lars_exclude": excluded, "fix_lr": fixed}
        if fixed and lr is not None:
            group["fixed_lr"] = lr
        groups.append(group)
    return groups


def scaled_lr(opt_cfg, total_batch: int) -> float:
    lr = float(opt_cfg.lr)
    return lr * total_batch / 256 if opt_cfg.get("scale_lr", True) else lr


def build_optimizer(opt_cfg, model: torch.nn.Module, total_batch: int) -> torch.optim.Optimizer:
    name = str(opt_cfg.name).lower()
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer.name {opt_cfg.name!r}; allowed: {', '.join(OPTIMIZERS)}")
    lr, wd = scaled_lr(opt_cfg, total_batch), float(opt_cfg.get("weight_decay", 0.0))
    exclude = opt_cfg.get("exclude_1d")
    exclude = name != "sgd" if exclude is None else bool(exclude)
    groups = param_groups(model, wd, exclude, getattr(model, "fixed_lr_prefixes", ()), lr)
    momentum = float(opt_cfg.get("momentum", 0.9))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=wd)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=wd,
                    trust_coefficient=float(opt_cfg.get("trust_coefficient", 0.001)))
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(opt_cfg.get("betas", (0.9, 0.999))))


def cosine_lr(base_lr: float, step: int, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0,
              warmup_start_lr: float | None = None) -> float:
    """Linear warm-up to base_lr, then half-cosine down to min_lr, evaluated per iteration."""
    if step < warmup_steps:
        if warmup_start_lr is None:
            return base_lr * (step + 1) / warmup_steps
        return warmup_start_lr + (base_lr - warmup_start_lr) * step / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


def scheduled_lr(sched, base_lr: float, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """The LR of iteration `step` under a config's `schedule` section."""
    if sched.get("by_epoch"):
        step = (step // steps_per_epoch) * steps_per_epoch
    warmup = int(sched.get("warmup_epochs", 0) * steps_per_epoch)
    start = sched.get("warmup_start_lr")
    return cosine_lr(base_lr, step, total_steps, warmup, float(sched.get("min_lr", 0.0)),
                     None if start is None else float(start))


def scheduled_weight_decay(opt_cfg, step: int, total_steps: int) -> float | None:
    """DINO's cosine weight-decay schedule (per iteration, no warm-up); None when not configured."""
    end = opt_cfg.get("weight_decay_end")
    if end is None:
        return None
    start, t = float(opt_cfg.get("weight_decay", 0.0)), min(1.0, step / max(1, total_steps))
    return float(end) + 0.5 * (start - float(end)) * (1 + math.cos(math.pi * t))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["fixed_lr"] if group.get("fix_lr") else lr


def set_weight_decay(optimizer: torch.optim.Optimizer, wd: float) -> None:
    for group in optimizer.param_groups:
        if group.get("wd_schedule", True):
            group["weight_decay"] = wd


def clip_gradients(params, max_norm: float, mode: str = "global") -> None:
    """`global`: one norm over all gradients (torch's clip_grad_norm_). `per_param`: each tensor's
    gradient clipped to `max_norm` on its own, as the seed's DINO/iBOT do."""
    params = [p for p in params if p.grad is not None]
    if mode == "global":
        torch.nn.utils.clip_grad_norm_(params, max_norm)
    elif mode == "per_param":
        if not params:
            return
        grads = [p.grad.detach() for p in params]
        factors = max_norm / (torch.stack(torch._foreach_norm(grads, dtype=torch.float32)) + 1e-6)
        # Only gradients over the bound are scaled: multiplying the rest by 1 cost a pass over every
        # gradient each step. One host read for all the decisions, not one per tensor.
        for grad, factor, over in zip(grads, factors, (factors < 1).tolist()):
            if over:
                grad.mul_(factor.to(grad.dtype))
    else:
        raise ConfigError(f"unknown clip_grad_mode {mode!r}; allowed: global, per_param")
