"""MoCo v3 (Chen, Xie & He 2021): query encoder + projector + predictor, momentum encoder + projector,
symmetric in-batch InfoNCE against the keys of all ranks. Seed settings (hirl-method.md §2.4):
ViT-B/16 with fixed 2-D sin-cos position embedding and MoCo v3 init; projector 768-4096-4096-256 with
BN+ReLU and a final BN without affine; predictor 256-4096-256 (same pattern, no final BN); all Linear
layers bias-free (BN follows); T = 0.2, loss x 2T; momentum 0.99 → 1 by a cosine over iterations.

    method:
      name: mocov3
      dim: 256
      mlp_dim: 4096
      proj_layers: 3      # 3 for ViTs (the seed); MoCo v3's ResNet recipe uses 2
      temperature: 0.2
      momentum: 0.99      # base; cosine to 1.0

The seed updates the momentum encoder at the start of each forward with that step's momentum; here it
happens in `after_step` with the next step's momentum, which is the same sequence of updates (the
seed's first update, of an encoder identical to the query encoder, is a no-op).
HIRL embedding = query projector output of view 1; clustered features = momentum projector output.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.distributed import concat_all_gather, rank
from .base import MethodOutput, SSLMethod, cosine_ramp, ema_update


def bn_mlp(num_layers: int, d_in: int, d_hidden: int, d_out: int, last_bn: bool = True) -> nn.Sequential:
    """MoCo v3's MLP: bias-free Linear layers, BN + ReLU between them, optionally a BN without affine
    after the last."""
    layers: list[nn.Module] = []
    for i in range(num_layers):
        a, b = d_in if i == 0 else d_hidden, d_out if i == num_layers - 1 else d_hidden
        layers.append(nn.Linear(a, b, bias=False))
        if i < num_layers - 1:
            layers += [nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(b, affine=False))
    return nn.Sequential(*layers)


def contrastive_loss(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE of this rank's queries [B, D] against the keys of every rank (k gathered, no gradient);
    query i's positive is its own key at global index rank * B + i. Scaled by 2T, as MoCo v3."""
    q, k = F.normalize(q.float(), dim=1), F.normalize(k.float(), dim=1)
    k_all = concat_all_gather(k)
    logits = q @ k_all.T / temperature
    labels = torch.arange(len(q), device=q.device) + rank() * len(q)
    return F.cross_entropy(logits, labels) * (2 * temperature)


class MoCoV3(SSLMethod):
    n_views = 2

    def __init__(self, backbone: nn.Module, cfg):
        super().__init__()
        dim, mlp_dim = cfg.get("dim", 256), cfg.get("mlp_dim", 4096)
        self.inst_dim = dim
        self.temperature, self.base_momentum = cfg.get("temperature", 0.2), cfg.get("momentum", 0.99)
        self.backbone = backbone
        self.projector = bn_mlp(cfg.get("proj_layers", 3), backbone.out_dim, mlp_dim, dim)
        self.predictor = bn_mlp(2, dim, mlp_dim, dim, last_bn=False)
        self.backbone_k = copy.deepcopy(backbone)
        self.projector_k = copy.deepcopy(self.projector)
        for p in list(self.backbone_k.parameters()) + list(self.projector_k.parameters()):
            p.requires_grad = False

    def forward(self, views: list[torch.Tensor]) -> MethodOutput:
        x1, x2 = views[0], views[1]
        z1, z2 = self.projector(self.backbone(x1)), self.projector(self.backbone(x2))
        q1, q2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            k1, k2 = self.projector_k(self.backbone_k(x1)), self.projector_k(self.backbone_k(x2))
        loss = contrastive_loss(q1, k2, self.temperature) + contrastive_loss(q2, k1, self.temperature)
        return MethodOutput(loss=loss, embedding=z1)

    @torch.no_grad()
    def forward_feature(self, images: torch.Tensor) -> torch.Tensor:
        return self.projector_k(self.backbone_k(images))

    def momentum_at(self, progress: float) -> float:
        return cosine_ramp(self.base_momentum, 1.0, progress)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        m = self.momentum_at(progress)
        ema_update(self.backbone_k, self.backbone, m)
        ema_update(self.projector_k, self.projector, m)
