"""The seed's semi-supervised and Places205 config trees: the file names of the seed, the values of
hirl-method.md §3.4 / §3.5 after _base_ inheritance, and the stage schema; plus the demo configs."""
from __future__ import annotations

from pathlib import Path

import pytest

from hirl_core.config import load_config
from hirl_core.schema import check_stage_config

REPO = Path(__file__).resolve().parents[2]
SEMI = REPO / "configs/downstream/imagenet/semisup"
PLACES = REPO / "configs/downstream/places205/finetune"

# the seed's file names (seed-config-tree.md), typo "400epssemisup" included
SEMISUP_FILES = (
    "dino/dino_vit_base_400eps_semisup_10percent.yaml", "dino/dino_vit_base_400eps_semisup_1percent.yaml",
    "dino/hirl_dino_vit_base_400eps_semisup_10percent.yaml", "dino/hirl_dino_vit_base_400eps_semisup_1percent.yaml",
    "ibot/hirl_ibot_vit_base_400eps_semisup_10percent.yaml", "ibot/hirl_ibot_vit_base_400eps_semisup_1percent.yaml",
    "ibot/ibot_vit_base_400eps_semisup_10percent.yaml", "ibot/ibot_vit_base_400eps_semisup_1percent.yaml",
    "mocov2/hirl_mocov2_resnet50_200eps_semisup_10percent.yaml",
    "mocov2/hirl_mocov2_resnet50_200eps_semisup_1percent.yaml",
    "mocov2/mocov2_resnet50_200eps_semisup_10percent.yaml", "mocov2/mocov2_resnet50_200eps_semisup_1percent.yaml",
    "mocov3/hirl_mocov3_vit_base_semisup_10percent.yaml", "mocov3/hirl_mocov3_vit_base_semisup_1percent.yaml",
    "mocov3/mocov3_vit_base_400eps_semisup_1percent.yaml", "mocov3/mocov3_vit_base_400epssemisup_10percent.yaml",
    "simsiam/hirl_simsiam_resnet50_200eps_semisup_10percent.yaml",
    "simsiam/hirl_simsiam_resnet50_200eps_semisup_1percent.yaml",
    "simsiam/simsiam_resnet50_200eps_semisup_10percent.yaml",
    "simsiam/simsiam_resnet50_200eps_semisup_1percent.yaml", "swav/hirl_swav_resnet50_200eps_semisup_10percent.yaml",
    "swav/hirl_swav_resnet50_200eps_semisup_1percent.yaml", "swav/hirl_swav_resnet50_800eps_semisup_10percent.yaml",
    "swav/hirl_swav_resnet50_800eps_semisup_1percent.yaml", "swav/swav_resnet50_200eps_semisup_10percent.yaml",
    "swav/swav_resnet50_200eps_semisup_1percent.yaml", "swav/swav_resnet50_800eps_semisup_10percent.yaml",
    "swav/swav_resnet50_800eps_semisup_1percent.yaml",
)
PLACES205_FILES = (
    "dino/dino_vit_base_400eps_finetune_places205.yaml", "dino/hirl_dino_vit_base_400eps_finetune_places205.yaml",
    "ibot/hirl_ibot_vit_base_400eps_finetune_places205.yaml", "ibot/ibot_vit_base_400eps_finetune_places205.yaml",
    "mocov2/hirl_mocov2_resnet50_finetune_places205.yaml", "mocov2/mocov2_resnet50_200eps_finetune_places205.yaml",
    "mocov3/hirl_mocov3_vit_base_finetune_places205.yaml", "mocov3/mocov3_vit_base_400eps_finetune_places205.yaml",
    "simsiam/hirl_simsiam_resnet50_finetune_places205.yaml",
    "simsiam/simsiam_resnet50_200eps_finetune_places205.yaml",
    "swav/hirl_swav_resnet50_200eps_finetune_places205.yaml",
    "swav/hirl_swav_resnet50_800eps_finetune_places205.yaml", "swav/swav_resnet50_200eps_finetune_places205.yaml",
    "swav/swav_resnet50_800eps_finetune_places205.yaml",
)

RESNET_STEP = {"name": "step", "milestones": [12, 16], "gamma": 0.2}  # the fine-tuning recipe's schedule
# file stem -> (epochs, per-GPU batch, lr, schedule keys checked, layer decay or None) from §3.4
SEMISUP_VALUES = {
    **{f"{p}mocov2_resnet50_200eps_semisup_{pc}percent": (70, 32, lr, {"name": "step", "milestones": [30, 60], "gamma": 0.1}, None)
       for p in ("", "hirl_") for pc, lr in (("1", 0.02), ("10", 0.005))},
    **{f"{p}simsiam_resnet50_200eps_semisup_1percent": (300, 128, 0.02, {"name": "cosine", "warmup_epochs": 40}, None)
       for p in ("", "hirl_")},
    **{f"{p}simsiam_resnet50_200eps_semisup_10percent": (100, 128, 0.02, {"name": "cosine", "warmup_epochs": 0}, None)
       for p in ("", "hirl_")},
    **{f"swav_resnet50_{ep}eps_semisup_{pc}percent": (20, 128, 0.1, RESNET_STEP, None)
       for ep in ("200", "800") for pc in ("1", "10")},
    "hirl_swav_resnet50_200eps_semisup_1percent": (20, 128, 0.1, RESNET_STEP, None),
    "hirl_swav_resnet50_800eps_semisup_1percent": (20, 128, 0.1, RESNET_STEP, None),
    "hirl_swav_resnet50_200eps_semisup_10percent": (20, 128, 0.15, RESNET_STEP, None),
    "hirl_swav_resnet50_800eps_semisup_10percent": (20, 128, 0.12, RESNET_STEP, None),
    **{stem: (100, 128, lr, {"name": "cosine", "warmup_epochs": 20}, decay) for stem, lr, decay in (
        ("dino_vit_base_400eps_semisup_1percent", 1e-3, 0.65), ("dino_vit_base_400eps_semisup_10percent", 1e-4, 0.55),
        ("ibot_vit_base_400eps_semisup_1percent", 1e-3, 0.65), ("ibot_vit_base_400eps_semisup_10percent", 1e-4, 0.55),
        ("mocov3_vit_base_400eps_semisup_1percent", 1e-3, 0.65), ("mocov3_vit_base_400epssemisup_10percent", 1e-4, 0.55),
        ("hirl_dino_vit_base_400eps_semisup_1percent", 4e-4, 0.65),
        ("hirl_dino_vit_base_400eps_semisup_10percent", 1e-4, 0.55),
        ("hirl_ibot_vit_base_400eps_semisup_1percent", 4e-4, 0.65),
        ("hirl_ibot_vit_base_400eps_semisup_10percent", 1e-4, 0.55),
        ("hirl_mocov3_vit_base_semisup_1percent", 4e-4, 0.65), ("hirl_mocov3_vit_base_semisup_10percent", 1e-4, 0.55))},
}
# §3.5: ResNet baselines 0.1, HIRL-MoCo v2 0.05, HIRL-SimSiam 0.1, HIRL-SwAV 0.3; ViT baselines and
# HIRL-DINO 4e-3, HIRL-iBOT 1e-4, HIRL-MoCo v3 7e-3
PLACES205_LR = {
    "mocov2_resnet50_200eps": 0.1, "hirl_mocov2_resnet50": 0.05, "simsiam_resnet50_200eps": 0.1,
    "hirl_simsiam_resnet50": 0.1, "swav_resnet50_200eps": 0.1, "swav_resnet50_800eps": 0.1,
    "hirl_swav_resnet50_200eps": 0.3, "hirl_swav_resnet50_800eps": 0.3, "dino_vit_base_400eps": 4e-3,
    "hirl_dino_vit_base_400eps": 4e-3, "ibot_vit_base_400eps": 4e-3, "hirl_ibot_vit_base_400eps": 1e-4,
    "mocov3_vit_base_400eps": 4e-3, "hirl_mocov3_vit_base": 7e-3,
}


def _yaml_files(folder: Path) -> set:
    return {str(p.relative_to(folder)) for p in folder.rglob("*.yaml") if not p.name.startswith("_base_")}


def test_the_trees_hold_exactly_the_seeds_file_names():
    assert _yaml_files(SEMI) == set(SEMISUP_FILES)
    assert _yaml_files(PLACES) == set(PLACES205_FILES)
    assert set(SEMISUP_VALUES) == {Path(f).stem for f in SEMISUP_FILES}
    assert set(PLACES205_LR) == {Path(f).stem.removesuffix("_finetune_places205") for f in PLACES205_FILES}


@pytest.mark.parametrize("name", SEMISUP_FILES)
def test_semisup_configs_have_the_seeds_values(name):
    cfg = load_config(SEMI / name)
    check_stage_config(cfg, "semisup")
    epochs, batch, lr, schedule, decay = SEMISUP_VALUES[Path(name).stem]
    assert cfg.runner == "semisup" and cfg.data.dataset == "imagefolder" and cfg.data.image_size == 224
    assert cfg.semisup.list == ("imagenet_10percent" if "10percent" in name else "imagenet_1percent")
    assert cfg.semisup.fraction is None and cfg.semisup.per_class is None
    assert (cfg.epochs, cfg.batch_size, cfg.optimizer.lr) == (epochs, batch, pytest.approx(lr))
    assert {k: cfg.schedule[k] for k in schedule} == schedule
    assert cfg.optimizer.get("layer_decay") == decay
    assert cfg.optimizer.name == ("adamw" if decay else "sgd")
    assert cfg.output_dir == f"./outputs/manual/{Path(name).stem}"
    # ResNet semi-sup keeps the fine-tuning's active Mixup/CutMix and smoothing (§3.4); one file differs
    assert cfg.mixup.mixup_alpha == 0.8 and cfg.mixup.cutmix_alpha == 1.0
    special = Path(name).stem == "hirl_mocov3_vit_base_semisup_10percent"
    assert cfg.label_smoothing == (0.25 if special else 0.1)
    if decay:
        assert cfg.augment.reprob == (0.1 if special else 0.25)
        assert cfg.schedule.warmup_start_lr == (0.0 if special else 1e-6)


@pytest.mark.parametrize("name", PLACES205_FILES)
def test_places205_configs_have_the_seeds_values(name):
    cfg = load_config(PLACES / name)
    check_stage_config(cfg, "transfer")
    vit = "vit" in name
    assert cfg.runner == "transfer"
    assert dict(cfg.data) == {"dataset": "places205", "root": "./datasets/places205", "image_root": None,
                              "image_size": 224}
    assert cfg.optimizer.lr == pytest.approx(PLACES205_LR[Path(name).stem.removesuffix("_finetune_places205")])
    assert cfg.epochs == (100 if vit else 20)
    if vit:
        assert cfg.optimizer.layer_decay == 0.65 and cfg.optimizer.name == "adamw"
    else:
        assert {k: cfg.schedule[k] for k in RESNET_STEP} == RESNET_STEP and cfg.optimizer.name == "sgd"


@pytest.mark.parametrize("name, stage", [("semisup/semisup_demo_1percent.yaml", "semisup"),
                                         ("semisup/semisup_demo_10percent.yaml", "semisup"),
                                         ("transfer/transfer_demo.yaml", "transfer")])
def test_the_demo_configs_pass_the_schema_and_keep_the_pretraining_inputs(name, stage):
    cfg = load_config(REPO / "configs/downstream" / name)
    check_stage_config(cfg, stage)
    assert cfg.runner == stage and cfg.untrained is True
    pre = load_config(REPO / "configs/pretrain/baseline/mocov2_demo.yaml")
    assert cfg.data.channels == pre.data.channels and cfg.data.image_size == pre.data.image_size
    if stage == "semisup":  # the labelled images are drawn from the pre-training's own images
        assert (cfg.data.dataset, cfg.data.train_subset, cfg.data.subset_seed) == \
            (pre.data.dataset, pre.data.train_subset, pre.data.subset_seed)
        assert cfg.semisup.fraction == (0.01 if "1percent" in name else 0.1)
    else:
        assert cfg.data.dataset == "csv" and cfg.data.make_if_missing == "fashion_mnist_coarse5"


@pytest.mark.parametrize("override, message", [
    ("semisup.seed=-1", r"^semisup: semisup.seed=-1 is out of range: must be an integer >= 0$"),
    ("semisup.fraction=0", r"^semisup: semisup.fraction=0 is out of range: must be null \(not a fraction\) or a number in \(0, 1\]$"),
    ("semisup.per_class=2.5", r"^semisup: semisup.per_class=2.5 has the wrong type"),
    ("semisup.list=3", r"^semisup: semisup.list=3 has the wrong type"),
    ("+semisup_x=1", None),
])
def test_the_schema_refuses_bad_semisup_values(override, message):
    from hirl_core.config import ConfigError

    cfg = load_config(REPO / "configs/downstream/semisup/semisup_demo_1percent.yaml", [override])
    if message is None:  # the section itself must be a mapping (an override cannot replace one)
        cfg["semisup"], message = 7, r"^semisup: semisup=7 has the wrong type: must be a mapping of semisup settings$"
    with pytest.raises(ConfigError, match=message):
        check_stage_config(cfg, "semisup")
