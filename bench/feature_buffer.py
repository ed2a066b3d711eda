"""Peak feature-buffer bytes per rank of HIRL's clustering pass, measured on 2 gloo ranks.

    python bench/feature_buffer.py [CONFIG] [key=value ...]      # prints JSON

Runs the real re-clustering of one epoch (feature pass over the whole training set, gather to rank 0,
hierarchical k-means, broadcast of the tree) of a HIRL demo config on two CPU processes, and reports
what each rank allocated for features (the `feature_buffer_bytes` the pass reports) next to the N×D
buffer the seed kept on every rank.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT = "configs/pretrain/hirl/hirl_simsiam_demo.yaml"


def _worker(rank, world, port, config, overrides, out_dir):
    import torch
    import torch.distributed as dist

    from hirl_core.config import load_config
    from hirl_core.data.build import build_eval_dataset
    from hirl_core.hirl import epoch as hirl_epoch
    from hirl_core.hirl.wrapper import HIRL
    from hirl_core.methods import build_method

    torch.set_num_threads(1)  # two ranks on two cores
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    cfg = load_config(ROOT / config, overrides)
    torch.manual_seed(cfg.seed)
    model = HIRL(build_method(cfg), cfg.hirl)
    dataset = build_eval_dataset(cfg.data, "train")
    stats = hirl_epoch.recluster(model, cfg.hirl, dataset, 0, out_dir, torch.device("cpu"), rank == 0)
    result = {"rank": rank, "feature_buffer_bytes": int(stats["feature_buffer_bytes"]), "n": len(dataset),
              "dim": int(model.tree.centroids[0].shape[1]), "tree_levels": [len(c) for c in model.tree.centroids],
              "clustering_seconds": float(stats.get("clustering_time_s", stats.get("cluster_time_s", -1.0)))}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def measure(config=DEFAULT, overrides=()):
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(2, 29000 + os.getpid() % 1000, config, list(overrides), tmp), nprocs=2, join=True)
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(2)]
    n, dim = ranks[0]["n"], ranks[0]["dim"]
    return {"config": config, "world_size": 2, "n_images": n, "feature_dim": dim,
            "per_rank_bytes": {f"rank{r['rank']}": r["feature_buffer_bytes"] for r in ranks},
            "full_matrix_bytes": n * dim * 4, "seed_layout_bytes_every_rank": n * dim * 4,
            "tree_levels": ranks[0]["tree_levels"],
            "note": "rank 0 holds the N×D matrix (host memory) to cluster it; the other rank only its shard "
                    "of the feature pass; the seed allocated N×D on every GPU and all-reduced it"}


if __name__ == "__main__":
    args = sys.argv[1:]
    config = args.pop(0) if args and not "=" in args[0] else DEFAULT
    print(json.dumps(measure(config, args), indent=2))
