"""A torn `checkpoint.pth` must not block a stage: the resume falls back to the previous good checkpoint
with a warning, or, with none left, the stage refuses in one line (exit 2) naming the file and the fix.
And an interrupted run names a resume point only when one exists.

Real pre-trainings of a tiny MoCo v2 on 128 Fashion-MNIST images (a few seconds each)."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from hirl_core.__main__ import main
from hirl_core.config import load_config
from hirl_core.engine import checkpoint as ckpt
from hirl_core.engine import pretrain
from hirl_core.engine.pretrain import run_pretrain

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs/pretrain/baseline/mocov2_demo.yaml"
TINY = ["batch_size=64", "data.train_subset=128", "method.queue_size=64", "backbone.width=4",
        "method.hidden_dim=16", "method.dim=8"]

pytestmark = pytest.mark.fashion_mnist  # skipped without the files; HIRL_REQUIRE_DATA=1 fails (tests/needs_data.py)


@pytest.fixture(autouse=True)
def _untracked(monkeypatch):
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _overrides(out: Path, epochs: int) -> list[str]:
    return [f"epochs={epochs}", *TINY, f"output_dir={out}"]


def _train(out: Path, epochs: int) -> None:
    run_pretrain(load_config(CONFIG, _overrides(out, epochs)))


def _epoch(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["epoch"]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_each_epoch_keeps_the_previous_checkpoint(tmp_path):
    out = tmp_path / "out"
    _train(out, 2)
    assert _epoch(out / ckpt.CHECKPOINT) == 2
    assert _epoch(out / ckpt.PREVIOUS) == 1
    assert not list(out.glob(".*.tmp*"))  # no temporary file left behind


def test_torn_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    out = tmp_path / "out"
    _train(out, 2)
    _truncate(out / ckpt.CHECKPOINT)
    capsys.readouterr()
    _train(out, 3)
    said = capsys.readouterr().out
    warnings = [line for line in said.splitlines() if "warning" in line]
    assert len(warnings) == 1, said
    assert str(out / ckpt.CHECKPOINT) in warnings[0] and ckpt.PREVIOUS in warnings[0]
    assert f"resuming from {out / ckpt.PREVIOUS} at epoch 1/3" in said
    assert _epoch(out / ckpt.CHECKPOINT) == 3 and _epoch(out / ckpt.PREVIOUS) == 2


def test_missing_checkpoint_beside_a_previous_one_resumes_from_it(tmp_path):
    """A kill between the two renames of a checkpoint write leaves only the previous checkpoint."""
    out = tmp_path / "out"
    _train(out, 2)
    (out / ckpt.CHECKPOINT).unlink()
    state, source = ckpt.load_training_checkpoint(out)
    assert state["epoch"] == 1 and source == out / ckpt.PREVIOUS


def test_torn_checkpoint_without_a_previous_one_is_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / "out"
    _train(out, 1)
    assert not (out / ckpt.PREVIOUS).exists()
    _truncate(out / ckpt.CHECKPOINT)
    capsys.readouterr()
    code = main(["pretrain", "-c", str(CONFIG), *_overrides(out, 2)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert str(out / ckpt.CHECKPOINT) in err and "delete" in err
    assert not (out / ckpt.PREVIOUS).exists()  # nothing was trained or rotated


def test_both_checkpoints_torn_is_one_line_naming_both(tmp_path, capsys):
    out = tmp_path / "out"
    _train(out, 2)
    _truncate(out / ckpt.CHECKPOINT)
    _truncate(out / ckpt.PREVIOUS)
    capsys.readouterr()
    assert main(["pretrain", "-c", str(CONFIG), *_overrides(out, 3)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out / ckpt.CHECKPOINT) in err and ckpt.PREVIOUS in err, err


def test_interrupt_before_the_first_checkpoint_names_no_resume_point(tmp_path, monkeypatch, capsys):
    real_epoch = pretrain._train_epoch

    def signalled_epoch(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # lands in the first epoch, before any checkpoint
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(pretrain, "_train_epoch", signalled_epoch)
    with pytest.raises(SystemExit) as stop:
        _train(tmp_path / "out", 2)
    assert stop.value.code == 143
    said = capsys.readouterr().out
    assert not (tmp_path / "out" / ckpt.CHECKPOINT).exists()
    assert "resume point" not in said and "no checkpoint yet" in said, said


def test_interrupt_after_a_checkpoint_names_it_and_its_epoch(tmp_path, monkeypatch, capsys):
    real_epoch = pretrain._train_epoch

    def signalled_epoch(cfg, info, model, method, dataset, optimizer, scaler, precision, epoch):
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_epoch(cfg, info, model, method, dataset, optimizer, scaler, precision, epoch)

    monkeypatch.setattr(pretrain, "_train_epoch", signalled_epoch)
    with pytest.raises(SystemExit):
        _train(tmp_path / "out", 2)
    said = capsys.readouterr().out
    assert f"resume point: {tmp_path / 'out' / ckpt.CHECKPOINT} (epoch 1/2)" in said, said
