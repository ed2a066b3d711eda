"""A local stage outlives its submitter: ``hirl submit`` runs in its own process group, which is
SIGKILLed (a closed terminal, an OOM-killed shell) while the stage runs. The stage must keep writing its
log (no pipe to a dead process), end FINISHED, leave no pid file, and the chain must end in a true
state: FINISHED when nothing was left to run, else KILLED with the reason on the stages never started."""

import os
import shutil
import signal
import subprocess
import time

import pytest

from jobs import lineage
from jobs.dag import compile_cell
from jobs.spec import load_experiment

from . import PYTHON, make_root, subprocess_env

# The CLI itself, in this process only so that its backend runs the stand-in stage below.
SUBMITTER = """\
import sys
from jobs import cli
from jobs.backends.local import LocalBackend
cli.get_backend = lambda name: LocalBackend(command_for=lambda stage: [sys.executable, "-c", sys.argv[2], sys.argv[3]])
sys.exit(cli.main(["submit", sys.argv[1]]))
"""
# Says it started, waits until the test has killed the submitter, then prints plenty (a pipe to the dead
# submitter would kill it here) and exits cleanly.
STAGE = """\
import os, sys, time
print("stage started", flush=True)
open(sys.argv[1] + ".started", "w").close()
deadline = time.time() + 60
while not os.path.exists(sys.argv[1] + ".go") and time.time() < deadline:
    time.sleep(0.05)
for i in range(200):
    print("after the kill", i, flush=True)
"""


@pytest.fixture
def root(tmp_path, monkeypatch, blank_db):
    make_root(tmp_path)
    shutil.copy(blank_db, tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _submit_then_kill_the_submitter(root, experiment):
    marker = root / "stage"
    env = subprocess_env(MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}", HF_HUB_OFFLINE="1")
    submitter = subprocess.Popen([PYTHON, "-c", SUBMITTER, experiment, STAGE, str(marker)], cwd=root, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait(lambda: (root / "stage.started").exists() or submitter.poll() is not None, 90, "the stage to start")
        assert submitter.poll() is None, submitter.stdout.read().decode()
        os.killpg(submitter.pid, signal.SIGKILL)  # its whole group; the stage has a session of its own
        submitter.wait(timeout=10)
    finally:
        if submitter.poll() is None:
            submitter.kill()
        submitter.stdout.close()  # the terminal is gone: nobody reads what the submitter had
    (root / "stage.go").touch()
    cell = compile_cell(load_experiment(experiment, root=root))
    _wait(lambda: (lineage.find_chain(experiment, cell.cell_id).info.status != "RUNNING"), 60,
          "the chain run to end")
    return cell


def test_a_single_stage_chain_finishes_after_its_submitter_is_killed(root):
    cell = _submit_then_kill_the_submitter(root, "pretrain_only")
    rows = lineage.chain_status("pretrain_only", cell.cell_id, cell.names)
    assert [(r.stage, r.status) for r in rows] == [("pretrain", "FINISHED")]
    assert lineage.find_chain("pretrain_only", cell.cell_id).info.status == "FINISHED"
    out = root / "outputs" / "pretrain_only" / cell.cell_id / f"pretrain-{rows[0].run_id[:8]}"
    assert "after the kill 199" in (out / "log.txt").read_text()
    assert not list(root.glob("outputs/**/pid"))


def test_the_stages_a_killed_submitter_cannot_start_end_killed_with_the_reason(root):
    cell = _submit_then_kill_the_submitter(root, "demo")
    rows = lineage.chain_status("demo", cell.cell_id, cell.names)
    assert [(r.stage, r.status) for r in rows] == [("pretrain", "FINISHED"), ("knn", "KILLED")]
    assert lineage.find_chain("demo", cell.cell_id).info.status == "KILLED"
    reason = lineage.run_state(rows[1].run_id)[1].get("hirl.reason", "")
    assert "submitting process ended before this stage could start" in reason and "retry" in reason
    assert not list(root.glob("outputs/**/pid"))
