"""A fine-tuning stage killed in each of its two phases resumes into the same MLflow run and ends with
the numbers of an uninterrupted run (real processes, a real sqlite store, real Fashion-MNIST)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch

from hirl_core.engine import checkpoint as ckpt

from ._tiny import perturbed_backbone

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 3
BACKBONE = {"arch": "resnet18", "width": 8, "small_stem": True, "stem_stride": 2, "in_chans": 1}
# mixup/cutmix, smoothing, crops and erasing: every RNG a resume must replay
OVERRIDES = [f"epochs={EPOCHS}", "batch_size=32", "data.train_subset=768", "data.val_subset=256",
             "mixup.mixup_alpha=0.8", "mixup.cutmix_alpha=1.0", "augment.reprob=0.25", "untrained=true"]


def _start(out: Path, pretrained: Path, uri: str, run_id: str) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_RUN_ID": run_id, "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "hirl_core", "finetune", "-c", str(REPO / "configs/downstream/finetune/finetune_demo.yaml"),
           f"pretrained={pretrained}", f"output_dir={out}", *OVERRIDES]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_after_epoch(proc: subprocess.Popen, out: Path, epoch: int) -> str:
    """SIGTERM as soon as the checkpoint of (1-based, across phases) ``epoch`` is on disk."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        path = out / ckpt.CHECKPOINT
        if path.exists():
            try:
                if torch.load(path, weights_only=False)["epoch"] >= epoch:
                    break
            except FileNotFoundError:  # atomic_save renames it to checkpoint.prev.pth before the new one lands
                pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, log
    return log


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.mark.fashion_mnist  # skipped without the files; HIRL_REQUIRE_DATA=1 fails (tests/needs_data.py)
def test_a_finetune_killed_in_each_phase_resumes_to_the_uninterrupted_numbers(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.tracking.MlflowClient(uri)
    experiment = client.create_experiment("supervised-resume")
    killed, whole = (client.create_run(experiment).info.run_id for _ in range(2))
    pretrained = perturbed_backbone(tmp_path / "pre", BACKBONE)

    out = tmp_path / "killed"
    _kill_after_epoch(_start(out, pretrained, uri, killed), out, 1)  # in the pre-trained phase
    assert client.get_run(killed).info.status == "KILLED"
    log = _kill_after_epoch(_start(out, pretrained, uri, killed), out, EPOCHS + 1)  # in the untrained phase
    assert "resuming from" in log, log
    assert client.get_run(killed).info.status == "KILLED"
    last = _start(out, pretrained, uri, killed)
    log, _ = last.communicate(timeout=300)
    assert last.returncode == 0, log
    assert "resuming from" in log and "pretrained epoch 1/" not in log, log  # the finished phase is not rerun

    ref = _start(tmp_path / "whole", pretrained, uri, whole)
    log, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, log

    got, want = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("killed", "whole"))
    got.pop("finetune_time_s"), want.pop("finetune_time_s")
    assert got.keys() == want.keys() and "finetune_top1_untrained" in got
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-6), key
    for run in (killed, whole):
        assert client.get_run(run).info.status == "FINISHED"
    for key in ("val_top1", "train_loss", "val_top1_untrained", "lr_untrained"):
        resumed, reference = _history(client, killed, key), _history(client, whole, key)
        assert [s for s, _ in resumed] == list(range(EPOCHS)), (key, resumed)  # each epoch once, from step 0
        assert [v for _, v in resumed] == pytest.approx([v for _, v in reference], abs=1e-6), key
    assert client.get_run(killed).data.metrics["finetune_top1"] == pytest.approx(want["finetune_top1"], abs=1e-6)


@pytest.mark.fashion_mnist
def test_a_recipe_that_does_not_fit_the_network_is_one_line_before_tracking(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = mlflow.tracking.MlflowClient(uri).create_run(
        mlflow.tracking.MlflowClient(uri).create_experiment("bad")).info.run_id
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_RUN_ID": run_id, "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "hirl_core", "finetune", "-c", str(REPO / "configs/downstream/finetune/finetune_demo.yaml"),
           f"pretrained={perturbed_backbone(tmp_path / 'pre', BACKBONE)}", f"output_dir={tmp_path / 'out'}", "optimizer.layer_decay=0.65"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "hirl_core: error: optimizer.layer_decay=0.65 needs a ViT backbone (layer-wise decay is per block)"]
    assert not (tmp_path / "out").exists()
    assert mlflow.tracking.MlflowClient(uri).get_run(run_id).info.status == "RUNNING"  # untouched: never started
