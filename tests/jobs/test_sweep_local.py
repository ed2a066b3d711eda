"""Sweeps on the local backend with a real MLflow store and real child processes (tiny stand-in stages
through the ``command_for`` hook, so no torch): submit, resubmit, status, logs, cancel, retry, report."""

import csv
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from jobs import cli, cli_runs, lineage, spec
from jobs.backends.local import LocalBackend
from jobs.matrix import load_sweep

from . import FIXTURES, PYTHON, make_root, subprocess_env

# Records "<cell dir> <stage>" and prints a line; its run is closed by the backend (clean exit: FINISHED).
RECORD = """\
import os, sys
with open(sys.argv[1], "a") as f:
    f.write(sys.argv[2] + "\\n")
print("hello from", os.environ["HIRL_STAGE"], "of", sys.argv[2])
sys.exit(int(sys.argv[3]))
"""


@pytest.fixture(autouse=True)
def runnable(monkeypatch):
    monkeypatch.setattr(spec, "RUNNABLE_TYPES", ("pretrain", "knn"))


@pytest.fixture
def root(tmp_path, monkeypatch, blank_db):
    make_root(tmp_path)
    for path in (FIXTURES / "sweeps").glob("*.yaml"):
        shutil.copy(path, tmp_path / "configs" / "experiments")
    shutil.copy(blank_db, tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def where(stage):
    """'<cell id> <stage>' from a stage's output dir outputs/<exp>/<cell>/<stage>-<run8>."""
    parts = stage.output_dir.split("/")
    return f"{parts[2]} {stage.name}"


def recording_backend(order, fail=lambda stage: False):
    return LocalBackend(command_for=lambda stage: [PYTHON, "-c", RECORD, str(order), where(stage),
                                                   "1" if fail(stage) else "0"])


def use(monkeypatch, backend):
    for module in (cli, cli_runs):  # submit, and the verbs on existing runs
        monkeypatch.setattr(module, "get_backend", lambda name: backend)


def ran(order):
    return order.read_text().splitlines() if order.exists() else []


def all_runs():
    c = lineage.client()
    exp = c.get_experiment_by_name("sweep")
    return lineage.search_all(c, exp.experiment_id) if exp else []


def test_a_sweep_runs_with_one_command_and_is_one_unit_in_mlflow(root, monkeypatch, capsys):
    order = root / "order.txt"
    use(monkeypatch, recording_backend(order))
    assert cli.main(["submit", "sweep"]) == 0
    out = capsys.readouterr().out
    sweep = load_sweep("sweep", root=root)
    assert ran(order) == [f"{c.cell_id} {s}" for c in sweep.cells for s in ("pretrain", "knn")]
    assert f"experiment sweep, sweep {sweep.sweep_id}: 4 cells, 8 stages on local" in out
    assert f"sweep sweep-{sweep.sweep_id[:8]}: FINISHED (4 FINISHED)" in out

    runs = all_runs()
    sweeps = [r for r in runs if r.data.tags.get("hirl.kind") == "sweep"]
    chains = [r for r in runs if r.data.tags.get("hirl.kind") == "chain"]
    stages = [r for r in runs if "hirl.stage" in r.data.tags]
    assert len(sweeps) == 1 and len(chains) == 4 and len(stages) == 8 and len(runs) == 13
    sweep_run = sweeps[0]
    assert sweep_run.data.tags["hirl.sweep"] == sweep.sweep_id and sweep_run.info.status == "FINISHED"
    for chain in chains:
        tags = chain.data.tags
        assert tags["hirl.sweep"] == sweep.sweep_id and tags["mlflow.parentRunId"] == sweep_run.info.run_id
        assert chain.info.status == "FINISHED"
    by_cell = {c.cell_id: c for c in sweep.cells}
    assert {ch.data.tags["hirl.cell"]: ch.data.tags["hirl.cell_label"] for ch in chains} == {
        i: c.label for i, c in by_cell.items()}
    assert {ch.data.tags["hirl.method"] for ch in chains} == {"row_a", "row_b"}
    for run in stages:
        tags = run.data.tags
        assert run.info.status == "FINISHED" and tags["hirl.attempt"] == "1" and tags["hirl.job_id"].isdigit()
        assert not (root / tags["hirl.output_dir"] / "pid").exists()  # removed when the stage ended
    listing = lineage.client().download_artifacts(sweep_run.info.run_id, "sweep.json", str(root))
    assert [c["cell"] for c in yaml.safe_load(open(listing))["cells"]] == [c.cell_id for c in sweep.cells]

    assert cli.main(["status", "sweep"]) == 0
    status = capsys.readouterr().out.splitlines()
    assert status[0] == f"experiment sweep, sweep {sweep.sweep_id}: 4 cells (4 FINISHED)"
    assert status[1].split() == ["cell", "params", "stage", "job", "id", "state", "attempt", "key", "metric"]
    first = status[2].split()
    assert first[:4] == [sweep.cells[0].cell_id[:8], "method=row_a", "seed=0", "pretrain"]
    assert first[5:7] == ["FINISHED", "1"]
    assert len(status) == 2 + 8


def test_resubmitting_submits_nothing_new_and_one_changed_value_only_its_cells(root, monkeypatch, capsys):
    order = root / "order.txt"
    use(monkeypatch, recording_backend(order))
    assert cli.main(["submit", "sweep"]) == 0
    first = ran(order)
    count = len(all_runs())
    capsys.readouterr()

    assert cli.main(["submit", "sweep"]) == 0
    out = capsys.readouterr().out
    assert ran(order) == first and len(all_runs()) == count  # nothing ran, nothing created
    assert "nothing new to run: all 4 cells are finished" in out and out.count("skip ") == 8

    data = yaml.safe_load((root / "configs/experiments/sweep.yaml").read_text())
    data["matrix"]["seed"] = [0, 2]  # one value changed: the two seed-2 cells are new, seed 0 is done
    (root / "configs/experiments/sweep.yaml").write_text(yaml.safe_dump(data))
    assert cli.main(["submit", "sweep"]) == 0
    new = load_sweep("sweep", root=root)
    seed2 = [c.cell_id for c in new.cells if c.params["seed"] == 2]
    assert ran(order)[len(first):] == [f"{c} {s}" for c in seed2 for s in ("pretrain", "knn")]
    assert len(all_runs()) == count + 1 + 2 + 4  # a new sweep run, two chains, four stage runs
    chains = {r.data.tags["hirl.cell"]: r for r in all_runs() if r.data.tags.get("hirl.kind") == "chain"}
    for cell in new.cells:  # the kept cells moved to the new sweep
        assert chains[cell.cell_id].data.tags["hirl.sweep"] == new.sweep_id


def test_report_matches_mlflow_and_is_logged_to_the_sweep_run(root, monkeypatch, capsys):
    use(monkeypatch, recording_backend(root / "order.txt"))
    assert cli.main(["submit", "sweep"]) == 0
    sweep = load_sweep("sweep", root=root)
    c = lineage.client()
    statuses = lineage.sweep_status("sweep", sweep.cells)
    logged = {}
    for i, st in enumerate(statuses):  # the stand-in stages log nothing: give each knn run a metric
        knn = next(r for r in st.rows if r.stage == "knn")
        c.log_metric(knn.run_id, "knn_top1_k20", 0.5 + 0.0123 * i + (0.05 if st.cell.method == "row_b" else 0))
        logged[st.cell.cell_id] = knn.run_id
    capsys.readouterr()
    out_dir = root / "rep"
    assert cli.main(["report", "sweep", "--out", str(out_dir)]) == 0
    printed = capsys.readouterr().out

    with open(out_dir / "sweep.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [(r["Method"], r["seed"]) for r in table] == [("Tiny-A", "0"), ("Tiny-A", "1"), ("HIRL-Tiny-A", "0"),
                                                        ("HIRL-Tiny-A", "1")]
    for row, cell in zip(table, sweep.cells):  # every number equals the metric in MLflow
        metric = c.get_run(logged[cell.cell_id]).data.metrics["knn_top1_k20"]
        assert float(row["KNN"]) == round(100 * metric, 2)
        assert row["Arch."] == "ResNet-18" and row["Epochs"] == "1"
    assert [r["Batch Size"] for r in table] == ["8", "8", "8", "8"]  # 8 per process x 1 local process
    for hirl, base in ((table[2], table[0]), (table[3], table[1])):  # HIRL vs its baseline at the same seed
        assert float(hirl["KNN delta"]) == pytest.approx(float(hirl["KNN"]) - float(base["KNN"]), abs=0.011)
        assert hirl["KNN delta"].startswith("+")
    assert table[0]["KNN delta"] == ""
    md = (out_dir / "sweep.md").read_text()
    assert "| Method | seed | Arch. | Epochs | Batch Size | KNN |" in md
    assert f"| HIRL-Tiny-A | 0 | ResNet-18 | 1 | 8 | {table[2]['KNN']} ({table[2]['KNN delta']}) |" in md
    assert md in printed
    assert (out_dir / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    run = lineage.find_sweep_run("sweep", sweep.sweep_id)
    arts = {a.path for a in c.list_artifacts(run.info.run_id, "report")}
    assert arts == {"report/sweep.md", "report/sweep.csv", "report/sweep.png"}
    assert c.get_run(run.info.run_id).data.tags["mlflow.note.content"] == md


def test_retry_reruns_only_failed_stages_and_what_they_held(root, monkeypatch, capsys):
    order = root / "order.txt"
    broken = recording_backend(order, fail=lambda s: s.name == "pretrain" and s.config.seed == 1
                               and "method" in s.config and s.config.method.temperature == 0.1)
    use(monkeypatch, broken)
    assert cli.main(["submit", "sweep"]) == 1  # one cell fails; the others still run
    sweep = load_sweep("sweep", root=root)
    bad = next(c for c in sweep.cells if c.label == "method=row_b seed=1")
    assert ran(order)[-1] == f"{bad.cell_id} pretrain" and len(ran(order)) == 7
    st = {s.cell.cell_id: s for s in lineage.sweep_status("sweep", sweep.cells)}
    assert [r.status for r in st[bad.cell_id].rows] == ["FAILED", "SCHEDULED"]
    assert st[bad.cell_id].chain.info.status == "FAILED"
    out = capsys.readouterr().out
    assert "hold knn: upstream pretrain is FAILED" in out

    use(monkeypatch, recording_backend(order))
    assert cli.main(["retry", "sweep"]) == 0
    assert ran(order)[7:] == [f"{bad.cell_id} pretrain", f"{bad.cell_id} knn"]
    rows = lineage.sweep_status("sweep", [bad])[0].rows
    assert [(r.status, r.attempt) for r in rows] == [("FINISHED", 2), ("FINISHED", 1)]
    assert lineage.find_sweep_run("sweep", sweep.sweep_id).info.status == "FINISHED"
    capsys.readouterr()
    assert cli.main(["retry", "sweep"]) == 0
    assert "nothing to retry in sweep" in capsys.readouterr().out and len(ran(order)) == 9


def test_logs_of_a_stage(root, monkeypatch, capsys):
    use(monkeypatch, recording_backend(root / "order.txt"))
    assert cli.main(["submit", "sweep"]) == 0
    sweep = load_sweep("sweep", root=root)
    capsys.readouterr()
    cell = sweep.cells[1]
    assert cli.main(["logs", "sweep", "--cell", cell.cell_id[:8], "--stage", "knn", "--follow"]) == 0
    assert capsys.readouterr().out == f"hello from knn of {cell.cell_id} knn\n"
    assert cli.main(["logs", "sweep", "--cell", "method=row_a,seed=1", "--rank", "0"]) == 0
    assert capsys.readouterr().out == f"hello from pretrain of {cell.cell_id} pretrain\n"
    assert cli.main(["logs", "sweep", "--stage", "knn"]) == 2
    assert "4 cells match: pick one with --cell" in capsys.readouterr().err
    assert cli.main(["logs", "sweep", "--cell", cell.cell_id[:8], "--stage", "knnn"]) == 2
    assert "unknown stage 'knnn' (did you mean 'knn'?)" in capsys.readouterr().err
    assert cli.main(["status", "sweep", "--watch", "0.1"]) == 0  # settled: one table, then it returns
    assert capsys.readouterr().out.count("4 cells (4 FINISHED)") == 1


def test_cancel_a_scheduled_stage_and_a_cell(root, monkeypatch, capsys):
    backend = recording_backend(root / "order.txt")
    sweep = load_sweep("sweep", root=root)
    ref = lineage.SweepRef(sweep.sweep_id, lineage.ensure_sweep_run(sweep, backend))
    for cell in sweep.cells:
        lineage.ensure_chain(cell, backend, sweep=ref)
    use(monkeypatch, backend)
    assert cli.main(["cancel", "sweep", "--cell", "method=row_a,seed=0", "--stage", "knn"]) == 0
    out = capsys.readouterr().out
    assert "cancelled 1 stages in 1 cells of sweep (stage knn)" in out
    states = [[r.status for r in st.rows] for st in lineage.sweep_status("sweep", sweep.cells)]
    assert states == [["SCHEDULED", "KILLED"]] + [["SCHEDULED", "SCHEDULED"]] * 3
    assert cli.main(["cancel", "sweep", "--cell", "method=row_b"]) == 0
    states = [[r.status for r in st.rows] for st in lineage.sweep_status("sweep", sweep.cells)]
    assert states[2:] == [["KILLED", "KILLED"]] * 2
    assert lineage.find_sweep_run("sweep", sweep.sweep_id).info.status == "KILLED"  # cancel settles the sweep
    assert cli.main(["cancel", "sweep", "--stage", "knnn"]) == 2


# Submits the sweep in its own process with stages that sleep, so the test can cancel it from outside.
DRIVER = """\
import sys
from jobs import cli, spec
from jobs.backends.local import LocalBackend
spec.RUNNABLE_TYPES = ("pretrain", "knn")
sleeper = "import sys, time; open(sys.argv[1], 'a').write(sys.argv[2] + chr(10)); time.sleep(120)"
backend = LocalBackend(command_for=lambda s: [sys.executable, "-c", sleeper, sys.argv[1], s.output_dir], grace_s=10)
cli.get_backend = lambda name: backend
sys.exit(cli.main(["submit", "sweep"]))
"""


def test_cancel_stops_a_running_sweep_from_another_process(root, capsys):
    started = root / "started.txt"
    driver = subprocess.Popen([PYTHON, "-c", DRIVER, str(started)], cwd=root, env=subprocess_env(
        MLFLOW_TRACKING_URI=os.environ["MLFLOW_TRACKING_URI"]), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    try:
        deadline = time.monotonic() + 120
        sweep = load_sweep("sweep", root=root)
        first = sweep.cells[0]
        while not started.exists() or not lineage.sweep_status("sweep", [first])[0].rows[0].job_id:
            assert driver.poll() is None, driver.stdout.read()
            assert time.monotonic() < deadline, "the first stage never started"
            time.sleep(0.2)
        row = lineage.sweep_status("sweep", [first])[0].rows[0]
        pid = int(row.job_id)
        group, stage_pid = (root / row.output_dir / "pid").read_text().split()  # the watcher's group, the stage
        assert stage_pid == str(pid) and os.getpgid(pid) == int(group)
        assert cli.main(["cancel", "sweep"]) == 0
        out, _ = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert driver.returncode not in (0, None), out
    assert started.read_text().splitlines() == [row.output_dir]  # nothing else ran
    statuses = lineage.sweep_status("sweep", sweep.cells)
    assert {r.status for st in statuses for r in st.rows} == {"KILLED"}
    assert {st.status for st in statuses} == {"KILLED"}
    assert lineage.find_sweep_run("sweep", sweep.sweep_id).info.status == "KILLED"
    assert "hold pretrain: cancelled" in out and "cancelled 8 stages in 4 cells of sweep (sweep)" in capsys.readouterr().out
    assert not (root / row.output_dir / "pid").exists()
