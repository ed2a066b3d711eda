"""A sweep's runs created from a pool of threads against a real MLflow server (loopback, sqlite-backed)
are the same runs the one-by-one path makes."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from jobs import lineage, lineage_bulk
from jobs.matrix import load_sweep

from . import FIXTURES, make_root


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{tmp / 'server.db'}",
                             "--artifacts-destination", str(tmp / "artifacts"), "--workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=2).close()
            break
        except OSError:
            time.sleep(0.5)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and its uvicorn workers at once
    proc.wait(timeout=60)


def test_a_sweep_made_in_parallel_against_a_server_has_every_run_once(tmp_path, monkeypatch, server):
    root = make_root(tmp_path)
    for path in (FIXTURES / "sweeps").glob("*.yaml"):
        shutil.copy(path, root / "configs" / "experiments")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    sweep = load_sweep("sweep", root=root)
    ref = lineage.SweepRef(sweep.sweep_id, lineage.ensure_sweep_run(sweep, "local", server))
    runs = lineage_bulk.ensure_chains(sweep.cells, "local", uri=server, sweep=ref, workers=4)
    assert [list(r) for r in runs] == [["pretrain", "knn"]] * 4
    again = lineage_bulk.ensure_chains(sweep.cells, "local", uri=server, sweep=ref, workers=4)  # reuses all
    assert [{k: v.run_id for k, v in r.items()} for r in again] == [{k: v.run_id for k, v in r.items()} for r in runs]
    c = lineage.client(server)
    exp = c.get_experiment_by_name("sweep")
    every = lineage.search_all(c, exp.experiment_id)
    chains = [r for r in every if r.data.tags.get("hirl.kind") == "chain"]
    stages = [r for r in every if "hirl.stage" in r.data.tags]
    assert len(chains) == 4 and len(stages) == 8 and len(every) == 13
    assert {r.data.tags["mlflow.parentRunId"] for r in stages} == {ch.info.run_id for ch in chains}
    assert all(r.info.status == "SCHEDULED" and r.data.params.get("seed") in ("0", "1") for r in stages)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
