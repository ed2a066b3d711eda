"""A real 2 x 2 sweep, end to end: `hirl submit` of seed x pretrain.epochs over the demo chain at test size
(real Fashion-MNIST, real MoCo v2 and KNN stage processes, a real MLflow store), then resubmit, status and
report, the report's numbers checked against MLflow. About two minutes on two CPU cores."""

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SWEEP = """\
name: tiny_sweep
description: the demo chain at test size, two seeds x two epoch counts
stages:
  pretrain:
    config: configs/pretrain/baseline/mocov2_demo.yaml
    overrides: [batch_size=64, data.train_subset=512, method.queue_size=256, backbone.width=16,
                method.hidden_dim=64]
  knn:
    config: configs/downstream/knn/knn_demo.yaml
    after: pretrain
    overrides: [data.train_subset=512, data.val_subset=500]
matrix:
  seed: [0, 1]
  pretrain.epochs: [1, 2]
"""

pytestmark = [pytest.mark.slow, pytest.mark.fashion_mnist]  # HIRL_REQUIRE_DATA=1: missing data fails


def _env(root):
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_RUN_ID", None)
    return env


def _hirl(root, *args):
    return subprocess.run([sys.executable, "-m", "jobs", *args], cwd=root, env=_env(root), capture_output=True,
                          text=True, timeout=2400)


def _runs(root):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny_sweep")
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def test_a_two_by_two_sweep_runs_for_real_and_reports_what_mlflow_holds(tmp_path):
    root = tmp_path
    shutil.copytree(REPO / "configs", root / "configs")
    (root / "configs/experiments/tiny_sweep.yaml").write_text(SWEEP)

    res = _hirl(root, "submit", "tiny_sweep")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert res.stdout.count("done pretrain: FINISHED") == 4 and res.stdout.count("done knn: FINISHED") == 4

    client, runs = _runs(root)
    sweeps = [r for r in runs if r.data.tags.get("hirl.kind") == "sweep"]
    chains = [r for r in runs if r.data.tags.get("hirl.kind") == "chain"]
    stages = [r for r in runs if "hirl.stage" in r.data.tags]
    assert len(sweeps) == 1 and len(chains) == 4 and len(stages) == 8
    sweep_id = sweeps[0].data.tags["hirl.sweep"]
    assert {c.data.tags["hirl.sweep"] for c in chains} == {sweep_id}
    assert all(r.info.status == "FINISHED" for r in runs)
    labels = sorted(c.data.tags["hirl.cell_label"] for c in chains)
    assert labels == ["seed=0 pretrain.epochs=1", "seed=0 pretrain.epochs=2", "seed=1 pretrain.epochs=1",
                      "seed=1 pretrain.epochs=2"]
    for chain in chains:  # each cell trained for its own number of epochs, with its own seed
        pre = next(r for r in stages if r.data.tags["mlflow.parentRunId"] == chain.info.run_id
                   and r.data.tags["hirl.stage"] == "pretrain")
        epochs = int(chain.data.tags["hirl.cell_label"].split("pretrain.epochs=")[1])
        assert len(client.get_metric_history(pre.info.run_id, "loss")) == epochs

    again = _hirl(root, "submit", "tiny_sweep")  # identical: nothing new
    assert again.returncode == 0 and "nothing new to run: all 4 cells are finished" in again.stdout
    assert again.stdout.count("skip ") == 8 and "run pretrain" not in again.stdout
    assert len(_runs(root)[1]) == len(runs)

    status = _hirl(root, "status", "tiny_sweep")
    assert status.returncode == 0 and "4 cells (4 FINISHED)" in status.stdout
    assert status.stdout.count("knn_top1_k20=") == 4

    report = _hirl(root, "report", "tiny_sweep", "--out", str(root / "report"))
    assert report.returncode == 0, report.stderr
    with open(root / "report" / "tiny_sweep.csv", newline="") as f:
        table = list(csv.DictReader(f))
    knn = {c.data.tags["hirl.cell_label"]: next(
        r for r in stages if r.data.tags["mlflow.parentRunId"] == c.info.run_id and r.data.tags["hirl.stage"] == "knn")
        for c in chains}
    assert len(table) == 4
    for row in table:
        label = f"seed={row['seed']} pretrain.epochs={row['pretrain.epochs']}"
        assert float(row["KNN"]) == round(100 * knn[label].data.metrics["knn_top1_k20"], 2)
        assert row["Batch Size"] == "64" and row["Epochs"] == row["pretrain.epochs"]
    assert (root / "report" / "tiny_sweep.png").stat().st_size > 1000
    arts = {a.path for a in client.list_artifacts(sweeps[0].info.run_id, "report")}
    assert arts == {"report/tiny_sweep.md", "report/tiny_sweep.csv", "report/tiny_sweep.png"}
