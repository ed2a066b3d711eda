"""Tiny configurations of every method for CPU tests (a few thousand parameters, 16-28 px inputs)."""
from __future__ import annotations

import copy

import torch

from hirl_core.config import Config
from hirl_core.methods import build_method
from hirl_core.methods.masking import batch_block_masks

RESNET = {"arch": "resnet18", "width": 4, "small_stem": True, "stem_stride": 2, "in_chans": 1}
VIT = {"arch": "vit_tiny", "image_size": 16, "patch_size": 4, "in_chans": 1, "depth": 1}

METHOD_CFGS = {
    "mocov2": ({"name": "mocov2", "dim": 8, "hidden_dim": 16, "queue_size": 32, "momentum": 0.9, "temperature": 0.2},
               RESNET, 0),
    "simsiam": ({"name": "simsiam", "dim": 16, "pred_dim": 8, "fix_pred_lr": True}, RESNET, 0),
    "swav": ({"name": "swav", "dim": 8, "hidden_dim": 16, "n_prototypes": 12, "temperature": 0.1, "epsilon": 0.05,
              "sinkhorn_iterations": 3, "crops_for_assign": [0, 1], "freeze_prototypes_iters": 0,
              "queue_length": 0, "epoch_queue_starts": 0}, RESNET, 2),
    "mocov3": ({"name": "mocov3", "dim": 8, "mlp_dim": 16, "temperature": 0.2, "momentum": 0.99},
               {**VIT, "pos_embed": "sincos", "weight_init": "mocov3"}, 0),
    "dino": ({"name": "dino", "out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8, "student_temp": 0.1,
              "teacher_temp": 0.07, "warmup_teacher_temp": 0.04, "warmup_teacher_temp_epochs": 2,
              "center_momentum": 0.9, "momentum_teacher": 0.99, "freeze_last_layer": 0}, VIT, 2),
    "ibot": ({"name": "ibot", "out_dim": 32, "patch_out_dim": 32, "shared_head": True, "hidden_dim": 16,
              "bottleneck_dim": 8, "student_temp": 0.1, "teacher_temp": 0.07, "teacher_patch_temp": 0.07,
              "warmup_teacher_temp": 0.04, "warmup_teacher_patch_temp": 0.04, "warmup_teacher_temp_epochs": 2,
              "momentum_teacher": 0.99, "freeze_last_layer": 0, "pred_ratio": [0.0, 0.3],
              "pred_ratio_var": [0.0, 0.2]}, VIT, 2),
}


def tiny_method(name: str, seed: int = 0, **overrides):
    method_cfg, backbone_cfg, _ = METHOD_CFGS[name]
    torch.manual_seed(seed)
    return build_method(Config({"method": {**method_cfg, **overrides}, "backbone": copy.deepcopy(backbone_cfg)}))


def tiny_views(name: str, batch: int, seed: int = 1) -> list[torch.Tensor]:
    """Global views at 16 px then the method's local crops at 8 px."""
    g = torch.Generator().manual_seed(seed)
    n_local = METHOD_CFGS[name][2]
    return ([torch.randn(batch, 1, 16, 16, generator=g) for _ in range(2)]
            + [torch.randn(batch, 1, 8, 8, generator=g) for _ in range(n_local)])


def tiny_masks(batch: int, seed: int = 2) -> list[torch.Tensor]:
    import random
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    # block masks plus a few random patches, so that every image has some masked tokens
    return [batch_block_masks(batch, 4, 4, [0.3], [0.2], rng=rng) | (torch.rand(batch, 4, 4, generator=g) < 0.2)
            for _ in range(2)]


def forward(model, name, views, masks=None):
    return model(views, masks=masks) if name == "ibot" else model(views)


def loss_drops_after_one_step(name: str, lr: float = 0.05, batch: int = 8) -> tuple[float, float]:
    """Loss on a fixed batch before and after one SGD step, with every buffer (queues, centers, BN
    statistics) restored before each measurement, so only the trained weights differ."""
    model = tiny_method(name)
    views, masks = tiny_views(name, batch), tiny_masks(batch) if name == "ibot" else None
    buffers = copy.deepcopy({k: v for k, v in model.state_dict().items() if "running" in k or "queue" in k
                             or "center" in k or "num_batches" in k})

    def measure():
        model.load_state_dict(buffers, strict=False)
        with torch.no_grad():
            return forward(model, name, views, masks).loss.item()

    before = measure()
    model.load_state_dict(buffers, strict=False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    out = forward(model, name, views, masks)
    opt.zero_grad()
    out.loss.backward()
    model.before_optimizer_step()
    opt.step()
    return before, measure()


def perturbed_backbone(folder, backbone: dict):
    """A 'pre-trained' backbone (the seed-0 init, perturbed) as ``<folder>/backbone.pth`` in the seed's
    format, with the config.yaml an evaluation reads its architecture and seed from; returns the file."""
    from hirl_core.config import dump_config
    from hirl_core.engine import checkpoint as ckpt
    from hirl_core.engine.lifecycle import seed_all
    from hirl_core.models import build_backbone

    folder.mkdir(parents=True)
    seed_all(0)
    net = build_backbone(Config(backbone))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    torch.save({"model": {f"backbone.{k}": v for k, v in net.state_dict().items()}}, folder / ckpt.BACKBONE)
    dump_config(Config({"seed": 0, "backbone": backbone}), folder / "config.yaml")
    return folder / ckpt.BACKBONE
