"""HIRL on 2 gloo ranks: identical prototypes and labels everywhere, equal to the 1-process tree, and only
rank 0 ever allocated the N×D feature matrix. Also: a resumed epoch reuses its saved tree."""
import os

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hirl_core.config import Config
from hirl_core.data.datasets import InMemoryEval
from hirl_core.hirl import epoch as hirl_epoch
from hirl_core.hirl import features
from hirl_core.hirl.wrapper import HIRL
from hirl_core.methods import build_method

CFG = Config({"method": {"name": "mocov2", "dim": 8, "hidden_dim": 16, "queue_size": 32, "momentum": 0.9,
                         "temperature": 0.2},
              "backbone": {"arch": "resnet18", "width": 4, "small_stem": True, "stem_stride": 2, "in_chans": 1},
              "hirl": {"num_cluster": [12, 5, 2], "num_neg_path": 10, "num_mlp_layer": 2,
                       "kmeans": {"niter": 10, "nredo": 1}, "feature_batch_size": 32}})
N = 101  # not divisible by the world size: the last shard is short


def _dataset():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (N, 1, 16, 16), dtype=torch.uint8, generator=g)
    return InMemoryEval(images, torch.zeros(N, dtype=torch.long), lambda x: x.float() / 255)


def _model():
    torch.manual_seed(0)
    return HIRL(build_method(CFG), CFG.hirl)


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = _model()
    stats = hirl_epoch.recluster(model, CFG.hirl, _dataset(), 3, out_dir, torch.device("cpu"), rank == 0)
    torch.save({"centroids": model.tree.centroids, "labels": model.tree.labels, "parents": model.tree.parents,
                "peak": stats["feature_buffer_bytes"], "stats": stats}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_ranks_share_one_tree_and_only_rank0_holds_features(tmp_path):
    single_dir = tmp_path / "single"
    single_dir.mkdir()
    single = _model()
    hirl_epoch.recluster(single, CFG.hirl, _dataset(), 3, single_dir, torch.device("cpu"), True)

    mp.spawn(_worker, args=(2, 29500 + os.getpid() % 1000, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    for key in ("centroids", "labels", "parents"):
        for a, b, s in zip(r0[key], r1[key], getattr(single.tree, key)):
            assert np.array_equal(a, b)
            assert np.allclose(a, s, atol=1e-5) if key == "centroids" else np.array_equal(a, s)
    dim = r0["centroids"][0].shape[1]
    assert r0["peak"] == N * dim * 4                 # rank 0: the whole N×D matrix
    assert r1["peak"] <= (N // 2 + 1) * dim * 4      # rank 1: only its own shard
    assert r0["stats"]["reclustered"] == 1.0 and r0["stats"]["clusters_empty_l1"] >= 0


def test_resumed_epoch_reuses_its_tree(tmp_path, monkeypatch):
    model = _model()
    hirl_epoch.recluster(model, CFG.hirl, _dataset(), 5, tmp_path, torch.device("cpu"), True)
    first = [y.copy() for y in model.tree.labels]
    calls = []
    monkeypatch.setattr(hirl_epoch, "hierarchical_kmeans", lambda *a, **k: calls.append(1))
    again = _model()
    stats = hirl_epoch.recluster(again, CFG.hirl, _dataset(), 5, tmp_path, torch.device("cpu"), True)
    assert stats == {"reclustered": 0.0} and not calls
    assert all(np.array_equal(a, b) for a, b in zip(first, again.tree.labels))



def _counting_kmeans(monkeypatch) -> list:
    calls, real = [], hirl_epoch.hierarchical_kmeans

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(hirl_epoch, "hierarchical_kmeans", counted)
    return calls


def test_a_later_epoch_clusters_again(tmp_path, monkeypatch):
    hirl_epoch.recluster(_model(), CFG.hirl, _dataset(), 5, tmp_path, torch.device("cpu"), True)
    calls = _counting_kmeans(monkeypatch)
    later = _model()
    stats = hirl_epoch.recluster(later, CFG.hirl, _dataset(), 6, tmp_path, torch.device("cpu"), True)
    assert calls == [1] and stats["reclustered"] == 1.0
    assert [len(c) for c in later.tree.centroids] == CFG.hirl.num_cluster
    assert torch.load(tmp_path / hirl_epoch.CLUSTERS, weights_only=True)["epoch"] == 6


def test_a_torn_saved_tree_is_clustered_again(tmp_path, monkeypatch):
    hirl_epoch.recluster(_model(), CFG.hirl, _dataset(), 5, tmp_path, torch.device("cpu"), True)
    saved = tmp_path / hirl_epoch.CLUSTERS
    saved.write_bytes(saved.read_bytes()[:100])
    calls = _counting_kmeans(monkeypatch)
    stats = hirl_epoch.recluster(_model(), CFG.hirl, _dataset(), 5, tmp_path, torch.device("cpu"), True)
    assert calls == [1] and stats["reclustered"] == 1.0


def test_the_feature_pass_returns_its_buffer_size():
    model = _model()
    feats, nbytes = features.gather_features(model, _dataset(), 32, torch.device("cpu"))
    assert feats.shape == (N, model.inst_dim) and nbytes == feats.nbytes
    assert np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    assert not hasattr(features, "PEAK_FEATURE_BYTES")  # no module state shared between passes
