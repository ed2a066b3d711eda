"""Bad input: one clear line on stderr, exit code 2, and nothing created or tracked."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


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
