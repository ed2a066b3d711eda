"""MoCo v2: InfoNCE against an independent formula, queue and momentum updates."""
import math

import numpy as np
import torch

from hirl_core.config import Config
from hirl_core.methods import build_method
from hirl_core.methods.mocov2 import info_nce


def _numpy_info_nce(q, k, queue, t):
    losses = []
    for i in range(len(q)):
        pos = math.exp(float(np.dot(q[i], k[i])) / t)
        negs = [math.exp(float(np.dot(q[i], queue[:, j])) / t) for j in range(queue.shape[1])]
        losses.append(-math.log(pos / (pos + sum(negs))))
    return sum(losses) / len(losses)


def _unit(x):
    return x / np.linalg.norm(x, axis=0 if x.ndim == 2 and x.shape[0] < x.shape[1] else -1, keepdims=True)


def test_info_nce_matches_independent_formula():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(6, 8)); q /= np.linalg.norm(q, axis=1, keepdims=True)
    k = rng.normal(size=(6, 8)); k /= np.linalg.norm(k, axis=1, keepdims=True)
    queue = rng.normal(size=(8, 20)); queue /= np.linalg.norm(queue, axis=0, keepdims=True)
    got = info_nce(torch.tensor(q), torch.tensor(k), torch.tensor(queue), 0.2).item()
    assert abs(got - _numpy_info_nce(q, k, queue, 0.2)) < 1e-9


def _tiny_moco(queue_size=10, momentum=0.9):
    cfg = Config({"method": {"name": "mocov2", "dim": 4, "hidden_dim": 8, "queue_size": queue_size,
                             "momentum": momentum, "temperature": 0.2},
                  "backbone": {"arch": "resnet18", "width": 4, "small_stem": True, "stem_stride": 2,
                               "in_chans": 1}})
    torch.manual_seed(0)
    return build_method(cfg)


def test_queue_receives_keys_in_order_and_wraps():
    model = _tiny_moco(queue_size=10)
    views = [torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16)]
    for step in range(3):  # 12 keys into a queue of 10: the pointer wraps
        with torch.no_grad():
            expected_keys = model._keys(views[1])
        model(views)
        start = (4 * step) % 10
        slots = [(start + j) % 10 for j in range(4)]
        assert torch.allclose(model.queue[:, slots].T, expected_keys, atol=1e-6)
    assert int(model.queue_ptr) == 12 % 10
    assert torch.allclose(model.queue.norm(dim=0), torch.ones(10), atol=1e-5)


def test_momentum_update_is_ema_of_query_encoder():
    model = _tiny_moco(momentum=0.9)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(torch.randn_like(p))
    before_k = [p.clone() for p in model.backbone_k.parameters()]
    q = [p.clone() for p in model.backbone.parameters()]
    model.after_step(0.5)
    for k_old, q_now, k_new in zip(before_k, q, model.backbone_k.parameters()):
        assert torch.allclose(k_new, 0.9 * k_old + 0.1 * q_now, atol=1e-6)
    assert all(not p.requires_grad for p in model.backbone_k.parameters())


def test_one_step_lowers_loss_on_a_fixed_batch():
    model = _tiny_moco(queue_size=64, momentum=0.99)
    torch.manual_seed(1)
    views = [torch.randn(16, 1, 16, 16), torch.randn(16, 1, 16, 16)]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    queue = model.queue.clone()

    def loss_now():
        model.queue.copy_(queue)  # same negatives for both measurements
        with torch.no_grad():
            return model(views).loss.item()

    before = loss_now()
    model.queue.copy_(queue)
    out = model(views)
    opt.zero_grad(); out.loss.backward(); opt.step()
    assert loss_now() < before


def test_single_process_shuffle_bn_normalises_keys_in_shuffled_groups():
    model = _tiny_moco()
    model.bn_splits = 2
    x = torch.randn(8, 1, 16, 16)
    torch.manual_seed(5)
    keys = model._keys(x)
    torch.manual_seed(5)
    perm = torch.randperm(8)
    with torch.no_grad():
        groups = [model.head_k(model.backbone_k(x[perm][:4])), model.head_k(model.backbone_k(x[perm][4:]))]
    expected = torch.empty(8, 4)
    expected[perm] = torch.nn.functional.normalize(torch.cat(groups), dim=1)
    assert torch.allclose(keys, expected, atol=1e-5)
    # and it differs from whole-batch BN: the groups' statistics are not the batch's
    model.bn_splits = 1
    assert not torch.allclose(model._keys(x), keys, atol=1e-3)
