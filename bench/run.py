"""Benchmarks → bench/results/*.json. Ratios measured in one run are what to compare; absolute times on
a shared 2-core machine are noise.

    python bench/run.py [--only foundation]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))


def _machine() -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def bench_foundation() -> dict:
    """Demo-size MoCo v2 training throughput (images/s, steady state) and KNN feature+vote time."""
    import torch
    from torch.utils.data import DataLoader

    from hirl_core.config import load_config
    from hirl_core.data.build import build_eval_dataset, build_pretrain_dataset
    from hirl_core.evals.knn import extract_features, weighted_knn
    from hirl_core.methods import build_method

    cfg = load_config(ROOT / "configs/pretrain/baseline/mocov2_demo.yaml")
    torch.manual_seed(0)
    method = build_method(cfg)
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-3)
    loader = DataLoader(build_pretrain_dataset(cfg.data, cfg.augment), batch_size=cfg.batch_size,
                        shuffle=True, drop_last=True)
    it, warm, steps = iter(loader), 3, 15
    for i in range(warm + steps):
        if i == warm:
            t0 = time.perf_counter()
        views, _, _ = next(it)
        out = method(views)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        method.after_step(0.0)
    train_ips = steps * cfg.batch_size / (time.perf_counter() - t0)

    knn_cfg = load_config(ROOT / "configs/downstream/knn/knn_demo.yaml")
    t0 = time.perf_counter()
    tr = extract_features(method.backbone, build_eval_dataset(knn_cfg.data, "train"), 512, torch.device("cpu"))
    va = extract_features(method.backbone, build_eval_dataset(knn_cfg.data, "val"), 512, torch.device("cpu"))
    t_feat = time.perf_counter() - t0
    t0 = time.perf_counter()
    weighted_knn(*tr, *va)
    t_vote = time.perf_counter() - t0
    return {"mocov2_demo_train_images_per_s": round(train_ips, 1),
            "knn_demo_feature_extraction_s": round(t_feat, 2), "knn_demo_vote_s": round(t_vote, 2),
            "knn_demo_sizes": {"train": len(tr[0]), "val": len(va[0])}}


BENCHES = {"foundation": bench_foundation}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(BENCHES), action="append")
    args = parser.parse_args()
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:  # the same allocator settings the stages use
        from hirl_core.__main__ import MALLOC_ENV
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in args.only or sorted(BENCHES):
        print(f"bench {name} …", flush=True)
        result = {"bench": name, "machine": _machine(), "results": BENCHES[name](),
                  "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True).stdout.strip()}
        path = RESULTS / f"{name}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result["results"], indent=2))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
