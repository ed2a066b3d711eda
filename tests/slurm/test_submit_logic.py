"""How the SLURM backend turns cells into jobs, without a cluster: arrays for same-shape stages,
aftercorr/afterok dependencies, kept live jobs, holds, attempts (sbatch and MLflow are stubbed)."""

from pathlib import Path

import pytest

from jobs.backends import Plan
from jobs.backends import slurm as sl
from jobs.dag import assign_outputs
from jobs.lineage import StageRun
from jobs.matrix import load_sweep

FIX = Path(__file__).resolve().parent / "fixtures"
SITE = str(FIX / "slurm" / "pyxis_site.yaml")


class Recorder(sl.SlurmBackend):
    """Records submissions instead of calling sbatch; job ids count up from 100."""

    def __init__(self):
        super().__init__(site=SITE)
        self.calls, self.next = [], 100

    def _submit_one(self, item):
        self.next += 1
        self.calls.append(("job", item.stage.name, item.dependency, item.attempt_base))
        return item, str(self.next), "/f"

    def _submit_array(self, group, upstream_array):
        self.next += 1
        self.calls.append(("array", group[0].stage.name, upstream_array, len(group)))
        return [(item, f"{self.next}_{i}", "/f") for i, item in enumerate(group)]


def _cells(tmp_path, seeds=None):
    spec = FIX / "configs" / "experiments" / "gpu_chain.yaml"
    if seeds:
        spec = tmp_path / "sweep.yaml"
        spec.write_text((FIX / "configs" / "experiments" / "gpu_chain.yaml").read_text()
                        + f"matrix:\n  seed: {list(seeds)}\n")
    return [assign_outputs(c) for c in load_sweep(spec, root=FIX).cells]


def _plans(cells, states=None, only=None):
    states = states or {}
    plans = []
    for i, cell in enumerate(cells):
        runs = {}
        for s in cell.stages:
            status = states.get((i, s.name), ("SCHEDULED", {}))[0]
            runs[s.name] = StageRun(s.name, f"run-{i}-{s.name}", status, (i, s.name) not in states, s.output_dir)
        plans.append(Plan(cell, runs, "sqlite:///unused.db", only=only))
    return plans


@pytest.fixture
def mlflow_states(monkeypatch):
    """Stub the run states (status, tags) of reused runs and SLURM's view of their jobs."""
    table, live = {}, {}
    monkeypatch.setattr(sl.lineage, "run_state", lambda run_id, uri=None: table[run_id])
    monkeypatch.setattr(sl, "query", lambda ids: {i: (live[i], "None") for i in ids if i in live})
    return table, live


def test_a_fresh_sweep_is_two_arrays_the_evaluations_after_corresponding_tasks(tmp_path, mlflow_states):
    backend = Recorder()
    subs = backend.submit_many(_plans(_cells(tmp_path, seeds=[0, 1, 2])))
    assert backend.calls == [("array", "pretrain", "", 3), ("array", "knn", "101", 3)]
    assert [h.reason for h in subs[2].handles] == ["job 101_2", "job 102_2"]
    assert all(s.returncode == 0 for s in subs)


def test_a_single_cell_is_one_job_per_stage_with_afterok(tmp_path, mlflow_states):
    backend = Recorder()
    sub = backend.submit(_plans(_cells(tmp_path))[0])
    assert backend.calls == [("job", "pretrain", "", 0), ("job", "knn", "101", 0)]
    assert [h.state for h in sub.handles] == ["SCHEDULED", "SCHEDULED"]


def test_finished_live_and_failed_stages(tmp_path, mlflow_states):
    table, live = mlflow_states
    cells = _cells(tmp_path, seeds=[0, 1, 2])
    states = {(0, "pretrain"): ("FINISHED", {"hirl.job_id": "7"}),         # done: its knn needs no dependency
              (1, "pretrain"): ("RUNNING", {"hirl.job_id": "8"}),          # still running: kept, knn waits on it
              (2, "pretrain"): ("FAILED", {"hirl.job_id": "9", "hirl.attempt": "1"})}  # resubmitted, attempt 2 next
    for (i, name), value in states.items():
        table[f"run-{i}-{name}"] = value
    live["8"] = "RUNNING"
    backend = Recorder()
    subs = backend.submit_many(_plans(cells, states))
    assert backend.calls == [("job", "pretrain", "", 1),                   # cell 2 alone: no array of one
                             ("job", "knn", "", 0), ("job", "knn", "8", 0), ("job", "knn", "101", 0)]
    assert subs[0].handles[0].reason == "finished" and subs[1].handles[0].reason == "job 8"


def test_an_unselected_unfinished_upstream_holds_its_dependents(tmp_path, mlflow_states):
    table, _live = mlflow_states
    states = {(0, "pretrain"): ("FAILED", {"hirl.job_id": "9"}), (0, "knn"): ("KILLED", {"hirl.job_id": "10"})}
    for (i, name), value in states.items():
        table[f"run-{i}-{name}"] = value
    backend = Recorder()
    sub = backend.submit_many(_plans(_cells(tmp_path), states, only={"knn"}))[0]
    assert backend.calls == [] and sub.returncode == 1
    assert sub.handles[1].reason == "upstream pretrain is FAILED (not selected)"


def test_mixed_dependencies_fall_back_to_single_jobs(tmp_path, mlflow_states):
    table, live = mlflow_states
    states = {(0, "pretrain"): ("RUNNING", {"hirl.job_id": "50_3"}), (1, "pretrain"): ("RUNNING", {"hirl.job_id": "51"})}
    for (i, name), value in states.items():
        table[f"run-{i}-{name}"] = value
    live.update({"50_3": "PENDING", "51": "RUNNING"})
    backend = Recorder()
    backend.submit_many(_plans(_cells(tmp_path, seeds=[0, 1]), states))
    assert backend.calls == [("job", "knn", "50_3", 0), ("job", "knn", "51", 0)]


def test_tracking_uri_credentials_stay_out_of_the_pickled_command():
    assert sl._strip_credentials("https://alice:s3cret@mlflow.lab:5000/x") == "https://mlflow.lab:5000/x"
    assert sl._strip_credentials("sqlite:////tmp/m.db") == "sqlite:////tmp/m.db"


def test_query_reads_squeue_then_sacct_including_never_started_array_tasks(monkeypatch):
    from jobs.backends import slurm_query

    seen = []

    def fake_run(argv):
        seen.append(argv)
        if argv[0] == "squeue":
            return "700|CANCELLED|DependencyNeverSatisfied\n701_0|RUNNING|None\n"
        return ("JobID|State|Reason\n702_[0-2%2]|CANCELLED by 0|JobHeldUser\n"
                "703|FAILED|NonZeroExitCode\n")
    monkeypatch.setattr(slurm_query, "_run", fake_run)
    found = slurm_query.query(["700", "701_0", "702_1", "703", "704"])
    assert found == {"700": ("CANCELLED", "DependencyNeverSatisfied"), "701_0": ("RUNNING", "None"),
                     "702_1": ("CANCELLED", "JobHeldUser"), "703": ("FAILED", "NonZeroExitCode")}
    assert "-r" in seen[0] and "702" in seen[1]  # tasks of arrays are asked for by the array's id too
