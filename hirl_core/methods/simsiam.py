"""SimSiam (Chen & He 2021): one encoder + projector, a predictor, symmetric negative cosine with a
stop-gradient on the target. Seed settings (hirl-method.md §2.2): ResNet-50 with zero-init residual,
projector 3 x Linear(2048) with BN (+ReLU between), the last BN without affine; predictor
2048 → 512 (BN, ReLU) → 2048; the predictor's LR stays at the scaled base LR; SyncBN on GPUs.

    method:
      name: simsiam
      dim: 2048           # projector output (= HIRL's inst_dim)
      pred_dim: 512       # predictor bottleneck
      fix_pred_lr: true

Soundness choices: the target z of each view is the projector output of the same forward, detached
(the seed re-runs the encoder for it: identical values in train mode, but BN running statistics
updated twice). HIRL embedding = z of view 1; clustered features = z of the (only) online branch
(hirl-method.md §1.2; the seed's forward_feature crashed on undefined hook flags, §6.1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import MethodOutput, SSLMethod


def neg_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """−cos(p, stopgrad(z)), averaged over the batch."""
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Symmetric: each view's prediction against the other view's detached projection, halved."""
    return 0.5 * (neg_cosine(p1, z2) + neg_cosine(p2, z1))


def _projector(d_in: int, dim: int) -> nn.Sequential:
    # The last Linear's bias is redundant before a BN without affine; the seed keeps it but freezes it.
    last = nn.Linear(d_in, dim, bias=False)
    return nn.Sequential(nn.Linear(d_in, d_in, bias=False), nn.BatchNorm1d(d_in), nn.ReLU(inplace=True),
                         nn.Linear(d_in, d_in, bias=False), nn.BatchNorm1d(d_in), nn.ReLU(inplace=True),
                         last, nn.BatchNorm1d(dim, affine=False))


class SimSiam(SSLMethod):
    n_views = 2

    def __init__(self, backbone: nn.Module, cfg):
        super().__init__()
        dim, pred_dim = cfg.get("dim", 2048), cfg.get("pred_dim", 512)
        self.inst_dim = dim
        self.backbone = backbone
        self.projector = _projector(backbone.out_dim, dim)
        self.predictor = nn.Sequential(nn.Linear(dim, pred_dim, bias=False), nn.BatchNorm1d(pred_dim),
                                       nn.ReLU(inplace=True), nn.Linear(pred_dim, dim))
        if cfg.get("fix_pred_lr", True):
            self.fixed_lr_prefixes = ("predictor.",)

    def forward(self, views: list[torch.Tensor]) -> MethodOutput:
        # one pass per view: BN batch statistics are per view, as in the seed
        z1, z2 = (self.projector(self.backbone(v)) for v in views[:2])
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = simsiam_loss(p1, p2, z1, z2)
        with torch.no_grad():  # collapse monitor: per-channel std of normalised z ~ 1/sqrt(dim) when healthy
            z_std = F.normalize(z1.float(), dim=1).std(dim=0).mean().item()
        return MethodOutput(loss=loss, embedding=z1, logs={"z_std": z_std})

    @torch.no_grad()
    def forward_feature(self, images: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(images))
