"""The contract every SSL method implements, and the pieces HIRL relies on.

A method is an nn.Module holding `backbone` (the network exported for evaluation, under the seed's
`backbone.` key prefix) and returns a `MethodOutput` from `forward(views)`:
  loss       the method's own SSL loss (scalar)
  embedding  what HIRL's path loss trains on (first view, online/student branch)
  logs       extra scalars to track (floats)
`forward_feature(images)` gives the features HIRL clusters (momentum/teacher branch where one exists).
`after_step(progress)` runs after each optimiser step (momentum encoders, EMA teachers), with
`progress` in [0, 1] over the whole schedule.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class MethodOutput:
    loss: torch.Tensor
    embedding: torch.Tensor | None = None
    logs: dict[str, float] = field(default_factory=dict)


class SSLMethod(nn.Module):
    n_views: int = 2
    inst_dim: int = 0

    def forward(self, views: list[torch.Tensor]) -> MethodOutput:  # pragma: no cover - interface
        raise NotImplementedError

    @torch.no_grad()
    def forward_feature(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def after_step(self, progress: float) -> None:
        """Called after every optimiser step; default: nothing."""


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
