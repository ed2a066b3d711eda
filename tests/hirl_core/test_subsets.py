"""Labelled subsets: the shipped ImageNet 1 %/10 % lists on an ImageFolder tree, class-balanced draws."""
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hirl_core.config import ConfigError
from hirl_core.data.subsets import (balanced_subset, imagenet_list_samples, list_path, read_list, read_subset,
                                    synset_of, write_subset)

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_lists_are_the_seeds_and_balanced():
    one, ten = read_list(list_path("imagenet_1percent")), read_list(list_path("imagenet_10percent"))
    assert (len(one), len(ten)) == (12811, 128116)  # hirl-method.md §3.4
    assert one[0] == "n04235860_14959.JPEG" and len(set(one)) == len(one)
    per_class = Counter(map(synset_of, one))
    assert len(per_class) == 1000 and set(per_class.values()) == {12, 13}
    assert len(Counter(map(synset_of, ten))) == 1000


def test_an_installed_package_ships_the_lists():
    text = (REPO / "pyproject.toml").read_text()
    assert '"hirl_core.data" = ["lists/*.txt"]' in text
    assert list_path("imagenet_10percent").is_file()


def _tree(root: Path, names, extra_per_synset=2):
    """An ImageNet-style train/<synset>/<file> tree with tiny JPEGs: the listed files plus unlisted ones."""
    for name in names:
        folder = root / "train" / synset_of(name)
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (len(name) * 7 % 256, 0, 0)).save(folder / name)
    for synset in {synset_of(n) for n in names}:
        for k in range(extra_per_synset):
            Image.new("RGB", (4, 4)).save(root / "train" / synset / f"{synset}_9999{k}.JPEG")
    (root / "train" / "n00000000").mkdir()  # a synset with no listed image still counts in the label order
    Image.new("RGB", (4, 4)).save(root / "train" / "n00000000" / "n00000000_1.JPEG")


def test_a_list_maps_onto_an_imagefolder_tree_with_folder_order_labels(tmp_path):
    names = [n for n in read_list(list_path("imagenet_1percent")) if synset_of(n) in
             {"n01440764", "n02096294", "n04235860", "n04239074"}]
    assert len(names) >= 4 * 12
    _tree(tmp_path, names)
    samples, classes = imagenet_list_samples(names, tmp_path / "train")
    assert classes == ["n00000000", "n01440764", "n02096294", "n04235860", "n04239074"]
    assert len(samples) == len(names)
    for (path, label), name in zip(samples, names):
        assert Path(path) == tmp_path / "train" / synset_of(name) / name
        assert classes[label] == synset_of(name)
    # the labels agree with ImageFolder's on the same tree
    from torchvision.datasets import ImageFolder
    assert ImageFolder(str(tmp_path / "train")).class_to_idx == {c: i for i, c in enumerate(classes)}


def test_missing_listed_files_are_one_line_with_the_count_and_the_first(tmp_path):
    names = [n for n in read_list(list_path("imagenet_1percent")) if synset_of(n) == "n04235860"]
    _tree(tmp_path, names)
    gone = sorted(names)[:3]
    for name in gone:
        (tmp_path / "train" / "n04235860" / name).unlink()
    listed = names + ["n09999999_1.JPEG"]  # a synset the tree lacks
    with pytest.raises(ConfigError) as err:
        imagenet_list_samples(listed, tmp_path / "train")
    first = next(n for n in listed if n in gone or n.startswith("n0999"))
    assert str(err.value) == (f"4 of {len(listed)} listed images are missing under {str(tmp_path / 'train')!r} "
                              f"(first: {str(tmp_path / 'train' / synset_of(first) / first)!r})")
    with pytest.raises(ConfigError, match="does not exist"):
        imagenet_list_samples(names, tmp_path / "nope")


def test_a_list_that_is_neither_shipped_nor_a_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"semisup.list='imagenet_5percent' is neither a shipped list "
                                          r"\(imagenet_1percent, imagenet_10percent\)"):
        list_path("imagenet_5percent")
    mine = tmp_path / "mine.txt"
    mine.write_text("# my pick\nn01440764_1.JPEG\n\nn01440764_2.JPEG\n")
    assert read_list(list_path(str(mine))) == ["n01440764_1.JPEG", "n01440764_2.JPEG"]


def _labels(sizes):
    rng = np.random.default_rng(5)
    return rng.permutation(np.repeat(np.arange(len(sizes)), sizes))


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.37, 1.0])
def test_a_fraction_is_balanced_within_one_and_deterministic(fraction):
    targets = _labels([1000] * 7)
    picked = balanced_subset(targets, fraction=fraction, seed=3)
    assert len(picked) == round(fraction * len(targets)) and len(set(picked)) == len(picked)
    counts = np.bincount(targets[picked], minlength=7)
    assert counts.max() - counts.min() <= 1
    assert np.array_equal(picked, balanced_subset(targets, fraction=fraction, seed=3))
    assert np.all(np.diff(picked) > 0)


def test_another_seed_draws_other_images_and_classes_are_drawn_independently():
    targets = _labels([500] * 4)
    a, b = balanced_subset(targets, per_class=20, seed=0), balanced_subset(targets, per_class=20, seed=1)
    assert len(a) == 80 and np.bincount(targets[a]).tolist() == [20] * 4
    assert len(np.intersect1d(a, b)) < 20
    # dropping class 3 does not change what classes 0-2 give
    kept = targets != 3
    c = np.flatnonzero(kept)[balanced_subset(targets[kept], per_class=20, seed=0)]
    assert np.array_equal(c, a[targets[a] != 3])


def test_a_class_smaller_than_its_share_gives_all_it_has():
    targets = _labels([100, 100, 3])
    counts = np.bincount(targets[balanced_subset(targets, per_class=10, seed=0)])
    assert counts.tolist() == [10, 10, 3]


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one of fraction or per_class"),
    ({"fraction": 0.1, "per_class": 3}, "exactly one of fraction or per_class"),
    ({"fraction": 0}, r"semisup.fraction=0 is out of range"),
    ({"fraction": 1.5}, r"semisup.fraction=1.5 is out of range"),
    ({"per_class": 0}, r"semisup.per_class=0 is out of range"),
])
def test_bad_subset_requests_are_one_line_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        balanced_subset(np.arange(10) % 2, **kwargs)


def test_the_subset_file_round_trips(tmp_path):
    targets = _labels([50] * 3)
    picked = balanced_subset(targets, fraction=0.1, seed=0)
    names = [f"img{i}.png" for i in range(len(targets))]
    path = write_subset(tmp_path / "out" / "labelled_subset.txt", picked, targets, names, header="fraction=0.1 seed=0")
    lines = path.read_text().splitlines()
    assert lines[0] == "# fraction=0.1 seed=0" and lines[2] == f"{picked[0]} {targets[picked[0]]} img{picked[0]}.png"
    assert np.array_equal(read_subset(path), picked)
    (tmp_path / "bad.txt").write_text("x y\n")
    with pytest.raises(ConfigError, match="not a subset list"):
        read_subset(tmp_path / "bad.txt")


def test_the_subset_module_is_torch_free():
    code = "import sys, hirl_core.data.subsets; assert 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
