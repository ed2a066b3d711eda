"""ViT position embeddings at other input sizes, against a reference written here from the definition.

The seed's ViT (DINO's) resizes the stored patch grid bicubically with scale factors (g + 0.1) / N0.
The reference below evaluates that resize with its own cubic-convolution code (Keys' kernel, a = -0.75,
half-pixel centres, sampling step N0 / (g + 0.1), border indices clamped), in float64, and runs the
model's own blocks and norm around it, so only the position-embedding path is under test.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

from hirl_core.config import Config
from hirl_core.models import build_backbone
from hirl_core.models.loading import load_backbone
from hirl_core.models.vit import sincos_2d

A = -0.75  # the cubic-convolution constant PyTorch's bicubic uses


def _kernel(d: float) -> float:
    d = abs(d)
    if d <= 1:
        return ((A + 2) * d - (A + 3)) * d * d + 1
    if d < 2:
        return ((A * d - 5 * A) * d + 8 * A) * d - 4 * A
    return 0.0


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in]: row i holds the weights output i gives the inputs, for the scale (n_out + 0.1) / n_in."""
    step = n_in / (n_out + 0.1)
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) * step - 0.5
        base = math.floor(src)
        for j in range(base - 1, base + 3):
            m[i, min(max(j, 0), n_in - 1)] += _kernel(src - j)
    return m


def reference_table(table: torch.Tensor, grid) -> torch.Tensor:
    """The seed's resize of a [1, 1 + N0*N0, D] table to `grid` (h, w), computed separably."""
    patches = table[0, 1:].double().numpy()
    n0 = math.isqrt(patches.shape[0])
    h, w = grid
    if (h, w) == (n0, n0):
        return table.clone()
    image = patches.reshape(n0, n0, -1)
    out = np.einsum("ai,bj,ijd->abd", _resize_matrix(n0, h), _resize_matrix(n0, w), image)
    return torch.cat([table[:, :1], torch.from_numpy(out.reshape(1, h * w, -1)).float()], dim=1)


def reference_cls(model, x: torch.Tensor, table_fn=reference_table) -> torch.Tensor:
    proj = model.patch_embed.proj
    tokens = F.conv2d(x, proj.weight, proj.bias, stride=proj.stride)  # [B, D, h, w]
    b, dim, h, w = tokens.shape
    tokens = torch.cat([model.cls_token.expand(b, -1, -1), tokens.flatten(2).transpose(1, 2)], dim=1)
    tokens = tokens + table_fn(model.pos_embed.detach(), (h, w))
    return model.norm(model.blocks(tokens))[:, 0]


def _vit(**extra):
    torch.manual_seed(0)
    model = build_backbone(Config({"arch": "vit_tiny", "depth": 2, **extra})).eval()
    if extra.get("pos_embed", "learned") == "learned":
        with torch.no_grad():  # a table with structure at every scale, so a different resize shows
            model.pos_embed.normal_(0, 1.0)
    return model


@pytest.mark.parametrize("size", [(224, 224), (96, 96), (48, 48), (96, 224)])
def test_cls_features_equal_the_reference_at_every_size(size):
    model = _vit()
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want = model(x), reference_cls(model, x)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_timm_resampling_would_give_other_features():
    """The check above can tell the seed's resize from timm's (exact size, antialiased)."""
    model = _vit()
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))

    def timm_table(table, grid):
        return resample_abs_pos_embed(table, list(grid), old_size=[14, 14], num_prefix_tokens=1)

    with torch.no_grad():
        assert (model(x) - reference_cls(model, x, timm_table)).abs().max() > 1e-3


def test_a_checkpoint_from_another_grid_is_resized_on_loading(tmp_path):
    src = _vit()  # grid 14 (224 px)
    torch.save(src.state_dict(), tmp_path / "timm.pth")  # a plain timm-layout state dict
    dst = _vit(image_size=112)  # grid 7
    load_backbone(dst, tmp_path / "timm.pth")
    gap = (dst.pos_embed.detach() - reference_table(src.pos_embed.detach(), (7, 7))).abs().max()
    assert gap < 1e-5, gap
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # the loaded model at its grid = the source model resizing on the fly
        assert torch.equal(dst(x), src(x))


def test_mocov3_sincos_table_is_fixed_and_resized_like_a_learned_one(tmp_path):
    model = _vit(pos_embed="sincos")
    table = torch.cat([torch.zeros(1, 192), sincos_2d(192, 14, 14)]).unsqueeze(0)
    assert torch.equal(model.pos_embed, table) and not model.pos_embed.requires_grad
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(model(x), reference_cls(model, x), atol=1e-5)
    assert torch.equal(model.pos_embed, table)  # a forward at another size leaves the stored table alone

    torch.save({"model": {f"backbone.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "b.pth")
    other = _vit(pos_embed="sincos")
    load_backbone(other, tmp_path / "b.pth")
    assert torch.equal(other.pos_embed, table) and not other.pos_embed.requires_grad
