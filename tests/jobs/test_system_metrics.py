"""System metrics through MLflow's own monitor, in a tiny real chain on the local backend: the stage whose
config sets ``tracking.system_metrics_interval_s`` logs ``system/*``; the other, left to the local
default, logs none. And the schema refuses an interval below one second before anything exists."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SPEC = """\
name: sysm
stages:
  pretrain:
    config: configs/pretrain/baseline/mocov2_demo.yaml
    overrides: [epochs=3, batch_size=64, data.train_subset=2048, method.queue_size=64, backbone.width=8,
                method.hidden_dim=32, "+tracking.system_metrics_interval_s={interval}"]
  knn:
    config: configs/downstream/knn/knn_demo.yaml
    after: pretrain
    overrides: [data.train_subset=256, data.val_subset=200]
"""


def _submit(root, interval):
    (root / "configs" / "experiments" / "sysm.yaml").write_text(SPEC.format(interval=interval))
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    for key in ("MLFLOW_RUN_ID", "HIRL_IMAGE"):
        env.pop(key, None)
    return subprocess.run([sys.executable, "-m", "jobs", "submit", "sysm"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=400)


@pytest.mark.fashion_mnist
def test_a_stage_with_an_interval_logs_system_metrics_and_a_local_default_does_not(tmp_path):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    res = _submit(tmp_path, 1)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = c.search_runs([c.get_experiment_by_name("sysm").experiment_id])
    stages = {r.data.tags["hirl.stage"]: r for r in runs if "hirl.stage" in r.data.tags}
    pre, knn = stages["pretrain"].data.metrics, stages["knn"].data.metrics
    assert "system/cpu_utilization_percentage" in pre and "system/system_memory_usage_megabytes" in pre
    assert stages["pretrain"].data.params["tracking.system_metrics_interval_s"] == "1"
    assert not [k for k in knn if k.startswith("system/")]  # local backend, no interval: off


def test_an_interval_below_one_second_is_refused_before_anything_exists(tmp_path):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    res = _submit(tmp_path, 0.1)
    assert res.returncode == 2 and not (tmp_path / "mlflow.db").exists()
    (line,) = res.stderr.strip().splitlines()
    assert "tracking.system_metrics_interval_s=0.1" in line and "no system metrics" in line
