"""The local backend and ``hirl submit|status`` with real child processes and a real MLflow store.

Stages are tiny Python scripts (the ``command_for`` hook) instead of hirl_core, so
these tests need no torch; they check ordering, skipping, failure and Ctrl-C.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from jobs import cli, lineage
from jobs.backends import Plan, available_backends, get_backend
from jobs.backends.local import LocalBackend
from jobs.dag import assign_outputs, compile_cell
from jobs.spec import load_experiment

from . import PYTHON, make_root, subprocess_env

# A stage that records that it ran, then logs its key metric into its own run (MLFLOW_RUN_ID).
GOOD_STAGE = """\
import os, sys
with open(sys.argv[1], "a") as f:
    f.write(os.environ["HIRL_STAGE"] + "\\n")
print("hello from", os.environ["HIRL_STAGE"])
import mlflow
with mlflow.start_run():
    mlflow.log_metric("loss" if os.environ["HIRL_STAGE"] == "pretrain" else "knn_top1_k20", 0.25)
"""
BAD_STAGE = "import sys; print('boom'); sys.exit(1)"


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    return make_root(tmp_path)


@pytest.fixture
def db(root, blank_db):
    shutil.copy(blank_db, root / "mlflow.db")
    return root / "mlflow.db"


def good_backend(order_file):
    return LocalBackend(command_for=lambda stage: [PYTHON, "-c", GOOD_STAGE, str(order_file)])


def test_submit_runs_stages_in_order_then_skips_finished_ones(root, db, monkeypatch, capsys):
    order = root / "order.txt"
    monkeypatch.setattr(cli, "get_backend", lambda name: good_backend(order))
    assert cli.main(["submit", "demo"]) == 0
    out = capsys.readouterr().out
    assert order.read_text() == "pretrain\nknn\n"
    cell = compile_cell(load_experiment("demo", root=root))
    rows = lineage.chain_status("demo", cell.cell_id, cell.names)
    assert [(r.stage, r.status, r.metric, r.value) for r in rows] == [
        ("pretrain", "FINISHED", "loss", 0.25), ("knn", "FINISHED", "knn_top1_k20", 0.25)]
    assert lineage.find_chain("demo", cell.cell_id).info.status == "FINISHED"
    assert f"MLflow UI: make ui  (tracking: sqlite:///{db})" in out
    # last: the chain's row of the results table (the stand-in knn logs no untrained number)
    assert out.rstrip().splitlines()[-3:] == ["| Method | Arch. | Epochs | Batch Size | KNN |", "|---|---|---|---|---|",
                                              "| demo | ResNet-18 | 1 | 8 | 25.0 |"]
    assert "knn_top1_k20=0.25" in out

    knn_dir = root / "outputs" / "demo" / cell.cell_id / f"knn-{rows[1].run_id[:8]}"
    assert "hello from knn" in (knn_dir / "log.txt").read_text()
    written = (knn_dir / "config.yaml").read_text()
    assert f"pretrained: outputs/demo/{cell.cell_id}/pretrain-{rows[0].run_id[:8]}/backbone.pth" in written

    assert cli.main(["submit", "demo"]) == 0
    out = capsys.readouterr().out
    assert f"skip pretrain (finished, run {rows[0].run_id})" in out and f"skip knn (finished, run {rows[1].run_id})" in out
    assert order.read_text() == "pretrain\nknn\n"  # nothing ran again

    assert cli.main(["status", "demo"]) == 0
    status = capsys.readouterr().out
    assert rows[0].run_id in status and "loss=0.25" in status and "FINISHED" in status


def test_a_failed_stage_holds_its_dependents_and_fails_the_submit(root, db, capsys):
    cell = compile_cell(load_experiment("demo", root=root))
    runs = lineage.ensure_chain(cell, "local")
    backend = LocalBackend(command_for=lambda stage: [PYTHON, "-c", BAD_STAGE])
    result = backend.submit(Plan(cell, runs, lineage.tracking_uri()))
    assert result.returncode != 0
    assert [(h.stage, h.state) for h in result.handles] == [("pretrain", "FAILED"), ("knn", "SCHEDULED")]
    assert result.handles[0].returncode == 1
    assert lineage.run_status(runs["pretrain"].run_id) == "FAILED"
    assert lineage.run_status(runs["knn"].run_id) == "SCHEDULED"
    out = capsys.readouterr().out
    assert "hold knn: upstream pretrain is FAILED" in out and "boom" in out
    assert backend.logs(result.handles[0]) == "boom\n"
    assert lineage.end_chain("demo", cell.cell_id) == "FAILED"


def test_bad_input_creates_no_store_and_no_dirs(root, capsys):
    assert cli.main(["submit", "nope"]) == 2
    assert cli.main(["submit", "demo", "--set", "optimizer.lrr=0.1"]) == 2
    assert cli.main(["submit", "demo", "--backend", "nowhere"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("hirl: error: unknown experiment 'nope'; available: demo")
    assert err[1].startswith("hirl: error: unknown config key 'optimizer.lrr' (did you mean: optimizer.lr?)")
    assert err[2] == f"hirl: error: unknown backend 'nowhere'; available: {', '.join(available_backends())}"
    assert cli.main(["status", "demo"]) == 0
    assert "no runs yet" in capsys.readouterr().out
    (root / "configs/experiments/demo.yaml").write_text(
        (root / "configs/experiments/demo.yaml").read_text().replace("nproc_per_node: 1", "nproc_per_node: 0"))
    assert cli.main(["submit", "demo"]) == 2
    assert "nproc_per_node must be a positive integer" in capsys.readouterr().err
    assert sorted(p.name for p in root.iterdir()) == ["configs", "data"]


def test_render_is_a_byte_stable_dry_run(root):
    cell = assign_outputs(compile_cell(load_experiment("demo", root=root)))
    backend = get_backend("local")
    files = backend.render(Plan(cell, None))
    base = f"outputs/demo/{cell.cell_id}"
    assert sorted(files) == ["local/commands.sh", f"{base}/knn-<run-id>/config.yaml",
                             f"{base}/pretrain-<run-id>/config.yaml"]
    assert files["local/commands.sh"].splitlines()[3:] == [
        "# pretrain (pretrain), after: -",
        "MLFLOW_RUN_ID='<run-id>' HIRL_STAGE=pretrain HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 python -m hirl_core "
        f"pretrain -c '{base}/pretrain-<run-id>/config.yaml'",
        "# knn (knn), after: pretrain",
        "MLFLOW_RUN_ID='<run-id>' HIRL_STAGE=knn HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 python -m hirl_core "
        f"knn -c '{base}/knn-<run-id>/config.yaml'"]
    assert backend.render(Plan(cell, None)) == files
    assert not (root / "outputs").exists()
    assert LocalBackend.hirl_command(cell.stages[0], 2, python="python")[:6] == [
        "python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


# Runs a submit in its own process so the test can Ctrl-C it like a user would.
DRIVER = """\
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even when the tests run under nohup/&
from jobs import lineage
from jobs.backends import Plan
from jobs.backends.local import LocalBackend
from jobs.dag import compile_cell
from jobs.spec import load_experiment
sleeper = "import os, sys, time; open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid())); " \\
          "os.rename(sys.argv[1] + '.tmp', sys.argv[1]); time.sleep(120)"
cell = compile_cell(load_experiment("demo"))
runs = lineage.ensure_chain(cell, "local")
backend = LocalBackend(command_for=lambda s: [sys.executable, "-c", sleeper, sys.argv[1]], grace_s=10)
sys.exit(backend.submit(Plan(cell, runs, lineage.tracking_uri())).returncode)
"""


def test_ctrl_c_terminates_the_stage_and_marks_its_run_killed(root, db):
    pid_file = root / "stage.pid"
    driver = subprocess.Popen([PYTHON, "-c", DRIVER, str(pid_file)], cwd=root, env=subprocess_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while not pid_file.exists():
            assert driver.poll() is None, driver.stdout.read()
            assert time.monotonic() < deadline, "the stage never started"
            time.sleep(0.1)
        stage_pid = int(pid_file.read_text())
        driver.send_signal(signal.SIGINT)
        out, _ = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, out
    with pytest.raises(ProcessLookupError):
        os.kill(stage_pid, 0)
    cell = compile_cell(load_experiment("demo", root=root))
    rows = lineage.chain_status("demo", cell.cell_id, cell.names)
    assert [(r.stage, r.status) for r in rows] == [("pretrain", "KILLED"), ("knn", "SCHEDULED")]
    assert "interrupted: stopping pretrain" in out and "hold knn: interrupted" in out


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups")
def test_a_stage_killed_by_a_signal_is_marked_killed(root, db):
    cell = compile_cell(load_experiment("pretrain_only", root=root))
    runs = lineage.ensure_chain(cell, "local")
    suicide = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    result = LocalBackend(command_for=lambda s: [PYTHON, "-c", suicide]).submit(Plan(cell, runs, lineage.tracking_uri()))
    assert result.returncode == 1 and result.handles[0].returncode == -signal.SIGKILL
    assert lineage.run_status(runs["pretrain"].run_id) == "KILLED"


# The pre-training stage cancels its own chain from another process, as `hirl cancel` in a second shell.
CANCEL_FROM_INSIDE = """\
import subprocess, sys, time
subprocess.run([sys.executable, "-m", "jobs", "cancel", "demo"], start_new_session=True)
time.sleep(60)
"""


def test_after_a_cancel_the_hold_message_says_the_run_is_killed(root, db, monkeypatch, capsys):
    monkeypatch.setattr(cli, "get_backend", lambda name: LocalBackend(
        command_for=lambda stage: [PYTHON, "-c", CANCEL_FROM_INSIDE], grace_s=5))
    monkeypatch.setenv("PYTHONPATH", subprocess_env()["PYTHONPATH"])
    assert cli.main(["submit", "demo"]) == 1
    out = capsys.readouterr().out
    cell = compile_cell(load_experiment("demo", root=root))
    rows = lineage.chain_status("demo", cell.cell_id, cell.names)
    assert [(r.stage, r.status) for r in rows] == [("pretrain", "KILLED"), ("knn", "KILLED")]
    assert f"hold knn: upstream pretrain is KILLED; run {rows[1].run_id} is KILLED" in out, out
    assert "stays SCHEDULED" not in out


def test_logs_of_a_stage_that_never_started_say_so_in_one_line(root, db, monkeypatch, capsys):
    monkeypatch.setattr(cli, "get_backend", lambda name: LocalBackend(command_for=lambda s: [PYTHON, "-c", BAD_STAGE]))
    assert cli.main(["submit", "demo"]) == 1
    capsys.readouterr()
    assert cli.main(["logs", "demo", "--stage", "knn"]) == 1
    out, err = capsys.readouterr()
    cell = compile_cell(load_experiment("demo", root=root))
    knn = lineage.chain_status("demo", cell.cell_id, cell.names)[1]
    assert out == "" and err == (f"stage knn of cell {cell.cell_id[:8]} has not started (run {knn.run_id} is "
                                 f"SCHEDULED): no log yet\n")
    assert cli.main(["logs", "demo", "--stage", "pretrain"]) == 0
    assert capsys.readouterr().out == "boom\n"
