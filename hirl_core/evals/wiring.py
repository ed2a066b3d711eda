"""What every evaluation of a pre-trained backbone needs before it starts: the weights and the architecture.

The orchestrator sets ``pretrained``, ``backbone`` and ``seed`` from the upstream pre-training; a stage
run by hand may leave ``backbone`` out and have it (and the seed, which the untrained reference needs)
read from the ``config.yaml`` the pre-training wrote beside its ``backbone.pth``.
"""
from __future__ import annotations

from pathlib import Path

from ..config import ConfigError, load_config


def backbone_from_pretrain_dir(cfg, stage: str) -> None:
    beside = Path(cfg.pretrained).parent / "config.yaml"
    if not beside.is_file():
        raise ConfigError(f"{stage} needs the pre-training's backbone section: set +backbone.arch=... or keep "
                          f"the pre-training config.yaml beside {cfg.pretrained}")
    pre = load_config(beside)
    cfg["backbone"], cfg["seed"] = pre.backbone, pre.seed


def resolve_pretrained(cfg, stage: str) -> None:
    """Refuse a config without ``pretrained``; fill a missing ``backbone`` section (and seed)."""
    if not cfg.get("pretrained"):
        raise ConfigError(f"{stage} needs `pretrained=<path to backbone.pth or a checkpoint>`")
    if not isinstance(cfg.get("backbone"), dict):
        backbone_from_pretrain_dir(cfg, stage)
