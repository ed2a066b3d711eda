"""Weighted k-NN classification on frozen features (hirl-method.md §3.1; Wu et al. 2018, DINO's variant).

Features are L2-normalised; each query takes its k most cosine-similar training samples, each votes
for its class with weight exp(sim / T) (T = 0.07); top-1/top-5 are read off the summed votes.

    knn:
      k: [10, 20, 100, 200]
      temperature: 0.07
      batch_size: 256           # feature extraction batch
      query_chunk: 1024         # queries scored at once (bounds the similarity matrix)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..engine.progress import Progress


@torch.no_grad()
def extract_features(backbone, dataset, batch_size: int, device, num_workers: int = 0, desc: str | None = None):
    """(L2-normalised features [N, D] on CPU, labels [N]) in dataset order; with `desc`, its progress."""
    backbone.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    feats, labels = [], []
    for images, _index, target in Progress(len(loader), desc or "", enabled=desc is not None).wrap(loader):
        feats.append(F.normalize(backbone(images.to(device)).float(), dim=1).cpu())
        labels.append(torch.as_tensor(target))
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def weighted_knn(train_feats, train_labels, test_feats, test_labels, ks=(10, 20, 100, 200),
                 temperature: float = 0.07, num_classes: int | None = None, query_chunk: int = 1024) -> dict:
    """{'knn_top1_k{k}': fraction, 'knn_top5_k{k}': fraction} for every k (features already normalised)."""
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    kmax = min(max(ks), len(train_feats))
    correct1 = {k: 0 for k in ks}
    correct5 = {k: 0 for k in ks}
    for start in range(0, len(test_feats), query_chunk):
        q, y = test_feats[start:start + query_chunk], test_labels[start:start + query_chunk]
        sims, idx = (q @ train_feats.T).topk(kmax, dim=1)
        weights = (sims / temperature).exp()
        neighbour_labels = train_labels[idx]
        for k in ks:
            votes = torch.zeros(len(q), num_classes, dtype=weights.dtype)
            votes.scatter_add_(1, neighbour_labels[:, :k], weights[:, :k])
            top = votes.topk(min(5, num_classes), dim=1).indices
            correct1[k] += (top[:, 0] == y).sum().item()
            correct5[k] += (top == y[:, None]).any(dim=1).sum().item()
    n = len(test_feats)
    out = {f"knn_top1_k{k}": correct1[k] / n for k in ks}
    out.update({f"knn_top5_k{k}": correct5[k] / n for k in ks})
    return out
