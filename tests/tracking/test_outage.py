"""A tracking server that goes away during a pre-training cannot kill it: the stage keeps training,
keeps what the server did not take in its output directory, and delivers it, once and in order, when
the server answers again (during the run, at its end, or in the next attempt of the stage).

Real stage processes on real data (Fashion-MNIST) against a real ``mlflow server``; MLflow's client
retry budget is shortened through its own environment variables (the default is minutes)."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .server import ThrowawayServer

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 8
TINY = ["batch_size=32", "data.train_subset=512", "num_workers=0", "backbone.width=4", "method.queue_size=64",
        "method.hidden_dim=16", "method.dim=8"]
EPOCH_METRICS = ("loss", "lr", "images_per_s", "epoch_time_s")

pytestmark = [pytest.mark.fashion_mnist, pytest.mark.timeout(180)]


def _stage(out, run_id, uri, drain_s):
    config = REPO / "configs" / "pretrain" / "baseline" / "mocov2_demo.yaml"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
               MLFLOW_TRACKING_URI=uri, MLFLOW_RUN_ID=run_id, MLFLOW_HTTP_REQUEST_MAX_RETRIES="1",
               MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="0", MLFLOW_HTTP_REQUEST_TIMEOUT="3",
               HIRL_TRACKING_PROBE_S="0.5", HIRL_TRACKING_DRAIN_S=str(drain_s))
    cmd = [sys.executable, "-m", "hirl_core", "pretrain", "-c", str(config), f"epochs={EPOCHS}", *TINY,
           f"output_dir={out}"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _scheduled_run(uri):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    run = c.create_run(c.create_experiment("outage"), run_name="pretrain")
    c.update_run(run.info.run_id, status="SCHEDULED")
    return c, run.info.run_id


def _epoch_done(out):
    try:
        return torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=False)["epoch"]
    except (FileNotFoundError, EOFError, RuntimeError):
        return 0


def _wait_epoch(proc, out, epoch, timeout=120):
    deadline = time.monotonic() + timeout
    while _epoch_done(out) < epoch:
        assert proc.poll() is None, f"the stage ended before epoch {epoch}:\n{proc.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, f"no epoch {epoch} checkpoint in time"
        time.sleep(0.05)


def _assert_every_epoch_once(c, run_id):
    for key in EPOCH_METRICS:
        steps = sorted(m.step for m in c.get_metric_history(run_id, key))
        assert steps == list(range(EPOCHS)), f"{key}: steps {steps}"


def test_outage_in_the_middle_of_a_pretraining_ends_finished_with_every_epoch_logged(tmp_path):
    server = ThrowawayServer(tmp_path / "server").start()
    try:
        c, run_id = _scheduled_run(server.uri)
        out = tmp_path / "out"
        proc = _stage(out, run_id, server.uri, drain_s=120)
        _wait_epoch(proc, out, 1)
        server.stop()  # from the end of epoch 1 ...
        _wait_epoch(proc, out, 5)  # ... for four epochs: far past the shortened client retry budget
        assert proc.poll() is None
        server.start()
        text, _ = proc.communicate(timeout=150)
        assert proc.returncode == 0, text[-3000:]
        assert c.get_run(run_id).info.status == "FINISHED", text[-3000:]
        _assert_every_epoch_once(c, run_id)
        spool = out / "mlflow_spool.jsonl"
        assert spool.stat().st_size > 0  # the outage was real: writes waited there
        assert int((out / "mlflow_spool.offset").read_text()) == spool.stat().st_size
    finally:
        server.stop()


def test_writes_kept_through_the_end_of_a_stage_are_delivered_by_its_next_attempt(tmp_path):
    server = ThrowawayServer(tmp_path / "server").start()
    try:
        c, run_id = _scheduled_run(server.uri)
        out = tmp_path / "out"
        proc = _stage(out, run_id, server.uri, drain_s=1)
        _wait_epoch(proc, out, 2)
        server.stop()  # down until after the stage has ended
        text, _ = proc.communicate(timeout=150)
        assert proc.returncode == 0, text[-3000:]
        assert "the next attempt of this stage delivers it" in text
        server.start()
        assert c.get_run(run_id).info.status == "RUNNING"
        again = _stage(out, run_id, server.uri, drain_s=60)  # a requeue: the checkpoint says all epochs done
        text, _ = again.communicate(timeout=150)
        assert again.returncode == 0, text[-3000:]
        assert c.get_run(run_id).info.status == "FINISHED"
        _assert_every_epoch_once(c, run_id)
    finally:
        server.stop()
