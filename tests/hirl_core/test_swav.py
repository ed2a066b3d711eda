"""SwAV: Sinkhorn marginals, swapped prediction against an independent formula, frozen prototypes, queue."""
import numpy as np
import torch

from hirl_core.methods.base import forward_by_resolution
from hirl_core.methods.swav import sinkhorn, swapped_prediction

from ._tiny import loss_drops_after_one_step, tiny_method, tiny_views


def _np_sinkhorn(scores, eps, iters):
    q = np.exp(scores / eps).T  # K x B
    k, b = q.shape
    q /= q.sum()
    for _ in range(iters):
        q /= q.sum(axis=1, keepdims=True) * k
        q /= q.sum(axis=0, keepdims=True) * b
    return (q * b).T


def test_sinkhorn_matches_independent_iteration_and_marginals():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(24, 6)); z /= np.linalg.norm(z, axis=1, keepdims=True)
    c = rng.normal(size=(10, 6)); c /= np.linalg.norm(c, axis=1, keepdims=True)
    scores = z @ c.T
    got = sinkhorn(torch.tensor(scores), 0.05, 3).double().numpy()
    assert np.allclose(got, _np_sinkhorn(scores, 0.05, 3), rtol=1e-4, atol=1e-7)
    assert np.allclose(got.sum(axis=1), 1.0, atol=1e-5)  # every sample's code is a distribution
    many = sinkhorn(torch.tensor(scores), 0.05, 200).double().numpy()
    assert np.allclose(many.sum(axis=0), 24 / 10, rtol=1e-3)  # equipartition: each prototype gets B/K


def test_swapped_prediction_matches_independent_formula():
    rng = np.random.default_rng(1)
    scores = [rng.normal(size=(5, 7)) for _ in range(4)]
    codes = {0: rng.dirichlet(np.ones(7), size=5), 1: rng.dirichlet(np.ones(7), size=5)}
    t = 0.1

    def log_softmax(x):
        x = x / t
        return x - x.max(1, keepdims=True) - np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True))

    expected = 0.0
    for c, q in codes.items():
        others = [v for v in range(4) if v != c]
        expected += sum(-(q * log_softmax(scores[v])).sum(1).mean() for v in others) / len(others)
    expected /= 2
    got = swapped_prediction([torch.tensor(s) for s in scores], {c: torch.tensor(q) for c, q in codes.items()}, t)
    assert abs(got.item() - expected) < 1e-5  # computed in fp32


def test_prototypes_are_normalised_and_frozen_for_the_first_iterations():
    model = tiny_method("swav", freeze_prototypes_iters=2)
    views = tiny_views("swav", 6)
    for step, frozen in [(0, True), (1, True), (2, False)]:
        model.on_step_start(step, 10, 5)
        model.zero_grad()
        model(views).loss.backward()
        model.before_optimizer_step()
        assert (model.prototypes.weight.grad is None) == frozen
        assert model.backbone.conv1.weight.grad is not None
    assert torch.allclose(model.prototypes.weight.norm(dim=1), torch.ones(12), atol=1e-6)


def test_queue_fills_then_joins_the_sinkhorn_batch():
    model = tiny_method("swav", queue_length=12, epoch_queue_starts=1)
    views = tiny_views("swav", 6)
    model.on_step_start(0, 10, 5)  # epoch 0: before the queue starts
    model(views)
    assert int(model.queue_filled) == 0
    model.on_step_start(5, 10, 5)
    model(views)
    model(views)
    assert int(model.queue_filled) == 12
    with torch.no_grad():  # the crop-1 rows of the last forward (train-mode BN over all crops, as there)
        z = torch.nn.functional.normalize(model.head(forward_by_resolution(model.backbone, views)), dim=1)[6:12]
    assert torch.allclose(model.queue[1, :6], z, atol=1e-5)  # newest first
    assert model._queue_active() and int(model.queue_filled) >= model.queue.shape[1]


def test_one_step_lowers_the_loss():
    before, after = loss_drops_after_one_step("swav")
    assert after < before


def _bn_stats(net):
    return [t.clone() for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)
            for t in (m.running_mean, m.running_var)]


def test_only_global_crops_move_the_backbone_bn_statistics():
    views = tiny_views("swav", 6)
    assert views[-1].shape[-1] < views[0].shape[-1]  # the tiny recipe has smaller local crops
    model = tiny_method("swav")
    reference = tiny_method("swav")  # same seed, same initial weights
    model(views)
    with torch.no_grad():
        reference.backbone(torch.cat(views[:2]))  # the global crops alone, in training mode
    for got, want in zip(_bn_stats(model.backbone), _bn_stats(reference.backbone)):
        assert torch.equal(got, want)
    seed_like = tiny_method("swav", bn_stats_from_global_crops=False)
    seed_like(views)  # the seed's behaviour: local crops move them too
    assert not all(torch.equal(a, b) for a, b in zip(_bn_stats(seed_like.backbone), _bn_stats(reference.backbone)))
