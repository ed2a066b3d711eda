"""DINO: CE with centering over cross-view pairs only, center EMA, temperature and momentum schedules,
weight-normed last layer, frozen last layer, teacher EMA."""
import numpy as np
import pytest
import torch

from hirl_core.methods.dino import (WeightNormLinear, dino_loss, target_entropy, teacher_targets, updated_center,
                                    warmup_temperature)

from ._tiny import loss_drops_after_one_step, tiny_method, tiny_views


def _np_softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_loss_matches_independent_formula_and_skips_same_view_pairs():
    rng = np.random.default_rng(0)
    student = [rng.normal(size=(4, 9)) for _ in range(5)]  # 2 global + 3 local crops
    teacher = [rng.normal(size=(4, 9)) for _ in range(2)]
    center = rng.normal(size=(1, 9)) * 0.1
    st, tt = 0.1, 0.05
    total, pairs = 0.0, 0
    for iq in range(2):
        q = _np_softmax((teacher[iq] - center) / tt)
        for v in range(5):
            if v == iq:
                continue
            total += -(q * np.log(_np_softmax(student[v] / st))).sum(1).mean()
            pairs += 1
    assert pairs == 8
    got = dino_loss([torch.tensor(s) for s in student], [torch.tensor(t) for t in teacher], torch.tensor(center), st, tt)
    assert abs(got.item() - total / pairs) < 1e-5
    # the same-view term is excluded: making student crop 0 equal to any target changes nothing of teacher 0's terms
    same = dino_loss([torch.tensor(teacher[0])] + [torch.tensor(s) for s in student[1:]],
                     [torch.tensor(t) for t in teacher], torch.tensor(center), st, tt)
    expected = total - sum(-(_np_softmax((teacher[1] - center) / tt) * np.log(_np_softmax(student[0] / st))).sum(1).mean()
                           for _ in [0])
    expected += -(_np_softmax((teacher[1] - center) / tt) * np.log(_np_softmax(teacher[0] / st))).sum(1).mean()
    assert abs(same.item() - expected / pairs) < 1e-5


def test_loss_splits_into_teacher_entropy_plus_a_non_negative_kl():
    rng = np.random.default_rng(1)
    teacher = [rng.normal(size=(6, 7)) for _ in range(2)]
    center, tt = rng.normal(size=(1, 7)) * 0.1, 0.07
    q = [_np_softmax((t - center) / tt) for t in teacher]
    want = np.mean([-(qi * np.log(qi)).sum(1).mean() for qi in q])
    got = target_entropy(teacher_targets([torch.tensor(t) for t in teacher], torch.tensor(center), tt))
    assert abs(got - want) < 1e-6
    student = [torch.tensor(rng.normal(size=(6, 7))) for _ in range(4)]
    loss = dino_loss(student, [torch.tensor(t) for t in teacher], torch.tensor(center), 0.1, tt).item()
    assert loss - got > 0.01  # a random student: KL > 0
    same = [torch.tensor(teacher[0])] * 2  # both teacher crops equal, every student crop predicts them exactly
    student = [torch.tensor((teacher[0] - center) * 0.1 / tt)] * 4
    loss = dino_loss(student, same, torch.tensor(center), 0.1, tt).item()
    assert abs(loss - target_entropy(teacher_targets(same, torch.tensor(center), tt))) < 1e-5  # KL 0


def test_center_is_an_ema_of_the_teacher_batch_mean():
    center, t = torch.zeros(1, 3), torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    assert torch.allclose(updated_center(center, t, 0.9), torch.tensor([[0.2, 0.2, 0.2]]))


def test_teacher_temperature_warms_up_per_epoch():
    assert warmup_temperature(0, 0.04, 0.07, 50) == 0.04
    assert abs(warmup_temperature(49, 0.04, 0.07, 50) - 0.07) < 1e-12
    assert abs(warmup_temperature(10, 0.04, 0.07, 50) - (0.04 + 0.03 * 10 / 49)) < 1e-12
    assert warmup_temperature(60, 0.04, 0.07, 50) == 0.07


def test_last_layer_weight_norm_frozen_layer_and_teacher_ema():
    model = tiny_method("dino", freeze_last_layer=1, momentum_teacher=0.9)
    views = tiny_views("dino", 4)
    w = torch.nn.functional.normalize(model.student_head.last_layer.weight_v, dim=1)
    x = torch.randn(3, 8)
    assert torch.allclose(model.student_head.last_layer(x), x @ w.T, atol=1e-6)
    assert model.student_head.last_layer.weight_g is None  # norm_last_layer: g fixed at 1
    model.on_step_start(0, 8, 4)  # epoch 0 < freeze_last_layer
    out = model(views)
    assert out.logs["teacher_temp"] == 0.04 and out.embedding.shape == (4, 8)
    out.loss.backward()
    model.before_optimizer_step()
    assert model.student_head.last_layer.weight_v.grad is None
    assert model.student_head.mlp[0].weight.grad is not None
    assert all(not p.requires_grad for p in model.backbone.parameters())  # `backbone` is the teacher
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(0.5)
    old = [p.clone() for p in model.backbone.parameters()]
    model.on_step_start(4, 8, 4)  # halfway: momentum 1 - 0.1 * 0.5
    model.after_step(5 / 8)
    for t_old, s, t_new in zip(old, model.student.parameters(), model.backbone.parameters()):
        assert torch.allclose(t_new, 0.95 * t_old + 0.05 * s, atol=1e-6)
    assert model.forward_feature(views[0]).shape == (4, 8)


def _graph_nodes(fn, seen=None):
    seen = set() if seen is None else seen
    if fn is not None and fn not in seen:
        seen.add(fn)
        for nxt, _ in fn.next_functions:
            _graph_nodes(nxt, seen)
    return seen


@pytest.mark.parametrize("fix_norm", [True, False])
def test_weight_norm_layer_equals_the_formula_through_one_fused_op(fix_norm):
    torch.manual_seed(0)
    layer = WeightNormLinear(16, 64, fix_norm=fix_norm)
    if not fix_norm:
        with torch.no_grad():
            layer.weight_g.uniform_(0.5, 2.0)
    # the layout of existing checkpoints: only V when g is fixed at 1, else g [d_out, 1] and V
    assert {k: tuple(t.shape) for k, t in layer.state_dict().items()} == \
        ({"weight_v": (64, 16)} if fix_norm else {"weight_g": (64, 1), "weight_v": (64, 16)})
    v = layer.weight_v.detach().clone().requires_grad_()
    g = torch.ones(64, 1) if fix_norm else layer.weight_g.detach().clone().requires_grad_()
    x = torch.randn(5, 16, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    out = layer(x)
    ref = x_ref @ (g * v / v.pow(2).sum(dim=1, keepdim=True).sqrt()).T  # W = g · V/‖V‖, row-wise
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    ref.backward(grad_out)
    torch.testing.assert_close(layer.weight_v.grad, v.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    if not fix_norm:
        torch.testing.assert_close(layer.weight_g.grad, g.grad, rtol=1e-5, atol=1e-6)
    # the backward is torch's fused weight-norm kernel, not a chain of element-wise ops over all of V
    names = sorted(type(n).__name__ for n in _graph_nodes(out.grad_fn))
    assert "WeightNormInterfaceBackward0" in names, names


def test_one_step_lowers_the_loss():
    before, after = loss_drops_after_one_step("dino")
    assert after < before
