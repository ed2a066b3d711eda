"""timm Vision Transformers (tiny/small/base) returning the CLS token after the final norm."""
from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer

_SIZES = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12)}


class ViTTrunk(VisionTransformer):
    def __init__(self, arch: str, image_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 drop_path_rate: float = 0.0, qkv_bias: bool = True):
        dim, depth, heads = _SIZES[arch]
        super().__init__(img_size=image_size, patch_size=patch_size, in_chans=in_chans, num_classes=0,
                         embed_dim=dim, depth=depth, num_heads=heads, qkv_bias=qkv_bias,
                         drop_path_rate=drop_path_rate, global_pool="token")
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x), pre_logits=True)


def build_vit(cfg) -> ViTTrunk:
    return ViTTrunk(cfg.arch, image_size=cfg.get("image_size", 224), patch_size=cfg.get("patch_size", 16),
                    in_chans=cfg.get("in_chans", 3), drop_path_rate=cfg.get("drop_path_rate", 0.0),
                    qkv_bias=cfg.get("qkv_bias", True))
