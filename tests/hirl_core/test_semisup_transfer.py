"""The semisup and transfer stages end to end (real Fashion-MNIST, real files, a real sqlite MLflow store,
tiny backbones): which images train, what is written and logged, and the one-line refusals."""
from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from hirl_core.__main__ import main as hirl_core_main
from hirl_core.config import Config, ConfigError, load_config
from hirl_core.data.build import build_eval_dataset
from hirl_core.data.datasets import FileListWithIndex, InMemoryEval
from hirl_core.data.subsets import SUBSET_FILE, balanced_subset, read_subset
from hirl_core.data.transforms import BatchEvalTransform
from hirl_core.evals.semisup import restrict, run_semisup, subset_request
from hirl_core.evals.transfer import run_transfer
from hirl_core.schema import check_stage_config

from ._tiny import perturbed_backbone

REPO = Path(__file__).resolve().parents[2]
GREY = {"arch": "resnet18", "width": 4, "small_stem": True, "stem_stride": 2, "in_chans": 1}
RGB = {**GREY, "in_chans": 3}
needs_fashion_mnist = pytest.mark.fashion_mnist  # skipped without the files; HIRL_REQUIRE_DATA=1 fails (tests/needs_data.py)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return tmp_path


def _demo(name: str, tmp_path: Path, backbone: dict, *overrides) -> Config:
    cfg = load_config(REPO / "configs/downstream" / name,
                      [f"pretrained={perturbed_backbone(tmp_path / 'pre', backbone)}", f"output_dir={tmp_path / 'out'}",
                       "device=cpu", "epochs=1", *overrides])
    check_stage_config(cfg, cfg.runner)
    return cfg


def _only_run():
    run, = mlflow.search_runs(search_all_experiments=True, output_format="list")
    return run


@needs_fashion_mnist
def test_semisup_trains_on_the_balanced_subset_it_writes_and_logs_its_fraction(store):
    cfg = _demo("semisup/semisup_demo_10percent.yaml", store, GREY, "data.train_subset=400", "data.val_subset=100",
                "batch_size=8", "semisup.fraction=0.05", "semisup.seed=3")
    metrics = run_semisup(cfg)
    full = build_eval_dataset(cfg.data, "train")
    expected = balanced_subset(full.targets.numpy(), fraction=0.05, seed=3)
    written = store / "out" / SUBSET_FILE
    assert np.array_equal(read_subset(written), expected)
    assert np.bincount(full.targets.numpy()[expected]).tolist() == [2] * 10
    assert written.read_text().startswith("# semisup fraction=0.05 seed=3: 20 of 400 train images")
    for key in ("semisup_top1", "semisup_top1_untrained", "semisup_top5", "semisup_top1_best_epoch"):
        assert key in metrics, key
    assert metrics["semisup_fraction"] == 0.05
    run = _only_run()
    assert run.info.status == "FINISHED"
    assert run.data.params["semisup_fraction"] == "0.05" and run.data.params["semisup_images"] == "20"
    assert run.data.params["num_classes"] == "10" and run.data.params["mode"] == "finetune"
    assert run.data.metrics["semisup_top1"] == pytest.approx(metrics["semisup_top1"])


def test_restrict_keeps_the_kind_the_transform_and_only_the_chosen_images():
    images = torch.arange(6 * 4, dtype=torch.uint8).view(6, 1, 2, 2)
    base = InMemoryEval(images, torch.tensor([0, 1, 2, 0, 1, 2]), BatchEvalTransform(2, (0.0,), (1.0,)))
    part = restrict(base, [4, 1])
    assert isinstance(part, InMemoryEval) and part.transform is base.transform
    assert torch.equal(part.images, images[[4, 1]]) and part.targets.tolist() == [1, 1]
    files = FileListWithIndex([("a", 0), ("b", 1), ("c", 2)], ["x", "y", "z"], transform=str, channels=1)
    part = restrict(files, [2])
    assert part.folder.samples == [("c", 2)] and part.folder.classes == ["x", "y", "z"] and part.folder.mode == "L"


def _imagenet_tree(root: Path):
    """train/<synset>/<synset>_<k>.JPEG (3 synsets, 4 images each, one synset never listed) and val/."""
    for split in ("train", "val"):
        for c, synset in enumerate(("n01000001", "n01000002", "n01000003")):
            folder = root / split / synset
            folder.mkdir(parents=True)
            for k in range(4):
                Image.new("RGB", (20, 20), (60 * c + 10 * k, 40, 90)).save(folder / f"{synset}_{k}.JPEG")


def test_semisup_with_a_list_trains_on_exactly_the_listed_imagenet_files(store):
    _imagenet_tree(store / "imagenet")
    listed = ["n01000003_1.JPEG", "n01000001_0.JPEG", "n01000003_2.JPEG", "n01000001_3.JPEG"]
    (store / "pick.txt").write_text("\n".join(listed) + "\n")
    cfg = _demo("semisup/semisup_demo_1percent.yaml", store, RGB, "data.dataset=imagefolder",
                f"data.root={store / 'imagenet'}", "data.image_size=16", "data.channels=3", "data.val_subset=null",
                "data.train_subset=null", "semisup.fraction=null", f"semisup.list={store / 'pick.txt'}",
                "batch_size=2", "untrained=false")
    metrics = run_semisup(cfg)
    lines = (store / "out" / SUBSET_FILE).read_text().splitlines()
    assert lines[2:] == [f"{i} {int(n[8])- 1} train/{n[:9]}/{n}" for i, n in enumerate(listed)]
    assert "semisup_top1" in metrics and "semisup_top1_untrained" not in metrics and "semisup_fraction" not in metrics
    run = _only_run()
    assert run.data.params["num_classes"] == "3"  # the tree's synsets, listed or not
    assert run.data.params["semisup_images"] == "4"


@pytest.mark.parametrize("overrides, message", [
    (["semisup.list=imagenet_1percent"], "set exactly one of semisup.list, semisup.fraction, semisup.per_class "
                                         r"\(got list, fraction\)"),
    (["semisup.fraction=null"], "set exactly one of semisup.list, semisup.fraction, semisup.per_class$"),
    (["semisup.fraction=null", "semisup.list=imagenet_1percent"],
     r"semisup.list='imagenet_1percent' names ImageNet train files: it needs data.dataset: imagefolder"),
    (["semisup.fraction=1.5"], r"semisup.fraction=1.5 is out of range"),
    (["semisup.per_class=0", "semisup.fraction=null"], r"semisup.per_class=0 is out of range"),
])
def test_bad_semisup_sections_are_one_line_errors_before_anything_is_written(tmp_path, capsys, overrides, message):
    pre = perturbed_backbone(tmp_path / "pre", GREY)
    code = hirl_core_main(["semisup", "-c", str(REPO / "configs/downstream/semisup/semisup_demo_1percent.yaml"),
                           f"pretrained={pre}", f"output_dir={tmp_path / 'out'}", "device=cpu", *overrides])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("hirl_core: error: ")
    assert pytest.importorskip("re").search(message, err), err
    assert not (tmp_path / "out").exists()


def test_a_missing_semisup_section_is_refused():
    with pytest.raises(ConfigError, match="semisup needs a `semisup` section"):
        subset_request(Config({"data": {"dataset": "fashion_mnist"}}))


@needs_fashion_mnist
def test_transfer_builds_the_demo_set_on_first_use_and_fine_tunes_on_its_five_classes(store):
    root = store / "data" / "fashion_mnist_coarse5"
    cfg = _demo("transfer/transfer_demo.yaml", store, GREY, f"data.root={root}", "batch_size=256")
    metrics = run_transfer(cfg)
    assert (root / "train.csv").is_file() and (root / "DONE.json").is_file()
    for key in ("transfer_top1", "transfer_top1_untrained", "transfer_top5", "transfer_top1_last"):
        assert key in metrics, key
    assert 0.0 <= metrics["transfer_top1_untrained"] <= 1.0
    run = _only_run()
    assert run.info.status == "FINISHED" and run.data.params["num_classes"] == "5"
    assert run.data.metrics["transfer_top1"] == pytest.approx(metrics["transfer_top1"])
