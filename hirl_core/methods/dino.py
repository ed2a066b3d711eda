"""DINO (Caron et al. 2021): self-distillation from an EMA teacher with centering and sharpening.
Seed settings (hirl-method.md §2.5): ViT-B/16 student (drop path 0.1) and teacher (no drop path);
head 768 → 2048 → 2048 → 256 (GELU, no norm), L2-norm, weight-normed Linear 256 → 65536 with its
norm fixed at 1; CE between the centred, sharpened teacher softmax of each global crop and the
student's log-softmax (T = 0.1) of every *other* crop; teacher temperature 0.04 → 0.07 over the first
50 epochs (per epoch), center momentum 0.9; teacher EMA 0.996 → 1 (cosine over iterations), head
included; last layer frozen for the first epochs; multi-crop 2 x 224 + 10 x 96.

    method:
      name: dino
      out_dim: 65536
      hidden_dim: 2048
      bottleneck_dim: 256
      norm_last_layer: true
      student_temp: 0.1
      teacher_temp: 0.07
      warmup_teacher_temp: 0.04
      warmup_teacher_temp_epochs: 50
      center_momentum: 0.9
      momentum_teacher: 0.996
      freeze_last_layer: 1      # epochs

The exported `backbone` is the **teacher** ViT (the seed's convention); the student is `student`.
HIRL embedding = student head bottleneck (before L2-norm) of the first global crop; clustered features
= teacher head bottleneck of the teacher's CLS token.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.distributed import all_reduce_sum, world_size
from .base import MethodOutput, SSLMethod, cancel_grads, cosine_ramp, ema_update, forward_by_resolution


class WeightNormLinear(nn.Module):
    """Bias-free Linear with weight rows W = g · V/‖V‖; with `fix_norm` g is the constant 1, so only the
    directions V are learned (DINO's `norm_last_layer`) and the state dict holds `weight_v` alone."""

    def __init__(self, d_in: int, d_out: int, fix_norm: bool = True):
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(d_out, d_in))
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))  # nn.Linear's default init
        self.weight_g = None if fix_norm else nn.Parameter(torch.ones(d_out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.weight_v
        # torch's fused kernel: normalising the 65536 x 256 V by hand made its backward a chain of
        # element-wise passes over all of V, ~3x the time. A fresh ones g (not a buffer) keeps the
        # state dict as it was and adds nothing for DDP to broadcast.
        g = v.new_ones(v.shape[0], 1) if self.weight_g is None else self.weight_g
        return F.linear(x, torch._weight_norm(v, g, 0))


class DINOHead(nn.Module):
    def __init__(self, d_in: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 norm_last_layer: bool = True):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d_in, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim),
                                 nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fix_norm=norm_last_layer)

    def project(self, bottleneck: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(bottleneck, dim=-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.mlp(x))


def teacher_targets(teacher_out: list[torch.Tensor], center: torch.Tensor, teacher_temp: float) -> list[torch.Tensor]:
    """softmax((teacher_t − center)/τ_t) for each teacher crop, without gradient."""
    return [F.softmax((t.float() - center) / teacher_temp, dim=-1).detach() for t in teacher_out]


def distillation_loss(student_out: list[torch.Tensor], targets: list[torch.Tensor],
                      student_temp: float) -> torch.Tensor:
    """Mean over pairs (teacher crop t, student crop s ≠ t) of the batch-mean CE between targets[t] and
    log_softmax(student_s/τ_s). Teacher crop i is student crop i."""
    logp = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student_out]
    terms = [-(q * lp).sum(dim=-1).mean() for iq, q in enumerate(targets) for v, lp in enumerate(logp) if v != iq]
    return sum(terms) / len(terms)


def dino_loss(student_out: list[torch.Tensor], teacher_out: list[torch.Tensor], center: torch.Tensor,
              student_temp: float, teacher_temp: float) -> torch.Tensor:
    """DINO's cross-entropy: `distillation_loss` against the centred, sharpened teacher outputs."""
    return distillation_loss(student_out, teacher_targets(teacher_out, center, teacher_temp), student_temp)


@torch.no_grad()
def target_entropy(targets: list[torch.Tensor]) -> float:
    """Mean entropy of the teacher's targets. Each CE term of the loss is H(teacher) + KL(teacher ||
    student), so the loss minus this is the mean KL: what the student still has to learn. Logged because
    the CE alone can rise while the teacher's targets spread out (centering) even as the KL falls."""
    return float(torch.stack([-(q * q.clamp_min(1e-30).log()).sum(dim=-1).mean() for q in targets]).mean())


@torch.no_grad()
def updated_center(center: torch.Tensor, teacher_out: torch.Tensor, momentum: float) -> torch.Tensor:
    """EMA of the teacher outputs' mean over the global batch (all ranks)."""
    batch_center = all_reduce_sum(teacher_out.float().sum(dim=0, keepdim=True)) / (len(teacher_out) * world_size())
    return center * momentum + batch_center * (1 - momentum)


def warmup_temperature(epoch: int, start: float, end: float, warmup_epochs: int) -> float:
    """Linear from `start` (epoch 0) to `end` (epoch warmup_epochs − 1), then `end`: per epoch."""
    if epoch >= warmup_epochs:
        return end
    return start + (end - start) * epoch / max(1, warmup_epochs - 1)


def _disable_drop_path(module: nn.Module) -> None:
    for m in module.modules():
        if hasattr(m, "drop_prob"):  # timm DropPath
            m.drop_prob = 0.0


class DINO(SSLMethod):
    n_views = 2

    def __init__(self, backbone: nn.Module, cfg):
        super().__init__()
        self.out_dim = cfg.get("out_dim", 65536)
        self.inst_dim = cfg.get("bottleneck_dim", 256)
        self.student = backbone
        self.student_head = DINOHead(backbone.out_dim, self.out_dim, cfg.get("hidden_dim", 2048), self.inst_dim,
                                     cfg.get("norm_last_layer", True))
        self.backbone = copy.deepcopy(backbone)  # the teacher: same initial weights, no drop path
        _disable_drop_path(self.backbone)
        self.teacher_head = copy.deepcopy(self.student_head)
        for p in list(self.backbone.parameters()) + list(self.teacher_head.parameters()):
            p.requires_grad = False
        self.register_buffer("center", torch.zeros(1, self.out_dim))
        self.student_temp = cfg.get("student_temp", 0.1)
        self.temps = (cfg.get("warmup_teacher_temp", 0.04), cfg.get("teacher_temp", 0.07),
                      cfg.get("warmup_teacher_temp_epochs", 0))
        self.center_momentum = cfg.get("center_momentum", 0.9)
        self.base_momentum = cfg.get("momentum_teacher", 0.996)
        self.freeze_last_layer = cfg.get("freeze_last_layer", 1)
        self._epoch, self._progress = 0, 0.0

    def teacher_temp(self) -> float:
        return warmup_temperature(self._epoch, *self.temps)

    def on_step_start(self, step: int, total_steps: int, steps_per_epoch: int) -> None:
        self._epoch, self._progress = step // steps_per_epoch, step / max(1, total_steps)

    def before_optimizer_step(self) -> None:
        if self._epoch < self.freeze_last_layer:
            cancel_grads(self.student_head.last_layer)

    def forward(self, views: list[torch.Tensor]) -> MethodOutput:
        b, n_global = len(views[0]), self.n_views
        with torch.no_grad():
            teacher_out = self.teacher_head(forward_by_resolution(self.backbone, views[:n_global]))
        bottleneck = self.student_head.mlp(forward_by_resolution(self.student, views))
        student_out = self.student_head.project(bottleneck)
        temp = self.teacher_temp()
        targets = teacher_targets(teacher_out.split(b), self.center, temp)
        loss = distillation_loss(student_out.split(b), targets, self.student_temp)
        entropy = target_entropy(targets)
        self.center.copy_(updated_center(self.center, teacher_out, self.center_momentum))
        return MethodOutput(loss=loss, embedding=bottleneck[:b],
                            logs={"teacher_temp": temp, "teacher_entropy": entropy, "kl": loss.item() - entropy})

    @torch.no_grad()
    def forward_feature(self, images: torch.Tensor) -> torch.Tensor:
        return self.teacher_head.mlp(self.backbone(images))

    def momentum(self) -> float:
        """The seed's EMA momentum of the current iteration: cosine from the base value to 1."""
        return cosine_ramp(self.base_momentum, 1.0, self._progress)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        m = self.momentum()
        ema_update(self.backbone, self.student, m)
        ema_update(self.teacher_head, self.student_head, m)
