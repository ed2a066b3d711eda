"""Bad input: one clear line on stderr, exit code 2, and nothing created or tracked."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _run(argv, tmp_path, cwd=REPO):
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO))
    env.pop("MLFLOW_RUN_ID", None)
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("args, expected", [
    (["submit", "nope"], ["unknown experiment 'nope'", "demo"]),
    (["submit", "demo", "--set", "optimizer.lrr=0.1"], ["optimizer.lrr", "optimizer.lr"]),
    (["submit", "demo", "--set", "data.root=/no/such/dir"], ["/no/such/dir", "dataset-fashion-mnist"]),
    (["submit", "demo", "--set", "data.dataset=imagefolder", "data.root=/no/such/dir"], ["/no/such/dir/train"]),
    (["submit", "demo", "--backend", "kubernetes"], ["kubernetes", "local"]),
    (["plan", "demo", "--set", "pretrain.epochs"], ["pretrain.epochs"]),
])
def test_cli_rejects_bad_input_before_creating_anything(tmp_path, args, expected):
    res = _run(["-m", "jobs", *args], tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hirl: error: "), res.stderr
    for text in expected:
        assert text in lines[0]
    assert not (tmp_path / "mlflow.db").exists()


def _repo_copy(tmp_path):
    """The configs in a root of their own, so that anything a command writes under outputs/ shows."""
    root = tmp_path / "root"
    shutil.copytree(REPO / "configs", root / "configs")
    shutil.copy(FIXTURES / "bad_axis_sweep.yaml", root / "configs" / "experiments")
    return root


# (spec, --set overrides, what the one line must name: the key with its value, and what is allowed)
BAD_VALUES = [
    ("demo", ["pretrain.epochs=0"], ["epochs=0 is out of range", "an integer >= 1"]),
    ("demo", ["epochs=-3"], ["epochs=-3 is out of range", "an integer >= 1"]),
    ("demo", ["epochs=abc"], ["epochs='abc'", "an integer >= 1"]),
    ("demo", ["epochs=2.5"], ["epochs=2.5", "an integer >= 1"]),
    ("demo", ["optimizer.lr=None"], ["optimizer.lr=None", "a number > 0"]),
    ("demo", ["batch_size=0"], ["batch_size=0 is out of range", "an integer >= 1"]),
    ("demo", ["data.train_subset=-5"], ["data.train_subset=-5 is out of range", "null (all) or an integer >= 1"]),
    ("demo", ["method.name=nope"], ["method.name='nope'", "mocov2, simsiam, swav, mocov3, dino, ibot"]),
    ("demo", ["backbone.arch=resnet999"], ["backbone.arch='resnet999'", "resnet18", "vit_base"]),
    ("demo", ["optimizer.name=sgdx"], ["optimizer.name='sgdx'", "(did you mean 'sgd'?)", "sgd, adamw, lars"]),
    ("demo", ["precision=fp8"], ["precision='fp8'", "auto, fp32, bf16, fp16"]),
    ("demo", ["device=tpu"], ["device='tpu'", "auto, cpu, cuda"]),
    ("bad_axis_sweep", [], ["cell optimizer.lr=fast: ", "optimizer.lr='fast' has the wrong type", "a number > 0"]),
]


@pytest.mark.parametrize("verb", ["plan", "submit"])
@pytest.mark.parametrize("spec, overrides, expected", BAD_VALUES,
                         ids=[" ".join(case[1]) or case[0] for case in BAD_VALUES])
def test_cli_refuses_a_value_the_schema_does_not_allow(tmp_path, verb, spec, overrides, expected):
    root = _repo_copy(tmp_path)
    res = _run(["-m", "jobs", verb, spec, *[a for o in overrides for a in ("--set", o)]], tmp_path, cwd=root)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = (res.stdout + res.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hirl: error: "), res.stdout + res.stderr
    assert "stage 'pretrain': " in lines[0], lines[0]
    for text in expected:
        assert text in lines[0], lines[0]
    assert not (tmp_path / "mlflow.db").exists()
    assert not (root / "outputs").exists()


@pytest.mark.parametrize("stage, config, overrides, expected", [
    ("pretrain", "configs/pretrain/baseline/mocov2_demo.yaml", ["epochs=0"], "pretrain: epochs=0 is out of range"),
    ("pretrain", "configs/pretrain/baseline/mocov2_demo.yaml", ["device=tpu"], "pretrain: device='tpu'"),
    ("knn", "configs/downstream/knn/knn_demo.yaml", ["knn.k=[0,20]", "pretrained=x.pth", "+backbone.arch=resnet18"],
     "knn: knn.k=[0, 20] is out of range"),
])
def test_a_stage_run_by_hand_refuses_the_same_values(tmp_path, stage, config, overrides, expected):
    out = tmp_path / "out"
    res = _run(["-m", "hirl_core", stage, "-c", config, *overrides, f"output_dir={out}"], tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = (res.stdout + res.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hirl_core: error: {expected}"), res.stdout + res.stderr
    assert not (tmp_path / "mlflow.db").exists() and not out.exists()


def test_knn_refuses_a_corrupt_checkpoint_in_one_line(tmp_path):
    bad = tmp_path / "backbone.pth"
    bad.write_bytes(b"\x80\x02 definitely not a torch file")
    res = _run(["-m", "hirl_core", "knn", "-c", "configs/downstream/knn/knn_demo.yaml", f"pretrained={bad}",
                "+backbone.arch=resnet18", f"output_dir={tmp_path / 'out'}"], tmp_path)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot read checkpoint" in lines[0] and str(bad) in lines[0]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "out").exists()


def test_stage_rejects_unknown_override_key(tmp_path):
    res = _run(["-m", "hirl_core", "pretrain", "-c", "configs/pretrain/baseline/mocov2_demo.yaml",
                "optimizer.lrr=0.1"], tmp_path)
    assert res.returncode == 2
    assert "optimizer.lrr" in res.stderr and "optimizer.lr" in res.stderr and "Traceback" not in res.stderr
