"""Training-step throughput and peak memory of each method (and of HIRL over it), on synthetic views.

Each measurement runs in its own process (`python bench/models.py CONFIG [--hirl] [--batch B] key=value…`)
so that peak memory (max RSS on CPU, max allocated on CUDA) belongs to that model alone; it prints JSON.
Views are random tensors of the shapes the config's augmentation makes (global + local crops): this times
the model, the loss and the optimiser, not the data pipeline.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _random_tree(num_cluster, dim, n_images):
    import numpy as np

    from hirl_core.hirl.kmeans import PrototypeTree

    rng = np.random.default_rng(0)
    cents = [rng.normal(size=(k, dim)).astype(np.float32) for k in num_cluster]
    cents = [c / np.linalg.norm(c, axis=1, keepdims=True) for c in cents]
    parents = [rng.integers(0, num_cluster[i + 1], num_cluster[i]) for i in range(len(num_cluster) - 1)]
    labels = [rng.integers(0, num_cluster[0], n_images)]
    for p in parents:
        labels.append(p[labels[-1]])
    return PrototypeTree(cents, labels, parents)


def _build(config: str, overrides, use_hirl: bool, batch: int, dev):
    """(model, optimiser, views, index) for one training step of ``config`` on synthetic views."""
    import torch

    from hirl_core.config import load_config
    from hirl_core.engine.optim import build_optimizer
    from hirl_core.hirl.wrapper import HIRL
    from hirl_core.methods import build_method

    cfg = load_config(ROOT / config, overrides)
    torch.manual_seed(0)
    model = build_method(cfg).to(dev)
    if use_hirl:
        model = HIRL(model, cfg.hirl).to(dev)
        model.set_tree(_random_tree(model.num_cluster, model.inst_dim, 4096), dev)
    opt = build_optimizer(cfg.optimizer, model, batch)
    size, chans = cfg.data.image_size, cfg.backbone.get("in_chans", 3)
    aug = cfg.get("augment", {})
    size = aug.get("crop_size") or size
    shapes = [size] * model.n_views + [aug.get("local_size") or size] * int(aug.get("local_crops", 0) or 0)
    views = [torch.randn(batch, chans, s, s, device=dev) for s in shapes]
    return model, opt, views, torch.arange(batch, device=dev)


def _step(model, opt, views, index, step: int) -> None:
    model.on_step_start(step, 1000, 100)
    out = model(views, index) if getattr(model, "uses_index", False) else model(views)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    model.before_optimizer_step()
    opt.step()
    model.after_step(0.01)


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


def measure(config: str, overrides, use_hirl: bool, batch: int, steps: int, warm: int) -> dict:
    import torch

    dev = _device()
    model, opt, views, index = _build(config, overrides, use_hirl, batch, dev)
    for i in range(warm + steps):
        if i == warm:
            _sync(dev)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
        _step(model, opt, views, index, i)
    _sync(dev)
    elapsed = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"config": config, "hirl": use_hirl, "batch": batch, "views": views_shapes(views), "steps": steps,
            "step_time_s": elapsed / steps, "images_per_s": batch * steps / elapsed, "peak_memory_bytes": peak,
            "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"}


def views_shapes(views) -> list[int]:
    return [int(v.shape[-1]) for v in views]


def measure_pair(base_config: str, hirl_config: str, batch: int, steps: int, warm: int) -> dict:
    """Step time of the baseline and of HIRL over it, timed step by step in alternation in one process:
    both sides see the same moments of a shared machine, so the ratio of their median steps is stable
    where separate runs (each side at a different moment) varied by ±15 %."""
    import statistics

    dev = _device()
    sides = {"baseline": _build(base_config, (), False, batch, dev), "hirl": _build(hirl_config, (), True, batch, dev)}
    times = {name: [] for name in sides}
    _sync(dev)  # from here on every step ends synchronised
    for i in range(warm + steps):
        for name, (model, opt, views, index) in sides.items():
            t0 = time.perf_counter()
            _step(model, opt, views, index, i)
            _sync(dev)
            if i >= warm:
                times[name].append(time.perf_counter() - t0)
    base, hirl = statistics.median(times["baseline"]), statistics.median(times["hirl"])
    return {"baseline_step_s": base, "hirl_step_s": hirl, "ratio": round(hirl / base, 3),
            "within_1.10x": hirl <= 1.10 * base, "steps": steps, "batch": batch,
            "views": views_shapes(sides["hirl"][2])}


def measure_vs_seed_loop(config: str, overrides, batch: int, steps: int, warm: int) -> dict:
    """hirl's engine step of a DINO config against the seed's loop on the same weights (seed_loops.py)."""
    import torch

    from hirl_core.config import load_config
    from seed_loops import measure_vs_seed

    dev = _device()
    model, opt, views, _ = _build(config, overrides, False, batch, dev)
    cfg = load_config(ROOT / config, overrides)
    result = measure_vs_seed(cfg, model, opt, views, steps, warm, lambda: _sync(dev))
    return {"config": config, "overrides": list(overrides), **result, "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"}


def run_isolated(config: str, overrides=(), use_hirl=False, batch=64, steps=5, warm=2, pair=None,
                 vs_seed=False) -> dict:
    """`measure` (or `measure_pair` against the HIRL config ``pair``, or `measure_vs_seed_loop`) in a
    fresh process (its own peak memory)."""
    import subprocess

    argv = [sys.executable, str(Path(__file__)), config, "--batch", str(batch), "--steps", str(steps),
            "--warm", str(warm), *(["--hirl"] if use_hirl else []), *(["--pair", pair] if pair else []),
            *(["--vs-seed"] if vs_seed else []), *overrides]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800)
    if res.returncode != 0:
        return {"config": config, "hirl": use_hirl, "error": res.stderr.strip().splitlines()[-1:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--hirl", action="store_true")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warm", type=int, default=2)
    p.add_argument("--pair", metavar="HIRL_CONFIG", help="time CONFIG against this HIRL config, step by step")
    p.add_argument("--vs-seed", action="store_true", help="time a DINO CONFIG against the seed's training loop")
    a = p.parse_intermixed_args()
    if a.vs_seed:
        print(json.dumps(measure_vs_seed_loop(a.config, a.overrides, a.batch, a.steps, a.warm)))
    elif a.pair:
        print(json.dumps(measure_pair(a.config, a.pair, a.batch, a.steps, a.warm)))
    else:
        print(json.dumps(measure(a.config, a.overrides, a.hirl, a.batch, a.steps, a.warm)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
