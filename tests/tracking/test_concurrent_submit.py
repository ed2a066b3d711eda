"""Two ``hirl submit`` of the same cell at once, on a fresh sqlite store: one trains, the other says in
one line that the cell is already running and where; the store ends with one chain run and one run per
stage. And processes that open a fresh sqlite store at the same moment do not race MLflow's schema
migration (``table _alembic_tmp_... already exists``). Real CLI processes, real data, real MLflow."""
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = """\
name: tiny
stages:
  pretrain:
    config: configs/pretrain/baseline/mocov2_demo.yaml
    overrides: [epochs=3, batch_size=32, data.train_subset=512, method.queue_size=64, backbone.width=4,
                method.hidden_dim=16, method.dim=8]
  knn:
    config: configs/downstream/knn/knn_demo.yaml
    after: pretrain
    overrides: [data.train_subset=512, data.val_subset=500]
"""

pytestmark = pytest.mark.timeout(240)


def _env(root):
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("MLFLOW_RUN_ID", None)
    return env


@pytest.mark.fashion_mnist
def test_two_submits_of_one_cell_at_once_leave_one_chain_and_say_where_it_runs(tmp_path):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    (tmp_path / "configs" / "experiments" / "tiny.yaml").write_text(TINY)
    procs = [subprocess.Popen([sys.executable, "-m", "jobs", "submit", "tiny"], cwd=tmp_path, env=_env(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=220) for p in procs]
    codes = sorted(p.returncode for p in procs)
    everything = "\n".join(o + e for o, e in outs)
    assert codes == [0, 2], everything[-4000:]
    assert "Traceback" not in everything and "_alembic_tmp" not in everything, everything[-4000:]
    winner = next(p for p in procs if p.returncode == 0)
    refused = [e for p, (o, e) in zip(procs, outs) if p.returncode == 2][0].strip().splitlines()
    assert len(refused) == 1 and "already running" in refused[0], refused
    assert f"pid {winner.pid} on {socket.gethostname()}" in refused[0], refused

    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = c.search_runs([c.get_experiment_by_name("tiny").experiment_id], max_results=100)
    chains = [r for r in runs if r.data.tags.get("hirl.kind") == "chain"]
    stages = sorted(r.data.tags.get("hirl.stage") for r in runs if "hirl.stage" in r.data.tags)
    assert len(chains) == 1 and stages == ["knn", "pretrain"], [(r.info.run_name, r.info.status) for r in runs]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert len(c.get_metric_history(next(r for r in runs if r.data.tags.get("hirl.stage") == "pretrain")
                                    .info.run_id, "loss")) == 3  # each epoch's loss once: one trainer


OPEN = "import sys; from jobs import lineage; lineage.client(sys.argv[1]).search_experiments(); print('ok')"


def test_processes_opening_a_fresh_sqlite_store_at_once_do_not_race_its_migration(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", OPEN, uri], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=200)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(outs)[-4000:]
