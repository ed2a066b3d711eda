"""The supervised trainer shared by the linear, fine-tuning, semi-supervised and transfer evaluations.

    run_supervised(cfg, stage, train_set, val_set, num_classes, mode="linear" | "finetune",
                   info=None, params=None) -> metrics

The caller builds the two datasets (yielding (image, index, target); see supervised_data.py); this
builds the backbone from ``cfg.backbone`` with ``cfg.seed`` (the pre-training's initial weights),
loads ``cfg.pretrained``, trains ``cfg.epochs`` epochs with a val top-1/top-5 after each, and logs:

    <stage>_top1             best val top-1 over the epochs (the seed's reported number, §3)
    <stage>_top1_best_epoch  its epoch (1-based)
    <stage>_top1_last        val top-1 after the last epoch
    <stage>_top5             val top-5 at the best top-1 epoch
    <stage>_top1_ema         (with model_ema.decay) best top-1 of the EMA weights
    train_loss, val_top1, val_top5, lr   per epoch (lr: the scheduled base LR, before group scales)

With ``untrained: true`` a second phase trains the same recipe from the untrained backbone (the same
seed's initial weights and initial BN statistics) and logs every number above with ``_untrained``
appended (``<stage>_top1_untrained``, ``val_top1_untrained`` per epoch, ...).

Resume. The two phases run as one sequence of epochs (phase p's epoch e is number p * epochs + e);
every epoch's checkpoint holds the phase, its model/optimiser/EMA state and the best-so-far record of
each phase, so a kill in either phase resumes there and a finished first phase is not repeated. Each
epoch re-seeds every RNG from (seed, epoch, rank) and the head is initialised from (seed + 1) in both
phases, so a resumed run replays exactly the batches and draws of an uninterrupted one.

Linear (``mode: linear``): the trunk is frozen and stays in eval mode (see LinearProbe); when the
training transform draws nothing (no crop, flip, RandAugment or erasing) the trunk's features are
computed once per phase and the head trains on them, which gives the same result at a fraction of the cost.
"""
from __future__ import annotations

import copy
import json
import time

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ..config import ConfigError
from ..engine.distributed import all_reduce_mean, all_reduce_sum, init_distributed
from ..engine.lifecycle import StageLifecycle, seed_all
from ..engine.optim import scaled_lr
from ..engine.pretrain import autocast_for, resolve_precision
from ..engine.progress import Progress, duration
from ..models import build_backbone
from ..models.loading import load_backbone
from .supervised_data import is_random
from .supervised_recipe import (MODES, Classifier, LinearProbe, apply_lr, build_criterion, build_head,
                                build_optimizer, lr_at, param_groups)

PHASES = ("pretrained", "untrained")


def _suffix(phase: str) -> str:
    return "" if phase == "pretrained" else "_untrained"


def _backbone_cfg(cfg):
    """The backbone section, with the stage's own ``drop_path_rate`` (fine-tuning: 0.1-0.2) on top."""
    backbone = copy.deepcopy(cfg.backbone)
    if cfg.get("drop_path_rate") is not None:
        backbone["drop_path_rate"] = float(cfg.drop_path_rate)
    return backbone


def run_supervised(cfg, stage: str, train_set, val_set, num_classes: int, *, mode: str, info=None,
                   params: dict | None = None) -> dict:
    if mode not in MODES:
        raise ConfigError(f"unknown supervised mode {mode!r}; allowed: {', '.join(MODES)}")
    info = info or init_distributed(cfg.get("device", "auto"))
    seed_all(cfg.seed)  # the pre-training's initial weights: the untrained reference
    trunk = build_backbone(_backbone_cfg(cfg))
    initial = copy.deepcopy(trunk.state_dict())
    prefix = load_backbone(trunk, cfg.pretrained, cfg.get("backbone_prefix", "auto"))  # fails before tracking
    weights = {"pretrained": copy.deepcopy(trunk.state_dict()), "untrained": initial}
    if mode == "finetune":  # a recipe that does not fit the network (layer decay on a ResNet) fails here
        param_groups(Classifier(trunk, build_head(trunk.out_dim, num_classes, cfg.get("head", {}))), cfg.optimizer)
    mixup, _ = build_criterion(cfg, num_classes)  # a bad mixup setting fails here, before tracking
    if mixup is not None and mode == "linear":
        raise ConfigError("mixup/cutmix mix images, not a linear probe's inputs: set mixup.mixup_alpha=0 "
                          "and mixup.cutmix_alpha=0 for a linear stage")
    phases = PHASES if cfg.get("untrained", False) else PHASES[:1]
    epochs = int(cfg.epochs)
    life = StageLifecycle(cfg, stage, info, epochs=epochs * len(phases))
    state = life.state
    results = dict(state.get("results", {})) if state else {}
    total_batch = cfg.batch_size * info.world_size
    logged = {"mode": mode, "pretrained": cfg.pretrained, "backbone_prefix": prefix, "arch": cfg.backbone.arch,
              "epochs": epochs, "batch_size_total": total_batch, "lr": scaled_lr(cfg.optimizer, total_batch),
              "num_classes": num_classes, "world_size": info.world_size,
              "precision": resolve_precision(cfg, info.device), **(params or {})}
    began = time.perf_counter()
    with life.tracked(logged) as tracker:
        for index, phase in enumerate(phases):
            first = index * epochs
            if life.start_epoch >= first + epochs:
                continue  # finished before the restart; its record came back with the checkpoint
            resume = state if state is not None and state.get("phase") == phase and life.start_epoch > first else None
            trainer = _PhaseTrainer(cfg, stage, mode, info, life, phase, first, num_classes, results)
            trainer.build(trunk, weights[phase], resume)
            results[phase] = trainer.fit(train_set, val_set, start=life.start_epoch - first if resume else 0)
        metrics = summary(stage, results)
        metrics[f"{stage}_time_s"] = time.perf_counter() - began  # this attempt's time
        tracker.metrics(metrics)
        if info.is_main:
            (life.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
            life.say(", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.endswith(("_top1", "_top1_untrained"))))
    return metrics


def summary(stage: str, results: dict) -> dict:
    """The final metrics from each phase's record."""
    out = {}
    for phase, r in results.items():
        s = _suffix(phase)
        out.update({f"{stage}_top1{s}": r["top1"], f"{stage}_top1_best_epoch{s}": r["best_epoch"],
                    f"{stage}_top1_last{s}": r["last_top1"], f"{stage}_top5{s}": r["top5"]})
        if "top1_ema" in r:
            out[f"{stage}_top1_ema{s}"] = r["top1_ema"]
    return out


class _PhaseTrainer:
    """One phase: a classifier from given trunk weights, trained and validated epoch by epoch."""

    def __init__(self, cfg, stage, mode, info, life, phase, first_epoch, num_classes, results):
        self.cfg, self.stage, self.mode, self.info, self.life = cfg, stage, mode, info, life
        self.phase, self.first, self.num_classes, self.results = phase, first_epoch, num_classes, results
        self.device = info.device
        self.precision = resolve_precision(cfg, info.device)
        self.epochs = int(cfg.epochs)

    def build(self, trunk, trunk_weights, resume) -> None:
        cfg, info = self.cfg, self.info
        trunk = copy.deepcopy(trunk)
        trunk.load_state_dict(trunk_weights)
        seed_all(cfg.seed + 1)  # the same head in both phases and on every restart
        head = build_head(trunk.out_dim, self.num_classes, cfg.get("head", {}))
        cls = LinearProbe if self.mode == "linear" else Classifier
        self.model = cls(trunk, head).to(self.device)
        total_batch = cfg.batch_size * info.world_size
        self.base_lr = scaled_lr(cfg.optimizer, total_batch)
        self.optimizer = build_optimizer(cfg.optimizer, param_groups(self.model, cfg.optimizer), total_batch)
        self.mixup, self.criterion = build_criterion(cfg, self.num_classes)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.ema = None
        decay = (cfg.get("model_ema") or {}).get("decay")
        if decay is not None and self.mode == "finetune":
            from timm.utils import ModelEmaV3
            self.ema = ModelEmaV3(self.model, decay=float(decay))
        self.record = {"top1": 0.0, "best_epoch": 0, "top5": 0.0, "last_top1": 0.0}
        if self.ema is not None:
            self.record["top1_ema"] = 0.0
        if resume is not None:
            if self.mode == "linear":
                self.model.head.load_state_dict(resume["model"])
            else:
                self.model.load_state_dict(resume["model"])
            self.optimizer.load_state_dict(resume["optimizer"])
            self.scaler.load_state_dict(resume["scaler"])
            if self.ema is not None:
                self.ema.load_state_dict(resume["ema"])
            self.record = dict(resume["results"][self.phase])
        # the module that trains (DDP averages its gradients); the frozen trunk needs no wrapping
        self.trained = self.model.head if self.mode == "linear" else self.model
        if info.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.trained = DistributedDataParallel(self.trained, device_ids=ids)

    # -- data ------------------------------------------------------------------------------------
    def _features(self, dataset, desc):
        """(trunk features [N, D], labels [N]) in dataset order: the frozen trunk's output, computed once."""
        loader = DataLoader(dataset, batch_size=self.cfg.get("eval_batch_size", 512), shuffle=False,
                            num_workers=self.cfg.get("num_workers", 0))
        feats, labels = [], []
        self.model.trunk.eval()
        with torch.no_grad(), Progress(len(loader), desc, enabled=self.info.is_main, prefix=f"[{self.stage}] ") as bar:
            for images, _index, target in loader:
                with autocast_for(self.device, self.precision):
                    feats.append(self.model.trunk(images.to(self.device)).float())
                labels.append(torch.as_tensor(target).to(self.device))
                bar.update()
        return torch.cat(feats), torch.cat(labels)

    def _train_batches(self, train_set, epoch: int):
        """This rank's (input, target) batches of ``epoch``: images, or features when precomputed."""
        bs, rank, world = self.cfg.batch_size, self.info.rank, self.info.world_size
        if self.train_features is not None:
            feats, labels = self.train_features
            order = torch.randperm(len(feats))  # the epoch's seeded permutation, the same on every rank
            per_rank = len(order) // world // bs * bs
            mine = order[rank * per_rank:(rank + 1) * per_rank].to(feats.device)
            return [(feats[mine[i:i + bs]], labels[mine[i:i + bs]]) for i in range(0, per_rank, bs)]
        sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True,
                                     seed=self.cfg.seed, drop_last=True)
        sampler.set_epoch(epoch)
        loader = DataLoader(train_set, batch_size=bs, sampler=sampler, drop_last=True,
                            num_workers=self.cfg.get("num_workers", 0), pin_memory=self.device.type == "cuda")
        return ((images, target) for images, _index, target in loader)

    # -- the loop --------------------------------------------------------------------------------
    def fit(self, train_set, val_set, start: int) -> dict:
        cfg, life = self.cfg, self.life
        precompute = self.mode == "linear" and not is_random(cfg.get("augment", {}))
        self.train_features = self.val_features = None
        if precompute:
            self.train_features = self._features(train_set, f"{self.phase}: train features")
            self.val_features = self._features(val_set, f"{self.phase}: val features")
        steps = len(train_set) // self.info.world_size // cfg.batch_size  # full batches only
        if steps < 1:
            raise ConfigError(f"batch_size={cfg.batch_size} exceeds this rank's {len(train_set) // self.info.world_size} "
                              "training images: no full batch per epoch")
        s, seconds = _suffix(self.phase), []
        for epoch in range(start, self.epochs):
            t0 = time.perf_counter()
            seed_all(cfg.seed + 7919 * epoch + 104729 * self.info.rank)
            loss, lr, images_per_s = self._train_epoch(train_set, epoch, steps)
            top1, top5 = self._evaluate(self.model, val_set)
            r = self.record
            if top1 > r["top1"] or r["best_epoch"] == 0:
                r.update(top1=top1, top5=top5, best_epoch=epoch + 1)
            r["last_top1"] = top1
            metrics = {f"train_loss{s}": loss, f"val_top1{s}": top1, f"val_top5{s}": top5, f"lr{s}": lr}
            if self.ema is not None:
                ema_top1, _ = self._evaluate(self.ema.module, val_set)
                r["top1_ema"] = max(r["top1_ema"], ema_top1)
                metrics[f"val_top1_ema{s}"] = ema_top1
            payload = {"phase": self.phase, "scaler": self.scaler.state_dict(),
                       "model": (self.model.head if self.mode == "linear" else self.model).state_dict(),
                       "optimizer": self.optimizer.state_dict(),
                       "ema": self.ema.state_dict() if self.ema is not None else None,
                       "results": {**self.results, self.phase: dict(r)}}
            life.save_epoch(self.first + epoch, payload, metrics, step=epoch)
            seconds.append(time.perf_counter() - t0)
            left = sum(seconds) / len(seconds) * (self.epochs - epoch - 1)
            life.say(f"{self.phase} epoch {epoch + 1}/{self.epochs}  loss {loss:.4f}  val top-1 {top1:.4f}  "
                     f"best {r['top1']:.4f} (epoch {r['best_epoch']})  lr {lr:.3g}  {images_per_s:.0f} img/s  "
                     f"ETA {duration(left)}")
        return dict(self.record)

    def _train_epoch(self, train_set, epoch: int, steps: int) -> tuple[float, float, float]:
        """(mean loss, last lr, training images per second over all ranks) of one epoch."""
        total = steps * self.epochs
        self.model.train()  # a LinearProbe keeps its trunk in eval mode
        loss_sum, n, lr, seen, t0 = 0.0, 0, self.base_lr, 0, time.perf_counter()
        with Progress(steps, f"{self.phase} epoch {epoch + 1}/{self.epochs}", enabled=self.info.is_main,
                      prefix=f"[{self.stage}] ") as bar:
            for i, (x, y) in enumerate(self._train_batches(train_set, epoch)):
                lr = lr_at(self.cfg.get("schedule", {}), self.base_lr, epoch * steps + i, steps, total)
                apply_lr(self.optimizer, lr)
                x, y = x.to(self.device, non_blocking=True), torch.as_tensor(y).to(self.device, non_blocking=True)
                if self.mixup is not None:
                    x, y = self.mixup(x, y)
                with autocast_for(self.device, self.precision):
                    loss = self.criterion(self._logits(x), y)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                if self.ema is not None:
                    self.ema.update(self.model)
                loss_sum, n = loss_sum + loss.item(), n + 1
                seen += len(x) * self.info.world_size
                bar.update(loss=f"{loss_sum / n:.4f}", lr=f"{lr:.3g}",
                           **{"img/s": f"{seen / (time.perf_counter() - t0):.0f}"})
        mean = all_reduce_mean(torch.tensor(loss_sum / max(1, n), device=self.device)).item()
        return mean, lr, seen / max(1e-9, time.perf_counter() - t0)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "linear" and self.train_features is None:  # augmented images through the frozen trunk
            with torch.no_grad():
                x = self.model.trunk(x)
        return self.trained(x)

    @torch.no_grad()
    def _evaluate(self, model, val_set) -> tuple[float, float]:
        """(top-1, top-5) fractions on the whole val set; each rank scores its share, the counts are summed."""
        model.eval()
        rank, world = self.info.rank, self.info.world_size
        counts = torch.zeros(3, dtype=torch.float64, device=self.device)  # top-1 hits, top-5 hits, images
        if self.val_features is not None and model is self.model:
            feats, labels = self.val_features
            batches = [(model.head(feats[i:i + 4096]), labels[i:i + 4096])
                       for i in range(rank * 4096, len(feats), world * 4096)]
        else:
            shard = torch.utils.data.Subset(val_set, range(rank, len(val_set), world))
            loader = DataLoader(shard, batch_size=self.cfg.get("eval_batch_size", 512), shuffle=False,
                                num_workers=self.cfg.get("num_workers", 0))
            batches = self._scored(model, loader)
        for logits, y in batches:
            top = logits.float().topk(min(5, logits.shape[1]), dim=1).indices
            y = torch.as_tensor(y).to(self.device)
            counts += torch.tensor([(top[:, 0] == y).sum().item(), (top == y[:, None]).any(dim=1).sum().item(),
                                    len(y)], dtype=torch.float64, device=self.device)
        counts = all_reduce_sum(counts)
        return (counts[0] / counts[2]).item(), (counts[1] / counts[2]).item()

    def _scored(self, model, loader):
        for images, _index, target in loader:
            with autocast_for(self.device, self.precision):
                yield model(images.to(self.device, non_blocking=True)), target
