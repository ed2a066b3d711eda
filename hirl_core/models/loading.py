"""Loading backbone weights from any of the checkpoint layouts in circulation, detected from the file.

A checkpoint holds one or more *containers* of tensors: the top level itself (torchvision and timm state
dicts), or entries of it — `model` (the seed's and our backbone.pth, our checkpoint.pth training state),
`state_dict` (MoCo v2/v3 releases), `teacher` / `student` (DINO, iBOT). Inside a container the backbone
sits under a *prefix*: `backbone.` (seed baselines), `model.backbone.` (HIRL runs), `encoder_q.` (MoCo v2),
`base_encoder.` (MoCo v3), nothing (torchvision, timm); DDP adds `module.` in front, which is stripped.

The project's ResNets and ViTs are torchvision's and timm's own classes, so their parameter names are
exactly those libraries' names and no renaming is needed (tests/hirl_core/test_loading_formats.py checks
this); the classifier (`fc.*`, `head.*`) is simply not part of the backbone and is dropped.

Every (container, prefix) pair is scored by how many backbone tensors it names; the most wins, and a tie
goes to the conventional place (the `model` container before `teacher` before the others; `backbone.`
before a momentum copy such as `backbone_k.` or `momentum_encoder.`, and the teacher before the student).
A ViT position embedding stored for another patch grid is resized to the model's (vit.interpolate_pos_embed).
Anything else that does not fit — too few tensors, other shapes, missing tensors — is one line naming the
layouts the file holds, never a silently half-random backbone.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass

import torch

from ..config import ConfigError
from .vit import interpolate_pos_embed

CONTAINERS = ("model", "state_dict", "teacher", "", "student", "model_ema")  # "": the file's top level
PREFIXES = ("model.backbone.", "backbone.", "encoder_q.", "base_encoder.", "encoder.", "")
COPIES = ("_k.", "encoder_k.", "momentum", "target", "ema.", "student.")  # lose a tie against the original
CLASSIFIERS = ("fc", "head")  # the seed drops these when their shapes differ; a backbone has none
OPTIONAL = ("mask_token", "num_batches_tracked")  # absent from most files; the initial value is right
# first names of ResNet / ViT modules: a key's prefix is what comes before one of them
ROOTS = {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc", "cls_token", "pos_embed",
         "patch_embed", "blocks", "norm", "head", "fc_norm", "mask_token", "reg_token"}


class CheckpointError(ConfigError):
    """A checkpoint that cannot be read or does not fit the backbone."""


@dataclass
class BackboneMatch:
    container: str  # "" for the file's top level
    prefix: str     # within the container, after `module.` is stripped
    tensors: dict   # backbone name -> tensor


def read_checkpoint(path: str | os.PathLike):
    """The object in the file (tensors and plain containers only: nothing in it is executed)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or foreign file: one line, the reason, no traceback
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {reason}") from None


def tensor_containers(obj, strip: str = "module.") -> dict[str, dict]:
    """container name -> {key: tensor} with a leading `strip` removed, for each container holding tensors."""
    found = {}
    if isinstance(obj, dict):
        candidates = [("", obj)] + [(str(k), v) for k, v in obj.items() if isinstance(v, dict)]
        for name, value in candidates:
            tensors = {str(k).removeprefix(strip): v for k, v in value.items() if torch.is_tensor(v)}
            if tensors:
                found[name] = tensors
    return found


def read_state_dict(path: str | os.PathLike) -> dict:
    """The tensors of the file's conventional container (`model`, `state_dict`, `teacher`, the top level)."""
    found = tensor_containers(read_checkpoint(path))
    for name in CONTAINERS:
        if name in found:
            return found[name]
    raise CheckpointError(f"checkpoint {path} holds no state dict of tensors")


def placement_rank(name: str, preferred: tuple) -> int:
    """Where a container or prefix stands in a tie: its place in `preferred`, then the unknown ones,
    then the copies (momentum encoders, students)."""
    if name in preferred:
        return preferred.index(name)
    return len(preferred) + any(mark in name for mark in COPIES)


def _prefix_counts(state: dict, targets: set) -> Counter:
    """prefix -> how many keys are `prefix + <a target key>`."""
    counts = Counter()
    for key in state:
        parts = key.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in targets:
                counts[".".join(parts[:i]) + "." if i else ""] += 1
    return counts


def detect_prefix(state: dict, target_keys) -> tuple[str, int]:
    """The prefix whose stripped keys match the most target keys, and that count."""
    counts = _prefix_counts(state, set(target_keys))
    if not counts:
        return "", 0
    return min(counts.items(), key=lambda kv: (-kv[1], placement_rank(kv[0], PREFIXES)))


def find_backbone(obj, own: dict, prefix: str = "auto",
                  where: str = "checkpoint") -> tuple[BackboneMatch | None, list]:
    """The best (container, prefix) for the backbone whose state dict is `own`, and every candidate
    as (count, container, prefix), best first."""
    targets = set(own)
    scored = []
    for name, state in tensor_containers(obj).items():
        counts = _prefix_counts(state, targets)
        if prefix != "auto":
            counts = Counter({prefix: counts.get(prefix, 0)})
        for p, n in counts.items():
            scored.append(((-n, placement_rank(name, CONTAINERS), placement_rank(p, PREFIXES)), n, name, p))
    scored.sort(key=lambda s: (s[0], s[2], s[3]))
    candidates = [(n, name, p) for _, n, name, p in scored]
    if not scored or scored[0][1] == 0:
        return None, candidates
    if len(scored) > 1 and scored[1][0] == scored[0][0]:
        (_, n, c1, p1), (_, _, c2, p2) = scored[0], scored[1]
        raise CheckpointError(f"{where} is ambiguous: prefix {p1!r} in {c1 or 'the top level'!r} and {p2!r} in "
                              f"{c2 or 'the top level'!r} both name {n} backbone tensors; set backbone_prefix")
    _, _, name, p = scored[0]
    state = tensor_containers(obj)[name]
    return BackboneMatch(name, p, {k[len(p):]: v for k, v in state.items() if k.startswith(p)}), candidates


def describe_layouts(obj) -> str:
    """'top-level keys: ...; key prefixes: ...' — what a person needs to pick the prefix or the arch."""
    top = list(obj)[:8] if isinstance(obj, dict) else []
    text = "top-level keys: " + (", ".join(map(str, top)) + (", ..." if len(obj) > 8 else "") if top else
                                 f"none (a {type(obj).__name__})")
    groups = Counter()
    for name, state in tensor_containers(obj, strip="").items():  # the keys as stored, `module.` included
        for key in state:
            parts = key.split(".")
            cut = next((i for i, part in enumerate(parts) if part in ROOTS), min(1, len(parts) - 1))
            groups[(name, ".".join(parts[:cut]) + "." if cut else "")] += 1
    shown = [f"{c + ':' if c else ''}{p or '(none)'} ({n} tensors)" for (c, p), n in groups.most_common(6)]
    return text + "; key prefixes: " + (", ".join(shown) if shown else "none")


def _shape(t) -> str:
    return "[" + ", ".join(map(str, t.shape)) + "]"


def _fit(match: BackboneMatch, own: dict, backbone, where: str) -> dict:
    """The tensors to load: the position embedding resized to the model's grid, classifiers dropped,
    any other shape difference an error."""
    usable, differ, extra = {}, [], []
    for key, value in match.tensors.items():
        if key not in own:  # a part of a ResNet/ViT this one lacks (a deeper net), not a head: reported
            if key.split(".")[0] in ROOTS - set(CLASSIFIERS) and key.rsplit(".", 1)[-1] not in OPTIONAL:
                extra.append(key)
            continue
        if key == "pos_embed" and value.shape != own[key].shape and value.ndim == 3 \
                and value.shape[-1] == own[key].shape[-1] and hasattr(backbone, "patch_embed"):
            try:
                value = interpolate_pos_embed(value, tuple(backbone.patch_embed.grid_size))
            except ValueError:
                pass  # not a square grid: reported as a shape difference below
        if value.shape == own[key].shape:
            usable[key] = value
        elif key.split(".")[0] not in CLASSIFIERS:
            differ.append(f"{key} {_shape(value)} vs {_shape(own[key])}")
    if differ:
        raise CheckpointError(f"{where}: {len(differ)} backbone tensors differ in shape (checkpoint vs backbone): "
                              f"{'; '.join(differ[:3])}{'; ...' if len(differ) > 3 else ''}; check backbone "
                              f"arch/width/patch_size/in_chans against the checkpoint's")
    if extra:
        raise CheckpointError(f"{where} holds {len(extra)} backbone tensors this backbone lacks: "
                              f"{', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''}; check backbone "
                              f"arch/depth against the checkpoint's")
    return usable


def load_backbone(backbone: torch.nn.Module, path: str | os.PathLike, prefix: str = "auto",
                  min_fraction: float = 0.9) -> str:
    """Load weights into `backbone`; returns the prefix used (within its container)."""
    obj = read_checkpoint(path)
    return load_match(backbone, obj, prefix, min_fraction, where=f"checkpoint {path}").prefix


def load_match(backbone: torch.nn.Module, obj, prefix: str = "auto", min_fraction: float = 0.9,
               where: str = "checkpoint") -> BackboneMatch:
    """Load the backbone that `obj` (a loaded checkpoint) holds into `backbone`; the match it used."""
    if prefix != "auto":  # `backbone`, `backbone.`, `module.backbone` all name the same keys
        bare = prefix.strip(".")
        bare = "" if bare == "module" else bare.removeprefix("module.")
        prefix = bare + "." if bare else ""
    own = backbone.state_dict()
    required = [k for k in own if k.rsplit(".", 1)[-1] not in OPTIONAL]
    what = f"{type(backbone).__name__} ({len(own)} tensors, e.g. {', '.join(list(own)[:2])})"
    match, candidates = find_backbone(obj, own, prefix, where)
    best = (f"best fit: prefix {candidates[0][2]!r} in {candidates[0][1] or 'the top level'!r} names "
            f"{candidates[0][0]} of {len(required)}") if candidates and candidates[0][0] else \
        "no key names a backbone tensor"
    if match is None or len(match.tensors.keys() & set(required)) < min_fraction * len(required):
        raise CheckpointError(f"{where} does not fit backbone {what}: {best}; found {describe_layouts(obj)}; "
                              f"check backbone.arch/width or set backbone_prefix")
    usable = _fit(match, own, backbone, where)
    missing = [k for k in required if k not in usable]
    if missing:
        raise CheckpointError(f"{where} (prefix {match.prefix!r} in {match.container or 'the top level'!r}) lacks "
                              f"{len(missing)} backbone tensors: {', '.join(missing[:4])}"
                              f"{', ...' if len(missing) > 4 else ''}")
    backbone.load_state_dict(usable, strict=False)
    return match
