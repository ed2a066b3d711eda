"""The pre-training loop: data → method → optimiser, one checkpoint per epoch, automatic resume.

Reproducibility across a kill: each epoch re-seeds every RNG from (seed, epoch, rank) and the sampler
from (seed, epoch), and checkpoints are taken at epoch boundaries, so a run resumed from epoch e
replays exactly the batches and augmentations an uninterrupted run would have seen.
"""
from __future__ import annotations

import contextlib
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from ..config import dump_config
from ..data import build_pretrain_dataset
from ..methods import build_method
from ..tracking import Tracker
from . import checkpoint as ckpt
from .distributed import DistInfo, all_reduce_mean, barrier, init_distributed
from .optim import build_optimizer, cosine_lr, scaled_lr, set_lr


class Interrupted(Exception):
    """SIGTERM/SIGUSR2 arrived: stop at the next step; the last epoch checkpoint is the resume point."""


def _raise_interrupted(signum, _frame):
    raise Interrupted(signal.Signals(signum).name)


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _autocast(device: torch.device, precision: str):
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.float16 if precision == "fp16" else torch.bfloat16)


def _precision(cfg, device: torch.device) -> str:
    p = cfg.get("precision", "auto")
    return ("bf16" if device.type == "cuda" else "fp32") if p == "auto" else p


def run_pretrain(cfg) -> dict:
    info = init_distributed(cfg.get("device", "auto"))
    out = Path(cfg.output_dir)
    state = ckpt.load_training_checkpoint(out)
    seed_all(cfg.seed)  # the model is initialised from the seed alone (the KNN "untrained" baseline relies on it)
    method = build_method(cfg).to(info.device)
    dataset = build_pretrain_dataset(cfg.data, cfg.get("augment", {}), n_views=method.n_views)
    total_batch = cfg.batch_size * info.world_size
    optimizer = build_optimizer(cfg.optimizer, method, total_batch)
    precision = _precision(cfg, info.device)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    start_epoch = 0
    if state is not None:
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch = state["epoch"]
    model = method
    if info.world_size > 1:
        model = DistributedDataParallel(method, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "config.yaml").exists():
            dump_config(cfg, out / "config.yaml")
    tracker = Tracker(info.is_main)
    if tracker.active:
        tracker.artifact(str(out / "config.yaml"))
        if start_epoch == 0:
            tracker.params({"method": cfg.method.name, "arch": cfg.backbone.arch, "epochs": cfg.epochs,
                            "batch_size_total": total_batch, "lr": scaled_lr(cfg.optimizer, total_batch),
                            "world_size": info.world_size, "precision": precision})
        tracker.metrics({"resumed_from_epoch": start_epoch}, step=start_epoch)
    previous = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGTERM, signal.SIGUSR2)}
    history = []
    try:
        if start_epoch:
            _say(info, f"resuming from {out / ckpt.CHECKPOINT} at epoch {start_epoch}/{cfg.epochs}")
        for epoch in range(start_epoch, cfg.epochs):
            stats = _train_epoch(cfg, info, model, method, dataset, optimizer, scaler, precision, epoch)
            history.append(stats)
            if info.is_main:
                ckpt.atomic_save({"model": method.state_dict(), "optimizer": optimizer.state_dict(),
                                  "scaler": scaler.state_dict(), "epoch": epoch + 1, "rng": ckpt.rng_state(),
                                  "config": cfg.to_dict(), "mlflow_run_id": tracker.run_id}, out / ckpt.CHECKPOINT)
            tracker.metrics(stats, step=epoch)
            barrier()
        if info.is_main:
            ckpt.export_backbone(method, out / ckpt.BACKBONE)
        tracker.finish("FINISHED")
    except Interrupted as why:
        _say(info, f"interrupted by {why}; resume point: {out / ckpt.CHECKPOINT}")
        tracker.finish("KILLED")
        sys.exit(143)
    except BaseException:
        tracker.finish("FAILED")
        raise
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return history[-1] if history else {}


def _say(info: DistInfo, text: str) -> None:
    if info.is_main:
        print(f"[pretrain] {text}", flush=True)


def _train_epoch(cfg, info, model, method, dataset, optimizer, scaler, precision, epoch) -> dict:
    seed_all(cfg.seed + 7919 * epoch + 104729 * info.rank)
    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=True)
    sampler.set_epoch(epoch)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                        num_workers=cfg.get("num_workers", 0), pin_memory=info.device.type == "cuda")
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * cfg.epochs
    base_lr = scaled_lr(cfg.optimizer, cfg.batch_size * info.world_size)
    sched = cfg.get("schedule", {})
    warmup = int(sched.get("warmup_epochs", 0) * steps_per_epoch)
    model.train()
    loss_sum, seen, t0 = 0.0, 0, time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not info.is_main, mininterval=1.0,
               dynamic_ncols=True, file=sys.stdout)
    for i, (views, _index, _target) in enumerate(bar):
        step = epoch * steps_per_epoch + i
        lr = cosine_lr(base_lr, step, total_steps, warmup, sched.get("min_lr", 0.0))
        set_lr(optimizer, lr)
        views = [v.to(info.device, non_blocking=True) for v in views]
        with _autocast(info.device, precision):
            out = model(views)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(out.loss).backward()
        if cfg.get("clip_grad"):
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(method.parameters(), cfg.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        method.after_step((step + 1) / total_steps)
        loss_sum += out.loss.item()
        seen += len(views[0]) * info.world_size
        bar.set_postfix(loss=f"{loss_sum / (i + 1):.4f}", lr=f"{lr:.2e}",
                        img_s=f"{seen / (time.perf_counter() - t0):.0f}")
    bar.close()
    elapsed = time.perf_counter() - t0
    loss = all_reduce_mean(torch.tensor(loss_sum / max(1, steps_per_epoch), device=info.device)).item()
    return {"loss": loss, "lr": lr, "images_per_s": seen / elapsed, "epoch_time_s": elapsed}
