"""Semantic paths: level heads, negative-path sampling and the path-discrimination loss (§1.4-1.6).

For image i with level embeddings z^l (unit norm) and a path p = (c^1, …, c^L) of prototypes, the match
score per level is s^l = (<z^l, c^l> + 1) / 2 and the path probability is the product over levels.
The loss normalises the prototypes itself, as the seed's does, and z as well: a score is in [0, 1] only
for unit vectors, and one above 1 would make log(1 - s) NaN without a word.
The loss is a binary cross-entropy: the image's own path against the mean over sampled negative paths
that differ from it (true-negative mask); no softmax, no temperature. Prototypes are constants.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..methods.base import mlp

EPS = 1e-6


class LevelHeads(nn.Module):
    """L projection heads g_l, each `num_mlp_layer` Linear(D, D) layers with BN + ReLU between them."""

    def __init__(self, dim: int, num_levels: int, num_mlp_layer: int = 2):
        super().__init__()
        self.heads = nn.ModuleList(mlp([dim] * (num_mlp_layer + 1), batch_norm=True) for _ in range(num_levels))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """[B, D] → unit-norm [B, L, D]."""
        return torch.stack([F.normalize(h(emb), dim=1) for h in self.heads], dim=1)


def lift(leaves: torch.Tensor, parents: list[torch.Tensor]) -> torch.Tensor:
    """Leaf ids [...] → full tree paths [..., L] through the parent maps."""
    levels = [leaves]
    for p in parents:
        levels.append(p[levels[-1]])
    return torch.stack(levels, dim=-1)


def sample_negative_paths(batch: int, num_neg: int, num_leaves: int, parents, generator=None,
                          device=None) -> torch.Tensor:
    """[B, M, L]: M leaves per image drawn uniformly with replacement, lifted to full paths."""
    leaves = torch.randint(num_leaves, (batch, num_neg), generator=generator, device=device)
    return lift(leaves, parents)


def path_scores(z: torch.Tensor, prototypes: list[torch.Tensor], paths: torch.Tensor) -> torch.Tensor:
    """Per-level match scores [B, P, L] of z [B, L, D] against paths [B, P, L] (ids per level)."""
    per_level = []
    for level, protos in enumerate(prototypes):
        sims = z[:, level] @ protos.T                     # [B, K_l]
        per_level.append(sims.gather(1, paths[..., level]))
    return (torch.stack(per_level, dim=-1) + 1) / 2


def path_loss(z: torch.Tensor, prototypes: list[torch.Tensor], pos_paths: torch.Tensor,
              neg_paths: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """L_SPD (the seed's exact form) and per-level accuracy logs.

    z [B, L, D]; prototypes [K_l, D] per level (both normalised here); pos_paths [B, L]; neg_paths [B, M, L]."""
    z = F.normalize(z, dim=-1)
    prototypes = [F.normalize(p.detach(), dim=1) for p in prototypes]
    pos = path_scores(z, prototypes, pos_paths[:, None, :])[:, 0]         # [B, L]
    neg = path_scores(z, prototypes, neg_paths)                           # [B, M, L]
    true_neg = (neg_paths != pos_paths[:, None, :]).any(dim=-1).float()   # [B, M]
    l_pos = -torch.log(pos.prod(dim=-1) + EPS)
    l_neg_each = -torch.log(1 - neg.prod(dim=-1) + EPS)
    l_neg = (true_neg * l_neg_each).sum(dim=1) / (true_neg.sum(dim=1) + EPS)
    loss = torch.stack([l_pos, l_neg], dim=1).mean()
    with torch.no_grad():
        logs = {}
        for level in range(z.shape[1]):
            differs = neg_paths[..., level] != pos_paths[:, None, level]
            best_neg = torch.where(differs, neg[..., level], torch.full_like(neg[..., level], -1.0)).amax(dim=1)
            logs[f"path_acc_l{level + 1}"] = (pos[:, level] > best_neg).float().mean().item()
        neg_path = torch.where(true_neg.bool(), neg.prod(-1), torch.full_like(true_neg, -1.0)).amax(dim=1)
        logs["path_acc"] = (pos.prod(-1) > neg_path).float().mean().item()
    return loss, logs
