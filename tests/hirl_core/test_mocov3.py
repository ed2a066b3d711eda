"""MoCo v3: symmetric contrastive loss x 2T, cosine momentum, fixed sin-cos position embedding."""
import math

import numpy as np
import torch

from hirl_core.methods.mocov3 import contrastive_loss
from hirl_core.models.vit import sincos_2d

from ._tiny import loss_drops_after_one_step, tiny_method, tiny_views


def _np_ctr(q, k, t):
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    k = k / np.linalg.norm(k, axis=1, keepdims=True)
    logits = q @ k.T / t
    losses = [-(logits[i, i] - np.log(np.exp(logits[i]).sum())) for i in range(len(q))]
    return float(np.mean(losses)) * 2 * t


def test_contrastive_loss_matches_independent_formula():
    rng = np.random.default_rng(0)
    q1, q2, k1, k2 = (rng.normal(size=(6, 5)) for _ in range(4))
    got = contrastive_loss(torch.tensor(q1), torch.tensor(k2), 0.2) + contrastive_loss(torch.tensor(q2), torch.tensor(k1), 0.2)
    assert abs(got.item() - (_np_ctr(q1, k2, 0.2) + _np_ctr(q2, k1, 0.2))) < 1e-5


def test_momentum_follows_a_cosine_to_one_and_updates_the_key_encoder():
    model = tiny_method("mocov3")
    assert model.momentum_at(0.0) == 0.99 and model.momentum_at(1.0) == 1.0
    assert abs(model.momentum_at(0.5) - (1 - 0.01 * 0.5)) < 1e-12
    with torch.no_grad():
        for p in model.backbone.parameters():
            if p.requires_grad:
                p.add_(1.0)
    k_old = [p.clone() for p in model.backbone_k.parameters()]
    model.after_step(0.5)
    m = model.momentum_at(0.5)
    for old, q, new in zip(k_old, model.backbone.parameters(), model.backbone_k.parameters()):
        assert torch.allclose(new, m * old + (1 - m) * q, atol=1e-6)


def test_sincos_position_embedding_is_fixed():
    model = tiny_method("mocov3")
    pe = model.backbone.pos_embed
    assert not pe.requires_grad and torch.all(pe[0, 0] == 0)
    assert torch.allclose(pe[0, 1:], sincos_2d(192, 4, 4))
    table = sincos_2d(8, 2, 3)  # x varies along the row: patch (row 0, col 1) has x = 1, y = 0
    assert torch.allclose(table[1], torch.tensor([math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01), 0, 0, 1, 1]))
    out = model(tiny_views("mocov3", 4))
    out.loss.backward()
    assert pe.grad is None and out.embedding.shape == (4, 8) and model.forward_feature(tiny_views("mocov3", 2)[0]).shape == (2, 8)


def test_one_step_lowers_the_loss():
    before, after = loss_drops_after_one_step("mocov3")
    assert after < before
