"""The resume-after-kill guarantee for every method: a pre-training killed with SIGTERM after its first
epoch checkpoint and started again ends bit-for-bit where an uninterrupted run ends: model, EMA teacher / momentum
encoder, queues, centers, optimizer state and schedules all come back from the epoch checkpoint, and the
per-epoch reseeding replays the interrupted epoch's augmentations and masks exactly.

Real stage processes on real data (Fashion-MNIST), sized to a few seconds per run."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
COMMON = ["epochs=3", "batch_size=32", "data.train_subset=256", "num_workers=0"]
RESNET = ["backbone.width=4"]
VIT = ["backbone.depth=1"]
METHODS = {
    "mocov2": RESNET + ["method.queue_size=64", "method.hidden_dim=16", "method.dim=8"],
    "simsiam": RESNET + ["method.dim=32", "method.pred_dim=16"],
    # the queue starts in epoch 2 and prototypes unfreeze after 4 steps: both cross the kill point
    "swav": RESNET + ["method.hidden_dim=16", "method.dim=8", "method.n_prototypes=16", "method.queue_length=64",
                      "method.epoch_queue_starts=1", "method.freeze_prototypes_iters=4", "augment.local_crops=2"],
    "mocov3": VIT + ["method.dim=16", "method.mlp_dim=32"],
    "dino": VIT + ["method.out_dim=64", "method.hidden_dim=32", "method.bottleneck_dim=16", "augment.local_crops=2"],
    "ibot": VIT + ["method.out_dim=64", "method.patch_out_dim=64", "method.hidden_dim=32",
                   "method.bottleneck_dim=16", "augment.local_crops=2"],
}

pytestmark = [pytest.mark.slow, pytest.mark.fashion_mnist]  # HIRL_REQUIRE_DATA=1: missing data fails


def _command(method, out):
    config = REPO / "configs" / "pretrain" / "baseline" / f"{method}_demo.yaml"
    return [sys.executable, "-m", "hirl_core", "pretrain", "-c", str(config), *COMMON, *METHODS[method],
            f"output_dir={out}"]


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")
    for key in ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    return env


def _final(out):
    return torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=False)


def _flat(obj, prefix=""):
    """Every tensor and number in a nested checkpoint, by path."""
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in _flat(value, f"{prefix}/{key}").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, value in enumerate(obj) for k, v in _flat(value, f"{prefix}/{i}").items()}
    if isinstance(obj, (torch.Tensor, int, float)):
        return {prefix: obj}
    return {}


@pytest.mark.parametrize("method", list(METHODS))
def test_killed_and_resumed_run_ends_exactly_like_an_uninterrupted_one(tmp_path, method):
    straight = tmp_path / "straight"
    res = subprocess.run(_command(method, straight), env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_command(method, killed), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (killed / "checkpoint.pth").exists():   # the end of epoch 1
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGTERM)   # somewhere in epoch 2 or 3: two epochs of margin before the run ends
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, f"the run finished before it could be killed:\n{out[-2000:]}"
    assert _final(killed)["epoch"] < 3

    res = subprocess.run(_command(method, killed), env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "resuming from" in res.stdout + res.stderr

    a, b = _flat(_final(straight)), _flat(_final(killed))
    assert a.keys() == b.keys()
    assert any("/model/" in k and ("teacher" in k or "key" in k or "queue" in k or "center" in k or "momentum" in k
                                   or "prototypes" in k or "predictor" in k) for k in a)
    different = [k for k in a if not (torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k])]
    assert not different, f"{method}: differs after resume: {different[:8]}"
