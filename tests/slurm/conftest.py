"""Fixtures for the tests against a real SLURM cluster (``.ci/run`` starts slurm/dev-up.sh before
``make test``; locally: ``make dev-slurm-up`` and ``export SLURM_CONF=/tmp/hirl-slurm/slurm.conf``).

Each test gets its own repo root under tmp_path: the configs, a site profile ``test`` whose python
is this interpreter, ``.venv`` linked to the checkout's, and MLflow: the shared tracking server
(``HIRL_TRACKING_SERVER``, PostgreSQL-backed, tracking/up.sh) when it is up, else a sqlite store of the
test on the shared filesystem (the dev cluster's nodes are this host, so jobs reach either). Jobs a test
submits in-process take the URI from the submitting environment, so the fixture exports it."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..needs_data import fashion_mnist_or_skip

REPO = Path(__file__).resolve().parents[2]
TINY = """\
name: {name}
description: the demo chain at test size, through SLURM
stages:
  pretrain:
    config: configs/pretrain/baseline/mocov2_demo.yaml
    overrides: [epochs={epochs}, batch_size=64, data.train_subset={subset}, method.queue_size=64,
                backbone.width=16, method.hidden_dim=64]
{knn}resources:
  slurm: {{time: {time}{extra}}}
"""
KNN = """\
  knn:
    config: configs/downstream/knn/knn_demo.yaml
    after: pretrain
    overrides: [data.train_subset=512, data.val_subset=500]
"""


@pytest.fixture(scope="session")
def cluster():
    """The running cluster's sinfo; skipped (with the reason) only when there is no SLURM at all."""
    if not os.environ.get("SLURM_CONF") or not shutil.which("sbatch"):
        pytest.skip("needs a SLURM cluster: SLURM_CONF is unset or sbatch is missing "
                    "(make dev-slurm-up, then export SLURM_CONF=/tmp/hirl-slurm/slurm.conf)")
    fashion_mnist_or_skip()  # HIRL_REQUIRE_DATA=1 (CI): missing data fails instead
    out = subprocess.run(["sinfo", "-h", "-o", "%D %t"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"SLURM_CONF is set but the cluster does not answer: {out.stderr}"
    return out.stdout


class Root:
    """A throwaway repo root with its own experiments, MLflow store and submit/status helpers."""

    def __init__(self, path):
        self.path = path
        # The shared tracking server when it is up (.ci/run: tracking/up.sh), else a sqlite file of this test.
        # On the server the experiments of one test get names of their own (the spec files keep theirs):
        # cells with the same config have the same id, and an earlier test's chains would be found.
        server = os.environ.get("HIRL_TRACKING_SERVER", "")
        self.uri = server or f"sqlite:///{path / 'mlflow.db'}"
        self.suffix = f"-{os.getpid()}-{time.time_ns() % 10**9}" if server else ""
        shutil.copytree(REPO / "configs", path / "configs")
        (path / "slurm").mkdir()
        (path / "slurm" / "test.yaml").write_text(
            f"runtime: none\npython: {sys.executable}\ntime: 30\nsignal_delay_s: 120\n")
        shutil.copy2(REPO / "pyproject.toml", path / "pyproject.toml")  # make's setup target: up to date
        (path / ".venv").symlink_to(REPO / ".venv")

    def experiment(self, name, epochs=2, subset=512, knn=True, extra="", time=30):
        text = TINY.format(name=name + self.suffix, epochs=epochs, subset=subset, knn=KNN if knn else "", extra=extra,
                           time=time)
        (self.path / "configs" / "experiments" / f"{name}.yaml").write_text(text)
        return name

    def env(self, **more):
        env = dict(os.environ, MLFLOW_TRACKING_URI=self.uri, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
                   HIRL_SLURM_SITE="test", PYTHONPATH=str(REPO), **more)
        env.pop("MLFLOW_RUN_ID", None)
        return env

    def hirl(self, *args, timeout=300):
        return subprocess.run([sys.executable, "-m", "jobs", *args], cwd=self.path, env=self.env(),
                              capture_output=True, text=True, timeout=timeout)

    def runs(self, experiment):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.uri)
        exp = client.get_experiment_by_name(experiment if experiment.endswith(self.suffix) else experiment + self.suffix)
        return client, (client.search_runs([exp.experiment_id], max_results=1000) if exp else [])

    def stages(self, experiment):
        return {r.data.tags["hirl.stage"]: r for r in self.runs(experiment)[1] if "hirl.stage" in r.data.tags}


@pytest.fixture
def root(cluster, tmp_path, monkeypatch):
    # one compute thread per rank: several test jobs share two cores (sbatch exports this environment)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    r = Root(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", r.uri)  # sbatch exports it to the jobs of in-process submits
    return r


def squeue(job_id):
    """(state, reason) of a job slurmctld still holds, else None."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%T|%r", "-j", str(job_id)],
                         capture_output=True, text=True).stdout.strip()
    return tuple(out.split("|")) if out else None


def wait_for(predicate, timeout, what, interval=1.0):
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.time() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(interval)


def cancel_all(job_ids):
    ids = [str(j) for j in job_ids if j]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True)
