"""The `knn` stage: weighted k-NN of the pre-trained backbone and of the same backbone untrained.

The untrained reference is the backbone built from the pre-training seed (the same initial weights
the pre-training started from), evaluated with its initial BatchNorm statistics.
"""
from __future__ import annotations

import json
import time

from ..data import check_data
from ..data.build import build_eval_dataset
from ..engine.distributed import init_distributed
from ..engine.lifecycle import StageLifecycle, seed_all
from ..models import build_backbone
from ..models.loading import load_backbone
from .knn import extract_features, weighted_knn
from .wiring import resolve_pretrained


def _evaluate(backbone, train_set, val_set, cfg, device, label: str) -> dict:
    knn = cfg.knn
    backbone.to(device)
    train_f, train_y = extract_features(backbone, train_set, knn.get("batch_size", 256), device,
                                        desc=f"[knn] {label}: train features")
    val_f, val_y = extract_features(backbone, val_set, knn.get("batch_size", 256), device,
                                    desc=f"[knn] {label}: val features")
    return weighted_knn(train_f, train_y, val_f, val_y, ks=tuple(knn.k), temperature=knn.temperature,
                        query_chunk=knn.get("query_chunk", 1024))


def run_knn(cfg) -> dict:
    info = init_distributed(cfg.get("device", "auto"))
    resolve_pretrained(cfg, "knn")
    check_data(cfg.data, splits=("train", "val"))
    seed_all(cfg.seed)
    backbone = build_backbone(cfg.backbone)
    untrained = {k: v.clone() for k, v in backbone.state_dict().items()}
    prefix = load_backbone(backbone, cfg.pretrained, cfg.get("backbone_prefix", "auto"))  # fails before tracking
    if not info.is_main:  # the evaluation is cheap; other ranks have nothing to add
        return {}
    life = StageLifecycle(cfg, "knn", info)
    with life.tracked({"pretrained": cfg.pretrained, "backbone_prefix": prefix, "arch": cfg.backbone.arch}) as tracker:
        train_set, val_set = build_eval_dataset(cfg.data, "train"), build_eval_dataset(cfg.data, "val")
        t0 = time.perf_counter()
        metrics = _evaluate(backbone, train_set, val_set, cfg, info.device, "pretrained")
        print("[knn] pretrained: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if "top1" in k),
              flush=True)
        if cfg.get("untrained", True):
            backbone.load_state_dict(untrained)
            base = _evaluate(backbone, train_set, val_set, cfg, info.device, "untrained")
            metrics.update({f"{k}_untrained": v for k, v in base.items()})
            print("[knn] untrained:  " + ", ".join(f"{k}={v:.4f}" for k, v in base.items() if "top1" in k),
                  flush=True)
        metrics["knn_time_s"] = time.perf_counter() - t0
        tracker.metrics(metrics)
        (life.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
