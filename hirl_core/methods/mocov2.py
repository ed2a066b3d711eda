"""MoCo v2 (He et al. 2020; Chen et al. 2020): query encoder, momentum key encoder, a queue of keys,
InfoNCE. Seed settings: T = 0.2, m = 0.999, queue 16,384, head 2048→2048→ReLU→128 (no BN).

    method:
      name: mocov2
      dim: 128            # output of the projection head
      hidden_dim: 2048    # hidden width of the head (null: the backbone's width)
      queue_size: 16384
      momentum: 0.999
      temperature: 0.2
      symmetric: false    # seed: one direction (q from view 1, k from view 2)
      bn_splits: 1        # one process only: emulate shuffle-BN with this many BN groups
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.distributed import concat_all_gather, is_dist
from .base import MethodOutput, SSLMethod, ema_update, mlp


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE of L2-normalised queries q [B, D] against their keys k [B, D] (positives) and the
    queue [D, K] (negatives); the positive is class 0."""
    l_pos = (q * k).sum(dim=1, keepdim=True)
    l_neg = q @ queue
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


class MoCoV2(SSLMethod):
    n_views = 2

    def __init__(self, backbone: nn.Module, cfg):
        super().__init__()
        hidden = cfg.get("hidden_dim") or backbone.out_dim
        self.inst_dim = cfg.get("dim", 128)
        self.temperature, self.momentum = cfg.get("temperature", 0.2), cfg.get("momentum", 0.999)
        self.symmetric = cfg.get("symmetric", False)
        # Without shuffle-BN, BN's batch statistics let the model "cheat" (He et al. 2020, §3.3): on one
        # process, BN runs in this many groups instead (MoCo's own single-GPU demo uses 8 splits).
        self.bn_splits = int(cfg.get("bn_splits", 1))
        self.backbone = backbone
        self.head = mlp([backbone.out_dim, hidden, self.inst_dim])
        self.backbone_k = copy.deepcopy(backbone)
        self.head_k = copy.deepcopy(self.head)
        for p in list(self.backbone_k.parameters()) + list(self.head_k.parameters()):
            p.requires_grad = False
        queue = F.normalize(torch.randn(self.inst_dim, cfg.get("queue_size", 16384)), dim=0)
        self.register_buffer("queue", queue)
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def _keys(self, x: torch.Tensor) -> torch.Tensor:
        # Shuffle-BN: across ranks, each rank normalises a random mix of the global batch, so BN
        # statistics cannot leak which key belongs to which query. A single process emulates it with
        # `bn_splits` BN groups: keys are normalised in shuffled groups, queries in ordered ones.
        if not is_dist():
            if self.bn_splits <= 1:
                return F.normalize(self.head_k(self.backbone_k(x)), dim=1)
            perm = torch.randperm(len(x), device=x.device)
            k = torch.empty(len(x), self.inst_dim, device=x.device)
            k[perm] = self.head_k(torch.cat([self.backbone_k(c) for c in x[perm].chunk(self.bn_splits)])).float()
            return F.normalize(k, dim=1)
        import torch.distributed as dist

        gathered = concat_all_gather(x)
        perm = torch.randperm(len(gathered), device=x.device)
        dist.broadcast(perm, src=0)
        rank, b = dist.get_rank(), len(x)
        mine = perm[rank * b:(rank + 1) * b]
        k = F.normalize(self.head_k(self.backbone_k(gathered[mine])), dim=1)
        k_all = torch.empty(len(gathered), k.shape[1], device=k.device, dtype=k.dtype)
        k_all[perm] = concat_all_gather(k)
        return k_all[rank * b:(rank + 1) * b]

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        keys = concat_all_gather(keys)
        size, ptr = self.queue.shape[1], int(self.queue_ptr)
        idx = (ptr + torch.arange(len(keys), device=keys.device)) % size
        self.queue[:, idx] = keys.T.to(self.queue.dtype)
        self.queue_ptr[0] = (ptr + len(keys)) % size

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn_splits <= 1 or is_dist():
            return self.head(self.backbone(x))
        return self.head(torch.cat([self.backbone(c) for c in x.chunk(self.bn_splits)]))

    def forward(self, views: list[torch.Tensor]) -> MethodOutput:
        v1, v2 = views[0], views[1]
        emb1 = self._embed(v1)
        q1 = F.normalize(emb1, dim=1)
        k2 = self._keys(v2)
        queue = self.queue.clone().detach()
        loss = info_nce(q1, k2, queue, self.temperature)
        keys = k2
        if self.symmetric:
            q2 = F.normalize(self._embed(v2), dim=1)
            k1 = self._keys(v1)
            loss = 0.5 * (loss + info_nce(q2, k1, queue, self.temperature))
            keys = torch.cat([k2, k1])
        self._enqueue(keys)
        return MethodOutput(loss=loss, embedding=emb1)

    @torch.no_grad()
    def forward_feature(self, images: torch.Tensor) -> torch.Tensor:
        return self.head_k(self.backbone_k(images))

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        ema_update(self.backbone_k, self.backbone, self.momentum)
        ema_update(self.head_k, self.head, self.momentum)
