"""The supervised trainer (linear probe, fine-tuning): a frozen trunk stays frozen, layer decay and the
head's own LR reach the optimiser through the schedule, and the phases are deterministic."""
from __future__ import annotations

import copy

import pytest
import torch

from hirl_core.config import Config, ConfigError
from hirl_core.data.datasets import InMemoryEval
from hirl_core.data.transforms import BatchEvalTransform
from hirl_core.engine.distributed import DistInfo
from hirl_core.engine.lifecycle import StageLifecycle
from hirl_core.engine.optim import set_lr
from hirl_core.evals.supervised import _PhaseTrainer
from hirl_core.evals.supervised_data import BatchTrainTransform
from hirl_core.evals.supervised_recipe import (Classifier, apply_lr, build_head, build_optimizer, lr_at,
                                               param_groups)
from hirl_core.models import build_backbone

from ._tiny import RESNET, VIT


def _separable(n: int, seed: int, transform=None) -> InMemoryEval:
    """16 px noise images whose class (of 4) sets their brightness: learnable by a linear probe on the
    pooled features of a random trunk."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = (torch.randint(0, 50, (n, 1, 16, 16), generator=g) + 60 * y.view(-1, 1, 1, 1)).to(torch.uint8)
    return InMemoryEval(x, y, transform or BatchEvalTransform(16, (0.3,), (0.35,)))


def _cfg(tmp_path, **extra) -> Config:
    base = {"seed": 0, "epochs": 2, "batch_size": 16, "output_dir": str(tmp_path / "out"), "device": "cpu",
            "backbone": dict(RESNET), "head": {"init": "normal", "std": 0.01},
            "optimizer": {"name": "sgd", "lr": 8.0, "momentum": 0.9, "weight_decay": 0.0},
            "schedule": {"name": "cosine"}, "augment": {}}
    base.update(extra)
    return Config(base)


def _trainer(cfg, mode: str, trunk) -> _PhaseTrainer:
    life = StageLifecycle(cfg, mode, DistInfo())  # untracked: no tracker, checkpoints still written
    trainer = _PhaseTrainer(cfg, mode, mode, DistInfo(), life, "pretrained", 0, 4, {})
    trainer.build(trunk, trunk.state_dict(), None)
    return trainer


def test_the_linear_probe_changes_neither_trunk_weights_nor_bn_statistics(tmp_path):
    torch.manual_seed(0)
    trunk = build_backbone(Config(RESNET))
    before = copy.deepcopy(trunk.state_dict())
    # augmented images: the trunk runs on every training batch (no precomputed features), with
    # model.train() called each epoch: the case where the seed's BN statistics drifted
    aug = {"random_resized_crop": True, "crop_scale": [0.5, 1.0], "flip": 0.5}
    train = _separable(128, 1, BatchTrainTransform(16, (0.3,), (0.35,), aug))
    cfg = _cfg(tmp_path, epochs=3, augment=aug)
    trainer = _trainer(cfg, "linear", trunk)
    head_before = copy.deepcopy(trainer.model.head.state_dict())
    record = trainer.fit(train, _separable(64, 2), start=0)
    after = trainer.model.trunk.state_dict()
    assert any("running_mean" in k for k in after)
    for key, value in before.items():
        assert torch.equal(after[key], value), key  # weights, running mean/var and num_batches_tracked
    assert not torch.equal(trainer.model.head.weight, head_before["weight"])
    assert record["top1"] > 0.5  # chance is 0.25


def test_precomputed_features_train_the_probe_as_images_would(tmp_path):
    """Without augmentation the head trains on features computed once: the trunk still never moves."""
    torch.manual_seed(0)
    trunk = build_backbone(Config(RESNET))
    before = copy.deepcopy(trunk.state_dict())
    cfg = _cfg(tmp_path, epochs=3, augment={"random_resized_crop": False, "flip": 0.0})
    trainer = _trainer(cfg, "linear", trunk)
    record = trainer.fit(_separable(128, 1), _separable(64, 2), start=0)
    assert trainer.train_features is not None
    assert all(torch.equal(trainer.model.trunk.state_dict()[k], v) for k, v in before.items())
    assert record["top1"] > 0.5


def test_layer_decay_gives_block_i_decay_to_the_depth_minus_i():
    """BEiT's convention (timm's param_groups_layer_decay): layer id 0 = embeddings, i + 1 = block i,
    depth + 1 = final norm and head; scale = decay ** (depth + 1 - layer id)."""
    depth, decay = 3, 0.5
    trunk = build_backbone(Config({**VIT, "depth": depth}))
    model = Classifier(trunk, build_head(trunk.out_dim, 4, {}))
    groups = param_groups(model, Config({"name": "adamw", "lr": 1e-3, "layer_decay": decay, "weight_decay": 0.05}))
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    expected = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("trunk.blocks."):
            i = int(name.split(".")[2])
            expected[name] = decay ** (depth - i)
        elif name.startswith(("trunk.patch_embed", "trunk.cls_token", "trunk.pos_embed")):
            expected[name] = decay ** (depth + 1)
        else:  # final norm, head
            expected[name] = 1.0
        assert scale_of[id(p)] == pytest.approx(expected[name]), name
    assert {round(v, 6) for v in expected.values()} == {round(decay ** k, 6) for k in range(depth + 2)}
    # no decay on biases, norms, the CLS token and position embedding; decay elsewhere
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert wd_of[id(named["trunk.blocks.0.attn.qkv.weight"])] == 0.05
    assert wd_of[id(named["trunk.cls_token"])] == 0.0 and wd_of[id(named["trunk.norm.bias"])] == 0.0


def test_layer_decay_on_a_resnet_is_one_clear_error():
    trunk = build_backbone(Config(RESNET))
    with pytest.raises(ConfigError, match="layer_decay=0.65 needs a ViT"):
        param_groups(Classifier(trunk, build_head(trunk.out_dim, 4, {})),
                     Config({"name": "sgd", "lr": 0.1, "layer_decay": 0.65}))


def test_lr_last_layer_follows_the_schedule_at_its_own_level():
    trunk = build_backbone(Config(RESNET))
    model = Classifier(trunk, build_head(trunk.out_dim, 4, {}))
    opt_cfg = Config({"name": "sgd", "lr": 0.1, "lr_last_layer": 2.0, "momentum": 0.9})
    optimizer = build_optimizer(opt_cfg, param_groups(model, opt_cfg), total_batch=512)
    head = {id(p) for p in model.head.parameters()}
    sched, steps, total = Config({"name": "cosine", "warmup_epochs": 1, "min_lr": 1e-4}), 5, 20
    for step in range(total):
        lr = lr_at(sched, 0.2, step, steps, total)  # 0.1 x 512/256
        apply_lr(optimizer, lr)
        for g in optimizer.param_groups:
            want = lr * 20 if id(g["params"][0]) in head else lr
            assert g["lr"] == pytest.approx(want), (step, g["lr"], want)
    # the seed's setter (one LR for every group) is what made lr_last_layer a no-op
    set_lr(optimizer, 0.01)
    assert {g["lr"] for g in optimizer.param_groups} == {0.01}


def test_lr_last_layer_reaches_the_trained_head(tmp_path):
    """Through the trainer: after a fine-tuning epoch the head's groups run at 10x the trunk's LR."""
    torch.manual_seed(0)
    trunk = build_backbone(Config(RESNET))
    cfg = _cfg(tmp_path, epochs=2, optimizer={"name": "sgd", "lr": 0.01, "lr_last_layer": 0.1, "momentum": 0.9},
               schedule={"name": "step", "milestones": [1], "gamma": 0.1})
    trainer = _trainer(cfg, "finetune", trunk)
    trainer.fit(_separable(64, 1), _separable(32, 2), start=0)
    head = {id(p) for p in trainer.model.head.parameters()}
    lrs = {id(g["params"][0]) in head: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs[False] == pytest.approx(0.01 * 16 / 256 * 0.1)  # step schedule after its milestone
    assert lrs[True] == pytest.approx(10 * lrs[False])


def test_step_schedule_warms_up_then_steps():
    sched = Config({"name": "step", "milestones": [2, 3], "gamma": 0.1, "warmup_epochs": 1})
    lrs = [lr_at(sched, 1.0, s, 2, 8) for s in range(8)]
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_finetune_phases_are_deterministic(tmp_path):
    """Two trainings of the same recipe (mixup, smoothing, erasing, EMA) give identical numbers: what
    a resumed run relies on, since every epoch re-seeds its RNGs."""
    aug = {"random_resized_crop": True, "crop_scale": [0.5, 1.0], "flip": 0.5, "reprob": 0.25}
    extra = {"augment": aug, "mixup": {"mixup_alpha": 0.8, "cutmix_alpha": 1.0}, "label_smoothing": 0.1,
             "model_ema": {"decay": 0.9}}
    records = []
    for run in range(2):
        torch.manual_seed(0)
        trunk = build_backbone(Config(RESNET))
        cfg = _cfg(tmp_path / str(run), **extra)
        trainer = _trainer(cfg, "finetune", trunk)
        train = _separable(64, 1, BatchTrainTransform(16, (0.3,), (0.35,), aug))
        records.append(trainer.fit(train, _separable(32, 2), start=0))
    assert records[0] == records[1]
    assert "top1_ema" in records[0]
