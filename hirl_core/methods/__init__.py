"""SSL method registry: `build_method(cfg)` builds the backbone and wraps it in the method named by
`cfg.method.name`."""
from __future__ import annotations

from ..config import ConfigError
from ..models import build_backbone
from .base import MethodOutput, SSLMethod
from .mocov2 import MoCoV2

METHODS = {"mocov2": MoCoV2}

__all__ = ["METHODS", "MethodOutput", "SSLMethod", "build_method"]


def build_method(cfg) -> SSLMethod:
    name = cfg.method.name
    if name not in METHODS:
        raise ConfigError(f"unknown method.name {name!r}; allowed: {', '.join(sorted(METHODS))}")
    return METHODS[name](build_backbone(cfg.backbone), cfg.method)
