"""Loading backbone weights from any of the checkpoint layouts in circulation.

Seed baselines store `backbone.*`, seed HIRL models `model.backbone.*`, DDP adds `module.`; the seed's
evaluators needed `--backbone_prefix` to be told which. Here the prefix is detected: the candidate
that maps the most keys onto the backbone wins, and too few matches is an error, not a silent
random-init evaluation.
"""
from __future__ import annotations

import os

import torch

from ..config import ConfigError

PREFIXES = ("model.backbone.", "backbone.", "module.encoder_q.", "encoder_q.", "encoder.", "")


class CheckpointError(ConfigError):
    """A checkpoint that cannot be read or does not fit the backbone."""


def read_state_dict(path: str | os.PathLike) -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or foreign file: one line, the reason, no traceback
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {reason}") from None
    for key in ("model", "state_dict", "teacher"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def detect_prefix(state: dict, target_keys) -> tuple[str, int]:
    """The prefix whose stripped keys match the most target keys, and that count."""
    targets = set(target_keys)
    best = ("", -1)
    for prefix in PREFIXES:
        n = sum(1 for k in state if k.startswith(prefix) and k[len(prefix):] in targets)
        if n > best[1]:
            best = (prefix, n)
    return best


def load_backbone(backbone: torch.nn.Module, path: str | os.PathLike, prefix: str = "auto",
                  min_fraction: float = 0.9) -> str:
    """Load weights into `backbone`; returns the prefix used."""
    state = read_state_dict(path)
    own = backbone.state_dict()
    if prefix == "auto":
        prefix, _ = detect_prefix(state, own)
    else:
        prefix = prefix.rstrip(".") + "." if prefix else ""
    picked = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    usable = {k: v for k, v in picked.items() if k in own and own[k].shape == v.shape}
    if len(usable) < min_fraction * len(own):
        raise CheckpointError(f"checkpoint {path} does not fit backbone: {len(usable)} of {len(own)} tensors "
                              f"match (prefix {prefix!r}); check backbone.arch/width or the prefix")
    backbone.load_state_dict(usable, strict=False)
    return prefix
