"""SSL method registry: `build_method(cfg)` builds the backbone and wraps it in the method named by
`cfg.method.name`. A method class may set `backbone_overrides` (backbone options it requires, e.g.
iBOT's mask token), applied on top of `cfg.backbone`."""
from __future__ import annotations

from ..config import Config, ConfigError
from ..models import build_backbone
from .base import MethodOutput, SSLMethod
from .dino import DINO
from .ibot import IBOT
from .mocov2 import MoCoV2
from .mocov3 import MoCoV3
from .simsiam import SimSiam
from .swav import SwAV

METHODS = {"mocov2": MoCoV2, "simsiam": SimSiam, "swav": SwAV, "mocov3": MoCoV3, "dino": DINO, "ibot": IBOT}

__all__ = ["METHODS", "MethodOutput", "SSLMethod", "build_method"]


def build_method(cfg) -> SSLMethod:
    name = cfg.method.name
    if name not in METHODS:
        raise ConfigError(f"unknown method.name {name!r}; allowed: {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    backbone_cfg = Config({**cfg.backbone, **getattr(cls, "backbone_overrides", {})})
    return cls(build_backbone(backbone_cfg), cfg.method)
