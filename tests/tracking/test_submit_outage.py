"""``hirl submit`` (and ``hirl retry``, which reads the runs first) with a tracking server that does not
answer: one line naming the URI, exit 2, within seconds, before anything exists or is queued (MLflow's
own client would retry for minutes, then print a traceback)."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .server import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("command", ["submit", "retry"])
def test_a_tracking_uri_where_nothing_listens_fails_fast_in_one_line(tmp_path, command):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    uri = f"http://127.0.0.1:{free_port()}"  # bound and released: nothing listens there
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    env.pop("MLFLOW_RUN_ID", None)
    began = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "jobs", command, "demo", "--backend", "local"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - began
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and uri in lines[0] and "Traceback" not in res.stderr, res.stderr
    assert took < 10, f"took {took:.1f} s"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing created or queued
