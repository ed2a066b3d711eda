"""The `linear` stage: a linear classifier on the frozen pre-trained trunk (hirl-method.md §3.2).

The trunk is frozen and kept in eval mode, so its BatchNorm statistics stay those of the pre-training
(the MoCo protocol). The seed left ResNet trunks in train mode, so their statistics drifted with the
linear training's batches (§6.4); numbers here are therefore not byte-for-byte the seed's recipe.
The training itself (epochs, best-of-epochs top-1, the untrained reference, resume) is
hirl_core/evals/supervised.py.
"""
from __future__ import annotations

from ..data import check_data
from ..data.build import build_eval_dataset
from ..engine.distributed import init_distributed
from .supervised import run_supervised
from .supervised_data import build_train_dataset, num_classes_of
from .wiring import resolve_pretrained


def run_linear(cfg) -> dict:
    return run_classification(cfg, "linear", mode="linear")


def run_classification(cfg, stage: str, *, mode: str) -> dict:
    """A stage classifying ``data``'s val split after training on its train split."""
    info = init_distributed(cfg.get("device", "auto"))
    resolve_pretrained(cfg, stage)
    check_data(cfg.data, splits=("train", "val"))
    train_set = build_train_dataset(cfg.data, cfg.get("augment", {}))
    val_set = build_eval_dataset(cfg.data, "val")
    return run_supervised(cfg, stage, train_set, val_set, num_classes_of(train_set), mode=mode, info=info)
