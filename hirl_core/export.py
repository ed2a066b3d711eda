"""`python -m hirl_core.export CHECKPOINT --format torchvision|timm|detectron2 -o FILE [--arch ARCH]`

Writes the backbone of any checkpoint `hirl_core.models.loading` reads as a file other libraries load:

* `torchvision` (ResNets): the plain state dict of `torchvision.models.resnetNN` without `fc.*`;
* `timm` (ViTs): the plain state dict of timm's `VisionTransformer` without `head.*`;
* `detectron2` (ResNets): a pickle `{"model": {name: numpy array}, "__author__": "hirl",
  "matching_heuristics": True}` with detectron2's ResNet names (`stem.conv1`, `res2.0.conv1.norm`,
  `res3.0.shortcut`, ...), the layout MoCo's converter produced for the seed's COCO runs.

The backbone is rebuilt before it is written, so what is exported is exactly what the project's
evaluations would load. Its shape comes from the checkpoint's own config (checkpoint.pth holds one),
else from the pre-training's config.yaml beside the file, else from the tensors themselves (block
counts, widths, patch size, grid); `--arch` overrides the arch name. Bad input is one line, exit 2.
"""
from __future__ import annotations

import argparse
import math
import os
import pickle
import re
import sys
from pathlib import Path

import torch

from .config import Config, ConfigError, load_config
from .engine.checkpoint import atomic_save
from .models import BACKBONES, build_backbone
from .models.loading import (CONTAINERS, PREFIXES, CheckpointError, describe_layouts, load_match,
                             placement_rank, read_checkpoint, tensor_containers)
from .models.resnet import RESNET_LAYOUTS
from .models.vit import VIT_SIZES

FORMATS = {"torchvision": "resnet", "timm": "vit", "detectron2": "resnet"}


# -- which backbone the file holds ------------------------------------------------------------------
def _find(obj, suffix: str):
    """(container tensors, prefix) of the best-placed key ending in `suffix`, or (None, None)."""
    hits = []
    for name, state in tensor_containers(obj).items():
        for key in state:
            if key == suffix or key.endswith("." + suffix):
                prefix = key[: len(key) - len(suffix)]
                hits.append(((placement_rank(name, CONTAINERS), placement_rank(prefix, PREFIXES)), state, prefix))
    if not hits:
        return None, None
    _, state, prefix = min(hits, key=lambda h: h[0])
    return state, prefix


def _indices(state: dict, head: str) -> int:
    """How many numbered children `head.<i>.` the keys have."""
    found = {int(m.group(1)) for k in state if (m := re.match(re.escape(head) + r"(\d+)\.", k))}
    return max(found) + 1 if found else 0


def _infer_resnet(state: dict, prefix: str) -> dict:
    conv1 = state[prefix + "conv1.weight"]
    bottleneck = prefix + "layer1.0.conv3.weight" in state
    layers = [_indices(state, f"{prefix}layer{i}.") for i in range(1, 5)]
    arch = next((name for name, (block, counts) in RESNET_LAYOUTS.items()
                 if counts == layers and (block.expansion == 4) == bottleneck), None)
    if arch is None:
        allowed = ", ".join(f"{n} {c}" for n, (_, c) in RESNET_LAYOUTS.items())
        raise ConfigError(f"a ResNet with {layers} blocks per stage ({'bottleneck' if bottleneck else 'basic'} "
                          f"blocks) is none of the project's: {allowed}; pass --arch")
    return {"arch": arch, "width": conv1.shape[0], "in_chans": conv1.shape[1], "small_stem": conv1.shape[-1] == 3}


def _infer_vit(state: dict, prefix: str) -> dict:
    proj, table = state[prefix + "patch_embed.proj.weight"], state.get(prefix + "pos_embed")
    dim, patch = proj.shape[0], proj.shape[-1]
    arch = next((name for name, (d, _, _) in VIT_SIZES.items() if d == dim), None)
    if arch is None:
        allowed = ", ".join(f"{n} {d}" for n, (d, _, _) in VIT_SIZES.items())
        raise ConfigError(f"a ViT of embedding dim {dim} is none of the project's ({allowed}); pass --arch")
    grid = math.isqrt(table.shape[1] - 1) if table is not None else 224 // patch
    return {"arch": arch, "patch_size": patch, "in_chans": proj.shape[1], "image_size": grid * patch,
            "depth": _indices(state, prefix + "blocks."), "mask_token": prefix + "mask_token" in state}


def backbone_config(obj, path: str, arch: str = "") -> dict:
    """The backbone section that rebuilds the network the checkpoint holds."""
    saved = obj.get("config") if isinstance(obj, dict) else None
    beside = Path(path).parent / "config.yaml"
    if isinstance(saved, dict) and isinstance(saved.get("backbone"), dict):
        cfg = dict(saved["backbone"])
    elif beside.is_file() and isinstance(load_config(beside).get("backbone"), dict):
        cfg = dict(load_config(beside).backbone)
    else:
        resnet, r_prefix = _find(obj, "layer1.0.conv1.weight")
        vit, v_prefix = _find(obj, "patch_embed.proj.weight")
        if resnet is not None and (r_prefix + "conv1.weight") in resnet:
            cfg = _infer_resnet(resnet, r_prefix)
        elif vit is not None:
            cfg = _infer_vit(vit, v_prefix)
        elif arch:
            cfg = {}
        else:
            raise CheckpointError(f"no ResNet or ViT found in {path} ({describe_layouts(obj)}); pass --arch")
    if arch:
        cfg["arch"] = arch
    return cfg


# -- detectron2 names -------------------------------------------------------------------------------
def detectron2_name(key: str) -> str:
    """torchvision ResNet name -> detectron2's: layerN -> res(N+1), bnK -> convK.norm, downsample.0/1 ->
    shortcut / shortcut.norm, the stem's conv1/bn1 -> stem.conv1 / stem.conv1.norm."""
    parts = key.split(".")
    if re.fullmatch(r"layer\d", parts[0]):
        head, rest = [f"res{int(parts[0][5:]) + 1}", parts[1]], parts[2:]
        if rest[0] == "downsample":
            rest = ["shortcut"] + (["norm"] if rest[1] == "1" else []) + rest[2:]
    elif parts[0] in ("conv1", "bn1"):
        head, rest = ["stem"], parts
    else:
        raise ConfigError(f"{key!r} is not a ResNet backbone tensor; detectron2 export takes ResNets only")
    if re.fullmatch(r"bn\d", rest[0]):
        rest = [f"conv{rest[0][2:]}", "norm"] + rest[1:]
    return ".".join(head + rest)


def torchvision_name(key: str) -> str:
    """The inverse of `detectron2_name`."""
    parts = key.split(".")
    if parts[0] == "stem":
        head, rest = [], parts[1:]
    elif re.fullmatch(r"res\d", parts[0]):
        head, rest = [f"layer{int(parts[0][3:]) - 1}", parts[1]], parts[2:]
        if rest[0] == "shortcut":
            rest = ["downsample", "1"] + rest[2:] if rest[1] == "norm" else ["downsample", "0"] + rest[1:]
    else:
        raise ConfigError(f"{key!r} is not a detectron2 ResNet name")
    if len(rest) > 1 and re.fullmatch(r"conv\d", rest[0]) and rest[1] == "norm":
        rest = [f"bn{rest[0][4:]}"] + rest[2:]
    return ".".join(head + rest)


# -- writing ----------------------------------------------------------------------------------------
def _write_pickle(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def export(checkpoint: str, fmt: str, out: str, arch: str = "", prefix: str = "auto") -> str:
    """Write the backbone of `checkpoint` to `out` in `fmt`; returns a one-line summary."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown --format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if arch and arch not in BACKBONES:
        raise ConfigError(f"unknown --arch {arch!r}; allowed: {', '.join(sorted(BACKBONES))}")
    obj = read_checkpoint(checkpoint)
    cfg = backbone_config(obj, checkpoint, arch)
    family = "vit" if cfg.get("arch", "").startswith("vit") else "resnet"
    if FORMATS[fmt] != family:
        fits = ", ".join(f for f, fam in FORMATS.items() if fam == family)
        raise ConfigError(f"--format {fmt} takes {FORMATS[fmt]}s; {checkpoint} holds a {cfg.get('arch')}: "
                          f"use --format {fits}")
    backbone = build_backbone(Config(cfg))
    match = load_match(backbone, obj, prefix, where=f"checkpoint {checkpoint}")
    state = {k: v.detach().clone().contiguous() for k, v in backbone.state_dict().items()
             if k != "mask_token"}  # iBOT's [MASK] embedding is not part of a timm ViT
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "detectron2":
        _write_pickle({"model": {detectron2_name(k): v.numpy() for k, v in state.items()},
                       "__author__": "hirl", "matching_heuristics": True}, target)
    else:
        atomic_save(state, target)
    where = f"prefix {match.prefix!r} in {match.container or 'the top level'!r}"
    return f"wrote {target}: {cfg['arch']} backbone ({len(state)} tensors, {fmt}) from {checkpoint} ({where})"


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # argparse's usage + message is two lines; bad input is one
        raise ConfigError(f"{message} (usage: {self.format_usage().strip().removeprefix('usage: ')})")


def main(argv=None) -> int:
    parser = _OneLineParser(prog="python -m hirl_core.export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint.pth, backbone.pth, or a torchvision/timm/DINO/MoCo file")
    parser.add_argument("--format", required=True, help=f"one of: {', '.join(FORMATS)}")
    parser.add_argument("-o", "--output", required=True, help="the file to write")
    parser.add_argument("--arch", default="", help=f"backbone arch ({', '.join(sorted(BACKBONES))}); "
                                                   "default: from the checkpoint")
    parser.add_argument("--prefix", default="auto", help="backbone key prefix (default: detected)")
    try:
        args = parser.parse_args(argv)
        print(export(args.checkpoint, args.format, args.output, args.arch, args.prefix), flush=True)
    except ConfigError as err:
        print(f"hirl_core: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
