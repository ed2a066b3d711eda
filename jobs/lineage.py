"""MLflow lineage: one chain run per cell, one child stage run per stage.

Runs are created (SCHEDULED) before anything executes, and each stage process
gets its run id through ``MLFLOW_RUN_ID``: every rank and every requeue of a
stage then logs into the same run, and the UI shows the whole chain from the
start. MLflow is imported inside functions only: importing it takes seconds and
``hirl plan`` must stay fast.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hirl_core.config import dump_config

from .dag import assign_outputs

DEFAULT_DB = "mlflow.db"
TERMINAL = ("FINISHED", "FAILED", "KILLED")
# The one number worth a glance per stage type; other evals fall back to any *top1* metric.
KEY_METRICS = {"pretrain": "loss", "knn": "knn_top1_k20"}


@dataclass
class StageRun:
    stage: str
    run_id: str
    status: str
    created: bool          # made by this call (False: an earlier run was reused)
    output_dir: str


@dataclass
class StageStatus:
    stage: str
    type: str
    run_id: str            # "" when the stage has no run yet
    status: str
    metric: str = ""       # name of the key metric, "" if none logged
    value: float | None = None


def tracking_uri():
    """``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db`` (absolute: stages run elsewhere)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{os.path.abspath(DEFAULT_DB)}"


def sqlite_path(uri=None):
    """The database file of a ``sqlite:///`` URI, else None."""
    uri = uri or tracking_uri()
    return uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else None


def store_exists(uri=None):
    """False only for a sqlite store whose file is absent: asking MLflow would create it."""
    path = sqlite_path(uri)
    return path is None or os.path.exists(path)


_clients = {}


def client(uri=None):
    from mlflow.tracking import MlflowClient  # lazy: seconds to import

    uri = uri or tracking_uri()
    if uri not in _clients:
        _clients[uri] = MlflowClient(tracking_uri=uri)
    return _clients[uri]


def _experiment_id(c, name, create):
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted" and create:
            c.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    if not create:
        return None
    location = None
    db = sqlite_path(c.tracking_uri)
    if db:  # keep artifacts next to the database (./mlartifacts), not in a cwd-relative ./mlruns
        location = (Path(db).resolve().parent / "mlartifacts" / name).as_uri()
    return c.create_experiment(name, artifact_location=location)


def _search(c, exp_id, filter_string):
    from mlflow.entities import ViewType

    return c.search_runs([exp_id], filter_string=filter_string, run_view_type=ViewType.ACTIVE_ONLY,
                         order_by=["attributes.start_time DESC"], max_results=1000)


def find_chain(experiment_name, cell_id, uri=None):
    """The latest chain run of a cell, or None (never creates anything)."""
    if not store_exists(uri):
        return None
    c = client(uri)
    exp_id = _experiment_id(c, experiment_name, create=False)
    if exp_id is None:
        return None
    runs = _search(c, exp_id, f"tags.`hirl.cell` = '{cell_id}' and tags.`hirl.kind` = 'chain'")
    return runs[0] if runs else None


def _latest_stage_runs(c, exp_id, chain_id):
    latest = {}
    for run in _search(c, exp_id, f"tags.`mlflow.parentRunId` = '{chain_id}'"):
        latest.setdefault(run.data.tags.get("hirl.stage"), run)  # newest first
    return latest


def _backend_name(backend):
    return backend if isinstance(backend, str) else getattr(backend, "name", str(backend))


def ensure_chain(cell, backend, force=False, uri=None):
    """Find or create the chain run and a stage run per stage; fill in the cell's output dirs.

    A stage's latest run is reused (FINISHED ones are then skipped, others resume in
    the same run) unless ``force`` or its upstream run changed; new runs are SCHEDULED.
    """
    c = client(uri)
    bname = _backend_name(backend)
    image = getattr(backend, "image", "local") if not isinstance(backend, str) else "local"
    exp_id = _experiment_id(c, cell.experiment, create=True)
    chain = find_chain(cell.experiment, cell.cell_id, uri)
    if chain is None:
        tags = {"hirl.kind": "chain", "hirl.cell": cell.cell_id, "hirl.experiment": cell.experiment,
                "hirl.backend": bname, "hirl.config_hash": cell.cell_id,
                "hirl.overrides": " ".join(cell.overrides)}
        if cell.description:
            tags["mlflow.note.content"] = cell.description
        chain_id = c.create_run(exp_id, tags=tags, run_name=f"{cell.experiment}-{cell.cell_id[:8]}").info.run_id
    else:
        chain_id = chain.info.run_id
    existing = {} if force else _latest_stage_runs(c, exp_id, chain_id)

    runs, created = {}, []
    for stage in cell.stages:  # topological: an upstream's run id is known first
        upstream_id = runs[stage.upstream].run_id if stage.upstream else ""
        old = existing.get(stage.name)
        if old is not None and old.data.tags.get("hirl.upstream_run_id", "") == upstream_id:
            runs[stage.name] = StageRun(stage.name, old.info.run_id, old.info.status, False, "")
            continue
        tags = {"mlflow.parentRunId": chain_id, "hirl.stage": stage.name, "hirl.stage_type": stage.type,
                "hirl.cell": cell.cell_id, "hirl.upstream_run_id": upstream_id, "hirl.backend": bname,
                "hirl.config_hash": stage.config_hash, "hirl.image": image,
                "hirl.experiment": cell.experiment}
        run = c.create_run(exp_id, tags=tags, run_name=stage.name)
        c.update_run(run.info.run_id, status="SCHEDULED")  # create_run starts it RUNNING
        runs[stage.name] = StageRun(stage.name, run.info.run_id, "SCHEDULED", True, "")
        created.append(stage)

    assign_outputs(cell, {name: r.run_id for name, r in runs.items()})
    with tempfile.TemporaryDirectory() as tmp:
        for stage in created:
            run_id = runs[stage.name].run_id
            c.set_tag(run_id, "hirl.output_dir", stage.output_dir)
            dump_config(stage.config, os.path.join(tmp, stage.name, "config.yaml"))
            c.log_artifact(run_id, os.path.join(tmp, stage.name, "config.yaml"))
    for stage in cell.stages:
        runs[stage.name].output_dir = stage.output_dir
    if any(r.status != "FINISHED" for r in runs.values()):
        c.update_run(chain_id, status="RUNNING")
    return runs


def run_status(run_id, uri=None):
    return client(uri).get_run(run_id).info.status


def set_run_status(run_id, status, uri=None):
    c = client(uri)
    if status in TERMINAL:
        c.set_terminated(run_id, status=status)  # also records the end time
    else:
        c.update_run(run_id, status=status)


def _key_metric(stage_type, metrics):
    name = KEY_METRICS.get(stage_type)
    if name not in metrics:
        name = next((m for m in sorted(metrics) if "top1" in m), None)
    return (name, metrics[name]) if name else ("", None)


def chain_status(experiment_name, cell_id, stages=None, uri=None):
    """One row per stage of the cell's latest chain; ``stages`` (names) fixes order and
    lists stages without runs. Empty when the cell has no chain yet."""
    chain = find_chain(experiment_name, cell_id, uri)
    if chain is None:
        return []
    latest = _latest_stage_runs(client(uri), chain.info.experiment_id, chain.info.run_id)
    names = list(stages) if stages else sorted(latest, key=lambda n: latest[n].info.start_time)
    rows = []
    for name in names:
        run = latest.get(name)
        if run is None:
            rows.append(StageStatus(name, "", "", "NOT CREATED"))
            continue
        stype = run.data.tags.get("hirl.stage_type", "")
        metric, value = _key_metric(stype, run.data.metrics)
        rows.append(StageStatus(name, stype, run.info.run_id, run.info.status, metric, value))
    return rows


def end_chain(experiment_name, cell_id, uri=None):
    """Set the chain run's status from its stages once they are done: FINISHED only if all
    finished, else KILLED or FAILED; returns the status (RUNNING if stages are pending)."""
    chain = find_chain(experiment_name, cell_id, uri)
    if chain is None:
        return None
    statuses = [r.status for r in chain_status(experiment_name, cell_id, uri=uri)]
    if statuses and all(s == "FINISHED" for s in statuses):
        final = "FINISHED"
    elif "KILLED" in statuses:
        final = "KILLED"
    elif "FAILED" in statuses:  # its dependents stay SCHEDULED, never to run
        final = "FAILED"
    else:  # stages still pending or running: the chain is not over
        return "RUNNING"
    set_run_status(chain.info.run_id, final, uri)
    return final
