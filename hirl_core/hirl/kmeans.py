"""Hierarchical k-means: the prototype tree of HIRL (hirl-method.md §1.3).

Levels are listed fine → coarse. Level 1 clusters the N L2-normalised image features; level l+1 clusters
the K_l L2-normalised centroids of level l (unweighted), each level-l centroid takes the nearest level-(l+1)
centroid as its parent (`parents[l]`), and an image's level-(l+1) label is `parents[l][labels[l]]` — so the
result is a tree by construction. All centroids are L2-normalised at the end: those are the prototypes.

faiss does the work, on a GPU index when faiss sees a GPU and on the CPU otherwise: one code path.
The seed also computed a per-cluster density and a prototype logit matrix that no loss used; they are
not computed here (and the config key `T` that only fed them has no effect — see configs).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass
class PrototypeTree:
    centroids: list[np.ndarray]   # per level, [K_l, D] float32, unit norm
    labels: list[np.ndarray]      # per level, [N] int64 image → cluster id
    parents: list[np.ndarray]     # per level l < L, [K_l] int64 cluster → parent id at level l+1
    seconds: float = 0.0

    @property
    def num_levels(self) -> int:
        return len(self.centroids)

    def stats(self) -> dict:
        """Cluster sizes per level (min/median/max, empty clusters), for tracking."""
        out = {"clustering_time_s": self.seconds}
        for level, (c, y) in enumerate(zip(self.centroids, self.labels), 1):
            sizes = np.bincount(y, minlength=len(c))
            out.update({f"cluster_size_min_l{level}": float(sizes.min()),
                        f"cluster_size_median_l{level}": float(np.median(sizes)),
                        f"cluster_size_max_l{level}": float(sizes.max()),
                        f"clusters_empty_l{level}": float((sizes == 0).sum())})
        return out


def _normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _index(dim: int, use_gpu: bool):
    import faiss

    if use_gpu and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        cfg = faiss.GpuIndexFlatConfig()
        cfg.useFloat16 = False
        return faiss.GpuIndexFlatL2(faiss.StandardGpuResources(), dim, cfg)
    return faiss.IndexFlatL2(dim)


def kmeans(x: np.ndarray, k: int, niter: int = 20, nredo: int = 5, seed: int = 0,
           max_points_per_centroid: int = 1000, min_points_per_centroid: int = 10,
           use_gpu: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(centroids [k, D], nearest-centroid id of each row [N]) — plain Euclidean k-means, best of nredo."""
    import faiss

    if k > len(x):
        raise ValueError(f"cannot make {k} clusters from {len(x)} points")
    x = np.ascontiguousarray(x, dtype=np.float32)
    clus = faiss.Clustering(x.shape[1], k)
    clus.niter, clus.nredo, clus.seed = niter, nredo, seed
    clus.max_points_per_centroid, clus.min_points_per_centroid = max_points_per_centroid, min_points_per_centroid
    clus.verbose = False
    index = _index(x.shape[1], use_gpu)
    clus.train(x, index)
    centroids = faiss.vector_float_to_array(clus.centroids).reshape(k, x.shape[1])
    _, assign = index.search(x, 1)
    return centroids, assign[:, 0].astype(np.int64)


def hierarchical_kmeans(features: np.ndarray, num_cluster, niter: int = 20, nredo: int = 5,
                        max_points_per_centroid: int = 1000, min_points_per_centroid: int = 10,
                        use_gpu: bool = True, seed_offset: int = 0) -> PrototypeTree:
    """The tree over L2-normalised `features` [N, D]; level l uses seed = l (+ seed_offset), as the seed."""
    t0 = time.perf_counter()
    points = _normalize(features)
    centroids, labels, parents = [], [], []
    for level, k in enumerate(num_cluster):
        c, assign = kmeans(points, int(k), niter, nredo, level + seed_offset,
                           max_points_per_centroid, min_points_per_centroid, use_gpu)
        centroids.append(c)
        if level == 0:
            labels.append(assign)
        else:
            parents.append(assign)               # each lower-level centroid → its parent here
            labels.append(assign[labels[-1]])    # an image's label by composition
        points = _normalize(c)
    return PrototypeTree([_normalize(c) for c in centroids], labels, parents, time.perf_counter() - t0)
