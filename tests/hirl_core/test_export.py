"""Backbone export: what is written loads exactly into torchvision / timm / back into the project, and
detectron2's names map back to every tensor."""
import pickle
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
import torchvision

from hirl_core.config import Config, dump_config
from hirl_core.export import detectron2_name, export, main, torchvision_name
from hirl_core.models import build_backbone
from hirl_core.models.loading import load_backbone

from ._tiny import RESNET, VIT


def _trained(cfg, seed=0):
    """A backbone whose every tensor (BN statistics included) differs from a fresh one's."""
    torch.manual_seed(seed)
    model = build_backbone(Config(dict(cfg)))
    with torch.no_grad():
        for name, t in model.state_dict().items():
            t.add_(3 if "num_batches" in name else torch.rand_like(t) * 0.1 + 0.05)
    return model


def _assert_same(state, want):
    assert set(state) == set(want)
    for k, v in want.items():
        assert torch.equal(torch.as_tensor(state[k]), v), k


def test_resnet_to_torchvision_loads_into_torchvision_exactly(tmp_path):
    src = _trained({"arch": "resnet18"})
    torch.save({"model": {f"model.backbone.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "backbone.pth")
    line = export(str(tmp_path / "backbone.pth"), "torchvision", str(tmp_path / "tv.pth"))
    assert "resnet18 backbone" in line and "'model.backbone.'" in line
    written = torch.load(tmp_path / "tv.pth", weights_only=True)
    _assert_same(written, src.state_dict())
    tv = torchvision.models.resnet18()
    assert set(tv.load_state_dict(written, strict=False).missing_keys) == {"fc.weight", "fc.bias"}
    back = build_backbone(Config({"arch": "resnet18"}))
    assert load_backbone(back, tmp_path / "tv.pth") == ""
    _assert_same(back.state_dict(), src.state_dict())


def test_vit_to_timm_loads_into_timm_and_gives_the_same_features(tmp_path):
    src = _trained({"arch": "vit_tiny", "depth": 2}).eval()
    dino = {"teacher": {f"backbone.{k}": v for k, v in src.state_dict().items()},
            "student": {f"module.backbone.{k}": v + 1 for k, v in src.state_dict().items()}, "epoch": 3}
    torch.save(dino, tmp_path / "dino.pth")
    export(str(tmp_path / "dino.pth"), "timm", str(tmp_path / "timm.pth"))  # arch inferred from the tensors
    written = torch.load(tmp_path / "timm.pth", weights_only=True)
    _assert_same(written, src.state_dict())
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, num_classes=0).eval()
    vit.load_state_dict(written, strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(vit(x), src(x))


def test_resnet_to_detectron2_maps_back_to_every_tensor(tmp_path):
    src = _trained({"arch": "resnet50"})
    torch.save({"state_dict": {f"module.encoder_q.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "m.pth")
    export(str(tmp_path / "m.pth"), "detectron2", str(tmp_path / "d2.pkl"))
    with open(tmp_path / "d2.pkl", "rb") as f:
        d2 = pickle.load(f)
    assert d2["__author__"] == "hirl" and d2["matching_heuristics"] is True
    model = d2["model"]
    assert all(isinstance(v, np.ndarray) for v in model.values())
    for name in ("stem.conv1.weight", "stem.conv1.norm.running_var", "res2.0.conv1.norm.weight", "res2.0.conv3.weight",
                 "res2.0.shortcut.weight", "res2.0.shortcut.norm.bias", "res5.2.conv2.norm.running_mean"):
        assert name in model, name  # detectron2's own ResNet names
    assert not any("layer" in k or "bn" in k or "downsample" in k for k in model)
    _assert_same({torchvision_name(k): torch.from_numpy(v) for k, v in model.items()}, src.state_dict())


def test_detectron2_names_of_each_kind():
    assert detectron2_name("conv1.weight") == "stem.conv1.weight"
    assert detectron2_name("bn1.running_mean") == "stem.conv1.norm.running_mean"
    assert detectron2_name("layer1.0.bn3.weight") == "res2.0.conv3.norm.weight"
    assert detectron2_name("layer4.0.downsample.0.weight") == "res5.0.shortcut.weight"
    assert detectron2_name("layer4.0.downsample.1.num_batches_tracked") == "res5.0.shortcut.norm.num_batches_tracked"
    assert detectron2_name("layer3.5.conv2.weight") == "res4.5.conv2.weight"


def test_the_backbone_shape_comes_from_config_then_config_yaml_then_the_tensors(tmp_path):
    src = _trained(RESNET)  # width 4, 3x3 stem, 1 channel: nothing torchvision's defaults would rebuild
    state = {f"backbone.{k}": v for k, v in src.state_dict().items()}
    torch.save({"model": state, "epoch": 2, "config": {"backbone": dict(RESNET)}}, tmp_path / "checkpoint.pth")
    (tmp_path / "run").mkdir()
    torch.save({"model": state}, tmp_path / "run" / "backbone.pth")
    dump_config(Config({"backbone": dict(RESNET), "seed": 0}), tmp_path / "run" / "config.yaml")
    torch.save(src.state_dict(), tmp_path / "bare.pth")
    for path in (tmp_path / "checkpoint.pth", tmp_path / "run" / "backbone.pth", tmp_path / "bare.pth"):
        export(str(path), "torchvision", str(tmp_path / "out.pth"))
        _assert_same(torch.load(tmp_path / "out.pth", weights_only=True), src.state_dict())
    vit = _trained({**VIT, "mask_token": True})
    torch.save({"model": {f"backbone.{k}": v for k, v in vit.state_dict().items()}}, tmp_path / "ibot.pth")
    export(str(tmp_path / "ibot.pth"), "timm", str(tmp_path / "vit.pth"))  # patch 4, 16 px, 1 block: inferred
    _assert_same(torch.load(tmp_path / "vit.pth", weights_only=True),
                 {k: v for k, v in vit.state_dict().items() if k != "mask_token"})


def _fails(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("hirl_core: error: ") and err.count("\n") == 1
    return err


def test_bad_input_is_one_line(tmp_path, capsys):
    src = _trained(RESNET)
    torch.save({"model": {f"backbone.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "r.pth")
    out = str(tmp_path / "x.pth")
    assert "unknown --format 'onnx'; allowed: torchvision, timm, detectron2" in _fails(
        [str(tmp_path / "r.pth"), "--format", "onnx", "-o", out], capsys)
    assert "--format timm takes vits" in _fails([str(tmp_path / "r.pth"), "--format", "timm", "-o", out], capsys)
    assert "unknown --arch 'resnet9'" in _fails([str(tmp_path / "r.pth"), "--format", "torchvision", "--arch",
                                                 "resnet9", "-o", out], capsys)
    assert "checkpoint not found" in _fails([str(tmp_path / "nope.pth"), "--format", "timm", "-o", out], capsys)
    assert "required: -o/--output" in _fails([str(tmp_path / "r.pth"), "--format", "timm"], capsys)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert "cannot read checkpoint" in _fails([str(tmp_path / "junk.pth"), "--format", "timm", "-o", out], capsys)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "w.pth")
    assert "no ResNet or ViT found" in _fails([str(tmp_path / "w.pth"), "--format", "timm", "-o", out], capsys)
    assert not (tmp_path / "x.pth").exists()


def test_python_m_hirl_core_export_runs(tmp_path):
    src = _trained(RESNET)
    torch.save({"model": {f"backbone.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "r.pth")
    done = subprocess.run([sys.executable, "-m", "hirl_core.export", str(tmp_path / "r.pth"), "--format",
                           "detectron2", "-o", str(tmp_path / "r.pkl")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote {tmp_path / 'r.pkl'}: resnet18 backbone")
    assert (tmp_path / "r.pkl").is_file()
