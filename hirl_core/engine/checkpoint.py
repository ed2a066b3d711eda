"""Checkpoints: the full training state rewritten atomically each epoch, and the seed-format export.

`<out>/checkpoint.pth` holds everything a resumed run needs (model incl. queues/momentum encoders,
optimiser, scaler, epoch, RNG, the MLflow run id). It is written to a temporary file and renamed, so a
kill at any moment leaves either the previous or the new checkpoint, never a torn one.
`<out>/backbone.pth` is `{"model": {"backbone.<name>": tensor}}`, the seed's format.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

CHECKPOINT, BACKBONE = "checkpoint.pth", "backbone.pth"


def atomic_save(obj, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_training_checkpoint(out_dir: str | os.PathLike):
    """The full state saved by a previous attempt, or None. Our own file: a full (non-weights-only) load."""
    path = Path(out_dir) / CHECKPOINT
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def export_backbone(model: torch.nn.Module, path: str | os.PathLike, prefix: str = "backbone.") -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if k.startswith(prefix)}
    atomic_save({"model": state}, path)
