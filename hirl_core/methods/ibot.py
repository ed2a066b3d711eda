"""iBOT (Zhou et al. 2022): DINO's CLS self-distillation plus masked-patch self-distillation.
Seed settings (hirl-method.md §2.6): as DINO, but the student sees its global crops with block-wise
masked patches (replaced by a learnable mask token), the teacher sees them unmasked and returns all
tokens; one head shared by CLS and patch tokens (out_dim = patch_out_dim = 8192); separate CLS and
patch centers (momentum 0.9 each) and teacher temperatures (both 0.04 → 0.07 over 50 epochs);
loss = λ1 · CLS distillation (cross-view, as DINO) + λ2 · patch distillation (same view, CE per
masked patch averaged over each image's masked patches, then over images), λ1 = λ2 = 1;
masks: per image 50 % none, 50 % ratio ~ U[0.1, 0.5], aspect (0.3, 1/0.3), from epoch 0.

    method:                   # DINO's keys, plus:
      name: ibot
      patch_out_dim: 8192
      shared_head: true       # false: a separate head (MLP + last layer) for patch tokens
      teacher_patch_temp: 0.07
      warmup_teacher_patch_temp: 0.04
      center_momentum2: 0.9
      lambda1: 1.0            # CLS
      lambda2: 1.0            # masked patches
      pred_ratio: [0.0, 0.3]
      pred_ratio_var: [0.0, 0.2]
      pred_aspect_ratio: [0.3, 3.333]
      pred_start_epoch: 0

An image without masked patches contributes 0 to the patch term but still counts in the batch mean
(the seed's normalisation; the masked-patch average of each image is over its masked patches only).
HIRL embedding = student CLS bottleneck of the first (masked) global crop; clustered features =
teacher head bottleneck at the teacher's CLS token.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.distributed import all_reduce_sum, world_size
from .base import MethodOutput, cancel_grads, ema_update, forward_by_resolution
from .dino import (DINO, DINOHead, distillation_loss, target_entropy, teacher_targets, updated_center,
                   warmup_temperature)
from .masking import batch_block_masks


def masked_patch_loss(student_patch: list[torch.Tensor], teacher_patch: list[torch.Tensor], masks: list[torch.Tensor],
                      center: torch.Tensor, student_temp: float, teacher_temp: float) -> torch.Tensor:
    """Per global crop (student and teacher of the *same* view): CE of every patch, averaged over the
    image's masked patches (an image without any gives 0), then over images; averaged over crops."""
    total = 0.0
    for s, t, m in zip(student_patch, teacher_patch, masks):
        q = F.softmax((t.float() - center) / teacher_temp, dim=-1).detach()
        ce = -(q * F.log_softmax(s.float() / student_temp, dim=-1)).sum(dim=-1)  # [B, N]
        m = m.flatten(1).to(ce.dtype)
        total = total + ((ce * m).sum(dim=-1) / m.sum(dim=-1).clamp(min=1.0)).mean()
    return total / len(masks)


@torch.no_grad()
def updated_patch_center(center: torch.Tensor, teacher_patch: torch.Tensor, momentum: float) -> torch.Tensor:
    """EMA of the teacher patch outputs' mean (over tokens, then images of all ranks)."""
    per_image = teacher_patch.float().mean(dim=1)
    batch_center = all_reduce_sum(per_image.sum(dim=0)).view(1, 1, -1) / (len(per_image) * world_size())
    return center * momentum + batch_center * (1 - momentum)


class IBOT(DINO):
    backbone_overrides = {"mask_token": True}  # the student ViT needs a [MASK] embedding

    def __init__(self, backbone: nn.Module, cfg):
        super().__init__(backbone, cfg)
        self.patch_out_dim = cfg.get("patch_out_dim", self.out_dim)
        self.shared_head = cfg.get("shared_head", True)
        if self.shared_head:
            if self.patch_out_dim != self.out_dim:
                raise ValueError("iBOT with shared_head needs patch_out_dim == out_dim")
            self.student_patch_head = self.teacher_patch_head = None
        else:
            self.student_patch_head = DINOHead(backbone.out_dim, self.patch_out_dim, cfg.get("hidden_dim", 2048),
                                               self.inst_dim, cfg.get("norm_last_layer", True))
            self.teacher_patch_head = copy.deepcopy(self.student_patch_head)
            for p in self.teacher_patch_head.parameters():
                p.requires_grad = False
        self.register_buffer("center2", torch.zeros(1, 1, self.patch_out_dim))
        self.patch_temps = (cfg.get("warmup_teacher_patch_temp", 0.04), cfg.get("teacher_patch_temp", 0.07),
                            cfg.get("warmup_teacher_temp_epochs", 0))
        self.center_momentum2 = cfg.get("center_momentum2", 0.9)
        self.lambda1, self.lambda2 = cfg.get("lambda1", 1.0), cfg.get("lambda2", 1.0)
        self.pred_ratio, self.pred_ratio_var = cfg.get("pred_ratio", [0.0, 0.3]), cfg.get("pred_ratio_var", [0.0, 0.2])
        self.pred_aspect = tuple(cfg.get("pred_aspect_ratio", (0.3, 1 / 0.3)))
        self.pred_start_epoch = cfg.get("pred_start_epoch", 0)

    def _heads(self):
        if self.shared_head:
            return self.student_head, self.teacher_head
        return self.student_patch_head, self.teacher_patch_head

    def make_masks(self, batch: int, grid: tuple[int, int]) -> torch.Tensor:
        if self._epoch < self.pred_start_epoch:
            return torch.zeros(batch, *grid, dtype=torch.bool)
        return batch_block_masks(batch, grid[0], grid[1], self.pred_ratio, self.pred_ratio_var, self.pred_aspect)

    def forward(self, views: list[torch.Tensor], masks: list[torch.Tensor] | None = None) -> MethodOutput:
        b, n_global = len(views[0]), self.n_views
        glob = torch.cat(views[:n_global])
        grid = tuple(s // p for s, p in zip(glob.shape[-2:], self.student.patch_embed.patch_size))
        if masks is None:
            masks = [self.make_masks(b, grid) for _ in range(n_global)]
        mask = torch.cat(masks).to(glob.device)
        s_patch_head, t_patch_head = self._heads()
        with torch.no_grad():
            t_tokens = self.backbone.forward_tokens(glob)
            t_cls, t_patch = self.teacher_head(t_tokens[:, 0]), t_patch_head(t_tokens[:, 1:])
        s_tokens = self.student.forward_tokens(glob, mask=mask)  # mask always passed: the token stays in the graph
        bottleneck = self.student_head.mlp(s_tokens[:, 0])
        s_cls = [self.student_head.project(bottleneck)]
        s_patch = s_patch_head(s_tokens[:, 1:])
        if len(views) > n_global:
            s_cls.append(self.student_head(forward_by_resolution(self.student, views[n_global:])))
        temp, patch_temp = self.teacher_temp(), warmup_temperature(self._epoch, *self.patch_temps)
        targets = teacher_targets(t_cls.split(b), self.center, temp)
        loss_cls = distillation_loss(torch.cat(s_cls).split(b), targets, self.student_temp)
        loss_patch = masked_patch_loss(s_patch.split(b), t_patch.split(b), mask.split(b), self.center2,
                                       self.student_temp, patch_temp)
        loss = self.lambda1 * loss_cls + self.lambda2 * loss_patch
        entropy = target_entropy(targets)  # the CLS loss's floor (see dino.target_entropy)
        self.center.copy_(updated_center(self.center, t_cls, self.center_momentum))
        self.center2.copy_(updated_patch_center(self.center2, t_patch, self.center_momentum2))
        logs = {"loss_cls": loss_cls.item(), "loss_patch": loss_patch.item(), "mask_ratio": float(mask.float().mean()),
                "teacher_temp": temp, "teacher_entropy": entropy, "kl_cls": loss_cls.item() - entropy}
        return MethodOutput(loss=loss, embedding=bottleneck[:b], logs=logs)

    def before_optimizer_step(self) -> None:
        super().before_optimizer_step()
        if self._epoch < self.freeze_last_layer and self.student_patch_head is not None:
            cancel_grads(self.student_patch_head.last_layer)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        super().after_step(progress)
        if self.student_patch_head is not None:
            ema_update(self.teacher_patch_head, self.student_patch_head, self.momentum())
