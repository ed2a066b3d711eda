"""The pieces of a supervised recipe: the classifier, its parameter groups, the LR schedule, the loss.

    optimizer:
      name: sgd | adamw | lars
      lr: 0.1               # base LR for a total batch of 256 (scaled by total_batch / 256 unless scale_lr: false)
      lr_last_layer: null   # the head's own base LR (same scaling); null: optimizer.lr
      layer_decay: null     # finetune of a ViT: block i of `depth` gets decay ** (depth - i), see below
      weight_decay: 0.0
      momentum: 0.9         # sgd, lars
      betas: [0.9, 0.999]   # adamw
      trust_coefficient: 0.001  # lars
      exclude_1d: null      # biases/norms without decay (null: adamw/lars yes, sgd no)
      scale_lr: true
    schedule:
      name: cosine | step
      milestones: []        # step: epochs at which the LR is multiplied by gamma
      gamma: 0.1
      warmup_epochs: 0
      warmup_start_lr: null # absolute; null: linear from ~0
      min_lr: 0.0           # cosine: absolute floor
    head:
      init: normal | trunc_normal
      std: 0.01             # the seed: N(0, 0.01) (MoCo v2, iBOT), trunc-normal 2e-5 (MoCo v3, DINO, ViT fine-tuning)

Per-group learning rates. Every group carries an ``lr_scale``; each iteration the schedule computes one
LR and ``apply_lr`` sets ``group.lr = lr * group.lr_scale``. The seed's setter wrote the scheduled LR
into every group, so its ``lr_last_layer`` never took effect (hirl-method.md §6.3); here the head's
group has ``lr_scale = lr_last_layer / lr`` and follows the same warm-up and decay at its own level.

Layer-wise LR decay (BEiT's convention, the seed's): layer ids are 0 for the patch embedding / CLS token /
position embedding, i + 1 for block i, depth + 1 for the final norm and the head; layer id l gets
``decay ** (depth + 1 - l)``, so block i gets ``decay ** (depth - i)`` and the head 1.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import ConfigError
from ..engine.lars import LARS
from ..engine.optim import cosine_lr, scaled_lr
from ..schema import HEAD_INITS, OPTIMIZERS, SCHEDULES
from ..schema import SUPERVISED_MODES as MODES


class Classifier(nn.Module):
    """trunk (features [B, D]) → one Linear head; ``finetune`` trains both."""

    def __init__(self, trunk: nn.Module, head: nn.Linear):
        super().__init__()
        self.trunk, self.head = trunk, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


class LinearProbe(Classifier):
    """The frozen trunk stays in eval mode whatever ``train()`` is called with: its BatchNorm running
    statistics never move and drop-path/dropout are off. The seed kept ResNet trunks in train mode, so
    their BN statistics drifted during linear training (hirl-method.md §3.2, §6.4); the MoCo protocol,
    followed here, does not."""

    def __init__(self, trunk: nn.Module, head: nn.Linear):
        super().__init__(trunk, head)
        for p in self.trunk.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.trunk.eval()
        return self


def build_head(in_dim: int, num_classes: int, head_cfg) -> nn.Linear:
    head = nn.Linear(in_dim, num_classes)
    init, std = head_cfg.get("init", "normal"), float(head_cfg.get("std", 0.01))
    if init == "normal":
        nn.init.normal_(head.weight, std=std)
    elif init == "trunc_normal":
        nn.init.trunc_normal_(head.weight, std=std, a=-2 * std, b=2 * std)
    else:
        raise ConfigError(f"unknown head.init {init!r}; allowed: {', '.join(HEAD_INITS)}")
    nn.init.zeros_(head.bias)
    return head


def _exclude_1d(opt_cfg) -> bool:
    exclude = opt_cfg.get("exclude_1d")
    return str(opt_cfg.name).lower() != "sgd" if exclude is None else bool(exclude)


def _plain_groups(module: nn.Module, weight_decay: float, exclude_1d: bool, lr_scale: float) -> list[dict]:
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (no_decay if exclude_1d and p.ndim <= 1 else decay).append(p)
    return [{"params": ps, "weight_decay": wd, "lr_scale": lr_scale}
            for ps, wd in ((decay, weight_decay), (no_decay, 0.0)) if ps]


def vit_layer_id(name: str, depth: int) -> int:
    """0 for the embeddings (patch projection, CLS token, position embedding), i + 1 for block i,
    depth + 1 for the rest (the final norm)."""
    if name.startswith(("patch_embed", "cls_token", "reg_token", "pos_embed", "norm_pre", "mask_token")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def layer_decay_groups(trunk: nn.Module, weight_decay: float, exclude_1d: bool, decay: float) -> list[dict]:
    """A ViT trunk's groups with BEiT's layer-wise scales (see the module doc). Our own: timm's
    ``param_groups_layer_decay`` puts the final norm in the last block's layer, so its blocks get one
    power of ``decay`` less than the seed's convention."""
    if not hasattr(trunk, "blocks"):
        raise ConfigError(f"optimizer.layer_decay={decay} needs a ViT backbone (layer-wise decay is per block)")
    depth = len(trunk.blocks)
    no_decay_names = set(getattr(trunk, "no_weight_decay", lambda: ())())  # CLS token, position embedding
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in trunk.named_parameters():
        if not p.requires_grad:
            continue
        layer = vit_layer_id(name, depth)
        skip = (exclude_1d and p.ndim <= 1) or name in no_decay_names
        group = groups.setdefault((layer, skip), {"params": [], "weight_decay": 0.0 if skip else weight_decay,
                                                  "lr_scale": decay ** (depth + 1 - layer)})
        group["params"].append(p)
    return [groups[key] for key in sorted(groups)]


def param_groups(model: Classifier, opt_cfg) -> list[dict]:
    """The optimiser's groups, each with its ``lr_scale`` (layer decay, the head's own LR)."""
    wd, exclude = float(opt_cfg.get("weight_decay", 0.0)), _exclude_1d(opt_cfg)
    last = opt_cfg.get("lr_last_layer")  # both LRs take the same batch scaling, so their ratio is the scale
    head_scale = 1.0 if last is None else float(last) / float(opt_cfg.lr)
    decay = opt_cfg.get("layer_decay")
    if decay is not None and float(decay) != 1.0 and any(p.requires_grad for p in model.trunk.parameters()):
        groups = layer_decay_groups(model.trunk, wd, exclude, float(decay))
    else:
        groups = _plain_groups(model.trunk, wd, exclude, 1.0)
    groups += _plain_groups(model.head, wd, exclude, head_scale)
    for g in groups:  # what LARS and the shared setters read
        g["lars_exclude"] = exclude and all(p.ndim <= 1 for p in g["params"])
        g["wd_schedule"], g["fix_lr"] = g["weight_decay"] > 0, False
    return groups


def build_optimizer(opt_cfg, groups: list[dict], total_batch: int) -> torch.optim.Optimizer:
    name = str(opt_cfg.name).lower()
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer.name {opt_cfg.name!r}; allowed: {', '.join(OPTIMIZERS)}")
    lr, momentum = scaled_lr(opt_cfg, total_batch), float(opt_cfg.get("momentum", 0.9))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, trust_coefficient=float(opt_cfg.get("trust_coefficient", 0.001)))
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(opt_cfg.get("betas", (0.9, 0.999))))


def lr_at(sched, base_lr: float, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """The LR of iteration ``step`` (before any group's scale): warm-up, then cosine or steps."""
    name = sched.get("name", "cosine")
    warmup = int(float(sched.get("warmup_epochs", 0)) * steps_per_epoch)
    start = sched.get("warmup_start_lr")
    start = None if start is None else float(start)
    if name == "cosine" or step < warmup:
        return cosine_lr(base_lr, step, total_steps, warmup, float(sched.get("min_lr", 0.0)), start)
    if name != "step":
        raise ConfigError(f"unknown schedule.name {name!r}; allowed: {', '.join(SCHEDULES)}")
    epoch = step // max(1, steps_per_epoch)
    passed = sum(1 for m in sched.get("milestones", ()) if epoch >= int(m))
    return base_lr * float(sched.get("gamma", 0.1)) ** passed


def apply_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Each group's LR is the scheduled one times its scale: a scale, never an overwrite."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def build_criterion(cfg, num_classes: int):
    """(mixup or None, training loss). Mixup/CutMix (with the smoothing folded into its soft targets)
    takes timm's SoftTargetCrossEntropy, smoothing alone LabelSmoothingCrossEntropy, else plain CE:
    the seed's criterion switch (hirl-method.md §3.3)."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    mix, smoothing = cfg.get("mixup") or {}, float(cfg.get("label_smoothing", 0.0))
    alpha, cutmix = float(mix.get("mixup_alpha", 0.0)), float(mix.get("cutmix_alpha", 0.0))
    if alpha > 0 or cutmix > 0:
        if cfg.batch_size % 2:
            raise ConfigError(f"batch_size={cfg.batch_size} must be even with mixup/cutmix (images are paired)")
        fn = Mixup(mixup_alpha=alpha, cutmix_alpha=cutmix, prob=float(mix.get("prob", 1.0)),
                   switch_prob=float(mix.get("switch_prob", 0.5)), mode=mix.get("mode", "batch"),
                   label_smoothing=smoothing, num_classes=num_classes)
        return fn, SoftTargetCrossEntropy()
    if smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=smoothing)
    return None, nn.CrossEntropyLoss()

