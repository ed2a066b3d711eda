"""Clustering scores against independent NumPy versions (entropy formulas, brute-force matching), the
fine → coarse mapping, the class hierarchy config, and tree purity on a hand-made tree."""
import itertools
import math

import numpy as np
import pytest

from hirl_core.config import ConfigError
from hirl_core.data.hierarchy import FASHION_MNIST_HIERARCHY, hierarchy_of, resolve_hierarchy
from hirl_core.data.fashion_mnist import CLASSES
from hirl_core.evals.cluster_metrics import (clustering_scores, coarse_labels, hungarian_accuracy, purity,
                                             tree_purity)


def _counts(y, k):
    table = np.zeros((k.max() + 1, y.max() + 1))
    for a, b in zip(k, y):
        table[a, b] += 1
    return table


def _entropy(p):
    p = p[p > 0]
    return -(p * np.log(p)).sum()


def _mi(table):
    n = table.sum()
    pij, pi, pj = table / n, table.sum(1) / n, table.sum(0) / n
    nz = pij > 0
    return (pij[nz] * np.log(pij[nz] / np.outer(pi, pj)[nz])).sum()


def _expected_mi(table):
    """E[MI] under the permutation model (Vinh et al. 2010), term by term with log-factorials."""
    n = int(table.sum())
    a, b = table.sum(1).astype(int), table.sum(0).astype(int)
    lf = lambda x: math.lgamma(x + 1)  # noqa: E731
    total = 0.0
    for ai in a:
        for bj in b:
            for nij in range(max(1, ai + bj - n), min(ai, bj) + 1):
                log_p = (lf(ai) + lf(bj) + lf(n - ai) + lf(n - bj) - lf(n) - lf(nij) - lf(ai - nij)
                         - lf(bj - nij) - lf(n - ai - bj + nij))
                total += nij / n * math.log(n * nij / (ai * bj)) * math.exp(log_p)
    return total


def _ari(table):
    comb = lambda x: x * (x - 1) / 2  # noqa: E731
    n = table.sum()
    index, rows, cols = comb(table).sum(), comb(table.sum(1)).sum(), comb(table.sum(0)).sum()
    expected = rows * cols / comb(n)
    return (index - expected) / ((rows + cols) / 2 - expected)


def _brute_force_acc(y, k):
    classes, clusters = int(y.max()) + 1, int(k.max()) + 1
    best = 0
    for perm in itertools.permutations(range(max(classes, clusters)), clusters):
        best = max(best, sum(perm[c] == t for c, t in zip(k, y)))
    return best / len(y)


PAIRS = [
    (np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2]), np.array([1, 1, 0, 0, 0, 2, 2, 2, 2, 1])),
    (np.random.default_rng(0).integers(0, 4, 60), np.random.default_rng(1).integers(0, 4, 60)),  # near chance
    (np.random.default_rng(2).integers(0, 3, 40), np.random.default_rng(3).integers(0, 5, 40)),  # K != C
]


@pytest.mark.parametrize("y,k", PAIRS)
def test_scores_equal_independent_formulas(y, k):
    table = _counts(y, k)
    h_y, h_k = _entropy(table.sum(0) / table.sum()), _entropy(table.sum(1) / table.sum())
    mi, emi = _mi(table), _expected_mi(table)
    got = clustering_scores(y, k)
    assert got["nmi"] == pytest.approx(mi / ((h_y + h_k) / 2))
    assert got["ami"] == pytest.approx((mi - emi) / ((h_y + h_k) / 2 - emi))
    assert got["ari"] == pytest.approx(_ari(table))
    assert got["acc"] == pytest.approx(_brute_force_acc(y, k))


def test_accuracy_is_one_for_a_permuted_labelling_and_not_for_a_merge():
    y = np.repeat(np.arange(5), 7)
    perm = np.array([3, 0, 4, 1, 2])
    assert hungarian_accuracy(y, perm[y]) == 1.0
    scores = clustering_scores(y, perm[y])
    assert scores["nmi"] == pytest.approx(1.0) and scores["ari"] == pytest.approx(1.0)
    merged = np.where(y == 4, 0, y)                 # classes 0 and 4 share one cluster
    assert hungarian_accuracy(y, merged) == pytest.approx(4 / 5)
    assert purity(y, merged) == pytest.approx(4 / 5)


def test_coarse_labels_from_a_sequence_and_from_a_mapping():
    y = np.array([0, 1, 2, 3, 4, 4, 0])
    assert coarse_labels(y, [1, 0, 1, 2, 0]).tolist() == [1, 0, 1, 2, 0, 0, 1]
    assert coarse_labels(y, {"a": [1, 4], "b": [0, 2], "c": [3]}).tolist() == [1, 0, 1, 2, 0, 0, 1]
    with pytest.raises(ValueError, match=r"fine classes \[3\] have no coarse class"):
        coarse_labels(y, {"a": [0, 1, 2, 4]})


def test_fashion_mnist_hierarchy_resolves_to_the_five_coarse_classes():
    (table, names), = resolve_hierarchy(hierarchy_of({"dataset": "fashion_mnist"}), CLASSES, 10).values()
    assert names == ["tops", "footwear", "trouser", "dress", "bag"]
    # 0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal, 6 Shirt, 7 Sneaker, 8 Bag, 9 Ankle boot
    assert table == [0, 2, 0, 3, 0, 1, 0, 1, 4, 1]
    assert hierarchy_of({"dataset": "fashion_mnist", "hierarchy": {}}) == {}
    assert hierarchy_of({"dataset": "imagefolder"}) == {}
    assert set(FASHION_MNIST_HIERARCHY) == {"coarse"}


@pytest.mark.parametrize("hierarchy,message", [
    ({"coarse": {"a": [0, 1], "b": [1, 2]}}, "fine class 1 is under two coarse classes"),
    ({"coarse": {"a": [0, 1]}}, r"fine classes \[2\] are under no coarse class"),
    ({"coarse": {"a": [0, 1, "Tiger"]}}, "unknown fine class 'Tiger'"),
    ({"coarse": {"a": [0, 1, 7]}}, "class index 7 is out of range"),
    ({"untrained": {"a": [0, 1, 2]}}, "level name 'untrained' is not allowed"),
    ({"coarse": ["a"]}, "has the wrong type"),
])
def test_bad_hierarchies_are_one_line_errors(hierarchy, message):
    with pytest.raises(ConfigError, match=message):
        resolve_hierarchy(hierarchy, None, 3)


def test_tree_purity_on_a_hand_made_tree():
    # 8 images, fine classes 0..3, coarse {0,1} -> 0, {2,3} -> 1; leaves (4 prototypes) -> 2 parents
    fine = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    coarse = coarse_labels(fine, [0, 0, 1, 1])
    leaves = np.array([0, 0, 1, 2, 2, 2, 3, 3])      # leaf 1 = {class 1}, leaf 2 = {1, 2, 2}: one off
    parents = np.array([0, 0, 1, 1])                   # leaves 0,1 -> root 0; leaves 2,3 -> root 1
    top = parents[leaves]
    got = tree_purity([leaves, top], {"fine": fine, "coarse": coarse})
    assert got == {"tree_purity_l1": pytest.approx(7 / 8), "tree_purity_l1_coarse": pytest.approx(7 / 8),
                   "tree_purity_l2": pytest.approx(4 / 8), "tree_purity_l2_coarse": pytest.approx(7 / 8)}
