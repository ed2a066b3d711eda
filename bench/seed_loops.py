"""DINO's training step as the seed's loop runs it, against hirl's engine step, on identical weights.

The reference is written from the seed's documented behaviour (hirl-method.md §2.5), not its code:
student and teacher are a backbone plus a head (MLP, L2-norm, torch's `nn.utils.weight_norm` Linear
whose g is a frozen parameter filled with 1); crops of one resolution go through the backbone
together; the loss is the centred, sharpened cross-view CE; each gradient is clipped by its own norm
(multiplied only when the factor is below 1); the last layer's gradients are dropped while it is
frozen; AdamW with biases and 1-D parameters undecayed; the teacher is the parameter-wise EMA.

Both sides start from the same weights (the reference copies hirl's modules) and draw the same random
numbers each step (drop path), so their losses agree: `max_loss_diff` shows the two loops compute the
same thing, and the ratio of their median step times is the cost of hirl's loop over the seed's.
"""
from __future__ import annotations

import copy
import math
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

STEPS_PER_EPOCH, TOTAL_STEPS = 100, 10_000


class SeedHead(nn.Module):
    def __init__(self, mlp: nn.Module, weight_v: torch.Tensor, norm_last_layer: bool):
        super().__init__()
        self.mlp = copy.deepcopy(mlp)
        with warnings.catch_warnings():  # the deprecated form is the one the seed uses
            warnings.simplefilter("ignore")
            self.last_layer = nn.utils.weight_norm(nn.Linear(weight_v.shape[1], weight_v.shape[0], bias=False))
        with torch.no_grad():
            self.last_layer.weight_v.copy_(weight_v)
            self.last_layer.weight_g.fill_(1.0)
        self.last_layer.weight_g.requires_grad = not norm_last_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))


class SeedNet(nn.Module):
    """Backbone + head over a list of crops: consecutive crops of one size share a backbone pass."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, crops: list[torch.Tensor]) -> torch.Tensor:
        sizes = torch.tensor([c.shape[-1] for c in crops])
        ends = torch.cumsum(torch.unique_consecutive(sizes, return_counts=True)[1], 0).tolist()
        feats, start = [], 0
        for end in ends:
            feats.append(self.backbone(torch.cat(crops[start:end])))
            start = end
        return self.head(torch.cat(feats))


class SeedDINO:
    """The seed's loop around copies of a hirl DINO model's student, teacher and heads."""

    def __init__(self, ours, cfg, batch: int):
        norm_last = bool(cfg.method.get("norm_last_layer", True))
        self.student = SeedNet(copy.deepcopy(ours.student),
                               SeedHead(ours.student_head.mlp, ours.student_head.last_layer.weight_v, norm_last))
        self.teacher = SeedNet(copy.deepcopy(ours.backbone),  # built anew: a weight-normed module cannot be deep-copied
                               SeedHead(ours.teacher_head.mlp, ours.teacher_head.last_layer.weight_v, norm_last))
        for p in self.teacher.parameters():
            p.requires_grad = False
        self.center = ours.center.clone()
        self.cfg, self.freeze = cfg, int(cfg.method.get("freeze_last_layer", 0))
        decay, no_decay = [], []
        for name, p in self.student.named_parameters():
            if p.requires_grad:
                (no_decay if name.endswith(".bias") or p.ndim == 1 else decay).append(p)
        lr = float(cfg.optimizer.lr) * batch / 256
        self.opt = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr,
                                     betas=tuple(cfg.optimizer.get("betas", (0.9, 0.999))))
        self.lr = lr

    def _loss(self, student_out, teacher_out, epoch: int) -> torch.Tensor:
        m = self.cfg.method
        warm_epochs = m.get("warmup_teacher_temp_epochs", 0)
        t_temp = m.teacher_temp if epoch >= warm_epochs else \
            m.warmup_teacher_temp + (m.teacher_temp - m.warmup_teacher_temp) * epoch / max(1, warm_epochs - 1)
        s = (student_out / m.student_temp).chunk(len(student_out) // len(teacher_out) * 2)
        q = F.softmax((teacher_out - self.center) / t_temp, dim=-1).detach().chunk(2)
        total, n = 0.0, 0
        for iq, target in enumerate(q):
            for v, logits in enumerate(s):
                if v != iq:
                    total = total + torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
                    n += 1
        with torch.no_grad():
            batch_center = teacher_out.sum(dim=0, keepdim=True) / len(teacher_out)
            self.center = self.center * m.center_momentum + batch_center * (1 - m.center_momentum)
        return total / n

    def clip(self, max_norm: float) -> None:
        for p in self.student.parameters():
            if p.grad is not None:
                coef = max_norm / (p.grad.data.norm(2) + 1e-6)
                if coef < 1:
                    p.grad.data.mul_(coef)

    def step(self, views: list[torch.Tensor], it: int) -> float:
        epoch, progress = it // STEPS_PER_EPOCH, it / TOTAL_STEPS
        wd0, wd1 = float(self.cfg.optimizer.get("weight_decay", 0.0)), self.cfg.optimizer.get("weight_decay_end")
        wd = wd0 if wd1 is None else float(wd1) + 0.5 * (wd0 - float(wd1)) * (1 + math.cos(math.pi * progress))
        for i, group in enumerate(self.opt.param_groups):
            group["lr"] = self.lr
            if i == 0:
                group["weight_decay"] = wd
        teacher_out = self.teacher(views[:2])
        loss = self._loss(self.student(views), teacher_out, epoch)
        value = loss.item()  # the seed stops on a non-finite loss
        self.opt.zero_grad()
        loss.backward()
        if self.cfg.get("clip_grad"):
            self.clip(self.cfg.clip_grad)
        if epoch < self.freeze:
            for name, p in self.student.named_parameters():
                if "last_layer" in name:
                    p.grad = None
        self.opt.step()
        with torch.no_grad():
            m = 1 - (1 - self.cfg.method.momentum_teacher) * (math.cos(math.pi * progress) + 1) / 2
            for q, k in zip(self.student.parameters(), self.teacher.parameters()):
                k.data.mul_(m).add_((1 - m) * q.detach().data)
        return value


def engine_step(model, opt, cfg, views, it: int) -> float:
    """One iteration of hirl_core.engine.pretrain's loop (fp32, one process)."""
    from hirl_core.engine.optim import clip_gradients, scheduled_weight_decay, set_lr, set_weight_decay

    set_lr(opt, opt.param_groups[0]["initial_lr"])
    wd = scheduled_weight_decay(cfg.optimizer, it, TOTAL_STEPS)
    if wd is not None:
        set_weight_decay(opt, wd)
    model.on_step_start(it, TOTAL_STEPS, STEPS_PER_EPOCH)
    out = model(views)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    if cfg.get("clip_grad"):
        clip_gradients(model.parameters(), cfg.clip_grad, cfg.get("clip_grad_mode", "global"))
    model.before_optimizer_step()
    opt.step()
    model.after_step((it + 1) / TOTAL_STEPS)
    return out.loss.item()


def _alternate(sides: dict, reps: int, sync, prepare=None) -> dict:
    """Median time of each side's call, alternating; `prepare(name)` runs untimed before each call."""
    times = {name: [] for name in sides}
    for rep in range(reps):
        for name in list(sides)[::1 if rep % 2 == 0 else -1]:
            run = sides[name]
            if prepare is not None:
                prepare(name)
            sync()
            t0 = time.perf_counter()
            run()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def component_times(model, seed: SeedDINO, rows: int, sync, reps: int = 10) -> dict:
    """The two parts of the step where the loops differ, each timed alone: the student's weight-normed
    last layer (forward + backward over `rows` bottleneck vectors) and per-parameter clipping of the
    gradients the last step left (restored before every call, outside the timing)."""
    ours, theirs = model.student_head.last_layer, seed.student.head.last_layer
    x = torch.randn(rows, ours.weight_v.shape[1], device=ours.weight_v.device)
    grad_out = torch.randn(rows, ours.weight_v.shape[0], device=x.device)
    layers = {"hirl": ours, "seed": theirs}

    def fresh_grads(name):  # each call writes its gradients anew rather than adding to the last step's
        for p in layers[name].parameters():
            p.grad = None

    layer = _alternate({name: (lambda m=m: m(x).backward(grad_out)) for name, m in layers.items()}, reps, sync,
                       prepare=fresh_grads)
    from hirl_core.engine.optim import clip_gradients

    nets = {"hirl": model, "seed": seed.student}
    saved = {name: [(p, p.grad.clone()) for p in net.parameters() if p.grad is not None] for name, net in nets.items()}

    def restore(name):
        for p, grad in saved[name]:
            p.grad = grad.clone()

    max_norm = float(seed.cfg.get("clip_grad") or 0.3)
    clip = _alternate({"hirl": lambda: clip_gradients(model.parameters(), max_norm, "per_param"),
                       "seed": lambda: seed.clip(max_norm)}, reps, sync, prepare=restore)
    n_clipped = sum(bool(g.norm() * (1 + 1e-6) > max_norm) for _, g in saved["hirl"])
    return {"last_layer_fwd_bwd_s": layer, "per_param_clip_s": clip,
            "gradients_above_clip": f"{n_clipped} of {len(saved['hirl'])}"}


def measure_vs_seed(cfg, model, opt, views, steps: int, warm: int, sync) -> dict:
    """Median step time of hirl's loop and of the seed's, alternating step by step in one process."""
    for group in opt.param_groups:
        group["initial_lr"] = group["lr"]
    seed = SeedDINO(model, cfg, len(views[0]))
    times, losses = {"hirl": [], "seed": []}, {"hirl": [], "seed": []}
    sides = {"hirl": lambda it: engine_step(model, opt, cfg, views, it), "seed": lambda it: seed.step(views, it)}
    sync()
    for i in range(warm + steps):
        for name in ("hirl", "seed") if i % 2 == 0 else ("seed", "hirl"):  # neither side always goes first
            run = sides[name]
            torch.manual_seed(i)  # the same drop-path draws on both sides
            t0 = time.perf_counter()
            losses[name].append(run(i))
            sync()
            if i >= warm:
                times[name].append(time.perf_counter() - t0)
    ours, theirs = statistics.median(times["hirl"]), statistics.median(times["seed"])
    fastest = {name: min(t) for name, t in times.items()}  # the step least disturbed by other load
    return {"hirl_step_s": ours, "seed_step_s": theirs, "ratio": round(ours / theirs, 3),
            "at_or_under_seed": ours <= theirs, "ratio_of_fastest_steps": round(fastest["hirl"] / fastest["seed"], 3),
            "step_times_s": {name: [round(t, 3) for t in ts] for name, ts in times.items()},
            "steps": steps, "batch": len(views[0]),
            "views": [int(v.shape[-1]) for v in views],
            "max_loss_diff": max(abs(a - b) for a, b in zip(losses["hirl"], losses["seed"])),
            "timing": "alternating steps in one process, identical initial weights, medians",
            "components": component_times(model, seed, len(views[0]) * len(views), sync)}
