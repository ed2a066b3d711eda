"""Checkpoints: the full training state rewritten atomically each epoch, and the seed-format export.

`<out>/checkpoint.pth` holds everything a resumed run needs (model incl. queues/momentum encoders,
optimiser, scaler, epoch, config, the MLflow run id). No RNG state: the engine re-seeds every RNG from
(seed, epoch, rank) at the start of each epoch, and checkpoints fall on epoch boundaries, so there is
nothing to restore. A write goes to a temporary file, is fsynced, and renamed over the old one, which
first becomes `<out>/checkpoint.prev.pth`. The rename alone does not protect against a node lost before
the data reached the disk, nor against a disk that filled up: a resume whose `checkpoint.pth` is
unreadable takes the previous one (with a warning) instead of failing on the same file at every retry.
`<out>/backbone.pth` is `{"model": {"backbone.<name>": tensor}}`, the seed's format.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from ..config import ConfigError

CHECKPOINT, PREVIOUS, BACKBONE = "checkpoint.pth", "checkpoint.prev.pth", "backbone.pth"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot sync a directory; the rename is still atomic there
        pass
    finally:
        os.close(fd)


def atomic_save(obj, path: str | os.PathLike, previous: str | os.PathLike | None = None) -> None:
    """Write `obj` to `path` so that a reader sees the old file or the new one, never a torn one.

    With `previous`, the file being replaced is kept there (renamed, not copied)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp*"):  # left by a writer that was SIGKILLed
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:  # a full disk must not also keep a half-written temporary file
        tmp.unlink(missing_ok=True)
        raise
    if previous is not None and path.exists():
        os.replace(path, previous)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _read(path: Path) -> tuple[dict | None, str]:
    """(the training state, "") or (None, why it cannot be used)."""
    if not path.is_file():
        return None, "absent"
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)  # our own file: a full load
    except Exception as exc:  # a torn zip, a truncated pickle, zero bytes after a crash
        text = str(exc).strip()
        return None, (text.splitlines()[0][:160] if text else type(exc).__name__)
    if not isinstance(state, dict) or "epoch" not in state or "model" not in state:
        return None, "not a training checkpoint"
    return state, ""


def load_training_checkpoint(out_dir: str | os.PathLike, warn: Callable[[str], None] | None = None):
    """(state, the file it came from) of the last good checkpoint of a previous attempt, or (None, None).

    An unreadable `checkpoint.pth` falls back to `checkpoint.prev.pth` (one `warn` line); when neither
    is usable, a one-line ConfigError says which file to delete."""
    out = Path(out_dir)
    current, previous = out / CHECKPOINT, out / PREVIOUS
    state, why = _read(current)
    if state is not None:
        return state, current
    if why == "absent" and not previous.exists():
        return None, None
    older, why_older = _read(previous)
    if older is not None:
        if warn is not None:
            warn(f"{current} is unusable ({why}); resuming from {previous.name} "
                 f"(epoch {older['epoch']}) instead")
        return older, previous
    if why_older == "absent":
        raise ConfigError(f"cannot resume: {current} is unusable ({why}) and there is no {previous.name} to "
                          f"fall back to; delete {current} to start this stage from epoch 1")
    raise ConfigError(f"cannot resume: {current} is unusable ({why}) and so is {previous} ({why_older}); "
                      f"delete both to start this stage from epoch 1")


def export_backbone(model: torch.nn.Module, path: str | os.PathLike, prefix: str = "backbone.") -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if k.startswith(prefix)}
    atomic_save({"model": state}, path)
