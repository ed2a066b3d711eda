"""Labelled subsets for semi-supervised evaluation (hirl-method.md §3.4).

Two ways to fix which images keep their labels:

* the seed's ImageNet lists (``imagenet_1percent`` = 12,811 images, ``imagenet_10percent`` = 128,116;
  shipped in ``hirl_core/data/lists/``, the SimCLR splits): train filenames such as
  ``n04235860_14959.JPEG``, mapped onto the user's ImageFolder tree as
  ``<root>/train/n04235860/n04235860_14959.JPEG`` with the label = the synset's index in the folder's
  sorted order (what ImageFolder gives the full training set, so the label spaces agree);
* any other labelled dataset: a class-balanced subset drawn from ``(fraction or per-class count, seed)``.
  The same seed gives the same indices; every class gets the same count (±1 where the total does not
  divide). The drawn subset is written as a list file so a run can be audited and reused.

Torch-free (numpy only), so the orchestrator and tests can read lists without building datasets.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np

from ..config import ConfigError

SHIPPED_LISTS = {"imagenet_1percent": "imagenet_1percent.txt", "imagenet_10percent": "imagenet_10percent.txt"}
SUBSET_FILE = "labelled_subset.txt"   # written to the stage's output dir


# -- the seed's fixed ImageNet lists ---------------------------------------------------------------------

def list_path(name_or_path: str) -> Path:
    """The file of a shipped list (``imagenet_1percent``, ``imagenet_10percent``) or a user's list path."""
    if name_or_path in SHIPPED_LISTS:
        return Path(str(resources.files("hirl_core.data") / "lists" / SHIPPED_LISTS[name_or_path]))
    path = Path(os.path.expanduser(str(name_or_path)))
    if not path.is_file():
        raise ConfigError(f"semisup.list={name_or_path!r} is neither a shipped list "
                          f"({', '.join(SHIPPED_LISTS)}) nor an existing file")
    return path


def read_list(path: str | os.PathLike) -> list[str]:
    """The filenames of a list file: one per line, blank lines and ``#`` comments skipped."""
    lines = Path(path).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def synset_of(filename: str) -> str:
    """``n04235860_14959.JPEG`` -> ``n04235860`` (the seed takes the label from this prefix)."""
    return filename.split("_", 1)[0]


def imagenet_list_samples(names, train_root: str | os.PathLike) -> tuple[list[tuple[str, int]], list[str]]:
    """([(path, label)], classes) of the listed filenames inside an ImageNet ``train`` ImageFolder tree.

    ``classes`` are the tree's synset folders in sorted order (ImageFolder's), so label i means the same
    class as in the full training set and in ``val``. Any listed file that is not there is an error that
    says how many are missing and names the first, before anything trains."""
    train_root = Path(train_root)
    if not train_root.is_dir():
        raise ConfigError(f"ImageNet train folder {str(train_root)!r} does not exist")
    classes = sorted(entry.name for entry in os.scandir(train_root) if entry.is_dir())
    index = {synset: i for i, synset in enumerate(classes)}
    samples, missing = [], []
    for name in names:
        synset = synset_of(name)
        path = train_root / synset / name
        if synset not in index or not path.is_file():
            missing.append(path)
        else:
            samples.append((str(path), index[synset]))
    if missing:
        raise ConfigError(f"{len(missing)} of {len(names)} listed images are missing under {str(train_root)!r} "
                          f"(first: {str(missing[0])!r})")
    return samples, classes


# -- class-balanced subsets of any labelled dataset ------------------------------------------------------

def per_class_counts(class_sizes, total: int, seed: int) -> np.ndarray:
    """How many images each class gives to a ``total``-image subset: total // C each, and one more for
    ``total % C`` classes picked by the seed. A class smaller than its share gives all it has."""
    sizes = np.asarray(class_sizes, dtype=np.int64)
    counts = np.full(len(sizes), total // len(sizes), dtype=np.int64)
    extra = np.random.default_rng([seed, 1]).permutation(len(sizes))[: total % len(sizes)]
    counts[extra] += 1
    return np.minimum(counts, sizes)


def balanced_subset(targets, *, fraction: float | None = None, per_class: int | None = None,
                    seed: int = 0) -> np.ndarray:
    """Sorted indices of a class-balanced subset of a dataset with labels ``targets``.

    Exactly one of ``fraction`` (of the whole dataset, in (0, 1]) or ``per_class`` (images per class).
    Deterministic in ``seed``: each class's images are shuffled by its own stream, so the pick of one
    class does not depend on the others'."""
    if (fraction is None) == (per_class is None):
        raise ConfigError("a labelled subset needs exactly one of fraction or per_class")
    targets = np.asarray(targets)
    if targets.size == 0:
        raise ConfigError("cannot draw a labelled subset of an empty dataset")
    classes = np.unique(targets)
    members = [np.flatnonzero(targets == c) for c in classes]
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ConfigError(f"semisup.fraction={fraction!r} is out of range: must be a number in (0, 1]")
        total = max(len(classes), int(round(fraction * len(targets))))  # at least one image per class
        counts = per_class_counts([len(m) for m in members], total, seed)
    else:
        if per_class < 1:
            raise ConfigError(f"semisup.per_class={per_class!r} is out of range: must be an integer >= 1")
        counts = np.minimum(per_class, [len(m) for m in members])
    picked = [np.random.default_rng([seed, int(c)]).permutation(m)[:k]
              for c, m, k in zip(classes, members, counts)]
    return np.sort(np.concatenate(picked))


def write_subset(path: str | os.PathLike, indices, targets, names=None, header: str = "") -> Path:
    """Write ``<index> <label> [<name>]`` per subset image (``# header`` first), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {line}" for line in header.splitlines()] + ["# index label" + (" name" if names is not None else "")]
    targets = np.asarray(targets)
    for i in np.asarray(indices, dtype=np.int64):
        lines.append(f"{i} {int(targets[i])}" + (f" {names[i]}" if names is not None else ""))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def read_subset(path: str | os.PathLike) -> np.ndarray:
    """The indices of a file ``write_subset`` wrote (to reuse a subset exactly)."""
    rows = [line.split() for line in read_list(path)]
    try:
        return np.asarray([int(row[0]) for row in rows], dtype=np.int64)
    except (ValueError, IndexError):
        raise ConfigError(f"{path}: not a subset list (expected '<index> <label>' lines)") from None
