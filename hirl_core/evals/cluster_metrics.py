"""Scores of a clustering against class labels (hirl-method.md §3.6), and the purity of a prototype tree.

- NMI, AMI, ARI: scikit-learn's (NMI and AMI with its default arithmetic normalisation, as the seed).
- ACC: the best one-to-one matching of clusters to classes (Hungarian, scipy's linear_sum_assignment, the
  seed used munkres: the same optimum); with K != C clusters, at most min(K, C) of them are matched and
  the images of the others count as wrong.
- Purity of a clustering: each cluster votes for its majority class; the fraction of images whose
  cluster's majority class is their own class. It never decreases as clusters split (K = N gives 1.0),
  so it compares levels of equal K, or a level against coarser and finer class levels, never alone.

Tree purity — the matching rule: a learned tree has levels of K_1 > K_2 > ... prototypes and the class
hierarchy has levels fine → coarse; rather than pairing levels by guess, every tree level is scored
against every class level (`tree_purity_l{i}` against the fine classes, `tree_purity_l{i}_{level}` against
each coarse level). A tree whose coarse prototypes follow the class hierarchy shows a high purity of its
coarsest level against the coarse classes.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, normalized_mutual_info_score


def _ints(values) -> np.ndarray:
    out = np.asarray(values)
    if out.ndim != 1 or not np.issubdtype(out.dtype, np.integer):
        raise ValueError(f"labels must be a 1-d integer array, got shape {out.shape} dtype {out.dtype}")
    if len(out) and out.min() < 0:
        raise ValueError("labels must be >= 0")
    return out.astype(np.int64)


def contingency(labels, clusters) -> np.ndarray:
    """counts[k, c]: images of class c in cluster k."""
    y, k = _ints(labels), _ints(clusters)
    if len(y) != len(k):
        raise ValueError(f"{len(y)} labels but {len(k)} cluster ids")
    counts = np.zeros((int(k.max()) + 1, int(y.max()) + 1), dtype=np.int64)
    np.add.at(counts, (k, y), 1)
    return counts


def hungarian_accuracy(labels, clusters) -> float:
    """Fraction of images correct under the best one-to-one cluster → class matching."""
    counts = contingency(labels, clusters)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / counts.sum())


def purity(labels, clusters) -> float:
    """Fraction of images whose cluster's majority class is their class."""
    counts = contingency(labels, clusters)
    return float(counts.max(axis=1).sum() / counts.sum())


def clustering_scores(labels, clusters) -> dict:
    """{'nmi', 'ami', 'ari', 'acc'} of predicted cluster ids against true labels."""
    y, k = _ints(labels), _ints(clusters)
    return {"nmi": float(normalized_mutual_info_score(y, k)), "ami": float(adjusted_mutual_info_score(y, k)),
            "ari": float(adjusted_rand_score(y, k)), "acc": hungarian_accuracy(y, k)}


def coarse_labels(labels, hierarchy) -> np.ndarray:
    """Fine labels → coarse labels through one hierarchy level: either a fine → coarse index sequence
    (`hierarchy[fine] = coarse`) or a mapping {coarse: [fine, ...]} (coarse ids in the mapping's order)."""
    y = _ints(labels)
    if isinstance(hierarchy, dict):
        table = np.full(int(y.max()) + 1 if len(y) else 0, -1, dtype=np.int64)
        for c, members in enumerate(hierarchy.values()):
            for fine in members:
                if fine < len(table):
                    table[fine] = c
    else:
        table = np.asarray(hierarchy, dtype=np.int64)
    if len(y) and (y.max() >= len(table) or (table[y] < 0).any()):
        unmapped = sorted(set(y.tolist()) - {i for i in range(len(table)) if table[i] >= 0})
        raise ValueError(f"fine classes {unmapped} have no coarse class")
    return table[y]


def tree_purity(assignments, labels_by_level: dict) -> dict:
    """Purity of every tree level against every class level (the rule in this module's docstring).

    `assignments`: per tree level (fine → coarse), each image's prototype id [N]; `labels_by_level`:
    {'fine': [N], '<coarse level>': [N], ...}. Keys: tree_purity_l{i} (fine), tree_purity_l{i}_{level}."""
    out = {}
    for i, assign in enumerate(assignments, 1):
        for level, y in labels_by_level.items():
            out[f"tree_purity_l{i}" if level == "fine" else f"tree_purity_l{i}_{level}"] = purity(y, assign)
    return out
