"""A sweep's chains written in one transaction (jobs/lineage_sql.py) are the runs the one-by-one path
makes: same runs, statuses, tags, params, dataset inputs and config artifacts, on a sqlite store and
through the tracking server's endpoint (``mlflow server --app-name hirl``)."""
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from jobs import lineage, lineage_bulk, lineage_sql
from jobs.matrix import load_sweep

from . import FIXTURES, make_root
from ..tracking.server import free_port, healthy


def _root(tmp_path):
    root = make_root(tmp_path / "root")
    for path in (FIXTURES / "sweeps").glob("*.yaml"):
        shutil.copy(path, root / "configs" / "experiments")
    return root


def _store(tmp_path, blank_db, name):
    path = tmp_path / name / "mlflow.db"
    path.parent.mkdir()
    shutil.copy(blank_db, path)
    return f"sqlite:///{path}"


def _submit(root, uri, one_by_one):
    """The sweep run and every cell's chain, as hirl submit makes them."""
    sweep = load_sweep("sweep", root=root)
    ref = lineage.SweepRef(sweep.sweep_id, lineage.ensure_sweep_run(sweep, "local", uri))
    if one_by_one:
        return [lineage.ensure_chain(cell, "local", uri=uri, sweep=ref) for cell in sweep.cells]
    return lineage_bulk.ensure_chains(sweep.cells, "local", uri=uri, sweep=ref)


def snapshot(uri):
    """Everything a user or a stage reads of the experiment's runs, run ids replaced by what the run is."""
    from mlflow.entities import ViewType

    c = lineage.client(uri)
    exp = c.get_experiment_by_name("sweep")
    runs = c.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    names = {}
    for run in runs:
        t = run.data.tags
        names[run.info.run_id] = f"<{t.get('hirl.kind') or t.get('hirl.stage')}:{t.get('hirl.cell', '')[:8]}>"

    def plain(text):  # output dirs hold a run id's first 8 digits
        text = re.sub(r"[0-9a-f]{32}", lambda m: names.get(m.group(0), "<?>"), text)
        for run_id, name in names.items():
            text = text.replace(run_id[:8], name)
        return text

    out = {}
    for run in runs:
        info = run.info
        artifacts = {}
        for f in c.list_artifacts(info.run_id):
            if not f.is_dir:
                path = c.download_artifacts(info.run_id, f.path, dst_path=os.path.join(uri.split("///")[-1] + ".dl",
                                                                                     info.run_id))
                artifacts[f.path] = plain(open(path, encoding="utf-8").read())
        inputs = sorted((d.dataset.name, d.dataset.digest, d.dataset.source_type, d.dataset.source,
                         d.dataset.schema, d.dataset.profile, tuple((t.key, t.value) for t in d.tags))
                        for d in run.inputs.dataset_inputs)
        out[names[info.run_id]] = {
            "status": info.status, "name": info.run_name, "user": info.user_id, "end": info.end_time,
            "lifecycle": info.lifecycle_stage, "tags": {k: plain(v) for k, v in run.data.tags.items()},
            "params": {k: plain(v) for k, v in run.data.params.items()}, "metrics": dict(run.data.metrics), "inputs": inputs,
            "artifacts": artifacts}
    return out


def test_one_transaction_on_sqlite_makes_the_runs_the_one_by_one_path_makes(tmp_path, monkeypatch, blank_db):
    root = _root(tmp_path)
    monkeypatch.chdir(tmp_path)
    single, bulk = _store(tmp_path, blank_db, "single"), _store(tmp_path, blank_db, "bulk")
    assert lineage_sql.sql_store(bulk) is not None  # the bulk path is the one taken
    made = _submit(root, bulk, one_by_one=False)
    _submit(root, single, one_by_one=True)
    expected, got = snapshot(single), snapshot(bulk)
    assert len(got) == 13 and set(got) == set(expected)  # sweep + 4 chains + 8 stage runs
    for key in expected:
        assert got[key] == expected[key], key
    stage = next(v for k, v in got.items() if k.startswith("<pretrain:"))
    assert stage["status"] == "SCHEDULED" and stage["inputs"] and "config.yaml" in stage["artifacts"]
    assert len(stage["params"]) > 10 and "/pretrain-<pretrain:" in stage["tags"]["hirl.output_dir"]
    # A second submission reuses every run (the cells have chains now: ensure_chain decides).
    again = _submit(root, bulk, one_by_one=False)
    assert [{k: r.run_id for k, r in runs.items()} for runs in again] == \
        [{k: r.run_id for k, r in runs.items()} for runs in made]
    assert len(snapshot(bulk)) == 13


def test_the_servers_endpoint_makes_the_runs_the_one_by_one_path_makes(tmp_path, monkeypatch, blank_db):
    root = _root(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "server").mkdir()
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server" / "log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--app-name", "hirl", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}",
                             "--artifacts-destination", str(tmp_path / "server" / "artifacts")],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
    try:
        deadline = time.monotonic() + 180
        while not healthy(uri):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server" / "log").read_text()[-2000:]
            time.sleep(0.5)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        _submit(root, uri, one_by_one=False)
        exp_id = lineage.client(uri).get_experiment_by_name("sweep").experiment_id
        assert lineage_sql._post(uri, exp_id, [])  # the endpoint is there: the runs above went through it
        single = _store(tmp_path, blank_db, "single")
        _submit(root, single, one_by_one=True)
        expected, got = snapshot(single), snapshot(uri)
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
    assert set(got) == set(expected) and len(got) == 13
    for key in expected:
        assert got[key] == expected[key], key


def test_a_plan_of_anything_but_new_scheduled_or_running_runs_is_refused(tmp_path, blank_db):
    uri = _store(tmp_path, blank_db, "store")
    exp_id = lineage.client(uri).create_experiment("e")
    plan = [{"run_id": "ab" * 16, "name": "a", "status": "FINISHED", "start_time": 0, "tags": {}, "params": {},
             "batch_tags": {}, "dataset": None, "config_yaml": None}]
    with pytest.raises(lineage_sql.PlanError, match="statuses RUNNING, SCHEDULED"):
        lineage_sql.write_plan(lineage_sql.sql_store(uri), exp_id, plan)
    assert lineage.client(uri).search_runs([exp_id]) == []


def test_tags_of_many_runs_in_one_write_add_and_overwrite_as_set_tag_does(tmp_path, blank_db):
    uri = _store(tmp_path, blank_db, "store")
    c = lineage.client(uri)
    exp_id = c.create_experiment("e")
    runs = [c.create_run(exp_id, tags={"hirl.job_id": "old"}).info.run_id for _ in range(3)]
    lineage_sql.set_tags(uri, {run_id: {"hirl.job_id": f"7_{i}", "hirl.slurm_site": "test"}
                               for i, run_id in enumerate(runs)})
    for i, run_id in enumerate(runs):
        tags = c.get_run(run_id).data.tags
        assert tags["hirl.job_id"] == f"7_{i}" and tags["hirl.slurm_site"] == "test"
