"""Every checkpoint layout in circulation loads the same backbone, tensor for tensor.

Each layout is built here from one source backbone's state dict (with the heads, momentum copies and
training state those files carry next to it), saved with torch.save, and loaded into a freshly
initialised backbone; every tensor must then equal the source's exactly.
"""
import timm
import torch
import torchvision
import pytest

from hirl_core.config import Config
from hirl_core.engine import checkpoint as ckpt
from hirl_core.hirl.wrapper import HIRL
from hirl_core.models import build_backbone
from hirl_core.models.loading import CheckpointError, load_backbone

from ._tiny import RESNET, VIT, tiny_method

SMALL_RESNET = {"arch": "resnet18", "width": 8}
SMALL_VIT = {"arch": "vit_tiny", "depth": 2, "image_size": 32, "patch_size": 8}


def _backbone(cfg, seed):
    torch.manual_seed(seed)
    return build_backbone(Config(dict(cfg)))


def _other(state):
    """A different tensor of each shape: a momentum encoder or student that must not be picked."""
    return {k: (v + 1 if v.is_floating_point() else v + 3) for k, v in state.items()}


def _prefixed(prefix, state):
    return {prefix + k: v for k, v in state.items()}


def _layouts(state, classifier):
    """name -> the object such a file holds; `classifier` is the source network's head (torchvision fc / timm head)."""
    head = {"head.mlp.0.weight": torch.zeros(16, 8), "head.last_layer.weight_g": torch.ones(1, 16)}
    return {
        "seed baseline backbone.pth": {"model": _prefixed("backbone.", state)},
        "seed HIRL backbone.pth": {"model": _prefixed("model.backbone.", state)},
        "DDP module.backbone.": {"model": _prefixed("module.backbone.", state)},
        "DDP module.model.backbone.": {"model": _prefixed("module.model.backbone.", state)},
        "plain state dict with its classifier": {**state, **classifier},
        "DINO checkpoint (teacher + student)": {
            "teacher": {**_prefixed("backbone.", state), **head},
            "student": _prefixed("module.backbone.", _other(state)),
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}, "epoch": 100},
        "DINO student only": {"student": {**_prefixed("module.backbone.", state), **head}},
        "MoCo v2 release (state_dict, encoder_q / encoder_k)": {"state_dict": {
            **_prefixed("module.encoder_q.", state), **_prefixed("module.encoder_k.", _other(state)),
            "module.queue": torch.zeros(8, 32), "module.encoder_q.fc.0.weight": torch.zeros(4, 4)},
            "arch": "resnet50", "epoch": 200},
        "MoCo v3 release (base / momentum encoder)": {"state_dict": {
            **_prefixed("module.momentum_encoder.", _other(state)), **_prefixed("module.base_encoder.", state)}},
        "state_dict without module.": {"state_dict": _prefixed("encoder.", state)},
    }


def _assert_loaded(path, source_state, cfg, prefix="auto"):
    dst = _backbone(cfg, seed=99)
    used = load_backbone(dst, path, prefix)
    got = dst.state_dict()
    assert got.keys() == source_state.keys()
    for k, v in source_state.items():
        assert torch.equal(got[k], v), k
    return used


@pytest.mark.parametrize("cfg", [SMALL_RESNET, SMALL_VIT], ids=["resnet", "vit"])
def test_every_layout_loads_identical_tensors(tmp_path, cfg):
    src = _backbone(cfg, seed=0)
    with torch.no_grad():  # BN statistics too, so they are not the initial ones a fresh model has
        for name, buf in src.named_buffers():
            buf.add_(2 if "num_batches" in name else 0.5)
    state = src.state_dict()
    classifier = ({"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)} if "fc" not in state
                  and cfg["arch"].startswith("resnet") else {"head.weight": torch.zeros(1000, 192),
                                                             "head.bias": torch.zeros(1000)})
    for name, obj in _layouts(state, classifier).items():
        path = tmp_path / "ckpt.pth"
        torch.save(obj, path)
        try:
            _assert_loaded(path, state, cfg)
        except AssertionError as err:
            raise AssertionError(f"layout {name!r}: {err}") from None


def test_prefixes_returned_are_those_of_the_seed_convention(tmp_path):
    state = _backbone(SMALL_RESNET, 0).state_dict()
    for obj, want in [({"model": _prefixed("module.model.backbone.", state)}, "model.backbone."),
                      ({"teacher": _prefixed("backbone.", state)}, "backbone."),
                      ({"state_dict": _prefixed("module.base_encoder.", state)}, "base_encoder."),
                      (state, "")]:
        torch.save(obj, tmp_path / "c.pth")
        assert _assert_loaded(tmp_path / "c.pth", state, SMALL_RESNET) == want
    torch.save({"model": {**_prefixed("a.", state), **_prefixed("b.", _other(state))}}, tmp_path / "c.pth")
    for given in ("b", "b.", "module.b"):
        assert _assert_loaded(tmp_path / "c.pth", _other(state), SMALL_RESNET, prefix=given) == "b."
    assert _assert_loaded(tmp_path / "c.pth", state, SMALL_RESNET, prefix="a") == "a."


def test_project_parameter_names_are_torchvision_and_timm_names():
    ours = build_backbone(Config({"arch": "resnet50"})).state_dict()
    theirs = torchvision.models.resnet50().state_dict()
    assert set(ours) == set(theirs) - {"fc.weight", "fc.bias"}
    assert all(ours[k].shape == theirs[k].shape for k in ours)
    ours = build_backbone(Config({"arch": "vit_small", "depth": 2})).state_dict()
    theirs = timm.create_model("vit_small_patch16_224", pretrained=False, depth=2).state_dict()
    assert set(ours) == set(theirs) - {"head.weight", "head.bias"}
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_real_torchvision_and_timm_state_dicts_load(tmp_path):
    torch.manual_seed(5)
    tv = torchvision.models.resnet18()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    _assert_loaded(tmp_path / "tv.pth", {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")},
                   {"arch": "resnet18"})
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, num_classes=10)
    torch.save(vit.state_dict(), tmp_path / "timm.pth")
    _assert_loaded(tmp_path / "timm.pth", {k: v for k, v in vit.state_dict().items() if not k.startswith("head.")},
                   {"arch": "vit_tiny", "depth": 2})


@pytest.mark.parametrize("name,cfg", [("mocov2", RESNET), ("dino", VIT), ("mocov3", None)])
def test_our_training_checkpoint_and_backbone_export_load(tmp_path, name, cfg):
    """checkpoint.pth (the training state) and backbone.pth, written by the engine's own functions."""
    method = tiny_method(name)
    with torch.no_grad():
        for p in method.parameters():
            p.add_(torch.randn_like(p))
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9)
    ckpt.atomic_save({"model": method.state_dict(), "optimizer": optimizer.state_dict(), "scaler": {},
                      "hirl_tree": None, "epoch": 3, "config": {"backbone": {"arch": "resnet18"}},
                      "mlflow_run_id": "abc"}, tmp_path / ckpt.CHECKPOINT)
    ckpt.export_backbone(method, tmp_path / ckpt.BACKBONE)
    want = method.backbone.state_dict()  # the query encoder / the teacher
    backbone_cfg = cfg or {**VIT, "pos_embed": "sincos", "weight_init": "mocov3"}
    assert _assert_loaded(tmp_path / ckpt.CHECKPOINT, want, backbone_cfg) == "backbone."
    assert _assert_loaded(tmp_path / ckpt.BACKBONE, want, backbone_cfg) == "backbone."


def test_hirl_training_checkpoint_and_backbone_export_load(tmp_path):
    model = HIRL(tiny_method("mocov2"), Config({"num_cluster": [12, 6], "num_neg_path": 5}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ckpt.atomic_save({"model": model.state_dict(), "epoch": 1}, tmp_path / ckpt.CHECKPOINT)
    ckpt.export_backbone(model, tmp_path / ckpt.BACKBONE, prefix="model.backbone.")
    for file in (ckpt.CHECKPOINT, ckpt.BACKBONE):
        assert _assert_loaded(tmp_path / file, model.backbone.state_dict(), RESNET) == "model.backbone."


def _error(tmp_path, obj, cfg=SMALL_RESNET):
    torch.save(obj, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError) as info:
        load_backbone(_backbone(cfg, 1), tmp_path / "wrong.pth")
    text = str(info.value)
    assert "\n" not in text and "wrong.pth" in text
    return text


def test_a_checkpoint_of_another_network_is_one_line_listing_its_layouts(tmp_path):
    vit = _backbone(SMALL_VIT, 0).state_dict()
    text = _error(tmp_path, {"model": _prefixed("module.encoder_q.", vit), "optimizer": {"state": {}}, "epoch": 3})
    n_resnet = len(_backbone(SMALL_RESNET, 0).state_dict())
    assert f"does not fit backbone ResNetTrunk ({n_resnet} tensors, e.g. conv1.weight, bn1.weight)" in text
    assert "top-level keys: model, optimizer, epoch" in text
    assert f"model:module.encoder_q. ({len(vit)} tensors)" in text
    text = _error(tmp_path, {"weights": torch.zeros(3)})
    assert "no key names a backbone tensor" in text and "top-level keys: weights" in text


def test_shape_differences_missing_tensors_and_ties_are_reported(tmp_path):
    state = _backbone(SMALL_RESNET, 0).state_dict()
    narrow = _backbone({**SMALL_RESNET, "in_chans": 1}, 0).state_dict()
    text = _error(tmp_path, {"model": _prefixed("backbone.", narrow)})
    assert "1 backbone tensors differ in shape" in text and "conv1.weight [8, 1, 7, 7] vs [8, 3, 7, 7]" in text
    partial = {k: v for k, v in state.items() if k != "layer4.1.bn2.weight"}
    assert "lacks 1 backbone tensors: layer4.1.bn2.weight" in _error(tmp_path, {"model": _prefixed("backbone.", partial)})
    text = _error(tmp_path, {"model": {**_prefixed("net_a.", state), **_prefixed("net_b.", state)}})
    assert "is ambiguous" in text and "'net_a.'" in text and "backbone_prefix" in text
    deeper = _backbone({**SMALL_RESNET, "arch": "resnet34"}, 0).state_dict()  # resnet18's names are a subset
    assert "holds 80 backbone tensors this backbone lacks: layer1.2.conv1.weight" in _error(tmp_path, deeper)
    vit = _backbone(SMALL_VIT, 0).state_dict()
    assert "this backbone lacks: blocks.1.norm1.weight" in _error(tmp_path, vit, {**SMALL_VIT, "depth": 1})
    no_bn_counts = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(no_bn_counts, tmp_path / "old.pth")  # torchvision files from before BN counted batches
    load_backbone(_backbone(SMALL_RESNET, 1), tmp_path / "old.pth")
