"""tracking/up.sh and down.sh for real: an MLflow server on PostgreSQL with proxied artifacts, on loopback,
printing its export line; up again finds it; down stops exactly those processes. Needs PostgreSQL
(Debian's postgresql; up.sh installs it as root)."""
import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from .server import free_port, healthy

REPO = Path(__file__).resolve().parents[2]


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.timeout(240)
def test_up_serves_mlflow_on_postgresql_with_proxied_artifacts_and_down_stops_exactly_it(tmp_path):
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb") and os.geteuid() != 0:
        if os.environ.get("HIRL_REQUIRE_TRACKING") == "1":
            pytest.fail("HIRL_REQUIRE_TRACKING=1 but PostgreSQL is not installed", pytrace=False)
        pytest.skip("needs PostgreSQL (apt-get install postgresql) or root")
    d = Path(tempfile.mkdtemp(prefix="hirl-tracking-test-", dir="/tmp"))  # the postgres user must enter it
    env = dict(os.environ, HIRL_TRACKING_DIR=str(d), HIRL_TRACKING_PORT=str(free_port()),
               HIRL_TRACKING_PG_PORT=str(free_port()), HIRL_TRACKING_WORKERS="1")
    try:
        up = subprocess.run(["bash", str(REPO / "tracking" / "up.sh")], env=env, capture_output=True, text=True,
                            timeout=200)
        assert up.returncode == 0, up.stderr[-3000:]
        uri = f"http://127.0.0.1:{env['HIRL_TRACKING_PORT']}"
        assert up.stdout == f"export MLFLOW_TRACKING_URI={uri}\n"
        assert healthy(uri)
        pids = {name: int((d / f"{name}.pid").read_text()) for name in ("mlflow", "postgres")}

        from mlflow.tracking import MlflowClient

        c = MlflowClient(uri)
        run = c.create_run(c.create_experiment("scripts"))
        (tmp_path / "note.txt").write_text("through the server")
        c.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
        stored = list((d / "artifacts").rglob("note.txt"))  # proxied: the server wrote it, not the client
        assert len(stored) == 1 and stored[0].read_text() == "through the server"
        psql = [glob.glob("/usr/lib/postgresql/*/bin/psql")[-1], "-h", "127.0.0.1", "-p",
                env["HIRL_TRACKING_PG_PORT"], "-U", "postgres", "-d", "mlflow", "-tAc",
                f"SELECT count(*) FROM runs WHERE run_uuid = '{run.info.run_id}'"]
        assert subprocess.run(psql, capture_output=True, text=True).stdout.strip() == "1"

        again = subprocess.run(["bash", str(REPO / "tracking" / "up.sh")], env=env, capture_output=True, text=True,
                               timeout=60)
        assert again.returncode == 0 and again.stdout == up.stdout and "already up" in again.stderr
    finally:
        down = subprocess.run(["bash", str(REPO / "tracking" / "down.sh")], env=env, capture_output=True, text=True,
                              timeout=90)
    assert down.returncode == 0, down.stderr
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids.values()), down.stderr
    assert not healthy(uri) and not list(d.glob("*.pid"))
    shutil.rmtree(d, ignore_errors=True)
