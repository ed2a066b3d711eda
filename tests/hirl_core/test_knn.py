"""Weighted KNN against a brute-force NumPy version; checkpoint prefix detection."""
import numpy as np
import pytest
import torch

from hirl_core.evals.knn import weighted_knn
from hirl_core.models import build_backbone
from hirl_core.config import Config
from hirl_core.models.loading import CheckpointError, detect_prefix, load_backbone


def _brute_force(train, ytr, test, yte, k, t, c):
    top1 = top5 = 0
    for q, y in zip(test, yte):
        sims = train @ q
        order = np.argsort(-sims, kind="stable")[:k]
        votes = np.zeros(c)
        for j in order:
            votes[ytr[j]] += np.exp(sims[j] / t)
        ranked = np.argsort(-votes, kind="stable")
        top1 += ranked[0] == y
        top5 += y in ranked[:5]
    return top1 / len(test), top5 / len(test)


@pytest.mark.parametrize("query_chunk", [7, 1000])
def test_weighted_knn_equals_brute_force(query_chunk):
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(12, 16))
    ytr, yte = rng.integers(0, 12, 300), rng.integers(0, 12, 50)
    train = centers[ytr] + rng.normal(scale=1.5, size=(300, 16))
    test = centers[yte] + rng.normal(scale=1.5, size=(50, 16))
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    test /= np.linalg.norm(test, axis=1, keepdims=True)
    got = weighted_knn(torch.tensor(train), torch.tensor(ytr), torch.tensor(test), torch.tensor(yte),
                       ks=(10, 20, 100, 200), temperature=0.07, num_classes=12, query_chunk=query_chunk)
    for k in (10, 20, 100, 200):
        t1, t5 = _brute_force(train, ytr, test, yte, k, 0.07, 12)
        assert got[f"knn_top1_k{k}"] == pytest.approx(t1)
        assert got[f"knn_top5_k{k}"] == pytest.approx(t5)
    assert 0 < got["knn_top1_k20"] < 1  # the data is hard enough that a wrong vote would show


def _backbone():
    torch.manual_seed(0)
    return build_backbone(Config({"arch": "resnet18", "width": 4, "small_stem": True, "in_chans": 1}))


@pytest.mark.parametrize("layout", ["backbone.", "model.backbone.", "module.backbone.", "module.model.backbone."])
def test_prefix_detected_for_every_seed_layout(tmp_path, layout):
    src, dst = _backbone(), _backbone()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(1.0)
    state = {layout + k: v for k, v in src.state_dict().items()}
    state[layout.replace("backbone.", "") + "head.0.weight"] = torch.zeros(3, 3)  # a projection head to ignore
    torch.save({"model": state, "epoch": 3}, tmp_path / "ckpt.pth")
    prefix = load_backbone(dst, tmp_path / "ckpt.pth")
    assert prefix == layout.removeprefix("module.")
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)


def test_detect_prefix_prefers_the_backbone_over_the_momentum_encoder():
    keys = ["conv1.weight", "bn1.weight"]
    state = {"backbone.conv1.weight": 0, "backbone.bn1.weight": 0, "backbone_k.conv1.weight": 0}
    assert detect_prefix(state, keys) == ("backbone.", 2)


def test_corrupt_and_mismatched_checkpoints_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*bad.pth"):
        load_backbone(_backbone(), bad)
    other = tmp_path / "other.pth"
    torch.save({"model": {"backbone.fc.weight": torch.zeros(2, 2)}}, other)
    with pytest.raises(CheckpointError, match="does not fit backbone"):
        load_backbone(_backbone(), other)
    with pytest.raises(CheckpointError, match="not found"):
        load_backbone(_backbone(), tmp_path / "nope.pth")
