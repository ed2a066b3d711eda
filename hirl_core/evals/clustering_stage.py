"""The `clustering` stage (hirl-method.md §3.6): k-means of frozen val features scored against the classes.

L2-normalised backbone features of the val split are clustered by the project's faiss k-means
(``hirl_core.hirl.kmeans``, the seed's settings: niter 20, nredo 5, seed 0) into K = number of classes
(``clustering.num_clusters: null``) and scored with NMI, AMI, ARI and Hungarian ACC; the untrained
backbone (built from the pre-training seed, as the knn stage's) the same way when ``untrained: true``.

Beyond the seed:
- a class hierarchy (``data.hierarchy``, hirl_core.data.hierarchy; Fashion-MNIST has one by default):
  each coarse level is clustered again with K = its number of coarse classes and scored against the
  coarse labels (``nmi_<level>``, ``acc_<level>``, ...);
- a HIRL pre-training's prototype tree (``hirl_tree`` in the checkpoint.pth beside ``pretrained``): the
  tree clusters the method's *clustering features* (``forward_feature``: the momentum/teacher projector's
  output, which the backbone alone cannot produce), so the method is rebuilt from that checkpoint (its
  config and weights) to embed the val images; each image takes its nearest leaf prototype and the leaf's
  ancestors through the parent maps (the tree's own rule for its training images) and every tree level's
  purity is scored against every class level (``tree_purity_l<i>[_<level>]``, rule in cluster_metrics).
  The tree is the last clustered epoch's and the weights those at the end of that epoch, so the val
  purity scores the prototypes as the final model sees them, one epoch of training after they were
  clustered (a model trained for a few steps only has moved far from them). With
  ``clustering.tree_train_purity`` the tree's own training-set assignments are scored against the
  training labels too (``tree_train_purity_l<i>[_<level>]``).

    clustering:
      num_clusters: null        # null: the number of classes (the seed's K = 1000 on ImageNet); a list
                                # [K1, K2, ...] runs the hierarchical k-means and scores its last level
      niter: 20
      nredo: 5
      seed: 0
      max_points_per_centroid: 1000
      batch_size: 256           # feature extraction batch
      num_workers: 0            # data-loading processes (ImageNet's JPEG decoding needs them; in-memory data not)
      tree: true                # score a HIRL pre-training's prototype tree when there is one
      tree_train_purity: true   # also the tree's training-set assignments (reads the training labels)
      faiss_threads: null       # CPU k-means threads (null: faiss's default, all cores); see clustering_demo.yaml
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ..config import Config, ConfigError
from .wiring import resolve_pretrained
from ..data import check_data
from ..data.build import build_eval_dataset
from ..data.hierarchy import class_names, hierarchy_of, resolve_hierarchy
from ..engine.checkpoint import CHECKPOINT
from ..engine.distributed import init_distributed
from ..engine.lifecycle import StageLifecycle, seed_all
from ..hirl.epoch import tree_from_state
from ..hirl.kmeans import hierarchical_kmeans, kmeans
from ..models import build_backbone
from ..models.loading import CheckpointError, load_backbone
from .cluster_metrics import clustering_scores, coarse_labels, tree_purity
from .knn import extract_features

SCORES = ("nmi", "ami", "ari", "acc")


def _dataset_classes(dataset, data) -> list:
    """The fine class names: the dataset's own (ImageFolder folders), Fashion-MNIST's list, or indices."""
    folder = getattr(dataset, "folder", None)
    names = getattr(folder, "classes", None) or class_names(data)
    if names is None:
        names = [str(i) for i in range(int(dataset.targets.max()) + 1)]
    return list(names)


class TreeSource:
    """A HIRL pre-training's prototype tree and the method (trained weights) whose features it clusters."""

    def __init__(self, method, tree, pre_cfg, path: Path, epoch: int):
        self.method, self.tree, self.pre_cfg, self.path, self.epoch = method, tree, pre_cfg, path, epoch

    def describe(self) -> str:
        sizes = "/".join(str(len(c)) for c in self.tree.centroids)
        return f"{sizes} prototypes, clustered at epoch {self.epoch + 1}, from {self.path}"


def _tree_source(cfg) -> TreeSource | None:
    """The tree of the checkpoint.pth beside `pretrained`; None for a baseline or without that file."""
    path = Path(cfg.pretrained).parent / CHECKPOINT
    if not path.is_file():
        print(f"[clustering] no {CHECKPOINT} beside {cfg.pretrained}: no prototype tree to score", flush=True)
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # ViT-B + optimiser: GBs
    except Exception as exc:  # a torn or foreign file: one line, before anything is tracked
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {reason}") from None
    if not isinstance(state, dict) or not state.get("hirl_tree"):  # a baseline, or HIRL before its warm-up ended
        print(f"[clustering] {path} holds no prototype tree: no tree purity", flush=True)
        return None
    from ..hirl.wrapper import HIRL
    from ..methods import build_method

    pre = Config(state["config"])
    method = HIRL(build_method(pre), pre.hirl)
    try:
        method.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not fit its own config's HIRL model: "
                              f"{str(exc).splitlines()[0]}") from None
    return TreeSource(method, tree_from_state(state["hirl_tree"]), pre, path, int(state["hirl_tree"]["epoch"]))


class _ClusteringFeatures(torch.nn.Module):
    """The method's `forward_feature` as a module, so that `extract_features` embeds with it."""

    def __init__(self, method):
        super().__init__()
        self.method = method

    def forward(self, images):
        return self.method.forward_feature(images)


def assign_to_tree(features: torch.Tensor, tree, chunk: int = 4096) -> list[np.ndarray]:
    """Per tree level, each (unit-norm) feature's prototype: its nearest leaf, then the leaf's ancestors."""
    leaves_protos = torch.from_numpy(tree.centroids[0])
    leaves = torch.cat([(features[i:i + chunk] @ leaves_protos.T).argmax(dim=1)
                        for i in range(0, len(features), chunk)]).numpy()
    levels = [leaves]
    for parents in tree.parents:
        levels.append(parents[levels[-1]])
    return levels


def _settings(cfg) -> dict:
    c = cfg.get("clustering") or {}
    return {"num_clusters": c.get("num_clusters"), "niter": int(c.get("niter", 20)), "nredo": int(c.get("nredo", 5)),
            "seed": int(c.get("seed", 0)), "max_points_per_centroid": int(c.get("max_points_per_centroid", 1000)),
            "batch_size": int(c.get("batch_size", 256)), "num_workers": int(c.get("num_workers", 0)),
            "tree": bool(c.get("tree", True)), "tree_train_purity": bool(c.get("tree_train_purity", True)),
            "faiss_threads": c.get("faiss_threads")}


def _cluster(x: np.ndarray, chain: tuple, s: dict, use_gpu: bool) -> np.ndarray:
    """Each row's cluster: k-means with K = chain[0]; a longer chain runs the hierarchical k-means
    (each level clusters the one before's centroids, seeds = seed, seed + 1, ...) and takes its last level,
    as the seed's `--num_classes "a,b,c"`."""
    if len(chain) == 1:
        return kmeans(x, chain[0], niter=s["niter"], nredo=s["nredo"], seed=s["seed"],
                      max_points_per_centroid=s["max_points_per_centroid"], use_gpu=use_gpu)[1]
    tree = hierarchical_kmeans(x, chain, niter=s["niter"], nredo=s["nredo"], seed_offset=s["seed"],
                               max_points_per_centroid=s["max_points_per_centroid"], use_gpu=use_gpu)
    return tree.labels[-1]


def _chain(num_clusters, num_classes: int) -> tuple:
    """clustering.num_clusters as a fine → coarse chain of K: null = (classes,), 1000 = (1000,)."""
    chain = tuple(num_clusters) if isinstance(num_clusters, (list, tuple)) else (num_clusters or num_classes,)
    if any(a < b for a, b in zip(chain, chain[1:])):
        raise ConfigError(f"clustering.num_clusters={list(chain)} is not allowed: a hierarchical chain is "
                          "listed fine → coarse (non-increasing)")
    return tuple(int(k) for k in chain)


def _score(features: torch.Tensor, labels_by_level: dict, ks: dict, s: dict, use_gpu: bool, clock: dict) -> dict:
    """k-means per class level (K = ks[level]) scored against that level's labels; its time into `clock`."""
    import faiss

    began = time.perf_counter()
    x = features.numpy().astype(np.float32)
    out = {}
    threads = faiss.omp_get_max_threads()
    if s["faiss_threads"]:
        faiss.omp_set_num_threads(int(s["faiss_threads"]))
    try:
        for level, y in labels_by_level.items():
            scores = clustering_scores(y, _cluster(x, ks[level], s, use_gpu))
            out.update({(k if level == "fine" else f"{k}_{level}"): v for k, v in scores.items()})
    finally:
        faiss.omp_set_num_threads(threads)
    clock["kmeans_time_s"] += time.perf_counter() - began
    return out


def _train_labels_by_level(source: TreeSource, levels: dict) -> dict | None:
    """The training labels in the order the tree's images were clustered (the pre-training's eval set)."""
    try:
        train_set = build_eval_dataset(source.pre_cfg.data, "train")
    except ConfigError as exc:
        print(f"[clustering] tree_train_purity skipped: the pre-training's train split is not here ({exc})",
              flush=True)
        return None
    y = train_set.targets.numpy()
    if len(y) != len(source.tree.labels[0]):
        print(f"[clustering] tree_train_purity skipped: the tree holds {len(source.tree.labels[0])} images, "
              f"the pre-training's train split {len(y)}", flush=True)
        return None
    return {"fine": y, **{name: coarse_labels(y, table) for name, (table, _) in levels.items()}}


def _describe_levels(levels: dict, limit: int = 500) -> str:
    """'coarse: tops (4), footwear (3), ...' per level, cut at `limit` characters (an MLflow param)."""
    text = "; ".join(f"{name}: " + ", ".join(f"{c} ({table.count(i)})" for i, c in enumerate(coarse))
                     for name, (table, coarse) in levels.items())
    return (text[:limit - 3] + "...") if len(text) > limit else (text or "none")


def _summary(metrics: dict, levels: dict, source: TreeSource | None, untrained: bool) -> str:
    """The scores as a table (one row per class level and backbone), then the tree's purities."""
    head = "[clustering] "
    lines = [head + f"{'':<22}" + "".join(f"{s:>8}" for s in SCORES)]
    for name, suffix in [("classes", "")] + [(n, f"_{n}") for n in levels]:
        for which, tail in (("pretrained", ""), ("untrained", "_untrained"))[:2 if untrained else 1]:
            values = "".join(f"{metrics[s + suffix + tail]:8.4f}" for s in SCORES)
            lines.append(head + f"{name + ' / ' + which:<22}{values}")
    if source is not None:
        lines.append(head + f"prototype tree: {source.describe()}")
        for prefix, where in (("tree_purity", "val"), ("tree_train_purity", "train")):
            for i in range(1, source.tree.num_levels + 1):
                own = f"{prefix}_l{i}"
                parts = [f"{k.removeprefix(own).lstrip('_') or 'classes'} {v:.4f}" for k, v in metrics.items()
                         if k == own or k.startswith(own + "_")]
                if parts:
                    lines.append(head + f"tree level {i} purity ({where}): " + ", ".join(parts))
    return "\n".join(lines)


def run_clustering(cfg) -> dict:
    info = init_distributed(cfg.get("device", "auto"))
    resolve_pretrained(cfg, "clustering")
    check_data(cfg.data, splits=("val",))
    s = _settings(cfg)
    seed_all(cfg.seed)
    backbone = build_backbone(cfg.backbone)
    untrained = {k: v.clone() for k, v in backbone.state_dict().items()}
    prefix = load_backbone(backbone, cfg.pretrained, cfg.get("backbone_prefix", "auto"))  # fails before tracking
    if not info.is_main:  # k-means of one val set: nothing for other ranks to share
        return {}
    # everything a user can get wrong is checked here, before the run is tracked
    val_set = build_eval_dataset(cfg.data, "val")
    labels = val_set.targets.numpy()
    names = _dataset_classes(val_set, cfg.data)
    levels = resolve_hierarchy(hierarchy_of(cfg.data), names, len(names))
    ks = {"fine": _chain(s["num_clusters"], len(names)), **{n: (len(coarse),) for n, (_, coarse) in levels.items()}}
    for level, chain in ks.items():
        if chain[0] > len(labels):
            what = (f"clustering.num_clusters={s['num_clusters']}" if level == "fine"
                    else f"data.hierarchy.{level} ({chain[0]} classes)")
            raise ConfigError(f"{what} is out of range: the val split has only {len(labels)} images")
    source = _tree_source(cfg) if s["tree"] else None
    labels_by_level = {"fine": labels, **{n: coarse_labels(labels, table) for n, (table, _) in levels.items()}}
    use_gpu = info.device.type == "cuda"
    params = {"pretrained": cfg.pretrained, "backbone_prefix": prefix, "arch": cfg.backbone.arch,
              "clustering_k": ", ".join(f"{n}={'>'.join(map(str, k))}" for n, k in ks.items()),
              "class_hierarchy": _describe_levels(levels),
              "prototype_tree": "none" if source is None else source.describe()}
    life = StageLifecycle(cfg, "clustering", info)
    clock = {"features_time_s": 0.0, "kmeans_time_s": 0.0}

    def features(module, label: str) -> torch.Tensor:
        began = time.perf_counter()
        module.to(info.device)
        out, _ = extract_features(module, val_set, s["batch_size"], info.device, num_workers=s["num_workers"],
                                  desc=f"[clustering] {label}: val features")
        clock["features_time_s"] += time.perf_counter() - began
        return out

    with life.tracked(params) as tracker:
        t0 = time.perf_counter()
        metrics = _score(features(backbone, "pretrained"), labels_by_level, ks, s, use_gpu, clock)
        if cfg.get("untrained", True):
            backbone.load_state_dict(untrained)
            base = _score(features(backbone, "untrained"), labels_by_level, ks, s, use_gpu, clock)
            metrics.update({f"{k}_untrained": v for k, v in base.items()})
        if source is not None:
            tree_feats = features(_ClusteringFeatures(source.method), "prototype tree")
            metrics.update(tree_purity(assign_to_tree(tree_feats, source.tree), labels_by_level))
            train_labels = _train_labels_by_level(source, levels) if s["tree_train_purity"] else None
            if train_labels is not None:
                own = tree_purity(source.tree.labels, train_labels)
                metrics.update({k.replace("tree_purity", "tree_train_purity"): v for k, v in own.items()})
        metrics.update(clock)
        metrics["clustering_time_s"] = time.perf_counter() - t0
        tracker.metrics(metrics)
        (life.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        print(_summary(metrics, levels, source, cfg.get("untrained", True)), flush=True)
    return metrics
