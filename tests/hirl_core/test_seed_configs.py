"""The seed's pre-training configs (baseline and HIRL): they load, carry the seed's values and build
their methods; the demo configs build and run a forward."""
import re
from pathlib import Path

import pytest
import torch

from hirl_core.config import apply_overrides, load_config
from hirl_core.methods import build_method

ROOT = Path(__file__).resolve().parents[2]
BASELINES = ["mocov2_resnet50_200eps", "simsiam_resnet50_200eps", "swav_resnet50_200eps", "swav_resnet50_800eps",
             "mocov3_vit_base_400eps", "dino_vit_base_400eps", "ibot_vit_base_400eps"]
# (method, total batch, base LR, epochs, optimizer) from hirl-method.md §2
SEED = {"mocov2_resnet50_200eps": ("mocov2", 256, 0.03, 200, "sgd"),
        "simsiam_resnet50_200eps": ("simsiam", 512, 0.05, 200, "sgd"),
        "swav_resnet50_200eps": ("swav", 4096, 0.3, 200, "lars"),
        "swav_resnet50_800eps": ("swav", 4096, 0.3, 800, "lars"),
        "mocov3_vit_base_400eps": ("mocov3", 4096, 1.0e-4, 400, "adamw"),
        "dino_vit_base_400eps": ("dino", 1024, 0.00075, 400, "adamw"),
        "ibot_vit_base_400eps": ("ibot", 1024, 0.00075, 400, "adamw")}
HIRL_KEYS = {"num_cluster", "num_neg_path", "num_mlp_layer", "activation", "cluster_warmup_epoch",
             "iter_wise_assignment", "T"}
TINY = {"resnet50": ["backbone.arch=resnet18", "backbone.width=4"], "vit_base": ["backbone.arch=vit_tiny", "+backbone.depth=1"]}


def _comment_gpus(path):
    m = re.search(r"^# assumed GPUs: (\d+) \(total batch (\d+)", path.read_text(), re.M)
    return int(m.group(1)), int(m.group(2))


@pytest.mark.parametrize("stem", BASELINES)
def test_baseline_config_has_the_seed_values(stem):
    path = ROOT / "configs/pretrain/baseline" / f"{stem}.yaml"
    cfg = load_config(path)
    name, total, lr, epochs, opt = SEED[stem]
    gpus, comment_total = _comment_gpus(path)
    assert (cfg.method.name, cfg.optimizer.lr, cfg.epochs, cfg.optimizer.name) == (name, lr, epochs, opt)
    assert cfg.assumed_gpus == gpus and gpus * cfg.batch_size == comment_total == total
    assert cfg.hirl is None and cfg.data.dataset == "imagefolder"
    assert cfg.data.root == "./datasets/ImageNet1K/ILSVRC/Data/CLS-LOC"


@pytest.mark.parametrize("stem", BASELINES)
def test_hirl_config_inherits_and_adds_the_hirl_section(stem):
    path = ROOT / "configs/pretrain/hirl" / f"hirl_{stem}.yaml"
    cfg, base = load_config(path), load_config(ROOT / "configs/pretrain/baseline" / f"{stem}.yaml")
    assert set(cfg.hirl) == HIRL_KEYS and len(cfg.hirl.num_cluster) == 3 and cfg.hirl.activation == "relu"
    assert cfg.hirl.cluster_warmup_epoch * 10 == cfg.epochs
    assert cfg.hirl.iter_wise_assignment == stem.startswith("swav")
    gpus, total = _comment_gpus(path)
    assert cfg.assumed_gpus == gpus and gpus * cfg.batch_size == total
    differs = {k for k in cfg if k not in ("hirl", "output_dir") and cfg[k] != base[k]}
    expected = {"mocov3_vit_base_400eps": {"assumed_gpus", "batch_size", "optimizer"},
                "ibot_vit_base_400eps": {"assumed_gpus", "batch_size"},
                "dino_vit_base_400eps": {"precision"}}.get(stem, set())
    assert differs == expected


@pytest.mark.parametrize("stem", BASELINES)
def test_seed_method_sections_build(stem):
    cfg = load_config(ROOT / "configs/pretrain/baseline" / f"{stem}.yaml")
    cfg = apply_overrides(cfg, TINY[cfg.backbone.arch])
    method = build_method(cfg)
    assert method.inst_dim == {"mocov2": 128, "simsiam": 2048, "swav": 128, "mocov3": 256, "dino": 256,
                               "ibot": 256}[cfg.method.name]


@pytest.mark.parametrize("name", ["mocov2", "simsiam", "swav", "mocov3", "dino", "ibot"])
def test_demo_configs_load_and_build(name):
    cfg = load_config(ROOT / "configs/pretrain/baseline" / f"{name}_demo.yaml")
    assert cfg.hirl is None and cfg.data.dataset == "fashion_mnist"
    method = build_method(cfg)
    size = cfg.augment.get("local_size", 28)
    views = [torch.randn(4, 1, 28, 28) for _ in range(2)] + [torch.randn(4, 1, size, size)
                                                          for _ in range(cfg.augment.get("local_crops", 0))]
    method.on_step_start(0, 10, 5)
    assert torch.isfinite(method(views).loss)
    spec = load_config(ROOT / "configs/experiments" / f"{name}_demo.yaml")
    assert spec.stages.pretrain.config == f"configs/pretrain/baseline/{name}_demo.yaml"

