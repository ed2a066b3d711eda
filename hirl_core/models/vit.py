"""timm Vision Transformers (tiny/small/base) returning the CLS token after the final norm.

Options the seed's ViTs need (hirl-method.md §2.4-2.6), all off by default:
* `pos_embed: sincos` — MoCo v3's fixed 2-D sin-cos position embedding (not trained, CLS slot zero);
* `weight_init: mocov3` — MoCo v3's init: xavier-uniform linears with the qkv fan split in three, the
  patch projection initialised as the linear layer it is, CLS token N(0, 1e-6);
* `depth: N` — fewer transformer blocks than the named size (CPU demos and tests);
* `mask_token: true` — a learnable [MASK] embedding that replaces the patch embeddings of masked
  patches (iBOT's student); `forward_tokens(x, mask)` returns every token after the final norm.
Every ViT accepts any input size that is a multiple of the patch (timm's dynamic_img_size: the
position embedding is resampled bicubically), which DINO/iBOT's 96-px local crops need.
"""
from __future__ import annotations

import math

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

_SIZES = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12)}


def sincos_2d(dim: int, grid_h: int, grid_w: int, temperature: float = 10000.0) -> torch.Tensor:
    """[grid_h * grid_w, dim]: a quarter of the channels each for sin/cos of the x and y coordinates
    at geometrically spaced frequencies (the 1-D transformer encoding, applied per axis)."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs an embedding dim divisible by 4, got {dim}")
    y, x = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64),
                          indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    ox, oy = x.reshape(-1, 1) * omega, y.reshape(-1, 1) * omega
    return torch.cat([ox.sin(), ox.cos(), oy.sin(), oy.cos()], dim=1).float()


class ViTTrunk(VisionTransformer):
    def __init__(self, arch: str, image_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 drop_path_rate: float = 0.0, qkv_bias: bool = True, pos_embed: str = "learned",
                 weight_init: str = "timm", mask_token: bool = False, depth: int | None = None):
        dim, default_depth, heads = _SIZES[arch]
        depth = depth or default_depth  # fewer blocks: CPU demos and tests
        super().__init__(img_size=image_size, patch_size=patch_size, in_chans=in_chans, num_classes=0,
                         embed_dim=dim, depth=depth, num_heads=heads, qkv_bias=qkv_bias,
                         drop_path_rate=drop_path_rate, global_pool="token", dynamic_img_size=True)
        self.out_dim = dim
        if weight_init == "mocov3":
            self._mocov3_init()
        elif weight_init != "timm":
            raise ValueError(f"unknown backbone.weight_init {weight_init!r}; allowed: timm, mocov3")
        if pos_embed == "sincos":
            gh, gw = self.patch_embed.grid_size
            table = torch.cat([torch.zeros(1, dim), sincos_2d(dim, gh, gw)])
            self.pos_embed = nn.Parameter(table.unsqueeze(0), requires_grad=False)
        elif pos_embed != "learned":
            raise ValueError(f"unknown backbone.pos_embed {pos_embed!r}; allowed: learned, sincos")
        # zeros (no RNG draw): the backbone's initial weights do not depend on whether it has one
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim)) if mask_token else None

    @torch.no_grad()
    def _mocov3_init(self) -> None:
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                if "qkv" in name:  # q, k, v are three separate dim x dim maps packed in one weight
                    bound = math.sqrt(6.0 / (m.weight.shape[0] // 3 + m.weight.shape[1]))
                    nn.init.uniform_(m.weight, -bound, bound)
                else:
                    nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.cls_token, std=1e-6)
        proj = self.patch_embed.proj  # a linear map of the flattened patch
        bound = math.sqrt(6.0 / (proj.weight[0].numel() + proj.weight.shape[0]))
        nn.init.uniform_(proj.weight, -bound, bound)
        nn.init.zeros_(proj.bias)

    def forward_tokens(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """All tokens [B, 1 + h*w, D] after the final norm; `mask` [B, h, w] (bool) replaces those
        patches' embeddings by the mask token before the position embedding is added."""
        x = self.patch_embed(x)  # [B, h, w, D] (dynamic size)
        if mask is not None:
            if self.mask_token is None:
                raise RuntimeError("this ViT was built without a mask token (backbone.mask_token)")
            x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype).view(1, 1, 1, -1), x)
        x = self.norm_pre(self.patch_drop(self._pos_embed(x)))
        return self.norm(self.blocks(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(x)[:, 0]


def build_vit(cfg) -> ViTTrunk:
    return ViTTrunk(cfg.arch, image_size=cfg.get("image_size", 224), patch_size=cfg.get("patch_size", 16),
                    in_chans=cfg.get("in_chans", 3), drop_path_rate=cfg.get("drop_path_rate", 0.0),
                    qkv_bias=cfg.get("qkv_bias", True), pos_embed=cfg.get("pos_embed", "learned"),
                    weight_init=cfg.get("weight_init", "timm"), mask_token=cfg.get("mask_token", False),
                    depth=cfg.get("depth"))
