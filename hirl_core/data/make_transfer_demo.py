"""The demo's transfer dataset: Fashion-MNIST images the demo pre-training never saw, in a new label space.

    python -m hirl_core.data.make_transfer_demo --out outputs/data/fashion_mnist_coarse5

Writes ``train/*.png`` (5,000) and ``val/*.png`` (2,000) with ``train.csv`` / ``val.csv`` (``path,label``,
the layout the ``csv`` dataset reads). The images come from the 50,000 Fashion-MNIST training images
outside the pre-training's subset (``train_subset: 10000`` drawn with ``subset_seed: 0``, exactly as
``hirl_core.data.build`` draws it), so the transfer measures features on unseen images. The labels are
five coarse categories the pre-training never named:

    tops = T-shirt/top, Pullover, Coat, Shirt;  footwear = Sandal, Sneaker, Ankle boot;
    trouser;  dress;  bag

(the CSVs hold the names; the dataset indexes them in sorted order: bag, dress, footwear, tops, trouser).
A second call finds the finished dataset and does nothing; a build is written beside the target and
renamed into place, so two stages building at once never see half a dataset. Takes ~2 s.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..config import ConfigError
from .fashion_mnist import default_root, load_fashion_mnist, missing_files

NAME = "fashion_mnist_coarse5"
MARKER = "DONE.json"
# Fashion-MNIST class index -> coarse category
COARSE = {0: "tops", 1: "trouser", 2: "tops", 3: "dress", 4: "tops", 5: "footwear", 6: "tops",
          7: "footwear", 8: "bag", 9: "footwear"}
DEFAULTS = {"pretrain_subset": 10000, "subset_seed": 0, "train": 5000, "val": 2000, "seed": 0}


def pretrain_indices(n_images: int, subset: int, subset_seed: int) -> np.ndarray:
    """The training images the demo pre-training uses (the same draw as ``data.build``'s train_subset)."""
    return np.sort(np.random.default_rng(subset_seed).permutation(n_images)[:subset])


def split_indices(n_images: int, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices into the Fashion-MNIST training set, disjoint from the pre-training subset."""
    unseen = np.setdiff1d(np.arange(n_images), pretrain_indices(n_images, params["pretrain_subset"],
                                                                params["subset_seed"]))
    if params["train"] + params["val"] > len(unseen):
        raise ConfigError(f"the transfer demo asks for {params['train'] + params['val']} images but only "
                          f"{len(unseen)} are outside the pre-training subset")
    order = np.random.default_rng(params["seed"]).permutation(unseen)
    return np.sort(order[:params["train"]]), np.sort(order[params["train"]:params["train"] + params["val"]])


def is_done(out: str | os.PathLike, params: dict | None = None) -> bool:
    """True when ``out`` holds a finished build (of these parameters, when given)."""
    marker = Path(out) / MARKER
    if not marker.is_file():
        return False
    if params is not None and json.loads(marker.read_text()).get("params") != params:
        raise ConfigError(f"{out} holds the transfer demo built with other parameters "
                          f"({marker.read_text().strip()}); remove it to rebuild")
    return True


def _write_split(tmp: Path, split: str, images, labels, indices) -> None:
    from PIL import Image

    (tmp / split).mkdir()
    lines = ["path,label"]
    for i in indices:
        name = f"{split}/{i:05d}.png"  # the Fashion-MNIST training index: traceable to the source
        Image.fromarray(images[i], mode="L").save(tmp / name, optimize=False, compress_level=1)
        lines.append(f"{name},{COARSE[int(labels[i])]}")
    (tmp / f"{split}.csv").write_text("\n".join(lines) + "\n")


def make_transfer_demo(out: str | os.PathLike, source: str | None = None, **overrides) -> Path:
    """Build the dataset in ``out`` unless it is already there; returns ``out``."""
    out, params = Path(os.path.expanduser(str(out))), {**DEFAULTS, **overrides}
    if is_done(out, params):
        return out
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{str(out)!r} exists but holds no finished transfer demo ({MARKER} missing); "
                          "remove it or choose another data.root")
    source = source or default_root()
    if missing_files(source):
        raise ConfigError(f"the transfer demo is made from Fashion-MNIST, not found in {source!r} "
                          f"(missing {', '.join(missing_files(source))})")
    images, labels = load_fashion_mnist(source, "train")
    train, val = split_indices(len(images), params)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _write_split(tmp, "train", images, labels, train)
        _write_split(tmp, "val", images, labels, val)
        (tmp / MARKER).write_text(json.dumps({"dataset": NAME, "source": str(source), "params": params}) + "\n")
        os.chmod(tmp, 0o755)
        if out.is_dir():
            out.rmdir()  # empty (checked above)
        try:
            os.rename(tmp, out)
        except OSError:
            if not is_done(out, params):  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hirl_core.data.make_transfer_demo",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write (train/, val/, train.csv, val.csv)")
    parser.add_argument("--fashion-mnist", default=None, help="the idx files (default: Debian's package)")
    args = parser.parse_args(argv)
    try:
        done_before = is_done(args.out, DEFAULTS)
        out = make_transfer_demo(args.out, args.fashion_mnist)
    except ConfigError as err:
        print(f"hirl_core: error: {err}", file=sys.stderr)
        return 2
    print(f"{out}: {'already there' if done_before else 'written'} "
          f"({DEFAULTS['train']} train + {DEFAULTS['val']} val images, 5 coarse classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
