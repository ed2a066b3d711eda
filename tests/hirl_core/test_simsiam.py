"""SimSiam: symmetric negative cosine with stop-gradient, fixed predictor LR, one step lowers the loss."""
import numpy as np
import torch

from hirl_core.config import Config
from hirl_core.engine.optim import build_optimizer, set_lr
from hirl_core.methods.simsiam import simsiam_loss

from ._tiny import loss_drops_after_one_step, tiny_method, tiny_views


def _np_cos(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_loss_matches_independent_formula_and_stops_gradient():
    rng = np.random.default_rng(0)
    p1, p2, z1, z2 = (rng.normal(size=(5, 7)) for _ in range(4))
    expected = -0.5 * (_np_cos(p1, z2).mean() + _np_cos(p2, z1).mean())
    tp1, tp2, tz1, tz2 = (torch.tensor(a, requires_grad=True) for a in (p1, p2, z1, z2))
    loss = simsiam_loss(tp1, tp2, tz1, tz2)
    assert abs(loss.item() - expected) < 1e-12
    loss.backward()
    assert tz1.grad is None and tz2.grad is None  # targets are detached
    assert tp1.grad.abs().sum() > 0 and tp2.grad.abs().sum() > 0


def test_method_outputs_and_fixed_predictor_lr():
    model = tiny_method("simsiam")
    out = model(tiny_views("simsiam", 6))
    assert out.embedding.shape == (6, model.inst_dim) and model.forward_feature(tiny_views("simsiam", 3)[0]).shape == (3, 16)
    opt = build_optimizer(Config({"name": "sgd", "lr": 0.05, "weight_decay": 1e-4, "momentum": 0.9}), model, 512)
    set_lr(opt, 0.001)
    pred = {id(p) for p in model.predictor.parameters()}
    for group in opt.param_groups:
        is_pred = {id(p) for p in group["params"]} <= pred
        assert group["lr"] == (0.1 if is_pred else 0.001)  # 0.05 * 512 / 256 for the predictor


def test_one_step_lowers_the_loss():
    before, after = loss_drops_after_one_step("simsiam")
    assert after < before
