"""The pre-training loop: data → method → optimiser, one checkpoint per epoch, automatic resume.

Reproducibility across a kill: each epoch re-seeds every RNG from (seed, epoch, rank) and the sampler
from (seed, epoch), and checkpoints are taken at epoch boundaries, so a run resumed from epoch e
replays exactly the batches and augmentations an uninterrupted run would have seen.
"""
from __future__ import annotations

import contextlib
import time

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ..data.build import build_eval_dataset, build_pretrain_dataset
from ..hirl.epoch import recluster, tree_from_state, tree_state
from ..hirl.wrapper import HIRL
from ..methods import build_method
from . import checkpoint as ckpt
from .distributed import all_reduce_mean, init_distributed
from .lifecycle import Interrupted, StageLifecycle, seed_all  # noqa: F401 - Interrupted: re-exported
from .optim import (build_optimizer, clip_gradients, scaled_lr, scheduled_lr, scheduled_weight_decay, set_lr,
                    set_weight_decay)
from .progress import Progress, duration


def autocast_for(device: torch.device, precision: str):
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.float16 if precision == "fp16" else torch.bfloat16)


def resolve_precision(cfg, device: torch.device) -> str:
    p = cfg.get("precision", "auto")
    return ("bf16" if device.type == "cuda" else "fp32") if p == "auto" else p


def run_pretrain(cfg) -> dict:
    info = init_distributed(cfg.get("device", "auto"))
    life = StageLifecycle(cfg, "pretrain", info, epochs=cfg.epochs)
    state = life.state
    seed_all(cfg.seed)  # the model is initialised from the seed alone (the KNN "untrained" baseline relies on it)
    method = build_method(cfg).to(info.device)
    if cfg.get("sync_bn") and info.world_size > 1 and info.device.type == "cuda":
        # torch's SyncBatchNorm runs on GPUs only; CPU multi-process runs keep per-rank BN
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
    hirl = None
    if cfg.get("hirl") is not None:  # after SyncBN: the seed's level heads use plain BatchNorm1d
        method = hirl = HIRL(method, cfg.hirl).to(info.device)
    dataset = build_pretrain_dataset(cfg.data, cfg.get("augment", {}), n_views=method.n_views)
    total_batch = cfg.batch_size * info.world_size
    optimizer = build_optimizer(cfg.optimizer, hirl.model if hirl else method, total_batch)
    if hirl is not None:
        # The level heads: one extra group on the same LR schedule (the seed's). Its weight decay is the
        # configured one; the seed's group silently took the optimiser's default (AdamW: 0.01 for DINO).
        # As the seed's group, it stays out of any weight-decay schedule (DINO/iBOT: only group 0 follows it).
        optimizer.add_param_group({"params": list(hirl.heads.parameters()),
                                   "weight_decay": float(cfg.optimizer.get("weight_decay", 0.0)),
                                   "wd_schedule": False, "lars_exclude": False, "fix_lr": False})
        cluster_set = build_eval_dataset(cfg.data, "train")  # same images, same order, eval transform
    precision = resolve_precision(cfg, info.device)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    if state is not None:
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if hirl is not None and state.get("hirl_tree"):
            hirl.set_tree(tree_from_state(state["hirl_tree"]), info.device)
    model = method
    if info.world_size > 1:
        model = DistributedDataParallel(method, device_ids=[info.device.index] if info.device.type == "cuda" else None,
                                        find_unused_parameters=hirl is not None)  # heads idle before warm-up
    params = {"method": cfg.method.name, "arch": cfg.backbone.arch, "epochs": cfg.epochs,
              "batch_size_total": total_batch, "lr": scaled_lr(cfg.optimizer, total_batch),
              "world_size": info.world_size, "precision": precision}
    history = []
    with life.tracked(params) as tracker:
        assumed = cfg.get("assumed_gpus")
        if assumed and assumed != info.world_size:
            life.say(f"note: the config assumes {assumed} GPUs, this run has {info.world_size}; the LR is "
                     f"scaled to the actual total batch {total_batch}, so the recipe differs from the seed's")
        epoch_seconds = []
        for epoch in range(life.start_epoch, cfg.epochs):
            began = time.perf_counter()
            if hirl is not None and epoch >= cfg.hirl.cluster_warmup_epoch:
                life.say(f"epoch {epoch + 1}: hierarchical k-means {hirl.num_cluster}")
                tracker.metrics(recluster(hirl, cfg.hirl, cluster_set, epoch, life.out, info.device, info.is_main),
                                step=epoch)
            stats = _train_epoch(cfg, info, model, method, dataset, optimizer, scaler, precision, epoch)
            history.append(stats)
            life.save_epoch(epoch, {"model": method.state_dict(), "optimizer": optimizer.state_dict(),
                                    "scaler": scaler.state_dict(),
                                    "hirl_tree": tree_state(hirl.tree, epoch) if hirl else None}, stats)
            epoch_seconds.append(time.perf_counter() - began)
            left = sum(epoch_seconds) / len(epoch_seconds) * (cfg.epochs - epoch - 1)
            life.say(f"epoch {epoch + 1}/{cfg.epochs}  loss {stats['loss']:.4f}  lr {_lr(stats['lr'])}  "
                     f"{stats['images_per_s']:.0f} img/s  ETA {duration(left)}")
        if info.is_main:
            ckpt.export_backbone(method, life.out / ckpt.BACKBONE, prefix="model.backbone." if hirl else "backbone.")
    return history[-1] if history else {}


def _lr(lr: float) -> str:
    return f"{lr:.4f}" if lr >= 1e-3 else f"{lr:.2e}"


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
    model.train()
    loss_sum, seen, t0 = 0.0, 0, time.perf_counter()
    log_sums: dict[str, float] = {}
    with Progress(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", enabled=info.is_main,
                  prefix="[pretrain] ") as bar:
        for i, (views, index, _target) in enumerate(loader):
            step = epoch * steps_per_epoch + i
            lr = scheduled_lr(sched, base_lr, step, steps_per_epoch, total_steps)
            set_lr(optimizer, lr)
            wd = scheduled_weight_decay(cfg.optimizer, step, total_steps)
            if wd is not None:
                set_weight_decay(optimizer, wd)
            method.on_step_start(step, total_steps, steps_per_epoch)
            views = [v.to(info.device, non_blocking=True) for v in views]
            with autocast_for(info.device, precision):
                out = model(views, index) if getattr(method, "uses_index", False) else model(views)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(out.loss).backward()
            if cfg.get("clip_grad"):
                scaler.unscale_(optimizer)
                clip_gradients(method.parameters(), cfg.clip_grad, cfg.get("clip_grad_mode", "global"))
            method.before_optimizer_step()
            scaler.step(optimizer)
            scaler.update()
            method.after_step((step + 1) / total_steps)
            loss_sum += out.loss.item()
            for key, value in out.logs.items():
                log_sums[key] = log_sums.get(key, 0.0) + float(value)
            seen += len(views[0]) * info.world_size
            bar.update(**{"loss": f"{loss_sum / (i + 1):.4f}", "lr": _lr(lr),
                          "img/s": f"{seen / (time.perf_counter() - t0):.0f}"})
    elapsed = time.perf_counter() - t0
    loss = all_reduce_mean(torch.tensor(loss_sum / max(1, steps_per_epoch), device=info.device)).item()
    logs = {k: v / max(1, steps_per_epoch) for k, v in log_sums.items()}  # rank 0's epoch means
    return {"loss": loss, "lr": lr, "images_per_s": seen / elapsed, "epoch_time_s": elapsed, **logs}
