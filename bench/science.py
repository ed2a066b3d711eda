"""Benches of the science: per-method throughput (baselines.json) and HIRL's overheads (hirl.json)."""
from __future__ import annotations

import os
import time

from models import run_isolated

METHODS = ("mocov2", "simsiam", "swav", "mocov3", "dino", "ibot")
PAPER = {"mocov2": "mocov2_resnet50_200eps", "simsiam": "simsiam_resnet50_200eps",
         "swav": "swav_resnet50_200eps", "mocov3": "mocov3_vit_base_400eps", "dino": "dino_vit_base_400eps",
         "ibot": "ibot_vit_base_400eps"}


def bench_baselines() -> dict:
    """Training images/s and peak memory: each method at demo size (its demo batch) and with the paper
    architecture at 224 px (batch HIRL_BENCH_PAPER_BATCH, default 8, a few steps)."""
    paper_batch = int(os.environ.get("HIRL_BENCH_PAPER_BATCH", "8"))
    out = {}
    for m in METHODS:
        out[m] = {"demo": run_isolated(f"configs/pretrain/baseline/{m}_demo.yaml", batch=64, steps=5),
                  "paper_224px": run_isolated(f"configs/pretrain/baseline/{PAPER[m]}.yaml", batch=paper_batch,
                                              steps=2, warm=1)}
    return out


SEED_LOOP_CONFIG = "configs/pretrain/baseline/dino_vit_base_400eps.yaml"


def bench_seed_loops() -> dict:
    """hirl's DINO ViT-S/16 training step against the seed's loop (seed_loops.py: alternating steps in
    one process, identical weights) at 112 px and 224 px, two global crops, last layer trained, batch
    HIRL_BENCH_SEED_BATCH (default 4). Stored in baselines.json. HIRL_BENCH_SEED_SIZES=112 runs one size."""
    batch = int(os.environ.get("HIRL_BENCH_SEED_BATCH", "4"))
    sizes = [int(s) for s in os.environ.get("HIRL_BENCH_SEED_SIZES", "112,224").split(",")]
    out = {}
    for px in sizes:
        overrides = ["backbone.arch=vit_small", f"backbone.image_size={px}", f"data.image_size={px}",
                     "augment.local_crops=0", "method.freeze_last_layer=0"]
        steps = 30 if px <= 112 else 10  # 224 px steps take ~4x as long on CPU; medians of 30 steps steady the ratio
        out[f"dino_vit_small_{px}px"] = run_isolated(SEED_LOOP_CONFIG, overrides, batch=batch, steps=steps, warm=2,
                                                     vs_seed=True)
    return out


def _hkmeans(n: int, dim: int, ks, niter: int, nredo: int) -> dict:
    import numpy as np

    from hirl_core.hirl.kmeans import hierarchical_kmeans

    x = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    t0 = time.perf_counter()
    tree = hierarchical_kmeans(x, ks, niter=niter, nredo=nredo, use_gpu=True)
    return {"n": n, "dim": dim, "num_cluster": list(ks), "niter": niter, "nredo": nredo,
            "seconds": round(time.perf_counter() - t0, 1), "empty_l1": int(tree.stats()["clusters_empty_l1"])}


def bench_hierarchical_kmeans() -> dict:
    """Hierarchical k-means of a synthetic ImageNet-sized 1.28M x 128 matrix at K = 30000/10000/1000 (the
    paper's HIRL-MoCo v2 tree; faiss on CPU here, its GPU index where CUDA is). Stored in hirl.json;
    `--only hierarchical_kmeans` re-measures it alone (it dominates the hirl bench's time)."""
    n = int(os.environ.get("HIRL_BENCH_KMEANS_N", "1281167"))
    niter = int(os.environ.get("HIRL_BENCH_KMEANS_NITER", "20"))
    kmeans = _hkmeans(n, 128, (30000, 10000, 1000), niter=niter, nredo=1)
    kmeans["seconds_per_iteration_all_levels"] = round(kmeans["seconds"] / niter, 1)
    return kmeans


def bench_hirl() -> dict:
    """HIRL-X step time over X at demo size (target ≤ 1.10×) and the feature buffer per rank (from the
    2-rank test's accounting: rank 0 N×D, others their shard)."""
    ratios = {}
    steps = int(os.environ.get("HIRL_BENCH_RATIO_STEPS", "30"))
    for m in METHODS:
        r = run_isolated(f"configs/pretrain/baseline/{m}_demo.yaml", batch=64, steps=steps, warm=3,
                         pair=f"configs/pretrain/hirl/hirl_{m}_demo.yaml")
        ratios[m] = r if "error" in r else {**r, "timing": "alternating steps in one process, medians"}
    from feature_buffer import measure

    measured = measure()  # the real clustering pass of hirl_simsiam_demo on 2 gloo ranks
    n_img, dim = 1281167, 2048  # what the same layout means for SimSiam (D = 2048) on ImageNet
    return {"step_time_ratio": ratios,
            "feature_buffer_2_ranks": measured,
            "feature_buffer_projection_simsiam_imagenet_2_ranks": {
                "rank0": n_img * dim * 4, "other_ranks": -(-n_img // 2) * dim * 4, "seed_every_rank": n_img * dim * 4}}
