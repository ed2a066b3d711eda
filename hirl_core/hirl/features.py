"""The per-epoch feature pass and the hand-over of the prototype tree between ranks.

Scales better than the seed, which kept an N×D buffer on every GPU and all-reduced it (10.5 GB per GPU
for SimSiam's D = 2048): here each rank embeds a contiguous shard of the training set and sends it to
rank 0 in fixed-size chunks; only rank 0 ever holds the N×D matrix (in host memory), clusters it, and
broadcasts the prototypes, parent maps and labels (K×D and N integers: small).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from ..engine.distributed import is_dist
from ..engine.progress import Progress
from .kmeans import PrototypeTree

GATHER_CHUNK_ROWS = 16384


@torch.no_grad()
def _embed_shard(method, dataset, lo: int, hi: int, batch_size: int, device, show: bool) -> torch.Tensor:
    loader = DataLoader(Subset(dataset, range(lo, hi)), batch_size=batch_size, shuffle=False)
    was_training = method.training
    method.eval()
    bar = Progress(len(loader), "clustering features", enabled=show, prefix="[pretrain] ")
    parts = [F.normalize(method.forward_feature(images.to(device)).float(), dim=1) for images, _, _ in bar.wrap(loader)]
    method.train(was_training)
    return torch.cat(parts) if parts else torch.empty(0, method.inst_dim, device=device)


@torch.no_grad()
def gather_features(method, dataset, batch_size: int, device) -> tuple[np.ndarray | None, int]:
    """(L2-normalised clustering features [N, D] float32 on rank 0, None on the other ranks; the peak
    bytes of feature storage this process allocated: the N×D matrix on rank 0, its shard elsewhere)."""
    n = len(dataset)
    world = dist.get_world_size() if is_dist() else 1
    rank = dist.get_rank() if is_dist() else 0
    per = math.ceil(n / world)
    lo, hi = min(n, rank * per), min(n, (rank + 1) * per)
    shard = _embed_shard(method, dataset, lo, hi, batch_size, device, show=rank == 0)
    if world == 1:
        feats = shard.cpu().numpy()
        return feats, feats.nbytes
    dim = shard.shape[1] if len(shard) else method.inst_dim
    out = np.empty((n, dim), dtype=np.float32) if rank == 0 else None
    peak = out.nbytes if rank == 0 else shard.numel() * 4
    for start in range(0, per, GATHER_CHUNK_ROWS):  # every rank takes part in every round
        rows = min(GATHER_CHUNK_ROWS, per - start)
        send = torch.zeros(rows, dim, device=device)
        mine = shard[start:start + rows]
        send[:len(mine)] = mine
        bufs = [torch.empty_like(send) for _ in range(world)] if rank == 0 else None
        dist.gather(send, bufs, dst=0)
        if rank == 0:
            for r, buf in enumerate(bufs):
                a = r * per + start
                b = min(n, a + rows, (r + 1) * per)
                if b > a:
                    out[a:b] = buf[:b - a].cpu().numpy()
    return out, peak


def broadcast_tree(tree: PrototypeTree | None, num_cluster, num_images: int, device) -> PrototypeTree:
    """Rank 0's tree on every rank (shapes follow from the config, so only rank 0 needs the tree)."""
    if not is_dist():
        return tree
    rank = dist.get_rank()
    dim = torch.tensor([tree.centroids[0].shape[1] if rank == 0 else 0], device=device)
    dist.broadcast(dim, 0)
    centroids, labels, parents = [], [], []
    for level, k in enumerate(num_cluster):
        c = torch.from_numpy(tree.centroids[level]).to(device) if rank == 0 else \
            torch.empty(int(k), int(dim), device=device)
        y = torch.from_numpy(tree.labels[level]).to(device) if rank == 0 else \
            torch.empty(num_images, dtype=torch.long, device=device)
        dist.broadcast(c, 0)
        dist.broadcast(y, 0)
        centroids.append(c.cpu().numpy())
        labels.append(y.cpu().numpy())
        if level < len(num_cluster) - 1:
            p = torch.from_numpy(tree.parents[level]).to(device) if rank == 0 else \
                torch.empty(int(k), dtype=torch.long, device=device)
            dist.broadcast(p, 0)
            parents.append(p.cpu().numpy())
    seconds = torch.tensor([tree.seconds if rank == 0 else 0.0], dtype=torch.float64, device=device)
    dist.broadcast(seconds, 0)
    return PrototypeTree(centroids, labels, parents, float(seconds))
