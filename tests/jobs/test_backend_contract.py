"""The one backend contract: what every backend says it does, the pieces they share (jobs.backends.common),
and ``hirl logs`` reading the stage run's log artifact when the backend keeps no log."""

import inspect
import re
import shutil
from pathlib import Path

import pytest

from jobs import cli, lineage
from jobs.backends import Handle, Plan, available_backends, base, common, get_backend
from jobs.backends import slurm_render as rnd
from jobs.backends.local import LocalBackend
from jobs.dag import assign_outputs, compile_cell
from jobs.spec import load_experiment

from . import REPO_ROOT, make_blank_mlflow_db, make_root

VERBS = ("preflight", "render", "submit", "submit_many", "handle", "status", "logs", "cancel", "live_runs")


@pytest.mark.parametrize("name", available_backends())
def test_every_backend_answers_every_verb_with_one_signature(name):
    cls = type(get_backend(name))
    for verb in VERBS:
        mine, contract = inspect.signature(getattr(cls, verb)), inspect.signature(getattr(base.Backend, verb))
        assert list(mine.parameters) == list(contract.parameters), (name, verb, mine, contract)
    assert isinstance(cls.batches, bool)


def test_the_cli_never_asks_which_backend_it_has():
    for module in ("cli.py", "cli_runs.py", "cli_common.py"):
        text = (REPO_ROOT / "jobs" / module).read_text()
        assert not re.search(r"\.name\s*==\s*['\"]|hasattr\(\s*backend", text), module
        assert "log.txt" not in text, module  # where a log lives is the backend's business


def _cell(root):
    return assign_outputs(compile_cell(load_experiment("demo", root=root)))


def test_one_stage_environment_with_each_backends_additions_explicit(tmp_path):
    cell = _cell(make_root(tmp_path))
    stage = cell.stages[1]
    core = common.stage_env(stage, "r1")
    local = LocalBackend.stage_env(stage, "r1", "sqlite:///x.db")
    cluster = rnd.stage_env(cell, stage, "r1", 3)
    assert set(core) == {"MLFLOW_RUN_ID", "HIRL_STAGE", "HF_HUB_OFFLINE", "PYTHONUNBUFFERED"}
    assert local == {"MLFLOW_TRACKING_URI": "sqlite:///x.db", **core}
    assert cluster == {**core, "HIRL_EXPERIMENT": "demo", "HIRL_CELL": cell.cell_id, "HIRL_ATTEMPT_BASE": "3"}
    # one command builder: the local backend's, the SLURM task's and the entrypoint's are the same argv
    local_argv = LocalBackend.hirl_command(stage, python="py")
    assert local_argv == rnd.stage_argv(stage, {"python": "py"}) == common.stage_argv("knn", common.stage_config(stage), "py")
    assert local_argv == ["py", "-m", "hirl_core", "knn", "-c", f"{stage.output_dir}/config.yaml"]


def test_credentials_never_leave_the_submitting_environment():
    assert common.without_credentials("https://alice:s3cret@mlflow.lab:5000/x") == "https://mlflow.lab:5000/x"
    assert common.without_credentials("sqlite:////tmp/a@b.db") == "sqlite:////tmp/a@b.db"


def test_skip_keep_hold_policy(tmp_path):
    cell = _cell(make_root(tmp_path))
    pretrain, knn = cell.stages
    plan = Plan(cell, {}, force=False)
    up_failed = Handle("pretrain", "r0", "FAILED", reason="exit 1")
    assert common.decide(plan, pretrain, "FINISHED") == common.Decision("skip", "finished")
    assert common.decide(Plan(cell, {}, force=True), pretrain, "FINISHED").action == "run"
    assert common.decide(Plan(cell, {}, only={"knn"}), pretrain, "FAILED") == common.Decision("hold", "not selected")
    assert common.decide(plan, knn, "SCHEDULED", live_job="123") == common.Decision("keep", "123")
    assert common.decide(plan, knn, "SCHEDULED", up_failed) == common.Decision(
        "hold", "upstream pretrain is FAILED (exit 1)")
    assert common.decide(plan, knn, "SCHEDULED", up_failed, upstream_queued=True).action == "run"


def test_levels_walk_many_dags_roots_first(tmp_path):
    cells = [_cell(make_root(tmp_path / str(i))) for i in range(2)]
    plans = [Plan(c, {}) for c in cells]
    walk = [(level, [(plans.index(p), s.name) for p, s in items]) for level, items in common.levels(plans)]
    assert walk == [(0, [(0, "pretrain"), (1, "pretrain")]), (1, [(0, "knn"), (1, "knn")])]


def test_final_state_from_the_stage_exit():
    assert [common.final_state(c, i) for c, i in ((0, False), (1, False), (2, False), (-15, False), (0, True))] == [
        "FINISHED", "FAILED", "FAILED", "KILLED", "KILLED"]


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    shutil.copy(make_blank_mlflow_db(tmp_path / "blank.db"), tmp_path / "mlflow.db")
    return make_root(tmp_path)


def test_hirl_logs_shows_the_runs_log_artifact_when_the_log_file_is_gone(root, capsys):
    cell = compile_cell(load_experiment("demo", root=root))
    runs = lineage.ensure_chain(cell, "local")
    run_id = runs["pretrain"].run_id
    lineage.set_tags(run_id, {"hirl.attempt": "1"})
    lineage.set_run_status(run_id, "FAILED")
    lineage.client().log_text(run_id, "epoch 1 loss 0.5\nTraceback: boom\n", common.LOG_ARTIFACT)
    assert not list(Path(root).rglob("log.txt"))  # the machine that ran it kept nothing here
    assert cli.main(["logs", "demo", "--stage", "pretrain"]) == 0
    assert capsys.readouterr().out == "epoch 1 loss 0.5\nTraceback: boom\n"
    assert common.log_artifact(runs["knn"].run_id) == ""
