"""HIRL: the prototype tree's invariants, the path loss against NumPy, masking, gradient flow."""
import numpy as np
import pytest
import torch

from hirl_core.config import Config
from hirl_core.hirl.kmeans import hierarchical_kmeans
from hirl_core.hirl.paths import LevelHeads, lift, path_loss, sample_negative_paths
from hirl_core.hirl.wrapper import HIRL
from hirl_core.methods import build_method


@pytest.fixture(scope="module")
def tree():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(40, 16))
    x = centers[rng.integers(0, 40, 2000)] + 0.3 * rng.normal(size=(2000, 16))
    return hierarchical_kmeans(x.astype(np.float32), [40, 12, 4], niter=10, nredo=1, use_gpu=False)


def test_tree_invariants(tree):
    assert [len(c) for c in tree.centroids] == [40, 12, 4]
    for c in tree.centroids:
        assert np.allclose(np.linalg.norm(c, axis=1), 1.0, atol=1e-5)
    for level, parent in enumerate(tree.parents):  # exactly one parent per prototype, a valid id
        assert parent.shape == (len(tree.centroids[level]),)
        assert parent.min() >= 0 and parent.max() < len(tree.centroids[level + 1])
        assert np.array_equal(tree.labels[level + 1], parent[tree.labels[level]])
    assert all(len(y) == 2000 for y in tree.labels)
    stats = tree.stats()
    assert stats["cluster_size_max_l1"] >= stats["cluster_size_median_l1"] >= stats["cluster_size_min_l1"]
    assert sum(np.bincount(tree.labels[2], minlength=4)) == 2000


def test_tree_is_deterministic(tree):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(40, 16))
    x = centers[rng.integers(0, 40, 2000)] + 0.3 * rng.normal(size=(2000, 16))
    again = hierarchical_kmeans(x.astype(np.float32), [40, 12, 4], niter=10, nredo=1, use_gpu=False)
    for a, b in zip(tree.labels, again.labels):
        assert np.array_equal(a, b)


def _numpy_path_loss(z, protos, pos, neg):
    eps = 1e-6
    losses = []
    for i in range(len(z)):
        score = lambda path: np.prod([(z[i, l] @ protos[l][path[l]] + 1) / 2 for l in range(len(protos))])
        l_pos = -np.log(score(pos[i]) + eps)
        num = den = 0.0
        for path in neg[i]:
            t = float(any(path[l] != pos[i][l] for l in range(len(protos))))
            num += t * -np.log(1 - score(path) + eps)
            den += t
        losses += [l_pos, num / (den + eps)]
    return float(np.mean(losses))


def _setup(seed=0, b=5, m=7):
    g = torch.Generator().manual_seed(seed)
    protos = [torch.nn.functional.normalize(torch.randn(k, 6, generator=g, dtype=torch.float64), dim=1)
              for k in (9, 4, 2)]
    parents = [torch.randint(4, (9,), generator=g), torch.randint(2, (4,), generator=g)]
    pos = lift(torch.randint(9, (b,), generator=g), parents)
    neg = sample_negative_paths(b, m, 9, parents, generator=g)
    neg[0, :3] = pos[0]  # copies of the positive path must never count as negatives
    z = torch.nn.functional.normalize(torch.randn(b, 3, 6, generator=g, dtype=torch.float64), dim=2)
    return z, protos, parents, pos, neg


def test_path_loss_matches_numpy_with_masking():
    z, protos, _parents, pos, neg = _setup()
    got, logs = path_loss(z, protos, pos, neg)
    want = _numpy_path_loss(z.numpy(), [p.numpy() for p in protos], pos.numpy(), neg.numpy())
    assert got.item() == pytest.approx(want, rel=1e-9)
    assert 0.0 <= logs["path_acc"] <= 1.0 and {"path_acc_l1", "path_acc_l2", "path_acc_l3"} <= set(logs)


def test_negative_equal_to_positive_never_counts():
    z, protos, _parents, pos, neg = _setup(b=1, m=4)
    neg[0, 0] = pos[0]
    base, _ = path_loss(z, protos, pos, neg)
    z2 = z.clone()
    # Make the copy of the positive path a "perfect" negative score; were it counted, the loss would explode.
    only_copies = pos[:, None, :].expand(1, 4, 3).clone()
    loss_only_copies, _ = path_loss(z2, protos, pos, only_copies)
    l_pos = -torch.log(((torch.stack([z[0, l] @ protos[l][pos[0, l]] for l in range(3)]) + 1) / 2).prod() + 1e-6)
    assert loss_only_copies.item() == pytest.approx(l_pos.item() / 2, rel=1e-9)  # the negative term is 0
    assert torch.isfinite(base)


def test_path_loss_normalises_prototypes_and_embeddings():
    """Scores assume unit vectors: a prototype of norm 3 gave scores above 1, log of a negative, NaN."""
    z, protos, _parents, pos, neg = _setup()
    want, want_logs = path_loss(z, protos, pos, neg)
    g = torch.Generator().manual_seed(5)
    scaled = [p * (1 + 3 * torch.rand(len(p), 1, generator=g, dtype=p.dtype)) for p in protos]
    got, logs = path_loss(z * 2.5, scaled, pos, neg)
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(want.item(), rel=1e-9)
    assert logs == pytest.approx(want_logs)


def test_negatives_are_valid_tree_paths():
    g = torch.Generator().manual_seed(1)
    parents = [torch.randint(5, (20,), generator=g), torch.randint(3, (5,), generator=g)]
    neg = sample_negative_paths(4, 50, 20, parents, generator=g)
    assert neg.shape == (4, 50, 3)
    assert torch.equal(neg[..., 1], parents[0][neg[..., 0]]) and torch.equal(neg[..., 2], parents[1][neg[..., 1]])


def test_level_heads_shape_and_layers():
    heads = LevelHeads(8, 3, num_mlp_layer=5)
    linears = [m for m in heads.heads[0] if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 5 and linears[-1].bias is not None and linears[0].bias is None
    z = heads(torch.randn(4, 8))
    assert z.shape == (4, 3, 8) and torch.allclose(z.norm(dim=-1), torch.ones(4, 3), atol=1e-5)


def test_gradients_reach_heads_and_backbone_never_prototypes(tree):
    cfg = Config({"method": {"name": "mocov2", "dim": 16, "hidden_dim": 16, "queue_size": 32, "momentum": 0.9,
                             "temperature": 0.2},
                  "backbone": {"arch": "resnet18", "width": 4, "small_stem": True, "stem_stride": 2, "in_chans": 1},
                  "hirl": {"num_cluster": [40, 12, 4], "num_neg_path": 20, "num_mlp_layer": 2}})
    torch.manual_seed(0)
    model = HIRL(build_method(cfg), cfg.hirl)
    model.set_tree(tree, torch.device("cpu"))
    protos_before = [p.clone() for p in model._protos]
    for p in model._protos:
        p.requires_grad_(True)  # even if someone made them trainable, the loss must detach them
    views = [torch.randn(8, 1, 16, 16), torch.randn(8, 1, 16, 16)]
    out = model(views, index=torch.arange(8))
    assert "path_loss" in out.logs and out.logs["path_loss"] > 0
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.heads.parameters() if p.ndim > 1)
    assert model.model.backbone.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model._protos)
    assert all(torch.equal(a, b.detach()) for a, b in zip(protos_before, model._protos))
    state = model.state_dict()
    assert any(k.startswith("model.backbone.") for k in state)


@pytest.mark.parametrize("separate,passes_expected", [(False, 2), (True, 3)])
def test_swav_iter_wise_assignment_relabels_the_batch_from_the_second_crop(separate, passes_expected):
    from ._tiny import tiny_method, tiny_views
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 8)).astype(np.float32)  # tiny SwAV's embedding is 8-d
    small = hierarchical_kmeans(x, [12, 6, 3], niter=5, nredo=1, use_gpu=False)
    model = HIRL(tiny_method("swav"), Config({"num_cluster": [12, 6, 3], "num_neg_path": 5,
                                              "iter_wise_assignment": True,
                                              "reassign_separate_forward": separate}))
    model.set_tree(small, torch.device("cpu"))
    model.eval()  # BN from running stats: the training forward's crop-2 features equal forward_feature's
    views, index = tiny_views("swav", 6), torch.tensor([3, 10, 50, 51, 200, 299])
    before = model._labels.clone()
    passes = []
    hook = model.backbone.register_forward_hook(lambda *_: passes.append(1))
    out = model(views, index=index)
    hook.remove()
    # one backbone pass per resolution (global, local); the seed's way adds a pass for crop 2
    assert len(passes) == passes_expected
    feats = torch.nn.functional.normalize(model.forward_feature(views[1]), dim=1)
    leaves = (feats @ model._protos[0].T).argmax(1)
    assert torch.equal(model._labels[index, 0], leaves)
    assert torch.equal(model._labels[index], lift(leaves, model._parents))  # upper levels via the parents
    rest = torch.ones(len(before), dtype=torch.bool)
    rest[index] = False
    assert torch.equal(model._labels[rest], before[rest])  # only the batch's rows change
    assert out.logs["assignment_same_ratio"] == pytest.approx((leaves == before[index, 0]).float().mean().item())
