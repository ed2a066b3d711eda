"""Logs a person can read: a live bar on a terminal; elsewhere a few plain progress lines and one summary
line per epoch, never tqdm's carriage-return frames (they made `log.txt` one endless repeated line)."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hirl_core.engine.progress import Progress, duration

REPO = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _run(total, seconds_per_step, **kwargs):
    out, clock = io.StringIO(), Clock()
    with Progress(total, "epoch 1/1", file=out, clock=clock, **kwargs) as bar:
        for i in range(total):
            clock.now += seconds_per_step
            bar.update(loss=f"{1.0 / (i + 1):.4f}")
    return out.getvalue()


def test_off_a_terminal_a_slow_loop_writes_a_line_per_tenth():
    text = _run(1000, 1.0)  # 100 s per tenth: every tenth is also past the 30 s minimum
    lines = text.splitlines()
    assert "\r" not in text
    assert [re.search(r"(\d+)%", line).group(1) for line in lines] == [str(p) for p in range(10, 100, 10)]
    assert lines[0] == "epoch 1/1  10% 100/1000  loss 0.0100"


def test_off_a_terminal_a_fast_loop_writes_nothing():
    assert _run(1000, 0.01) == ""  # 10 s in all: below the minimum interval, the summary line suffices


def test_a_very_long_loop_still_writes_a_line_every_few_minutes():
    lines = _run(10_000, 1.0, min_fraction=0.5).splitlines()  # a half takes 5000 s
    steps = [int(re.search(r"% (\d+)/", line).group(1)) for line in lines]
    assert steps[:3] == [300, 600, 900] and len(steps) == 10_000 // 300


def test_a_disabled_bar_writes_nothing():
    out = io.StringIO()
    with Progress(100, "x", enabled=False, file=out, clock=Clock()) as bar:
        for _ in range(100):
            bar.update()
    assert out.getvalue() == ""


def test_on_a_terminal_the_bar_is_live():
    out = Terminal()
    with Progress(5, "epoch 1/1", file=out, clock=Clock()) as bar:
        for _ in range(5):
            bar.update(loss="1.0")
    assert "\r" in out.getvalue() and "epoch 1/1" in out.getvalue()


def test_wrap_counts_the_items_it_yields():
    out, clock = io.StringIO(), Clock()
    bar = Progress(4, "features", file=out, clock=clock, min_interval_s=0, min_fraction=0.5)
    seen = []
    for item in bar.wrap(range(4)):
        clock.now += 1
        seen.append(item)
    assert seen == [0, 1, 2, 3] and out.getvalue().splitlines() == ["features  50% 2/4"]


def test_durations_read_like_a_clock():
    assert [duration(s) for s in (0, 9.6, 130, 3725, 90000)] == ["0s", "10s", "2m10s", "1h02m", "25h00m"]


@pytest.mark.fashion_mnist  # skipped without the files; HIRL_REQUIRE_DATA=1 fails (tests/needs_data.py)
def test_a_pretraining_log_file_reads_one_line_per_epoch(tmp_path):
    log = tmp_path / "log.txt"
    cmd = [sys.executable, "-m", "hirl_core", "pretrain", "-c", str(REPO / "configs/pretrain/baseline/mocov2_demo.yaml"),
           "epochs=3", "batch_size=32", "data.train_subset=256", "method.queue_size=64", "backbone.width=4",
           "method.hidden_dim=16", "method.dim=8", f"output_dir={tmp_path / 'out'}"]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI")}
    with open(log, "w") as f:  # as the local backend and SLURM write it: not a terminal
        res = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**env, "HF_HUB_OFFLINE": "1"},
                             timeout=600)
    text = log.read_bytes().decode()  # read_text() would turn each "\r" into a newline
    assert res.returncode == 0, text[-2000:]
    assert "\r" not in text
    epochs = re.findall(r"^\[pretrain\] epoch (\d+)/3  loss \d+\.\d{4}  lr \S+  \d+ img/s  ETA \w+$", text, re.M)
    assert epochs == ["1", "2", "3"], text
    progress = [line for line in text.splitlines() if re.match(r"\[pretrain\] epoch \d+/3 +\d+% ", line)]
    assert len(progress) <= 3 * 9, text


@pytest.mark.fashion_mnist
def test_a_supervised_log_file_reads_one_line_per_epoch_with_its_throughput(tmp_path):
    """linear, finetune, semisup and transfer share this loop: epoch, loss, lr, img/s and ETA per epoch."""
    from ._tiny import perturbed_backbone

    backbone = {"arch": "resnet18", "width": 4, "small_stem": True, "stem_stride": 2, "in_chans": 1}
    log = tmp_path / "log.txt"
    cmd = [sys.executable, "-m", "hirl_core", "finetune", "-c", str(REPO / "configs/downstream/finetune/finetune_demo.yaml"),
           f"pretrained={perturbed_backbone(tmp_path / 'pre', backbone)}", f"output_dir={tmp_path / 'out'}",
           "epochs=3", "batch_size=32", "data.train_subset=256", "data.val_subset=128", "untrained=false"]
    text = _log_file(cmd, log)
    assert "\r" not in text
    epochs = re.findall(r"^\[finetune\] pretrained epoch (\d+)/3  loss \d+\.\d{4}  .*  lr \S+  \d+ img/s  ETA \w+$",
                        text, re.M)
    assert epochs == ["1", "2", "3"], text
    progress = [line for line in text.splitlines() if re.match(r"\[finetune\] pretrained epoch \d+/3 +\d+% ", line)]
    assert len(progress) <= 3 * 9, text


def _log_file(cmd: list[str], log: Path) -> str:
    """The output of a stage run by hand (untracked) into the file `log`, as the local backend and SLURM
    write it (not a terminal), with every byte kept; the run must succeed."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI")}
    with open(log, "w") as f:
        res = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                             env={**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}, timeout=300)
    text = log.read_bytes().decode()  # read_text() would turn each "\r" into a newline
    assert res.returncode == 0, text[-2000:]
    return text


@pytest.fixture(scope="module")
def tiny_pretrained(tmp_path_factory):
    from ._tiny import perturbed_backbone

    backbone = {"arch": "resnet18", "width": 4, "small_stem": True, "stem_stride": 2, "in_chans": 1}
    return perturbed_backbone(tmp_path_factory.mktemp("pretrained") / "pre", backbone)


# the evaluation stages at their tiniest (the pre-trained phase only): stage, config, epochs, overrides
EVAL_LOGS = [
    ("knn", "knn/knn_demo.yaml", 0, ["data.train_subset=256", "data.val_subset=128", "knn.k=[10]"]),
    ("clustering", "clustering/clustering_demo.yaml", 0,
     ["data.val_subset=256", "clustering.nredo=1", "clustering.niter=5", "clustering.tree=false"]),
    ("linear", "linear/linear_demo.yaml", 2, ["batch_size=64", "data.train_subset=256", "data.val_subset=128"]),
    ("semisup", "semisup/semisup_demo_10percent.yaml", 2,
     ["batch_size=32", "data.train_subset=640", "data.val_subset=128", "semisup.fraction=0.1"]),
    ("transfer", "transfer/transfer_demo.yaml", 2, ["batch_size=256", "data.root={tmp}/fashion_mnist_coarse5"]),
]


@pytest.mark.fashion_mnist
@pytest.mark.parametrize("stage, config, epochs, overrides", EVAL_LOGS, ids=[e[0] for e in EVAL_LOGS])
def test_an_evaluation_log_file_reads_one_line_per_epoch(tmp_path, tiny_pretrained, stage, config, epochs, overrides):
    """No carriage return; a trained stage writes one epoch line (loss, lr, img/s, ETA) per epoch; progress
    lines stay few (at most nine per epoch or feature pass) and little else is written."""
    cmd = [sys.executable, "-m", "hirl_core", stage, "-c", str(REPO / "configs/downstream" / config),
           f"pretrained={tiny_pretrained}", f"output_dir={tmp_path / 'out'}", "untrained=false",
           *([f"epochs={epochs}"] if epochs else []), *(o.format(tmp=tmp_path) for o in overrides)]
    text = _log_file(cmd, tmp_path / "log.txt")
    assert "\r" not in text
    lines = text.splitlines()
    epoch_lines = re.findall(rf"^\[{stage}\] pretrained epoch (\d+)/{epochs}  loss \d+\.\d{{4}}  .*  lr \S+  "
                             r"\d+ img/s  ETA \w+$", text, re.M) if epochs else []
    assert epoch_lines == [str(e + 1) for e in range(epochs)], text
    progress = [line for line in lines if re.search(r" \d+% \d+/\d+", line)]
    assert len(progress) <= 9 * (epochs + 2), text
    assert len(lines) - len(epoch_lines) - len(progress) <= 6, text  # the results and a header or two
    assert any(line.startswith(f"[{stage}] ") for line in lines), text
