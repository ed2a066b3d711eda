"""What HIRL adds to a pre-training epoch: re-cluster at its start (from `cluster_warmup_epoch` on).

The tree of epoch e is saved to `<out>/clusters.pth` atomically right after clustering; a run resumed in
the middle of epoch e loads it instead of clustering again (clustering ImageNet costs minutes); one that
cannot be read (torn by a lost node or a full disk) is only a lost cache, so the epoch clusters again.
The tree also travels in `checkpoint.pth` with the rest of the training state.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..engine.checkpoint import atomic_save
from ..engine.distributed import barrier, is_dist
from .features import broadcast_tree, gather_features
from .kmeans import PrototypeTree, hierarchical_kmeans

CLUSTERS = "clusters.pth"


def tree_state(tree: PrototypeTree | None, epoch: int) -> dict | None:
    if tree is None:
        return None
    return {"epoch": epoch, "centroids": [torch.from_numpy(c) for c in tree.centroids],
            "labels": [torch.from_numpy(y) for y in tree.labels],
            "parents": [torch.from_numpy(p) for p in tree.parents], "seconds": tree.seconds}


def tree_from_state(state: dict) -> PrototypeTree:
    return PrototypeTree([c.numpy() for c in state["centroids"]], [y.numpy() for y in state["labels"]],
                         [p.numpy() for p in state["parents"]], state.get("seconds", 0.0))


def load_saved_tree(out_dir, epoch: int) -> PrototypeTree | None:
    path = Path(out_dir) / CLUSTERS
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torn by a lost node or a full disk: only a cache, so cluster again
        return None
    return tree_from_state(state) if isinstance(state, dict) and state.get("epoch") == epoch else None


def recluster(hirl_model, cfg_hirl, cluster_dataset, epoch: int, out_dir, device, is_main: bool) -> dict:
    """Cluster for `epoch` (or reuse the saved tree of this very epoch); returns metrics to log."""
    saved = load_saved_tree(out_dir, epoch)
    if saved is not None:
        hirl_model.set_tree(saved, device)
        return {"reclustered": 0.0}
    km = cfg_hirl.get("kmeans", {})
    feats, feature_bytes = gather_features(hirl_model, cluster_dataset, cfg_hirl.get("feature_batch_size", 256), device)
    tree = None
    if feats is not None:  # rank 0
        tree = hierarchical_kmeans(feats, hirl_model.num_cluster, niter=km.get("niter", 20),
                                   nredo=km.get("nredo", 5), max_points_per_centroid=km.get("max_points_per_centroid", 1000),
                                   min_points_per_centroid=km.get("min_points_per_centroid", 10),
                                   use_gpu=device.type == "cuda")
        del feats
    if is_dist():
        tree = broadcast_tree(tree, hirl_model.num_cluster, len(cluster_dataset), device)
    hirl_model.set_tree(tree, device)
    if is_main:
        atomic_save(tree_state(tree, epoch), Path(out_dir) / CLUSTERS)
    barrier()
    stats = tree.stats()
    stats["feature_buffer_bytes"] = float(feature_bytes)
    stats["reclustered"] = 1.0
    return stats
