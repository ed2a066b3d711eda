"""LARS: trust ratio on a known case, momentum, excluded groups, optimiser registry."""
import torch

from hirl_core.config import Config
from hirl_core.engine.lars import LARS
from hirl_core.engine.optim import build_optimizer, clip_gradients, scheduled_lr, scheduled_weight_decay


def test_trust_ratio_known_case():
    w, g = torch.tensor([3.0, 4.0]), torch.tensor([0.0, 2.0])  # |w| = 5, |g| = 2
    ratio = LARS.trust_ratio(w, g, weight_decay=0.1, trust_coefficient=0.001)
    assert abs(ratio.item() - 0.001 * 5 / (2 + 0.1 * 5)) < 1e-9
    assert LARS.trust_ratio(torch.zeros(2), g, 0.1, 0.001).item() == 1.0  # zero weights: plain step


def test_steps_with_momentum_and_exclusion():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([{"params": [w]}, {"params": [b], "lars_exclude": True, "weight_decay": 0.0}],
               lr=2.0, momentum=0.5, weight_decay=0.1, trust_coefficient=0.001)
    w.grad, b.grad = torch.tensor([0.0, 2.0]), torch.tensor([0.5])
    opt.step()
    r = 0.001 * 5 / 2.5
    d1 = r * torch.tensor([0.3, 2.4])  # trust * (g + wd * w)
    assert torch.allclose(w.detach(), torch.tensor([3.0, 4.0]) - 2.0 * d1)
    assert torch.allclose(b.detach(), torch.tensor([0.0]))  # 1 - 2 * 0.5, no trust ratio
    w_prev = w.detach().clone()
    opt.step()  # same gradient again: momentum buffer = 0.5 * d1 + d2
    wn = w_prev.norm()
    gd = torch.tensor([0.0, 2.0]) + 0.1 * w_prev
    d2 = 0.001 * wn / (2 + 0.1 * wn) * gd
    assert torch.allclose(w.detach(), w_prev - 2.0 * (0.5 * d1 + d2), atol=1e-7)


def test_registry_groups_and_schedules():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = build_optimizer(Config({"name": "lars", "lr": 0.3, "weight_decay": 1e-6, "momentum": 0.9,
                                  "exclude_1d": True}), model, 4096)
    assert isinstance(opt, LARS) and opt.param_groups[0]["lr"] == 0.3 * 16
    excluded = [g for g in opt.param_groups if g["lars_exclude"]]
    assert len(excluded) == 1 and len(excluded[0]["params"]) == 3 and excluded[0]["weight_decay"] == 0.0
    sched = Config({"warmup_epochs": 10, "warmup_start_lr": 0.3, "min_lr": 0.0048})
    assert scheduled_lr(sched, 4.8, 0, 100, 2000) == 0.3
    assert abs(scheduled_lr(sched, 4.8, 500, 100, 2000) - (0.3 + 4.5 * 0.5)) < 1e-9
    assert abs(scheduled_lr(sched, 4.8, 1000, 100, 2000) - 4.8) < 1e-9
    assert abs(scheduled_lr(sched, 4.8, 2000, 100, 2000) - 0.0048) < 1e-9
    by_epoch = Config({"by_epoch": True})
    assert scheduled_lr(by_epoch, 1.0, 150, 100, 1000) == scheduled_lr(by_epoch, 1.0, 100, 100, 1000)
    wd = Config({"weight_decay": 0.04, "weight_decay_end": 0.4})
    assert abs(scheduled_weight_decay(wd, 0, 100) - 0.04) < 1e-12 and abs(scheduled_weight_decay(wd, 100, 100) - 0.4) < 1e-12
    assert scheduled_weight_decay(Config({"weight_decay": 0.1}), 5, 100) is None


def test_per_parameter_clipping():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([0.1, 0.0])
    clip_gradients([a, b], 1.0, "per_param")
    assert abs(a.grad.norm().item() - 1.0) < 1e-5 and torch.allclose(b.grad, torch.tensor([0.1, 0.0]))
