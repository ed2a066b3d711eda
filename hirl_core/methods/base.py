"""The contract every SSL method implements, and the pieces HIRL relies on.

A method is an nn.Module holding `backbone` (the network exported for evaluation, under the seed's
`backbone.` key prefix) and returns a `MethodOutput` from `forward(views)`:
  loss       the method's own SSL loss (scalar)
  embedding  what HIRL's path loss trains on (first view, online/student branch)
  logs       extra scalars to track (floats)
`forward_feature(images)` gives the features HIRL clusters (momentum/teacher branch where one exists).
`after_step(progress)` runs after each optimiser step (momentum encoders, EMA teachers), with
`progress` in [0, 1] over the whole schedule.

Per-iteration schedules that must be known before the forward (teacher temperature, momentum, the
epoch for frozen layers or masking) come from `on_step_start(step, total_steps, steps_per_epoch)`;
`before_optimizer_step()` runs between backward (and clipping) and the optimiser step, for gradients
that must be dropped (DINO's frozen last layer, SwAV's frozen prototypes). Views arrive as
`n_views` global crops followed by any local crops (`augment.local_crops`).
`fixed_lr_prefixes` names parameters whose LR stays at the scaled base LR (SimSiam's predictor).
"""
from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class MethodOutput:
    loss: torch.Tensor
    embedding: torch.Tensor | None = None
    logs: dict[str, float] = field(default_factory=dict)
    # forward_feature's output for the global crops, taken from this training forward (detached, view by
    # view: rows [i*b, (i+1)*b) are view i); lets HIRL's per-iteration re-assignment skip a second forward
    global_features: torch.Tensor | None = None


class SSLMethod(nn.Module):
    n_views: int = 2           # global views the method needs; local crops come after them
    inst_dim: int = 0
    fixed_lr_prefixes: tuple[str, ...] = ()

    def forward(self, views: list[torch.Tensor]) -> MethodOutput:  # pragma: no cover - interface
        raise NotImplementedError

    @torch.no_grad()
    def forward_feature(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def after_step(self, progress: float) -> None:
        """Called after every optimiser step; default: nothing."""

    def on_step_start(self, step: int, total_steps: int, steps_per_epoch: int) -> None:
        """Called before every forward with the global iteration (0-based); default: nothing."""

    def before_optimizer_step(self) -> None:
        """Called after backward and gradient clipping, before the optimiser step; default: nothing."""


def mlp(dims: list[int], batch_norm: bool = False, last_bias: bool = True) -> nn.Sequential:
    """Linear layers of the given widths with (BN +) ReLU between them, none after the last."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        layers.append(nn.Linear(d_in, d_out, bias=last_bias if last else not batch_norm))
        if not last:
            if batch_norm:
                layers.append(nn.BatchNorm1d(d_out))
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """target = m * target + (1 - m) * source, on parameters only: a momentum encoder keeps its own
    BatchNorm statistics, as in MoCo."""
    for t, s in zip(target.parameters(), source.parameters()):
        t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)


def cosine_ramp(start: float, end: float, progress: float) -> float:
    """Half-cosine from `start` (progress 0) to `end` (progress 1): momentum and wd schedules."""
    progress = min(max(progress, 0.0), 1.0)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * progress))


def split_views(views: list[torch.Tensor], n_global: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    return list(views[:n_global]), list(views[n_global:])


def forward_by_resolution(net, views: list[torch.Tensor], bn_stats_from_first: bool = False) -> torch.Tensor:
    """`net` on all views, one call per run of equal-sized consecutive views (global crops together,
    local crops together, as the seed's multi-crop wrapper does); outputs concatenated in view order.
    `bn_stats_from_first`: only the first run (the global crops) moves BatchNorm running statistics;
    the others still normalise with their own batch statistics in training."""
    outs, start = [], 0
    while start < len(views):
        end = start + 1
        while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
            end += 1
        with frozen_bn_stats(net) if bn_stats_from_first and start > 0 else nullcontext():
            outs.append(net(torch.cat(views[start:end])))
        start = end
    return torch.cat(outs)


@contextmanager
def frozen_bn_stats(net: nn.Module):
    """BatchNorm layers of `net` keep their running statistics unchanged (momentum 0: the update
    r = (1 - m) r + m batch_stat leaves r bit-exact) while this block runs."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(bns, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


def cancel_grads(module: nn.Module) -> None:
    """Drop the gradients of `module`: the optimiser then skips its parameters (no update, no decay)."""
    for p in module.parameters():
        p.grad = None
