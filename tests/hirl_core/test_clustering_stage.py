"""The clustering stage end to end on a Fashion-MNIST subset: a tiny HIRL-MoCo v2 pre-training directory
(backbone.pth, config.yaml, checkpoint.pth with a prototype tree), a real sqlite MLflow store, and every
number recomputed here from the same features without the stage's code paths."""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from hirl_core.config import Config, ConfigError, dump_config, load_config
from hirl_core.data.build import build_eval_dataset
from hirl_core.engine import checkpoint as ckpt
from hirl_core.engine.lifecycle import seed_all
from hirl_core.evals.clustering_stage import run_clustering
from hirl_core.evals.knn import extract_features
from hirl_core.hirl.epoch import tree_state
from hirl_core.hirl.kmeans import hierarchical_kmeans, kmeans
from hirl_core.hirl.wrapper import HIRL
from hirl_core.methods import build_method
from hirl_core.models import build_backbone
from hirl_core.schema import check_stage_config

from ._tiny import METHOD_CFGS, RESNET

REPO = Path(__file__).resolve().parents[2]
COARSE = np.array([0, 2, 0, 3, 0, 1, 0, 1, 4, 1])  # Fashion-MNIST: tops, footwear, trouser, dress, bag
VAL, TRAIN, TREE_K = 300, 200, [12, 6, 3]
NEEDS_DATA = pytest.mark.fashion_mnist  # skipped without the files; HIRL_REQUIRE_DATA=1 fails


def _pretraining(out: Path, with_tree: bool = True) -> tuple:
    """A HIRL pre-training directory as run_pretrain leaves it: its weights perturbed away from the
    seed's initialisation (so pretrained and untrained differ), the tree clustered from its features."""
    pre = Config({"seed": 0, "method": METHOD_CFGS["mocov2"][0], "backbone": dict(RESNET),
                  "hirl": {"num_cluster": TREE_K, "num_neg_path": 8},
                  "data": {"dataset": "fashion_mnist", "train_subset": TRAIN, "subset_seed": 0, "image_size": 28,
                           "channels": 1}})
    seed_all(pre.seed)
    method = HIRL(build_method(pre), pre.hirl)
    with torch.no_grad():
        for p in method.parameters():
            p.add_(0.05 * torch.randn_like(p))
    train_set = build_eval_dataset(pre.data, "train")
    feats, _ = extract_features(_Features(method), train_set, 128, torch.device("cpu"))
    tree = hierarchical_kmeans(feats.numpy(), TREE_K, use_gpu=False) if with_tree else None
    out.mkdir(parents=True)
    torch.save({"model": method.state_dict(), "config": pre.to_dict(), "epoch": 1,
                "hirl_tree": tree_state(tree, 0)}, out / ckpt.CHECKPOINT)
    ckpt.export_backbone(method, out / ckpt.BACKBONE, prefix="model.backbone.")
    dump_config(pre, out / "config.yaml")
    return method, tree, train_set.targets.numpy()


class _Features(torch.nn.Module):
    def __init__(self, method):
        super().__init__()
        self.method = method

    def forward(self, x):
        return self.method.forward_feature(x)


def _purity(y, assign):
    return sum(np.bincount(y[assign == c]).max() for c in np.unique(assign)) / len(y)


def _kmeans_nmi(feats, y, k):
    _, assign = kmeans(feats.numpy(), k, niter=20, nredo=5, seed=0, use_gpu=False)
    return normalized_mutual_info_score(y, assign), adjusted_rand_score(y, assign)


def _config(tmp_path, *extra, hierarchy=None):
    cfg = load_config(REPO / "configs/downstream/clustering/clustering_demo.yaml",
                      [f"pretrained={tmp_path / 'pre' / 'backbone.pth'}", f"output_dir={tmp_path / 'out'}",
                       f"data.val_subset={VAL}", "clustering.batch_size=128", "device=cpu", *extra])
    if hierarchy is not None:  # a mapping has no override syntax
        cfg.data["hierarchy"] = hierarchy
    return cfg


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return tmp_path


@NEEDS_DATA
def test_clustering_of_a_hirl_pretraining_scores_backbones_and_tree(store):
    method, tree, train_y = _pretraining(store / "pre")
    cfg = _config(store)
    check_stage_config(cfg, "clustering")
    metrics = run_clustering(cfg)

    val_set = build_eval_dataset(cfg.data, "val")
    y = val_set.targets.numpy()
    backbone = build_backbone(Config(RESNET))
    backbone.load_state_dict(method.backbone.state_dict())
    nmi, ari = _kmeans_nmi(extract_features(backbone, val_set, 64, torch.device("cpu"))[0], y, 10)
    assert metrics["nmi"] == pytest.approx(nmi) and metrics["ari"] == pytest.approx(ari)
    assert metrics["nmi_coarse"] == pytest.approx(
        _kmeans_nmi(extract_features(backbone, val_set, 64, torch.device("cpu"))[0], COARSE[y], 5)[0])
    seed_all(0)
    untrained = build_backbone(Config(RESNET))
    nmi_untrained, _ = _kmeans_nmi(extract_features(untrained, val_set, 64, torch.device("cpu"))[0], y, 10)
    assert metrics["nmi_untrained"] == pytest.approx(nmi_untrained)
    assert metrics["nmi"] != pytest.approx(metrics["nmi_untrained"])  # two different backbones were scored
    for key in ("ami", "acc", "ari_coarse", "acc_coarse", "ami_coarse_untrained", "acc_untrained"):
        assert key in metrics
    assert 0.1 < metrics["acc"] <= 1.0 and 0.2 < metrics["acc_coarse"] <= 1.0

    # the tree: val images to their nearest leaf prototype, ancestors through the parent maps
    feats = extract_features(_Features(method), val_set, 64, torch.device("cpu"))[0].numpy()
    leaves = (feats @ tree.centroids[0].T).argmax(axis=1)
    levels = [leaves, tree.parents[0][leaves], tree.parents[1][tree.parents[0][leaves]]]
    for i, assign in enumerate(levels, 1):
        assert metrics[f"tree_purity_l{i}"] == pytest.approx(_purity(y, assign))
        assert metrics[f"tree_purity_l{i}_coarse"] == pytest.approx(_purity(COARSE[y], assign))
        assert metrics[f"tree_train_purity_l{i}"] == pytest.approx(_purity(train_y, tree.labels[i - 1]))
        assert metrics[f"tree_train_purity_l{i}_coarse"] == pytest.approx(_purity(COARSE[train_y], tree.labels[i - 1]))
    assert metrics["tree_purity_l1"] > metrics["tree_purity_l3"]  # 12 leaves are purer than 3 roots

    assert json.loads((store / "out" / "metrics.json").read_text()) == pytest.approx(metrics)
    run, = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "FINISHED"
    assert run.data.metrics == pytest.approx(metrics)
    assert run.data.params["clustering_k"] == "fine=10, coarse=5"
    assert run.data.params["class_hierarchy"] == "coarse: tops (4), footwear (3), trouser (1), dress (1), bag (1)"
    assert run.data.params["prototype_tree"].startswith("12/6/3 prototypes, clustered at epoch 1")
    assert run.data.params["backbone_prefix"] == "model.backbone."


@NEEDS_DATA
def test_a_baseline_pretraining_has_no_tree_metrics_and_num_clusters_is_honoured(store):
    _pretraining(store / "pre", with_tree=False)
    metrics = run_clustering(_config(store, "untrained=false", "clustering.num_clusters=4", hierarchy={}))
    assert set(metrics) == {"nmi", "ami", "ari", "acc", "clustering_time_s", "features_time_s", "kmeans_time_s"}
    run, = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.data.params["clustering_k"] == "fine=4" and run.data.params["prototype_tree"] == "none"
    assert run.data.params["class_hierarchy"] == "none"


@NEEDS_DATA
def test_a_list_of_cluster_counts_scores_the_last_level_of_a_hierarchical_kmeans(store):
    method, _, _ = _pretraining(store / "pre", with_tree=False)
    metrics = run_clustering(_config(store, "untrained=false", "clustering.num_clusters=[40, 10]", hierarchy={}))
    val_set = build_eval_dataset(_config(store).data, "val")
    backbone = build_backbone(Config(RESNET))
    backbone.load_state_dict(method.backbone.state_dict())
    feats = extract_features(backbone, val_set, 64, torch.device("cpu"))[0].numpy()
    top = hierarchical_kmeans(feats, [40, 10], use_gpu=False).labels[-1]
    assert metrics["nmi"] == pytest.approx(normalized_mutual_info_score(val_set.targets.numpy(), top))
    assert metrics["nmi"] != pytest.approx(_kmeans_nmi(torch.from_numpy(feats), val_set.targets.numpy(), 10)[0])
    run, = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.data.params["clustering_k"] == "fine=40>10"


@pytest.mark.parametrize("override,hierarchy,message", [
    ("clustering.num_clusters=301", None, r"clustering.num_clusters=301 is out of range: the val split has only 300"),
    ("clustering.num_clusters=[5, 10]", None, r"clustering.num_clusters=\[5, 10\] is not allowed: .* fine → coarse"),
    ("untrained=true", {"coarse": {"tops": ["T-shirt/top"]}}, "are under no coarse class"),
    ("untrained=true", {"coarse": {"tops": ["Tshirt"]}}, "unknown fine class 'Tshirt'"),
])
@NEEDS_DATA
def test_bad_input_is_refused_before_a_run_is_tracked(store, override, hierarchy, message):
    _pretraining(store / "pre", with_tree=False)
    with pytest.raises(ConfigError, match=message):
        run_clustering(_config(store, override, hierarchy=hierarchy))
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []
    assert not (store / "out").exists()


@pytest.mark.parametrize("path", sorted((REPO / "configs/downstream/clustering").glob("*.yaml")))
def test_every_shipped_clustering_config_passes_the_schema(path):
    cfg = load_config(path)
    check_stage_config(cfg, "clustering")
    assert cfg.runner == "clustering" and cfg.clustering.niter == 20 and cfg.clustering.nredo == 5


@pytest.mark.parametrize("override,message", [
    ("clustering.num_clusters=0", r"clustering.num_clusters=0 is out of range: must be null \(the number of classes\)"),
    ("clustering.niter=1.5", "clustering.niter=1.5 has the wrong type"),
    ("clustering.num_clusters=[10, 0]", r"clustering.num_clusters=\[10, 0\] is out of range"),
    ("data.hierarchy=[tops]", "data.hierarchy=\\['tops'\\] has the wrong type: must be a mapping"),
])
def test_schema_refuses_bad_clustering_keys(override, message):
    cfg = load_config(REPO / "configs/downstream/clustering/clustering_demo.yaml", [override])
    with pytest.raises(ConfigError, match=message):
        check_stage_config(cfg, "clustering")
