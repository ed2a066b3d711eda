"""CSV datasets (generic path,label and the seed's Places205 layout), the ImageNet list hook of
imagefolder data, and the demo's transfer set made from unseen Fashion-MNIST images."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hirl_core.config import Config, ConfigError
from hirl_core.data import check_data
from hirl_core.data.build import build_eval_dataset
from hirl_core.data.csv_dataset import PLACES205_IMAGES, csv_samples, read_label_csv
from hirl_core.data.datasets import FileListWithIndex, ImageFolderWithIndex, InMemoryEval
from hirl_core.data.fashion_mnist import default_root, load_fashion_mnist
from hirl_core.data.make_transfer_demo import COARSE, MARKER, make_transfer_demo, pretrain_indices, split_indices

REPO = Path(__file__).resolve().parents[2]
needs_fashion_mnist = pytest.mark.fashion_mnist  # skipped without the files; HIRL_REQUIRE_DATA=1 fails (tests/needs_data.py)


def _png(path: Path, value: int, size=8, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), value if mode == "L" else (value, value, value)).save(path)


def _csv_tree(root: Path, rows_by_split, mode="L"):
    for split, rows in rows_by_split.items():
        lines = ["path,label"]
        for k, (name, label) in enumerate(rows):
            _png(root / name, 10 * k, mode=mode)
            lines.append(f"{name},{label}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")


def test_class_names_are_indexed_sorted_from_the_train_csv(tmp_path):
    _csv_tree(tmp_path, {"train": [("a/1.png", "zebra"), ("a/2.png", "ant"), ("b/3.png", "moth")],
                         "val": [("v/1.png", "moth"), ("v/2.png", "zebra")]})
    data = Config({"dataset": "csv", "root": str(tmp_path)})
    samples, classes = csv_samples(data, "train")
    assert classes == ["ant", "moth", "zebra"]
    assert samples == [(str(tmp_path / "a/1.png"), 2), (str(tmp_path / "a/2.png"), 0), (str(tmp_path / "b/3.png"), 1)]
    assert csv_samples(data, "val") == ([(str(tmp_path / "v/1.png"), 1), (str(tmp_path / "v/2.png"), 2)], classes)


def test_integer_labels_stay_and_paths_follow_image_root(tmp_path):
    images = tmp_path / "pics"
    _png(images / "x.png", 1)
    _png(images / "y.png", 2)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "tr.csv").write_text(f"x.png,3\ny.png,0\n{images / 'x.png'},1\n")
    data = Config({"dataset": "csv", "root": str(tmp_path / "lists"), "train_csv": "tr.csv", "image_root": str(images)})
    samples, classes = csv_samples(data, "train")
    assert classes == ["0", "1", "2", "3"]
    assert samples == [(str(images / "x.png"), 3), (str(images / "y.png"), 0), (str(images / "x.png"), 1)]


@pytest.mark.parametrize("train, val, message", [
    ("a.png,cat\n", "b.png,dog\n", "class 'dog' is not among the train CSV's 1 classes"),
    ("a.png,0\n", "b.png,4\n", "label 4 is not below the train CSV's 1 classes"),
    ("a.png\n", "b.png,0\n", "line 1: expected '<path>,<label>'"),
    ("a.png,-1\n", "b.png,0\n", "label -1 is negative"),
    ("# nothing\n", "b.png,0\n", "lists no images"),
])
def test_bad_csvs_are_one_line_errors(tmp_path, train, val, message):
    for name in ("a.png", "b.png"):
        _png(tmp_path / name, 0)
    (tmp_path / "train.csv").write_text(train)
    (tmp_path / "val.csv").write_text(val)
    with pytest.raises(ConfigError, match=message):
        csv_samples(Config({"dataset": "csv", "root": str(tmp_path)}), "val")


def test_missing_images_are_counted_and_the_first_named(tmp_path):
    _png(tmp_path / "a.png", 0)
    (tmp_path / "train.csv").write_text("a.png,0\ngone1.png,1\ngone2.png,1\n")
    with pytest.raises(ConfigError) as err:
        csv_samples(Config({"dataset": "csv", "root": str(tmp_path)}), "train")
    assert str(err.value) == (f"2 of 3 listed images are missing under {str(tmp_path)!r} "
                              f"(first: {str(tmp_path / 'gone1.png')!r})")


def _places(root: Path, relative_to_images=True):
    base = root / PLACES205_IMAGES if relative_to_images else root
    split_dir = root / "trainvalsplit_places205"
    split_dir.mkdir(parents=True)
    rows = {"train": [("a/abbey/00000001.jpg", 0), ("b/bar/00000002.jpg", 2), ("a/airport/00000003.jpg", 1)],
            "val": [("b/bar/00000009.jpg", 2)]}
    for split, items in rows.items():
        for rel, _ in items:
            _png(base / rel, 5, mode="RGB")
        (split_dir / f"{split}_places205.csv").write_text("".join(f"{rel} {label}\n" for rel, label in items))
    return base


@pytest.mark.parametrize("relative_to_images", [True, False])
def test_places205_reads_the_seeds_layout(tmp_path, relative_to_images):
    base = _places(tmp_path, relative_to_images)
    data = Config({"dataset": "places205", "root": str(tmp_path), "image_size": 16})
    check_data(data, splits=("train", "val"))
    train = build_eval_dataset(data, "train")
    assert isinstance(train, ImageFolderWithIndex) and len(train) == 3
    assert train.folder.samples[1] == (str(base / "b/bar/00000002.jpg"), 2)
    image, index, target = train[1]
    assert image.shape == (3, 16, 16) and (index, target) == (1, 2)
    assert build_eval_dataset(data, "val").targets.tolist() == [2]


def test_check_data_names_the_missing_csv(tmp_path):
    with pytest.raises(ConfigError, match=r"trainvalsplit_places205/train_places205.csv' does not exist"):
        check_data(Config({"dataset": "places205", "root": str(tmp_path)}), splits=("train", "val"))
    with pytest.raises(ConfigError, match=r"/train.csv' does not exist .* expected train.csv and val.csv"):
        check_data(Config({"dataset": "csv", "root": str(tmp_path)}), splits=("train",))
    with pytest.raises(ConfigError, match="data.root is not set; the csv dataset"):
        check_data(Config({"dataset": "csv"}))


def test_in_memory_csv_data_matches_the_fashion_mnist_path(tmp_path):
    _csv_tree(tmp_path, {"train": [(f"t/{k}.png", "ab"[k % 2]) for k in range(6)], "val": [("v/0.png", "b")]})
    data = Config({"dataset": "csv", "root": str(tmp_path), "in_memory": True, "channels": 1, "image_size": 8,
                   "mean": [0.5], "std": [0.25]})
    train = build_eval_dataset(data, "train")
    assert isinstance(train, InMemoryEval) and train.images.shape == (6, 1, 8, 8) and train.images.dtype == torch.uint8
    assert train.targets.tolist() == [0, 1, 0, 1, 0, 1]
    batch = train.__getitems__([2, 3])
    assert torch.allclose(batch[0][0], torch.full((1, 8, 8), (20 / 255 - 0.5) / 0.25))
    with pytest.raises(ConfigError, match=r"data.mean=\[0.5\] and data.std=\[0.25\] need 3 value"):
        build_eval_dataset(Config({**data, "channels": 3}), "train")
    with pytest.raises(ConfigError, match="data.channels=1 and data.mean/std need data.in_memory: true"):
        build_eval_dataset(Config({**data, "in_memory": False}), "train")


def test_an_imagefolder_train_list_reads_only_the_listed_files(tmp_path):
    for synset, k in [("n01", 1), ("n01", 2), ("n02", 1), ("n02", 2), ("n03", 1)]:
        _png(tmp_path / "train" / synset / f"{synset}_{k}.JPEG", k, mode="RGB")
    (tmp_path / "val").mkdir()
    (tmp_path / "pick.txt").write_text("n02_2.JPEG\nn01_1.JPEG\n")
    data = Config({"dataset": "imagefolder", "root": str(tmp_path), "image_size": 8, "train_list": str(tmp_path / "pick.txt")})
    train = build_eval_dataset(data, "train")
    assert isinstance(train, FileListWithIndex)
    assert train.folder.classes == ["n01", "n02", "n03"] and train.targets.tolist() == [1, 0]
    assert train[0][0].shape == (3, 8, 8)


@needs_fashion_mnist
def test_the_transfer_demo_holds_unseen_images_in_five_coarse_classes(tmp_path):
    out = make_transfer_demo(tmp_path / "demo")
    marker = json.loads((out / MARKER).read_text())
    assert marker["params"] == {"pretrain_subset": 10000, "subset_seed": 0, "train": 5000, "val": 2000, "seed": 0}
    images, labels = load_fashion_mnist(default_root(), "train")
    # the pre-training's images, drawn by the real data builder
    pre = build_eval_dataset(Config({"dataset": "fashion_mnist", "train_subset": 10000, "subset_seed": 0,
                                     "image_size": 28}), "train")
    assert np.array_equal(pre.images[:, 0].numpy(), images[pretrain_indices(60000, 10000, 0)])
    seen = {img.tobytes() for img in pre.images[:, 0].numpy()}
    train, val = split_indices(60000, marker["params"])
    assert not set(train) & set(val) and not (set(train) | set(val)) & set(pretrain_indices(60000, 10000, 0))
    data = Config({"dataset": "csv", "root": str(out), "in_memory": True, "channels": 1, "image_size": 28})
    ds = {split: build_eval_dataset(data, split) for split in ("train", "val")}
    assert (len(ds["train"]), len(ds["val"])) == (5000, 2000)
    assert ds["train"].classes == ["bag", "dress", "footwear", "tops", "trouser"]
    for split, idx in (("train", train), ("val", val)):
        assert np.array_equal(ds[split].images[:, 0].numpy(), images[idx])  # PNGs are lossless
        assert [ds[split].classes[t] for t in ds[split].targets.tolist()] == [COARSE[int(c)] for c in labels[idx]]
        assert not {img.tobytes() for img in images[idx]} & seen - {np.zeros((28, 28), np.uint8).tobytes()}
    assert set(ds["val"].targets.tolist()) == set(range(5))


@needs_fashion_mnist
def test_the_demo_is_made_once_on_first_use_and_a_stranger_folder_is_refused(tmp_path):
    root = tmp_path / "made_here"
    data = Config({"dataset": "csv", "root": str(root), "in_memory": True, "channels": 1, "image_size": 28,
                   "make_if_missing": "fashion_mnist_coarse5"})
    check_data(data, splits=("train", "val"))  # the orchestrator lets it through: the source is there
    assert len(build_eval_dataset(data, "val")) == 2000
    stamp = (root / "train" / sorted(p.name for p in (root / "train").iterdir())[0]).stat().st_mtime_ns
    cmd = [sys.executable, "-m", "hirl_core.data.make_transfer_demo", "--out", str(root)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "already there" in done.stdout, done.stderr
    assert (root / "train" / sorted(p.name for p in (root / "train").iterdir())[0]).stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no build left behind
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    done = subprocess.run(cmd[:-1] + [str(stranger)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "holds no finished transfer demo" in done.stderr


@pytest.mark.parametrize("key, value, message", [
    ("data.make_if_missing", "cifar", "data.make_if_missing='cifar' is not allowed"),
    ("data.in_memory", "yes", "data.in_memory='yes' has the wrong type"),
    ("data.mean", [1.5], r"data.mean=\[1.5\] is out of range"),
    ("data.std", [0], r"data.std=\[0\] is out of range"),
    ("data.dataset", "csvv", "data.dataset='csvv' is not allowed \\(did you mean 'csv'\\?\\)"),
])
def test_the_schema_refuses_bad_csv_data_keys(key, value, message):
    from hirl_core.config import set_dotted
    from hirl_core.schema import check_config

    cfg = Config({"data": {"dataset": "csv", "root": "/x", "make_if_missing": None, "mean": None, "std": None}})
    check_config(cfg, "knn")
    set_dotted(cfg, key, value)
    with pytest.raises(ConfigError, match=message):
        check_config(cfg, "knn")
