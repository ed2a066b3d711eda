"""SwAV (Caron et al. 2020): swapped prediction of online cluster codes computed by Sinkhorn-Knopp
over the whole (global) batch. Seed settings (hirl-method.md §2.3): head Linear(2048,2048)-BN-ReLU-
Linear(2048,128), output L2-normalised; 3000 prototypes (bias-free, rows re-normalised before every
forward); codes from both global crops (ε = 0.05, 3 iterations) predicted by every other crop with
softmax(·/0.1); prototypes frozen for the first 313 iterations; multi-crop 2 x 224 + 6 x 96; no queue.

    method:
      name: swav
      dim: 128
      hidden_dim: 2048
      n_prototypes: 3000
      temperature: 0.1
      epsilon: 0.05
      sinkhorn_iterations: 3
      crops_for_assign: [0, 1]
      freeze_prototypes_iters: 313
      queue_length: 0          # > 0: a queue of past embeddings joins the Sinkhorn batch
      epoch_queue_starts: 15
      bn_stats_from_global_crops: true   # false: local crops move BatchNorm running stats too (the seed)

Soundness choices:
* Sinkhorn runs in fp32 with the global maximum subtracted before exp (a constant factor that the
  normalisations cancel exactly), so fp16/bf16 training cannot overflow exp(score/ε).
* The queue (when on) is held as one *global* queue, identical on every rank (all-gathered
  embeddings), of which each rank uses its own contiguous slice. The seed kept a queue per rank in a
  per-rank file; the Sinkhorn batch is the same set of embeddings (the codes depend only on that set),
  but here DDP's buffer broadcast cannot clobber it and rank 0's checkpoint restores it on resume.
* BatchNorm running statistics (what the exported backbone evaluates with, at the global resolution)
  are updated by the global crops only; local crops are still normalised by their own batch
  statistics. The seed let the local crops move them as well: at 224/96 px the two resolutions'
  statistics are close, at the demo's 28/14 px they are not (re-estimating them on 28 px images alone
  raised the demo's KNN top-1 by 1.3 points). `bn_stats_from_global_crops: false` restores the seed.
HIRL embedding = head output (pre-normalisation) of the first global crop; clustered features = the
same online head output (there is no momentum branch).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.distributed import all_reduce_max, all_reduce_sum, concat_all_gather, rank, world_size
from .base import MethodOutput, SSLMethod, cancel_grads, forward_by_resolution


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Codes [B, K] for prototype scores [B, K] (this rank's rows of the global batch): the transport
    plan exp(scores/ε) alternately rescaled so that every prototype receives 1/K of the global batch's
    mass and every sample 1/B; returned scaled so that each sample's code sums to 1."""
    scores = scores.float()
    q = torch.exp((scores - all_reduce_max(scores.max())) / epsilon).T  # [K, B_local]
    k, b = q.shape[0], q.shape[1] * world_size()
    q /= all_reduce_sum(q.sum())
    for _ in range(iterations):
        q /= all_reduce_sum(q.sum(dim=1, keepdim=True))  # prototypes: equal mass 1/K
        q /= k
        q /= q.sum(dim=0, keepdim=True)  # samples: equal mass 1/B (local columns are complete)
        q /= b
    return (q * b).T


def swapped_prediction(scores: list[torch.Tensor], codes: dict[int, torch.Tensor], temperature: float) -> torch.Tensor:
    """Mean over target crops c of: mean over the other crops v of CE(codes[c], softmax(scores[v]/T))."""
    total = 0.0
    for c, q in codes.items():
        terms = [-(q * F.log_softmax(s.float() / temperature, dim=1)).sum(dim=1).mean()
                 for v, s in enumerate(scores) if v != c]
        total = total + sum(terms) / len(terms)
    return total / len(codes)


class SwAV(SSLMethod):
    n_views = 2

    def __init__(self, backbone: nn.Module, cfg):
        super().__init__()
        hidden = cfg.get("hidden_dim") or backbone.out_dim
        self.inst_dim = dim = cfg.get("dim", 128)
        self.backbone = backbone
        self.head = nn.Sequential(nn.Linear(backbone.out_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, dim))
        self.prototypes = nn.Linear(dim, cfg.get("n_prototypes", 3000), bias=False)
        self.temperature, self.epsilon = cfg.get("temperature", 0.1), cfg.get("epsilon", 0.05)
        self.iterations = cfg.get("sinkhorn_iterations", 3)
        self.crops_for_assign = list(cfg.get("crops_for_assign", [0, 1]))
        self.freeze_iters = cfg.get("freeze_prototypes_iters", 313)
        self.queue_starts = cfg.get("epoch_queue_starts", 15)
        self.bn_stats_from_global = cfg.get("bn_stats_from_global_crops", True)
        length = cfg.get("queue_length", 0)
        if length and length % world_size():
            raise ValueError(f"method.queue_length {length} must be divisible by the world size {world_size()}")
        self.register_buffer("queue", torch.zeros(len(self.crops_for_assign), length, dim) if length else None)
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self._step, self._epoch = 0, 0

    def on_step_start(self, step: int, total_steps: int, steps_per_epoch: int) -> None:
        self._step, self._epoch = step, step // steps_per_epoch

    def before_optimizer_step(self) -> None:
        if self._step < self.freeze_iters:
            cancel_grads(self.prototypes)

    def _queue_active(self) -> bool:
        return self.queue is not None and self._epoch >= self.queue_starts

    def forward(self, views: list[torch.Tensor]) -> MethodOutput:
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        b = len(views[0])
        # backbone per resolution, then one head pass over all crops (its BN sees them all), as the seed
        emb = self.head(forward_by_resolution(self.backbone, views, self.bn_stats_from_global))
        z = F.normalize(emb, dim=1)
        scores = self.prototypes(z).split(b)
        codes = {}
        use_queue = self._queue_active() and int(self.queue_filled) >= self.queue.shape[1]
        for i, c in enumerate(self.crops_for_assign):
            with torch.no_grad():
                out = scores[c].detach().float()
                if use_queue:
                    share = self.queue.shape[1] // world_size()
                    mine = self.queue[i, rank() * share:(rank() + 1) * share]
                    out = torch.cat([mine @ self.prototypes.weight.float().T, out])
                codes[c] = sinkhorn(out, self.epsilon, self.iterations)[-b:]
        loss = swapped_prediction(list(scores), codes, self.temperature)
        if self._queue_active():
            self._enqueue(z.detach().split(b))
        with torch.no_grad():
            p = codes[self.crops_for_assign[0]]
            logs = {"code_entropy": float(-(p * p.clamp_min(1e-12).log()).sum(1).mean())}
        return MethodOutput(loss=loss, embedding=emb[:b], logs=logs, global_features=emb[:self.n_views * b].detach())

    @torch.no_grad()
    def _enqueue(self, z_views) -> None:
        for i, c in enumerate(self.crops_for_assign):
            new = concat_all_gather(z_views[c].float())  # rank order: every rank pushes the same rows
            n = min(len(new), self.queue.shape[1])
            self.queue[i] = torch.cat([new[:n], self.queue[i, :self.queue.shape[1] - n]])
        self.queue_filled += len(new)

    @torch.no_grad()
    def forward_feature(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))
