"""timm Vision Transformers (tiny/small/base) returning the CLS token after the final norm.

Options the seed's ViTs need (hirl-method.md §2.4-2.6), all off by default:
* `pos_embed: sincos` — MoCo v3's fixed 2-D sin-cos position embedding (not trained, CLS slot zero);
* `weight_init: mocov3` — MoCo v3's init: xavier-uniform linears with the qkv fan split in three, the
  patch projection initialised as the linear layer it is, CLS token N(0, 1e-6);
* `depth: N` — fewer transformer blocks than the named size (CPU demos and tests);
* `mask_token: true` — a learnable [MASK] embedding that replaces the patch embeddings of masked
  patches (iBOT's student); `forward_tokens(x, mask)` returns every token after the final norm.
Every ViT accepts any input size that is a multiple of the patch, which DINO/iBOT's 96-px local crops
and evaluation at other sizes need: the stored position embedding's patch grid is resized the seed's
(DINO's) way, `interpolate_pos_embed`, not timm's (timm resamples to an exact size with antialiasing,
which gives other numbers). The sin-cos table is resized the same way rather than recomputed for the
new grid: the seed's evaluation loads MoCo v3's table into a ViT and interpolates it like a learned
one, and a resized table keeps the image spanning the positions the model was trained on (a table
recomputed for a 6 x 6 grid would place the image in the top-left corner of the 14 x 14 range).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

VIT_SIZES = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12)}


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


def interpolate_pos_embed(table: torch.Tensor, grid: tuple[int, int],
                          stored_grid: tuple[int, int] | None = None) -> torch.Tensor:
    """[1, 1 + H0*W0, D] -> [1, 1 + h*w, D]: the CLS slot kept, the H0 x W0 patch grid resized to
    `grid` = (h, w) bicubically with the seed's scale factors (h + 0.1) / H0, (w + 0.1) / W0. The
    0.1 makes floor(H0 * scale) come out as h despite rounding; the kernel samples with that same
    scale, so the result differs slightly from resizing to the size (h, w). `stored_grid` defaults
    to a square grid."""
    h, w = grid
    patches = table[:, 1:]
    if stored_grid is None:
        side = math.isqrt(patches.shape[1])
        if side * side != patches.shape[1]:
            raise ValueError(f"a position embedding of {patches.shape[1]} patches is not a square grid")
        stored_grid = (side, side)
    h0, w0 = stored_grid
    if (h, w) == (h0, w0):
        return table
    dim = table.shape[-1]
    image = patches.reshape(1, h0, w0, dim).permute(0, 3, 1, 2).float()
    image = F.interpolate(image, scale_factor=((h + 0.1) / h0, (w + 0.1) / w0), mode="bicubic")
    if tuple(image.shape[-2:]) != (h, w):  # cannot happen for grids below ~10^4 patches a side
        raise ValueError(f"position embedding resized to {tuple(image.shape[-2:])}, wanted {(h, w)}")
    resized = image.permute(0, 2, 3, 1).reshape(1, h * w, dim).to(table.dtype)
    return torch.cat([table[:, :1], resized], dim=1)


class ViTTrunk(VisionTransformer):
    def __init__(self, arch: str, image_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 drop_path_rate: float = 0.0, qkv_bias: bool = True, pos_embed: str = "learned",
                 weight_init: str = "timm", mask_token: bool = False, depth: int | None = None):
        dim, default_depth, heads = VIT_SIZES[arch]
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

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """[B, h, w, D] patch embeddings -> [B, 1 + h*w, D] with the CLS token, plus the position
        embedding resized to this input's grid (see `interpolate_pos_embed`)."""
        b, h, w, dim = x.shape
        table = interpolate_pos_embed(self.pos_embed, (h, w), tuple(self.patch_embed.grid_size))
        x = torch.cat([self.cls_token.expand(b, -1, -1), x.reshape(b, h * w, dim)], dim=1)
        return self.pos_drop(x + table)

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
