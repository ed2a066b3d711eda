"""Backbone registry: `build_backbone(cfg.backbone)` → an nn.Module with `.out_dim` returning [B, out_dim].

    backbone:
      arch: resnet18 | resnet34 | resnet50 | resnet101 | vit_tiny | vit_small | vit_base
      width: 64            # ResNets: channels of the first stage (64 = torchvision)
      small_stem: false    # ResNets: 3x3 stem, no max-pool (for 28-64 px inputs)
      stem_stride: 1
      in_chans: 3
      image_size: 224      # ViTs
      patch_size: 16       # ViTs
      drop_path_rate: 0.0  # ViTs
      pos_embed: learned   # ViTs: learned | sincos
      weight_init: timm    # ViTs: timm | mocov3
      depth: null          # ViTs: blocks (null: the arch's 12)
      zero_init_residual: false  # ResNets
"""
from __future__ import annotations

from ..config import ConfigError
from .resnet import RESNET_LAYOUTS, build_resnet
from .vit import VIT_SIZES, build_vit

BACKBONES = {**{name: build_resnet for name in RESNET_LAYOUTS}, **{name: build_vit for name in VIT_SIZES}}


def build_backbone(cfg):
    if cfg.arch not in BACKBONES:
        raise ConfigError(f"unknown backbone.arch {cfg.arch!r}; allowed: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[cfg.arch](cfg)
