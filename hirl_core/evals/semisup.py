"""The `semisup` stage: the whole network fine-tuned on a fixed labelled subset (hirl-method.md §3.4).

    semisup:
      list: null        # imagenet_1percent | imagenet_10percent | <path>: the seed's fixed lists (imagefolder data)
      fraction: 0.01    # otherwise: a class-balanced fraction of data's train split ...
      per_class: null   # ... or this many images per class (one of the two)
      seed: 0           # which images a drawn subset takes

The labelled images are written to ``<output_dir>/labelled_subset.txt`` (index, label, file), so what a
run trained on can be checked and reused. Evaluation is on the whole val split. ``semisup_top1`` is
the stage's number whatever the fraction (the report titles its column by the fraction); the fraction
and the image count are logged as params (``semisup_fraction``, ``semisup_images``).

Training is ``run_supervised`` in ``finetune`` mode (hirl_core/evals/supervised.py): the recipe, the
best-of-epochs top-1, the untrained reference (``semisup_top1_untrained``) and resume are its.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..config import ConfigError
from ..data import check_data
from ..data.build import build_eval_dataset
from ..data.datasets import FileListWithIndex, ImageFolderWithIndex, InMemoryEval
from ..data.subsets import SHIPPED_LISTS, SUBSET_FILE, balanced_subset, write_subset
from ..engine.distributed import init_distributed
from .supervised import run_supervised
from .supervised_data import build_train_dataset, num_classes_of
from .wiring import resolve_pretrained

# the seed's lists hold 1 % and 10 % of ImageNet's 1,281,167 training images
LIST_FRACTIONS = {"imagenet_1percent": 0.01, "imagenet_10percent": 0.1}
assert set(LIST_FRACTIONS) == set(SHIPPED_LISTS)


def subset_request(cfg) -> dict:
    """The validated ``semisup`` section: exactly one of list, fraction, per_class."""
    semi = cfg.get("semisup")
    if not isinstance(semi, dict):
        raise ConfigError("semisup needs a `semisup` section (list, or fraction / per_class and seed)")
    chosen = [key for key in ("list", "fraction", "per_class") if semi.get(key) is not None]
    if len(chosen) != 1:
        raise ConfigError("semisup: set exactly one of semisup.list, semisup.fraction, semisup.per_class"
                          + (f" (got {', '.join(chosen)})" if chosen else ""))
    if semi.get("list") is not None and cfg.data.get("dataset") != "imagefolder":
        raise ConfigError(f"semisup.list={semi.list!r} names ImageNet train files: it needs data.dataset: "
                          f"imagefolder (an ImageNet tree), not {cfg.data.get('dataset')!r}; use semisup.fraction")
    return {"list": semi.get("list"), "fraction": semi.get("fraction"), "per_class": semi.get("per_class"),
            "seed": int(semi.get("seed", 0))}


def restrict(dataset, indices):
    """The same kind of dataset (same transform) holding only ``indices``, in their order."""
    if isinstance(dataset, InMemoryEval):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return InMemoryEval(dataset.images[idx], dataset.targets[idx], dataset.transform)
    if isinstance(dataset, ImageFolderWithIndex):
        samples = [dataset.folder.samples[int(i)] for i in indices]
        channels = 1 if getattr(dataset.folder, "mode", "RGB") == "L" else 3
        return FileListWithIndex(samples, dataset.folder.classes, dataset.transform, channels=channels)
    raise ConfigError(f"semisup cannot take a labelled subset of a {type(dataset).__name__} dataset")


def _names(dataset, root: str):
    """Each image's file relative to the data root (for the subset file), or None for in-memory data."""
    if not isinstance(dataset, ImageFolderWithIndex):
        return None
    return [os.path.relpath(path, root) if root else path for path, _ in dataset.folder.samples]


def run_semisup(cfg) -> dict:
    info = init_distributed(cfg.get("device", "auto"))
    resolve_pretrained(cfg, "semisup")
    request = subset_request(cfg)
    data = cfg.data.copy()
    if request["list"] is not None:
        data["train_list"] = request["list"]  # the data builder reads only the listed files
    check_data(data, splits=("train", "val"))
    train_set = build_train_dataset(data, cfg.get("augment", {}))
    num_classes = num_classes_of(train_set)  # of the whole train split (a list's labels: the tree's synsets)
    root = str(data.get("root") or "")
    if request["list"] is not None:
        labelled, fraction = train_set, LIST_FRACTIONS.get(request["list"])
        header = f"semisup.list={request['list']}: {len(labelled)} images"
        indices = range(len(labelled))
    else:
        indices = balanced_subset(train_set.targets.numpy(), fraction=request["fraction"],
                                  per_class=request["per_class"], seed=request["seed"])
        labelled, fraction = restrict(train_set, indices), len(indices) / len(train_set)
        how = (f"fraction={request['fraction']}" if request["fraction"] is not None
               else f"per_class={request['per_class']}")
        header = (f"semisup {how} seed={request['seed']}: {len(indices)} of {len(train_set)} train images "
                  f"(index = position in data's train split)")
    if info.is_main:
        write_subset(Path(cfg.output_dir) / SUBSET_FILE, indices, train_set.targets.numpy(),
                     _names(train_set, root), header=header)
    val_set = build_eval_dataset(data, "val")
    params = {"semisup_images": len(labelled), "semisup_subset": header.split(":")[0].removeprefix("semisup ")}
    if fraction is not None:
        params["semisup_fraction"] = round(fraction, 6)
    metrics = run_supervised(cfg, "semisup", labelled, val_set, num_classes, mode="finetune", info=info,
                             params=params)
    return {**metrics, **({"semisup_fraction": params["semisup_fraction"]} if fraction is not None else {})}
