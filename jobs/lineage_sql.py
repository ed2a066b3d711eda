"""A sweep's new chains in one transaction of a database-backed store (sqlite, PostgreSQL), or of a server's.

One by one, a chain of two stages costs a dozen MLflow calls, each its own transaction: for a 100-cell
sweep that is 301 runs and about 1,400 commits or, against a tracking server, 1,400 requests that a
2-core server answers at ~50 a second. Here the client plans the rows ``lineage.ensure_chain`` would make
(runs, tags, params, dataset inputs, a stage run's SCHEDULED status, its config.yaml) as plain data, and
``write_plan`` adds them with MLflow's own table models and validation in one session, then writes the
config artifacts through the run's artifact repository. The store is the client's own SqlAlchemyStore
when the tracking URI is a database; against a server it is the server's, behind one request
(jobs/tracking_server.py, ``mlflow server --app-name hirl``); a server without that endpoint gets the
calls one by one (lineage_bulk).

Only chains that do not exist yet are planned; a cell that already has a chain goes through
``ensure_chain``, which decides which of its runs to reuse.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid

from hirl_core.config import plain_tree

from . import lineage, mlflow_view
from .dag import assign_outputs

ENDPOINT = "/ajax-api/3.0/hirl/chains"
STATUSES = ("RUNNING", "SCHEDULED")  # what a planned run may start as: create_run's, then update_run's


def sql_store(uri):
    """The client's SqlAlchemyStore for a database URI, else None (a server, a file store)."""
    if not uri.startswith(("sqlite:", "postgresql", "mysql", "mssql")):
        return None
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = lineage.client(uri)._tracking_client.store
    return store if isinstance(store, SqlAlchemyStore) else None


def cells_with_chains(store, exp_id, cell_ids):
    """The ids among ``cell_ids`` that have an active chain run in the experiment (one query)."""
    from sqlalchemy.orm import aliased

    from mlflow.entities.lifecycle_stage import LifecycleStage
    from mlflow.store.tracking.dbmodels.models import SqlRun, SqlTag

    kind = aliased(SqlTag)
    with store.ManagedSessionMaker() as session:
        found = (session.query(SqlTag.value).join(SqlRun, SqlRun.run_uuid == SqlTag.run_uuid)
                 .join(kind, kind.run_uuid == SqlRun.run_uuid)
                 .filter(SqlRun.experiment_id == exp_id, SqlRun.lifecycle_stage == LifecycleStage.ACTIVE,
                         SqlTag.key == "hirl.cell", SqlTag.value.in_(list(cell_ids)),
                         kind.key == "hirl.kind", kind.value == "chain").distinct().all())
    return {value for (value,) in found}


def config_yaml(cfg):
    """hirl_core.config.dumps_config's text through libyaml's emitter when PyYAML has it: the same
    YAML (the test compares them), at a tenth of the pure-Python emitter's time for 200 configs."""
    import yaml

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(plain_tree(cfg), Dumper=dumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True)


# -- the plan (client side): plain data, one dict per run ---------------------------------------
def _planned_run(run_id, name, status, tags, params, batch_tags=None, dataset=None, config=None):
    return {"run_id": run_id, "name": name, "status": status, "start_time": int(time.time() * 1000),
            "tags": tags, "params": params, "batch_tags": batch_tags or {}, "dataset": dataset,
            "config_yaml": config}


def _dataset(stage):
    ds = mlflow_view.dataset_input(stage)
    if ds is None:
        return None
    d = ds.dataset
    return {"name": d.name, "digest": d.digest, "source_type": d.source_type, "source": d.source,
            "schema": d.schema, "profile": d.profile, "tags": [[t.key, t.value] for t in ds.tags]}


def plan_chain(cell, backend, sweep=None):
    """The runs of one new chain (the chain run first), and {stage: StageRun}; the cell's output dirs
    are assigned from the planned run ids."""
    bname = lineage.backend_name_of(backend)
    image = getattr(backend, "image", "local") if not isinstance(backend, str) else "local"
    chain_id = uuid.uuid4().hex
    tags = {"hirl.kind": "chain", "hirl.cell": cell.cell_id, "hirl.experiment": cell.experiment,
            "hirl.backend": bname, "hirl.config_hash": cell.cell_id, "hirl.overrides": " ".join(cell.overrides),
            **lineage.chain_tags(cell, sweep)}
    if cell.description:
        tags["mlflow.note.content"] = cell.description
    planned = [_planned_run(chain_id, f"{cell.experiment}-{cell.cell_id[:8]}", "RUNNING", tags,
                            mlflow_view.chain_params(cell))]
    ids = {stage.name: uuid.uuid4().hex for stage in cell.stages}
    assign_outputs(cell, ids)
    runs = {}
    for stage in cell.stages:
        tags = {"mlflow.parentRunId": chain_id, "hirl.stage": stage.name, "hirl.stage_type": stage.type,
                "hirl.cell": cell.cell_id, "hirl.upstream_run_id": ids[stage.upstream] if stage.upstream else "",
                "hirl.backend": bname, "hirl.config_hash": stage.config_hash, "hirl.image": image,
                "hirl.experiment": cell.experiment}
        planned.append(_planned_run(ids[stage.name], stage.name, "SCHEDULED", tags, mlflow_view.stage_params(stage),
                                    {"hirl.output_dir": stage.output_dir}, _dataset(stage),
                                    config_yaml(stage.config)))
        runs[stage.name] = lineage.StageRun(stage.name, ids[stage.name], "SCHEDULED", True, stage.output_dir)
    return planned, runs


# -- the write (store side): one transaction, then the artifacts --------------------------------
class PlanError(ValueError):
    """A plan a store must not write (a bad status or run id); the server answers 400 with it."""


def check_plan(store, exp_id, planned):
    """Refuse, before any transaction, a plan that is more than new runs of an active experiment."""
    import re

    from mlflow.entities.lifecycle_stage import LifecycleStage

    if store.get_experiment(exp_id).lifecycle_stage != LifecycleStage.ACTIVE:
        raise PlanError(f"experiment {exp_id} is not active")
    for run in planned:
        run_id, status = run.get("run_id"), run.get("status")
        if not re.fullmatch(r"[0-9a-f]{32}", str(run_id)) or status not in STATUSES:
            raise PlanError(f"bad planned run {run_id!r} ({status!r}): run ids are 32 hex digits, "
                            f"statuses {', '.join(STATUSES)}")


def _rows(store, session, exp_id, planned):
    """The rows of every planned run, per table in foreign-key order, as SqlAlchemyStore makes them
    (create_run, update_run, log_batch, log_inputs); {run_id: artifact_uri}."""
    from mlflow.entities import Dataset, DatasetInput, InputTag, Param, RunTag, SourceType
    from mlflow.entities.lifecycle_stage import LifecycleStage
    from mlflow.store.tracking.dbmodels import models as m
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME, MLFLOW_USER
    from mlflow.utils.uri import append_to_uri_path
    from mlflow.utils.validation import _validate_batch_log_data, _validate_dataset_inputs

    experiment = store.get_experiment(exp_id)
    tables = {m.SqlRun: [], m.SqlTag: [], m.SqlParam: [], m.SqlDataset: [], m.SqlInput: [], m.SqlInputTag: []}
    datasets, artifact_uris = {}, {}
    for run in planned:
        run_id, status = run["run_id"], run["status"]
        tags = dict(run["tags"])
        tags.setdefault(MLFLOW_RUN_NAME, run["name"])
        artifact_uris[run_id] = append_to_uri_path(experiment.artifact_location, run_id, "artifacts")
        tables[m.SqlRun].append(dict(
            name=run["name"], artifact_uri=artifact_uris[run_id], run_uuid=run_id, experiment_id=exp_id,
            source_type=SourceType.to_string(SourceType.UNKNOWN), source_name="", entry_point_name="",
            user_id=tags.get(MLFLOW_USER, "unknown"), status=status, start_time=int(run["start_time"]),
            end_time=None, deleted_time=None, source_version="", lifecycle_stage=LifecycleStage.ACTIVE))
        tables[m.SqlTag] += [dict(run_uuid=run_id, key=k, value=v) for k, v in tags.items()]
        _, params, batch_tags = _validate_batch_log_data(
            [], [Param(k, v) for k, v in run["params"].items()],
            [RunTag(k, str(v)) for k, v in run["batch_tags"].items()])
        tables[m.SqlParam] += [dict(run_uuid=run_id, key=p.key, value=p.value) for p in params]
        tables[m.SqlTag] += [dict(run_uuid=run_id, key=t.key, value=t.value) for t in batch_tags]
        d = run.get("dataset")
        if not d:
            continue
        ds = DatasetInput(Dataset(d["name"], d["digest"], d["source_type"], d["source"], d.get("schema"),
                                  d.get("profile")), [InputTag(k, v) for k, v in d["tags"]])
        _validate_dataset_inputs([ds])
        key = (d["name"], d["digest"])
        if key not in datasets:  # the experiment's row for this dataset, found or new
            found = (session.query(m.SqlDataset.dataset_uuid)
                     .filter(m.SqlDataset.experiment_id == exp_id, m.SqlDataset.name == d["name"],
                             m.SqlDataset.digest == d["digest"]).first())
            datasets[key] = found[0] if found is not None else uuid.uuid4().hex
            if found is None:
                tables[m.SqlDataset].append(dict(
                    dataset_uuid=datasets[key], experiment_id=exp_id, name=d["name"], digest=d["digest"],
                    dataset_source_type=d["source_type"], dataset_source=d["source"],
                    dataset_schema=d.get("schema"), dataset_profile=d.get("profile")))
        input_id = uuid.uuid4().hex
        tables[m.SqlInput].append(dict(input_uuid=input_id, source_type="DATASET", source_id=datasets[key],
                                       destination_type="RUN", destination_id=run_id, step=0))
        tables[m.SqlInputTag] += [dict(input_uuid=input_id, name=k, value=v) for k, v in d["tags"]]
    return tables, artifact_uris


def write_plan(store, exp_id, planned, put_artifact=None):
    """Add the planned runs to ``store`` (a SqlAlchemyStore) in one transaction, then each run's
    config.yaml through ``put_artifact(artifact_uri, name, text)`` (default: put_text)."""
    from sqlalchemy import insert

    from mlflow.exceptions import MlflowException

    check_plan(store, exp_id, planned)
    for attempt in (1, 2):
        try:
            with store.ManagedSessionMaker(read_only=False) as session:
                tables, artifact_uris = _rows(store, session, exp_id, planned)
                for model, rows in tables.items():
                    if rows:  # one executemany a table, not an ORM unit of work over every row
                        session.execute(insert(model.__table__), rows)
            break
        except MlflowException:
            # Another submission of this experiment inserted the same dataset (name, digest) first: its
            # unique key failed this transaction whole, and nothing of it was written; the retry finds it.
            if attempt == 2:
                raise
    put_artifact = put_artifact or put_text
    for run in planned:
        if run.get("config_yaml") is not None:
            put_artifact(artifact_uris[run["run_id"]], "config.yaml", run["config_yaml"])


def put_text(artifact_uri, name, text):
    """``text`` as the artifact ``name`` of a run: written in place under a local artifact URI (what
    LocalArtifactRepository.log_artifact would copy there), else through the URI's artifact repository."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.utils.uri import is_local_uri
    from mlflow.utils.file_utils import local_file_uri_to_path

    if is_local_uri(artifact_uri, is_tracking_or_registry_uri=False):
        folder = local_file_uri_to_path(artifact_uri)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            f.write(text)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        get_artifact_repository(artifact_uri).log_artifact(path)


# -- the client: plan, then write here or send to the server ------------------------------------
def create_chains(uri, cells, backend, exp_id, sweep=None, store=None):
    """New chains for ``cells`` (none of which has one) in experiment ``exp_id``: ``[{stage: StageRun}]``
    in the cells' order, or None when the server at ``uri`` has no endpoint for it (nothing was made)."""
    if not cells:
        return []
    planned, results = [], []
    for cell in cells:
        runs, stage_runs = plan_chain(cell, backend, sweep)
        planned += runs
        results.append(stage_runs)
    if store is not None:
        write_plan(store, exp_id, planned)
        return results
    return results if _post(uri, exp_id, planned) else None


def _post(uri, exp_id, planned):
    """One request with the whole plan; False when the server does not know the endpoint (404)."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    # No retries: a lost answer to a committed plan must not be sent again (its run ids would clash).
    response = http_request(get_default_host_creds(uri), ENDPOINT, "POST", max_retries=0, timeout=120,
                            raise_on_status=False, json={"experiment_id": exp_id, "runs": planned})
    if response.status_code == 404:
        return False
    if response.status_code != 200:
        raise MlflowException(f"{uri}{ENDPOINT} answered {response.status_code}: {response.text[:300]}")
    return True


def set_tags(uri, tags_by_run, workers=8):
    """``{run_id: {key: value}}`` set on many runs at once (a job array's job ids): one transaction on a
    database store, log_batch calls from a pool of threads against a server; a key a run has is overwritten,
    as set_tag does."""
    from mlflow.entities import RunTag

    store = sql_store(uri)
    if store is None:
        from concurrent.futures import ThreadPoolExecutor

        c = lineage.client(uri)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(lambda item: c.log_batch(item[0], tags=[RunTag(k, str(v)) for k, v in item[1].items()]),
                          tags_by_run.items()))
        return
    from mlflow.store.tracking.dbmodels.models import SqlTag
    from mlflow.utils.validation import _validate_batch_log_data

    with store.ManagedSessionMaker(read_only=False) as session:
        for run_id, tags in tags_by_run.items():
            _, _, checked = _validate_batch_log_data([], [], [RunTag(k, str(v)) for k, v in tags.items()])
            for tag in checked:  # the tags table's key is (key, run_uuid): merge inserts or overwrites
                session.merge(SqlTag(run_uuid=run_id, key=tag.key, value=tag.value))
