"""MLflow lineage: one chain run per cell, one child stage run per stage.

Runs are created (SCHEDULED) before anything executes, and each stage process
gets its run id through ``MLFLOW_RUN_ID``: every rank and every requeue of a
stage then logs into the same run, and the UI shows the whole chain from the
start. MLflow is imported inside functions only: importing it takes seconds and
``hirl plan`` must stay fast.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hirl_core.config import dump_config
from hirl_core.stages import key_metric

from . import mlflow_view
from .dag import assign_outputs
from .lineage_reuse import REUSED_TAG, finished_elsewhere, stand_for
# Re-exported: the CLI, the backends and the tests reach the store through lineage.
from .tracking_store import DEFAULT_DB, check_tracking, client, sqlite_path, store_exists, tracking_uri  # noqa: F401

TERMINAL = ("FINISHED", "FAILED", "KILLED")


@dataclass
class StageRun:
    stage: str
    run_id: str
    status: str
    created: bool          # made by this call (False: an earlier run was reused)
    output_dir: str
    reused_from: str = ""  # a finished run of another chain whose outputs this stage run stands for

    @property
    def source(self):
        """The run whose outputs this stage's downstream reads (its ``hirl.upstream_run_id``)."""
        return self.reused_from or self.run_id


@dataclass
class StageStatus:
    stage: str
    type: str
    run_id: str            # "" when the stage has no run yet
    status: str
    metric: str = ""       # name of the key metric, "" if none logged
    value: float | None = None
    attempt: int = 0       # how many times a backend started the stage in this run
    job_id: str = ""       # the backend's id of its latest attempt (local: the process id)
    output_dir: str = ""
    metrics: dict | None = None  # all its latest metrics (report)
    reused_from: str = ""  # the finished run of another chain it stands for ("" when it ran itself)


@dataclass
class SweepRef:
    """What ties a chain to the sweep that submitted it."""
    sweep_id: str
    run_id: str = ""       # the sweep run (parent of the chain runs); "" for a single experiment


def experiment_id_of(c, name, create):
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted" and create:
            c.restore_experiment(exp.experiment_id)
        if create and not exp.tags.get(mlflow_view.KIND_TAG):  # made before the project set the kind
            mlflow_view.mark_experiment(c, exp.experiment_id)
        return exp.experiment_id
    if not create:
        return None
    location = None
    db = sqlite_path(c.tracking_uri)
    if db:  # keep artifacts next to the database (./mlartifacts), not in a cwd-relative ./mlruns
        location = (Path(db).resolve().parent / "mlartifacts" / name).as_uri()
    exp_id = c.create_experiment(name, artifact_location=location,
                                 tags={mlflow_view.KIND_TAG: mlflow_view.KIND})  # the UI opens its runs table
    return exp_id


def _search(c, exp_id, filter_string):
    from mlflow.entities import ViewType

    return c.search_runs([exp_id], filter_string=filter_string, run_view_type=ViewType.ACTIVE_ONLY,
                         order_by=["attributes.start_time DESC"], max_results=1000)


def search_all(c, exp_id, filter_string=""):
    """Every active run matching the filter, newest first (all pages)."""
    from mlflow.entities import ViewType

    runs, token = [], None
    while True:
        page = c.search_runs([exp_id], filter_string=filter_string, run_view_type=ViewType.ACTIVE_ONLY,
                             order_by=["attributes.start_time DESC"], max_results=5000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _latest(experiment_name, filter_string, uri=None):
    """The newest active run matching `filter_string`, or None; never creates a store or experiment."""
    if not store_exists(uri):
        return None
    c = client(uri)
    exp_id = experiment_id_of(c, experiment_name, create=False)
    if exp_id is None:
        return None
    runs = _search(c, exp_id, filter_string)
    return runs[0] if runs else None


def find_chain(experiment_name, cell_id, uri=None):
    """The latest chain run of a cell, or None (never creates anything)."""
    return _latest(experiment_name, f"tags.`hirl.cell` = '{cell_id}' and tags.`hirl.kind` = 'chain'", uri)


def latest_stage_runs(c, exp_id, chain_id):
    latest = {}
    for run in _search(c, exp_id, f"tags.`mlflow.parentRunId` = '{chain_id}'"):
        latest.setdefault(run.data.tags.get("hirl.stage"), run)  # newest first
    return latest


def backend_name_of(backend):
    return backend if isinstance(backend, str) else getattr(backend, "name", str(backend))


def chain_tags(cell, sweep):
    tags = {}
    if sweep is not None:
        tags["hirl.sweep"] = sweep.sweep_id
        if sweep.run_id:
            tags["mlflow.parentRunId"] = sweep.run_id
    if cell.params:
        tags["hirl.cell_label"] = cell.label
        tags["hirl.params"] = json.dumps(cell.params, sort_keys=False, default=str)
    if cell.method:
        tags["hirl.method"] = cell.method
    return tags


def ensure_chain(cell, backend, force=False, uri=None, sweep=None):
    """Find or create the chain run and a stage run per stage; fill in the cell's output dirs.

    A stage's latest run is reused (FINISHED ones are then skipped, others resume in
    the same run) unless ``force`` or its upstream run changed; new runs are SCHEDULED.
    ``sweep`` (a SweepRef) tags the chain with its sweep id and nests it under the
    sweep run; a cell shared by a later sweep moves to that sweep.
    """
    c = client(uri)
    bname = backend_name_of(backend)
    image = getattr(backend, "image", "local") if not isinstance(backend, str) else "local"
    exp_id = experiment_id_of(c, cell.experiment, create=True)
    chain = find_chain(cell.experiment, cell.cell_id, uri)
    extra = chain_tags(cell, sweep)
    if chain is None:
        tags = {"hirl.kind": "chain", "hirl.cell": cell.cell_id, "hirl.experiment": cell.experiment,
                "hirl.backend": bname, "hirl.config_hash": cell.cell_id,
                "hirl.overrides": " ".join(cell.overrides), **extra}
        if cell.description:
            tags["mlflow.note.content"] = cell.description
        name = f"{cell.experiment}-{cell.cell_id[:8]}"
        chain_id = c.create_run(exp_id, tags=tags, run_name=name).info.run_id
        for batch in mlflow_view.param_batches(mlflow_view.chain_params(cell)):
            c.log_batch(chain_id, params=batch)
    else:
        chain_id = chain.info.run_id
        for key, value in extra.items():
            if chain.data.tags.get(key) != value:
                c.set_tag(chain_id, key, value)
    existing = {} if force or chain is None else latest_stage_runs(c, exp_id, chain_id)  # a new chain has none

    runs, created, elsewhere = {}, [], {}
    for stage in cell.stages:  # topological: an upstream's run id is known first
        upstream_id = runs[stage.upstream].source if stage.upstream else ""
        old = existing.get(stage.name)
        if old is not None and old.data.tags.get("hirl.upstream_run_id", "") == upstream_id:
            reused = old.data.tags.get(REUSED_TAG, "")
            runs[stage.name] = StageRun(stage.name, old.info.run_id, old.info.status, False, "", reused)
            if reused:
                elsewhere[stage.name] = old.data.tags.get("hirl.output_dir", "")
            continue
        tags = {"mlflow.parentRunId": chain_id, "hirl.stage": stage.name, "hirl.stage_type": stage.type,
                "hirl.cell": cell.cell_id, "hirl.upstream_run_id": upstream_id, "hirl.backend": bname,
                "hirl.config_hash": stage.config_hash, "hirl.image": image,
                "hirl.experiment": cell.experiment}
        done = None if force else finished_elsewhere(c, exp_id, stage, upstream_id, runs)
        if done is not None:  # the same work finished in another chain: this run stands for it
            tags[REUSED_TAG] = done.data.tags.get(REUSED_TAG) or done.info.run_id
            elsewhere[stage.name] = done.data.tags.get("hirl.output_dir", "")
        run = c.create_run(exp_id, tags=tags, run_name=stage.name)
        state = "SCHEDULED" if done is None else "FINISHED"
        if done is None:
            c.update_run(run.info.run_id, status="SCHEDULED")  # create_run starts it RUNNING
        runs[stage.name] = StageRun(stage.name, run.info.run_id, state, True, "", tags.get(REUSED_TAG, ""))
        created.append((stage, done))

    assign_outputs(cell, {name: r.run_id for name, r in runs.items()}, elsewhere)
    with tempfile.TemporaryDirectory() as tmp:
        for stage, done in created:
            run_id = runs[stage.name].run_id
            mlflow_view.log_stage_run(c, run_id, stage, {"hirl.output_dir": stage.output_dir})
            dump_config(stage.config, os.path.join(tmp, stage.name, "config.yaml"))
            c.log_artifact(run_id, os.path.join(tmp, stage.name, "config.yaml"))
            if done is not None:
                stand_for(c, run_id, done)
    for stage in cell.stages:
        runs[stage.name].output_dir = stage.output_dir
    if any(r.status != "FINISHED" for r in runs.values()):
        c.update_run(chain_id, status="RUNNING")
    return runs


def run_status(run_id, uri=None):
    return client(uri).get_run(run_id).info.status


def run_state(run_id, uri=None):
    """(status, tags) of a run in one call."""
    run = client(uri).get_run(run_id)
    return run.info.status, dict(run.data.tags)


def set_tags(run_id, tags, uri=None):
    c = client(uri)
    for key, value in tags.items():
        c.set_tag(run_id, key, value)


def set_run_status(run_id, status, uri=None):
    c = client(uri)
    if status in TERMINAL:
        c.set_terminated(run_id, status=status)  # also records the end time
    else:
        c.update_run(run_id, status=status)


def chain_status(experiment_name, cell_id, stages=None, uri=None):
    """One row per stage of the cell's latest chain; ``stages`` (names) fixes order and
    lists stages without runs. Empty when the cell has no chain yet."""
    chain = find_chain(experiment_name, cell_id, uri)
    if chain is None:
        return []
    latest = latest_stage_runs(client(uri), chain.info.experiment_id, chain.info.run_id)
    names = list(stages) if stages else sorted(latest, key=lambda n: latest[n].info.start_time)
    rows = []
    for name in names:
        run = latest.get(name)
        if run is None:
            rows.append(StageStatus(name, "", "", "NOT CREATED"))
            continue
        stype = run.data.tags.get("hirl.stage_type", "")
        metric, value = key_metric(stype, run.data.metrics)
        rows.append(StageStatus(name, stype, run.info.run_id, run.info.status, metric, value))
    return rows


def _stage_status(name, run):
    if run is None:
        return StageStatus(name, "", "", "NOT CREATED")
    tags = run.data.tags
    stype = tags.get("hirl.stage_type", "")
    metric, value = key_metric(stype, run.data.metrics)
    try:
        attempt = int(tags.get("hirl.attempt", "0"))
    except ValueError:
        attempt = 0
    return StageStatus(name, stype, run.info.run_id, run.info.status, metric, value, attempt,
                       tags.get("hirl.job_id", ""), tags.get("hirl.output_dir", ""), dict(run.data.metrics),
                       tags.get(REUSED_TAG, ""))


@dataclass
class CellStatus:
    cell: object           # jobs.dag.Cell
    chain: object          # the latest chain run (mlflow Run) or None
    rows: list             # StageStatus per stage of the cell, in run order

    @property
    def status(self):
        return self.chain.info.status if self.chain is not None else "NOT CREATED"


def sweep_status(experiment_name, cells, uri=None):
    """A CellStatus per cell from one search of the experiment's runs (never creates anything)."""
    if not store_exists(uri):
        return [CellStatus(cell, None, [StageStatus(s.name, s.type, "", "NOT CREATED") for s in cell.stages])
                for cell in cells]
    c = client(uri)
    exp_id = experiment_id_of(c, experiment_name, create=False)
    runs = search_all(c, exp_id) if exp_id is not None else []
    chains, children = {}, {}
    for run in runs:  # newest first: the first seen wins
        tags = run.data.tags
        if tags.get("hirl.kind") == "chain":
            chains.setdefault(tags.get("hirl.cell"), run)
        elif "hirl.stage" in tags and "mlflow.parentRunId" in tags:
            children.setdefault(tags["mlflow.parentRunId"], {}).setdefault(tags["hirl.stage"], run)
    out = []
    for cell in cells:
        chain = chains.get(cell.cell_id)
        latest = children.get(chain.info.run_id, {}) if chain is not None else {}
        rows = []
        for stage in cell.stages:
            row = _stage_status(stage.name, latest.get(stage.name))
            row.type = row.type or stage.type
            rows.append(row)
        out.append(CellStatus(cell, chain, rows))
    return out


def existing_runs(cell, uri=None):
    """{stage: StageRun} of the cell's latest chain, output dirs assigned; None unless every stage has a run."""
    status = sweep_status(cell.experiment, [cell], uri)[0]
    if status.chain is None or any(not r.run_id for r in status.rows):
        return None
    runs = {r.stage: StageRun(r.stage, r.run_id, r.status, False, "", r.reused_from) for r in status.rows}
    assign_outputs(cell, {name: r.run_id for name, r in runs.items()},
                   {r.stage: r.output_dir for r in status.rows if r.reused_from})
    for stage in cell.stages:
        runs[stage.name].output_dir = stage.output_dir
    return runs


def find_sweep_run(experiment_name, sweep_id, uri=None):
    return _latest(experiment_name, f"tags.`hirl.kind` = 'sweep' and tags.`hirl.sweep` = '{sweep_id}'", uri)


def ensure_sweep_run(sweep, backend, uri=None):
    """Find or create the run that stands for a whole sweep (tag ``hirl.kind=sweep``); its id."""
    found = find_sweep_run(sweep.name, sweep.sweep_id, uri)
    if found is not None:
        return found.info.run_id
    c = client(uri)
    exp_id = experiment_id_of(c, sweep.name, create=True)
    tags = {"hirl.kind": "sweep", "hirl.sweep": sweep.sweep_id, "hirl.experiment": sweep.name,
            "hirl.backend": backend_name_of(backend), "hirl.cells": str(len(sweep.cells)),
            "hirl.overrides": " ".join(sweep.overrides)}
    if sweep.description:
        tags["mlflow.note.content"] = sweep.description
    run_id = c.create_run(exp_id, tags=tags, run_name=f"{sweep.name}-sweep-{sweep.sweep_id[:8]}").info.run_id
    listing = {"sweep": sweep.sweep_id, "experiment": sweep.name, "axes": sweep.axes,
               "cells": [{"cell": cell.cell_id, "label": cell.label, "params": cell.params, "method": cell.method,
                          "stages": cell.names} for cell in sweep.cells]}
    c.log_text(run_id, json.dumps(listing, indent=2, default=str) + "\n", "sweep.json")
    return run_id


def fold_states(states):
    """The state of a run made of parts: FINISHED when every part is, KILLED when one is, else FAILED
    when one is (its dependents stay SCHEDULED, never to run); None while parts are still open."""
    states = list(states)
    if states and all(s == "FINISHED" for s in states):
        return "FINISHED"
    for final in ("KILLED", "FAILED"):
        if final in states:
            return final
    return None


def end_sweep(run_id, cell_statuses, uri=None):
    """FINISHED when every chain is; KILLED/FAILED when one is; else it stays RUNNING."""
    final = fold_states(cell_statuses)
    set_run_status(run_id, final or "RUNNING", uri)
    return final or "RUNNING"


def settle_sweep(sweep, uri=None, statuses=None):
    """Set a matrix sweep's run from its cells after cancel/retry (``statuses``: the whole sweep's
    ``sweep_status`` when the caller already has it). The sweep's status, or None without a sweep run."""
    run = find_sweep_run(sweep.name, sweep.sweep_id, uri) if sweep.is_matrix else None
    if run is None:
        return None
    statuses = statuses if statuses is not None else sweep_status(sweep.name, sweep.cells, uri)
    return end_sweep(run.info.run_id, [s.status for s in statuses], uri)


def end_chain(experiment_name, cell_id, uri=None, close_sweep=True):
    """Set the chain run's status from its stages once they are done: FINISHED only if all
    finished, else KILLED or FAILED; returns the status (RUNNING if stages are pending).
    ``close_sweep``: also close its sweep run when this was the last open chain (callers that settle
    the sweep themselves right after, as submit/cancel/retry do, skip that search)."""
    chain = find_chain(experiment_name, cell_id, uri)
    if chain is None:
        return None
    rows = chain_status(experiment_name, cell_id, uri=uri)
    mlflow_view.log_chain_metrics(client(uri), chain, rows)  # the runs table shows them on the chain row
    final = fold_states(r.status for r in rows)
    if final is None:  # stages still pending or running: the chain is not over
        return "RUNNING"
    set_run_status(chain.info.run_id, final, uri)
    if close_sweep:
        _end_sweep_of(chain, uri)
    return final


def _end_sweep_of(chain, uri=None):
    """Close the chain's sweep run once every chain under it has ended. On SLURM nobody watches a sweep
    after submission: the stage job that ends the last chain closes the sweep too (end_sweep's rule)."""
    parent = chain.data.tags.get("mlflow.parentRunId")
    if not parent:
        return
    c = client(uri)
    sweep_run = c.get_run(parent)
    if sweep_run.data.tags.get("hirl.kind") != "sweep" or sweep_run.info.status != "RUNNING":
        return
    chains = search_all(c, chain.info.experiment_id,
                         f"tags.`mlflow.parentRunId` = '{parent}' and tags.`hirl.kind` = 'chain'")
    states = [r.info.status for r in chains]
    if len(states) >= int(sweep_run.data.tags.get("hirl.cells", "0")) and \
            not any(s in ("RUNNING", "SCHEDULED") for s in states):
        end_sweep(parent, states, uri)

