"""The stage registry: every stage type ``python -m hirl_core`` runs, in one torch-free place.

Each type says which function runs it (imported only when the stage starts, so ``jobs`` can read this
file without torch), which metric is *the* number of a finished stage (``hirl status``, the chain run's
key metrics, ``hirl report``'s column), which data splits it reads (the orchestrator checks them
before submitting), and whether it trains (and so checkpoints and resumes through
``hirl_core.engine.lifecycle``).

Adding a stage type is one entry here plus its runner; nothing in ``jobs`` lists types by hand.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from .config import ConfigError, closest


@dataclass(frozen=True)
class StageType:
    name: str
    runner: str                 # "module:function", relative to hirl_core
    key_metric: str             # the stage's headline number
    column: str                 # its column in the seed-style results table ("" = not a column)
    splits: tuple = ("train",)  # the data splits it reads
    trained: bool = False       # runs epochs: checkpoints, resumes into the same run
    untrained_metric: str = ""  # the same number for the untrained backbone, when the stage measures it
    column_order: int = 99      # place in the table (the seed's order: KNN, Linear, Fine-tune, ...)

    def load_runner(self):
        module, function = self.runner.split(":")
        return getattr(importlib.import_module(module, __package__), function)


def _types(*types: StageType) -> dict:
    return {t.name: t for t in types}


STAGE_TYPES = _types(
    StageType("pretrain", ".engine.pretrain:run_pretrain", "loss", "", trained=True),
    StageType("knn", ".evals.knn_stage:run_knn", "knn_top1_k20", "KNN", ("train", "val"),
              untrained_metric="knn_top1_k20_untrained", column_order=1),
    StageType("linear", ".evals.linear:run_linear", "linear_top1", "Linear", ("train", "val"), trained=True,
              untrained_metric="linear_top1_untrained", column_order=2),
    StageType("finetune", ".evals.finetune:run_finetune", "finetune_top1", "Fine-tune", ("train", "val"),
              trained=True, untrained_metric="finetune_top1_untrained", column_order=3),
    StageType("semisup", ".evals.semisup:run_semisup", "semisup_top1", "Semi", ("train", "val"), trained=True,
              untrained_metric="semisup_top1_untrained", column_order=4),
    StageType("clustering", ".evals.clustering_stage:run_clustering", "nmi", "NMI", ("val",),
              untrained_metric="nmi_untrained", column_order=6),
    StageType("transfer", ".evals.transfer:run_transfer", "transfer_top1", "Transfer", ("train", "val"),
              trained=True, untrained_metric="transfer_top1_untrained", column_order=7),
)
EVAL_TYPES = tuple(name for name in STAGE_TYPES if name != "pretrain")


def runnable() -> tuple:
    """The types whose runner module is present (found on disk, not imported: no torch here)."""
    return tuple(name for name, kind in STAGE_TYPES.items()
                 if importlib.util.find_spec(kind.runner.split(":")[0], __package__) is not None)


def stage_type(name: str) -> StageType:
    """The registered type ``name``, or a one-line ConfigError listing the allowed ones."""
    try:
        return STAGE_TYPES[name]
    except KeyError:
        raise ConfigError(f"unknown stage type {name!r}{closest(str(name), STAGE_TYPES)}; "
                          f"allowed: {', '.join(STAGE_TYPES)}") from None


def key_metric(name: str, metrics: dict) -> tuple[str, float | None]:
    """(metric name, value) of a stage's headline number among ``metrics``; ("", None) when absent.

    A semi-supervised stage logs ``semisup_top1`` whatever its fraction; an unknown type has none."""
    kind = STAGE_TYPES.get(name)
    if kind is None or kind.key_metric not in metrics:
        return "", None
    return kind.key_metric, metrics[kind.key_metric]
