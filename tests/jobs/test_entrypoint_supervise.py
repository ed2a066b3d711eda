"""``python -m jobs.entrypoint`` as a pod (or a person) runs it: it supervises the stage, marks its run
started and ended even when the stage dies before its own tracking starts, keeps the log's tail as a
run artifact, passes SIGTERM on, and lets only global rank 0 talk to MLflow."""

import shutil
import signal
import subprocess
import sys

import pytest

from jobs import entrypoint as ep
from jobs import lineage
from jobs.backends.common import LOG_ARTIFACT, log_artifact
from jobs.dag import compile_cell
from jobs.spec import load_experiment

from . import REPO_ROOT, make_root, subprocess_env


@pytest.fixture
def chain(tmp_path, monkeypatch, blank_db):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    shutil.copy(blank_db, tmp_path / "mlflow.db")
    cell = compile_cell(load_experiment("pretrain_only", root=make_root(tmp_path)))
    runs = lineage.ensure_chain(cell, "k8s")
    return cell, runs["pretrain"].run_id, uri


def _pod_env(cell, run_id, uri, **extra):
    """What a rendered pod's container gets (jobs.backends.k8s_render.container_env), by value."""
    pod = {"MLFLOW_TRACKING_URI": uri, "HIRL_STAGE": "pretrain", "HIRL_EXPERIMENT": cell.experiment,
           "HIRL_CELL": cell.cell_id, "HIRL_ATTEMPT_BASE": "0", "JOB_COMPLETION_INDEX": "0", "HIRL_NNODES": "1",
           "PYTHONUNBUFFERED": "1"}
    return {**subprocess_env(**{**pod, **extra}), "MLFLOW_RUN_ID": run_id}


def _entrypoint(script, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "jobs.entrypoint", "--", sys.executable, "-c", script],
                            env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_a_stage_that_exits_2_before_tracking_fails_its_run_and_keeps_its_log(chain):
    cell, run_id, uri = chain
    proc = _entrypoint("import sys; print('bad value epochs=0'); sys.exit(2)", _pod_env(cell, run_id, uri))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "bad value epochs=0" in out  # the stage's output still reaches the pod log
    status, tags = lineage.run_state(run_id, uri)
    assert status == "FAILED" and tags["hirl.failure"] == "error" and tags["hirl.reason"] == "exit code 2", err
    assert tags["hirl.attempt"] == "1"
    assert log_artifact(run_id, uri) == "bad value epochs=0\n"
    assert lineage.find_chain(cell.experiment, cell.cell_id, uri).info.status == "FAILED"  # the chain is closed


def test_sigterm_reaches_the_stage_which_checkpoints_and_the_gang_restart_keeps_the_run(chain):
    cell, run_id, uri = chain
    stage = ("import signal, sys, time\n"
             "def stop(*a):\n    print('checkpoint saved', flush=True); sys.exit(143)\n"
             "signal.signal(signal.SIGTERM, stop)\nprint('training', flush=True)\ntime.sleep(60)\n")
    proc = _entrypoint(stage, _pod_env(cell, run_id, uri, HIRL_MAX_RESTARTS="3", JOBSET_RESTART_ATTEMPT="1"))
    assert proc.stdout.readline() == "training\n"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "checkpoint saved" in out
    status, tags = lineage.run_state(run_id, uri)
    # JobSet restarts the gang (attempt 2 of maxRestarts 3): the run stays open for it, tagged why
    assert status == "SCHEDULED" and tags["hirl.attempt"] == "2" and tags["hirl.retry_reason"].startswith("interrupted")
    assert log_artifact(run_id, uri).endswith("checkpoint saved\n")


def test_the_last_restart_settles_the_run(chain):
    cell, run_id, uri = chain
    env = _pod_env(cell, run_id, uri, HIRL_MAX_RESTARTS="1", JOBSET_RESTART_ATTEMPT="1")
    proc = _entrypoint("raise SystemExit(1)", env)
    proc.communicate(timeout=120)
    assert proc.returncode == 1 and lineage.run_status(run_id, uri) == "FAILED"


def test_only_global_rank_0_talks_to_mlflow_when_a_pod_starts_its_own_ranks(chain):
    cell, run_id, uri = chain
    # pod 1 of 2 with 2 GPUs: torchrun (started by the entrypoint) sets RANK later; before, it is rank 2
    env = _pod_env(cell, run_id, uri, JOB_COMPLETION_INDEX="1", HIRL_NNODES="2", HIRL_NPROC_PER_NODE="2")
    proc = _entrypoint("raise SystemExit(0)", env)
    proc.communicate(timeout=120)
    assert proc.returncode == 0
    status, tags = lineage.run_state(run_id, uri)
    assert status == "SCHEDULED" and "hirl.attempt" not in tags  # pod 1 neither tagged nor ended the run
    assert not [f for f in lineage.client(uri).list_artifacts(run_id, "logs")]


@pytest.mark.parametrize("env, rank", [
    ({"JOB_COMPLETION_INDEX": "1", "HIRL_NNODES": "2", "HIRL_NPROC_PER_NODE": "4"}, 4),
    ({"JOB_COMPLETION_INDEX": "0", "HIRL_NNODES": "2", "HIRL_NPROC_PER_NODE": "4"}, 0),
    ({"JOB_COMPLETION_INDEX": "3", "HIRL_NNODES": "4"}, 3),
    ({"RANK": "5", "JOB_COMPLETION_INDEX": "0"}, 5),  # under torchrun (or PyTorchJob): its RANK stands
    ({}, 0),
])
def test_global_rank_before_torchrun(env, rank):
    assert ep.global_rank({**env, **ep.k8s_env(env)}) == rank


def test_attempt_counts_jobset_restarts():
    assert ep.attempt({"HIRL_ATTEMPT_BASE": "1", "JOBSET_RESTART_ATTEMPT": "2"}) == 4
    assert LOG_ARTIFACT == "logs/log-tail.txt"


def test_a_stage_that_cannot_start_fails_its_run(chain):
    cell, run_id, uri = chain
    proc = subprocess.run([sys.executable, "-m", "jobs.entrypoint", "--", "/nonexistent/python"],
                          env=_pod_env(cell, run_id, uri), cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 127 and "cannot start the stage" in proc.stderr
    assert lineage.run_status(run_id, uri) == "FAILED"


def test_an_oom_exits_final_and_fails_its_run_at_once_whatever_restarts_are_left(chain):
    """Out of memory would only fail again: the entrypoint exits FINAL_EXIT (the pod's podFailurePolicy
    fails the Job, JobSet does not restart the gang) and settles the run FAILED now."""
    cell, run_id, uri = chain
    env = _pod_env(cell, run_id, uri, HIRL_MAX_RESTARTS="3", JOBSET_RESTART_ATTEMPT="0")
    proc = _entrypoint("import sys; print('torch.OutOfMemoryError: CUDA out of memory.'); sys.exit(1)", env)
    proc.communicate(timeout=120)
    assert proc.returncode == ep.FINAL_EXIT
    status, tags = lineage.run_state(run_id, uri)
    assert status == "FAILED" and tags["hirl.failure"] == "oom" and "hirl.retry_reason" not in tags


@pytest.mark.parametrize("script, code", [
    ("import sys; print('CUDA out of memory'); sys.exit(1)", ep.FINAL_EXIT),   # OOM
    ("import sys; print('hirl_core: error: bad key'); sys.exit(2)", ep.FINAL_EXIT),  # bad input
    ("import sys; sys.exit(1)", 1),                                            # anything else: retried
    ("import sys; sys.exit(0)", 0),
])
def test_the_pod_launcher_exits_final_when_a_worker_failed_for_good(tmp_path, script, code):
    """``--pod``: the pod's main process runs torchrun (here: the worker itself) and exits FINAL_EXIT when
    one of its workers failed in a way a restart cannot fix, since torchrun itself exits 1 for any failure."""
    env = subprocess_env(PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "jobs.entrypoint", "--pod", sys.executable, "-m", "jobs.entrypoint",
                           "--", sys.executable, "-c", script], env=env, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == code, proc.stderr
    assert ep.FINAL_FILE_ENV not in env


def test_final_failures():
    assert [ep.is_final(c, ep.classify(c, log)) for c, log in (
        (1, "CUDA out of memory"), (2, ""), (127, ""), (1, ""), (143, ""), (1, "NCCL error"), (0, ""))] == [
        True, True, True, False, False, False, False]
