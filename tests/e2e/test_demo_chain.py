"""The real chain, end to end: `hirl submit` → MoCo v2 pre-training → KNN, checked in MLflow.

Tiny on purpose (≈ 1 k images, a width-16 ResNet-18, 3-4 epochs), but nothing is faked: real data
(Debian's Fashion-MNIST), real stage processes, a real MLflow store. Includes the kill-and-resume case.
"""
import glob
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The queue holds one batch, so it is all real keys after the first step and the per-epoch loss is
# comparable from epoch 0 on (a large queue starts with easy random negatives and the loss first rises);
# a higher LR than the demo's makes 64 steps enough for the loss to fall clearly.
TINY = """\
name: tiny
description: the demo chain at test size
stages:
  pretrain:
    config: configs/pretrain/baseline/mocov2_demo.yaml
    overrides: [epochs={epochs}, batch_size=64, data.train_subset=1024, method.queue_size=64, optimizer.lr=0.008,
                backbone.width=16, method.hidden_dim=64]
  knn:
    config: configs/downstream/knn/knn_demo.yaml
    after: pretrain
    overrides: [data.train_subset=1024, data.val_subset=1000]
"""

pytestmark = pytest.mark.fashion_mnist  # skipped without the files; HIRL_REQUIRE_DATA=1 fails (tests/needs_data.py)


def _root(tmp_path, epochs):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    (tmp_path / "configs" / "experiments" / "tiny.yaml").write_text(TINY.format(epochs=epochs))
    return tmp_path


def _env(root):
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_RUN_ID", None)
    return env


def _hirl(root, *args, **kw):
    return subprocess.run([sys.executable, "-m", "jobs", *args], cwd=root, env=_env(root),
                          capture_output=True, text=True, timeout=600, **kw)


def _runs(root):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    return client, client.search_runs([exp.experiment_id], max_results=100)


def test_chain_runs_end_to_end_and_is_tracked(tmp_path):
    root = _root(tmp_path, epochs=4)
    res = _hirl(root, "submit", "tiny")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    # last: the chain's row of the results table, the trained KNN beside the untrained one
    lines = res.stdout.rstrip().splitlines()
    assert "make ui" in lines[-5] and lines[-3] == "| Method | Arch. | Epochs | Batch Size | KNN |", lines[-5:]
    assert lines[-1].startswith("| tiny | ResNet-18 (width 16) | 4 | 64 | ") and " (untrained " in lines[-1]

    client, runs = _runs(root)
    chains = [r for r in runs if r.data.tags.get("hirl.kind") == "chain"]
    stages = {r.data.tags.get("hirl.stage"): r for r in runs if "hirl.stage" in r.data.tags}
    assert len(chains) == 1 and set(stages) == {"pretrain", "knn"} and len(runs) == 3
    chain = chains[0]
    for name, run in stages.items():
        tags = run.data.tags
        assert run.info.status == "FINISHED"
        assert tags["mlflow.parentRunId"] == chain.info.run_id
        assert tags["hirl.cell"] == chain.data.tags["hirl.cell"]
        assert tags["hirl.backend"] == "local" and len(tags["hirl.config_hash"]) == 12
    assert stages["knn"].data.tags["hirl.upstream_run_id"] == stages["pretrain"].info.run_id

    losses = [m.value for m in sorted(client.get_metric_history(stages["pretrain"].info.run_id, "loss"),
                                      key=lambda m: m.step)]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    assert client.get_metric_history(stages["pretrain"].info.run_id, "images_per_s")
    knn = stages["knn"].data.metrics
    for k in (10, 20, 100, 200):
        assert 0.0 < knn[f"knn_top1_k{k}"] <= knn[f"knn_top5_k{k}"] <= 1.0
    assert 0.0 < knn["knn_top1_k20_untrained"] <= 1.0
    artifacts = {a.path for a in client.list_artifacts(stages["pretrain"].info.run_id)}
    assert "config.yaml" in artifacts
    pre_dir = Path(root, stages["pretrain"].data.tags["hirl.output_dir"])
    import torch
    exported = torch.load(pre_dir / "backbone.pth", weights_only=True)
    assert set(exported) == {"model"} and all(k.startswith("backbone.") for k in exported["model"])

    # Same spec again: both stages skipped, no new runs. Status lists both FINISHED with run ids.
    again = _hirl(root, "submit", "tiny")
    assert again.returncode == 0 and again.stdout.count("skip ") == 2, again.stdout
    assert len(_runs(root)[1]) == 3
    status = _hirl(root, "status", "tiny")
    for name, run in stages.items():
        line = next(line for line in status.stdout.splitlines() if line.strip().startswith(name))
        assert "FINISHED" in line and run.info.run_id in line


def _children(pid):
    kids = []
    for task in glob.glob(f"/proc/{pid}/task/*/children"):
        kids += [int(c) for c in Path(task).read_text().split()]
    return kids + [g for k in kids for g in _children(k)]


def _stage_pid(parent, stage):
    for pid in _children(parent):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if b"hirl_core" in cmd and stage.encode() in cmd:
            return pid
    return None


def test_sigterm_mid_epoch_then_resume_in_the_same_run(tmp_path):
    root = _root(tmp_path, epochs=4)
    proc = subprocess.Popen([sys.executable, "-m", "jobs", "submit", "tiny"], cwd=root, env=_env(root),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not glob.glob(str(root / "outputs/tiny/*/pretrain-*/checkpoint.pth")):
        assert proc.poll() is None and time.time() < deadline, "pre-training ended before its first checkpoint"
        time.sleep(0.2)
    time.sleep(1.0)  # into the second epoch
    pid = _stage_pid(proc.pid, "pretrain")
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out
    client, runs = _runs(root)
    pre = [r for r in runs if r.data.tags.get("hirl.stage") == "pretrain"]
    knn = [r for r in runs if r.data.tags.get("hirl.stage") == "knn"]
    assert len(pre) == 1 and pre[0].info.status == "KILLED"
    assert knn[0].info.status == "SCHEDULED"  # a stopped stage stops its dependents

    res = _hirl(root, "submit", "tiny")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "resuming from" in res.stdout
    client, runs = _runs(root)
    pre_after = [r for r in runs if r.data.tags.get("hirl.stage") == "pretrain"]
    assert [r.info.run_id for r in pre_after] == [pre[0].info.run_id]  # the same run, no duplicate
    assert pre_after[0].info.status == "FINISHED"
    resumed = client.get_metric_history(pre[0].info.run_id, "resumed_from_epoch")
    assert max(m.value for m in resumed) >= 1
    steps = {m.step for m in client.get_metric_history(pre[0].info.run_id, "loss")}
    assert steps == {0, 1, 2, 3}
