"""`hirl export`: a finished pre-training's backbone.pth found through a real MLflow store, exported by
`python -m hirl_core.export` in a child process; bad requests are one line before anything runs."""


import pytest
import torch

from hirl_core.config import Config, dump_config
from hirl_core.models import build_backbone
from jobs import cli, lineage
from jobs.dag import compile_cell
from jobs.spec import load_experiment


TINY = {"arch": "resnet18", "width": 4, "small_stem": True, "in_chans": 1}


def _pretrained(root, status):
    """The demo chain's runs, its pretrain in `status` with the outputs a pre-training leaves."""
    cell = compile_cell(load_experiment("demo", root=root))
    runs = lineage.ensure_chain(cell, "local")
    out = root / cell.stage("pretrain").output_dir
    out.mkdir(parents=True)
    torch.manual_seed(0)
    backbone = build_backbone(Config(TINY))
    torch.save({"model": {f"backbone.{k}": v + 1 for k, v in backbone.state_dict().items()}}, out / "backbone.pth")
    dump_config(Config({"backbone": TINY, "seed": 0}), out / "config.yaml")
    lineage.set_run_status(runs["pretrain"].run_id, status)
    return out


def test_export_of_a_finished_stage_writes_its_backbone(root, capfd):
    out = _pretrained(root, "FINISHED")
    rc = cli.main(["export", "--experiment", "demo", "--format", "torchvision", "-o", "tv.pth"])
    assert rc == 0, capfd.readouterr().err
    assert f"from {out.relative_to(root)}/backbone.pth" in capfd.readouterr().out
    stored = torch.load(out / "backbone.pth", weights_only=True)["model"]
    written = torch.load(root / "tv.pth", weights_only=True)
    assert set(written) == {k.removeprefix("backbone.") for k in stored}
    assert all(torch.equal(written[k.removeprefix("backbone.")], v) for k, v in stored.items())


def test_export_of_a_path_passes_the_child_error_through(root, capfd):
    assert cli.main(["export", "missing.pth", "--format", "timm", "-o", "x.pth"]) == 2
    err = capfd.readouterr().err
    assert err == "hirl_core: error: checkpoint not found: missing.pth\n"


@pytest.mark.parametrize("argv,message", [
    (["--format", "timm", "-o", "x.pth"], "not neither"),
    (["a.pth", "--experiment", "demo", "--format", "timm", "-o", "x.pth"], "not both"),
    (["--experiment", "demo", "--stage", "knn", "--format", "timm", "-o", "x.pth"], "'knn' is not a pretrain stage"),
    (["--experiment", "demo", "--stage", "nope", "--format", "timm", "-o", "x.pth"], "unknown stage 'nope'"),
    (["--experiment", "demo", "--format", "timm", "-o", "x.pth"], "is RUNNING, not FINISHED"),
])
def test_bad_requests_are_one_line(root, capfd, argv, message):
    _pretrained(root, "RUNNING")
    assert cli.main(["export", *argv]) == 2
    err = capfd.readouterr().err
    assert err.startswith("hirl: error: ") and err.count("\n") == 1 and message in err, err
    assert not (root / "x.pth").exists()
