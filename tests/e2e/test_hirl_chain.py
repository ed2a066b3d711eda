"""HIRL end to end at test size: clustering from the warm-up epoch, path loss and cluster sizes tracked,
the backbone exported under the seed's `model.backbone.` prefix and read back by the KNN stage."""
import shutil
import sys
from pathlib import Path

from .test_demo_chain import REPO, _env, _runs, pytestmark  # noqa: F401  (same data requirement)

TINY_HIRL = """\
name: tiny
stages:
  pretrain:
    config: configs/pretrain/hirl/hirl_mocov2_demo.yaml
    overrides: [epochs=2, batch_size=64, data.train_subset=512, method.queue_size=64, backbone.width=16,
                method.hidden_dim=64, 'hirl.num_cluster=[24, 8, 4]', hirl.num_neg_path=16,
                hirl.cluster_warmup_epoch=1, hirl.kmeans.nredo=1]
  knn:
    config: configs/downstream/knn/knn_demo.yaml
    after: pretrain
    overrides: [data.train_subset=512, data.val_subset=500, untrained=false]
"""


def test_hirl_chain(tmp_path):
    import subprocess

    import torch

    shutil.copytree(REPO / "configs", tmp_path / "configs")
    (tmp_path / "configs/experiments/tiny.yaml").write_text(TINY_HIRL)
    res = subprocess.run([sys.executable, "-m", "jobs", "submit", "tiny"], cwd=tmp_path, env=_env(tmp_path),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    client, runs = _runs(tmp_path)
    pre = next(r for r in runs if r.data.tags.get("hirl.stage") == "pretrain")
    knn = next(r for r in runs if r.data.tags.get("hirl.stage") == "knn")
    history = lambda key: {m.step: m.value for m in client.get_metric_history(pre.info.run_id, key)}
    assert set(history("path_loss")) == {1} and history("path_loss")[1] > 0   # only after the warm-up epoch
    assert set(history("ssl_loss")) == {1}
    for key in ("path_acc_l1", "path_acc_l3", "cluster_size_max_l1", "clusters_empty_l2", "clustering_time_s"):
        assert 1 in history(key), key
    assert history("cluster_size_min_l3")[1] >= 1  # every coarse cluster has an image (4 clusters, 512 images)
    out = Path(tmp_path, pre.data.tags["hirl.output_dir"])
    keys = torch.load(out / "backbone.pth", weights_only=True)["model"]
    assert keys and all(k.startswith("model.backbone.") for k in keys)
    tree = torch.load(out / "clusters.pth", weights_only=True)
    assert tree["epoch"] == 1 and [len(c) for c in tree["centroids"]] == [24, 8, 4]
    assert knn.data.params["backbone_prefix"] == "model.backbone."
    assert 0 < knn.data.metrics["knn_top1_k20"] <= 1
