"""The shared tracking server's app (``mlflow server --app-name hirl``, as tracking/up.sh starts it):
MLflow's own server plus one endpoint, ``POST /ajax-api/3.0/hirl/chains``, that writes a sweep's planned
chains (jobs/lineage_sql.py) in one transaction of the server's store and their config artifacts into its
proxied artifact storage.

Why a server-side endpoint: one by one, a 100-cell sweep is ~1,400 REST calls, and a server on 2 cores
answers about 50 a second, so ``hirl submit`` spent 24-30 s there. In one request the server spends the
time of the rows themselves. A client that finds no such endpoint (a plain ``mlflow server``) falls back
to the calls one by one. Imported only by the server process.
"""

from __future__ import annotations

import os

from flask import jsonify, request

from mlflow.server import app as flask_app
from mlflow.server.handlers import _get_tracking_store

from . import lineage_sql


def _put_artifact(artifact_uri, name, text):
    """A proxied run's artifacts (``mlflow-artifacts:/<exp>/<run>/artifacts``) live under the server's
    artifacts destination; any other artifact URI is written through its own repository."""
    from urllib.parse import urlparse

    from mlflow.server import ARTIFACTS_DESTINATION_ENV_VAR
    from mlflow.utils.uri import append_to_uri_path

    parsed = urlparse(artifact_uri)
    if parsed.scheme == "mlflow-artifacts":
        artifact_uri = append_to_uri_path(os.environ[ARTIFACTS_DESTINATION_ENV_VAR], parsed.path.lstrip("/"))
    lineage_sql.put_text(artifact_uri, name, text)


def create_chains():
    from mlflow.exceptions import MlflowException
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    body = request.get_json(force=True, silent=True) or {}
    store = _get_tracking_store()
    if not isinstance(store, SqlAlchemyStore):
        return jsonify(error="this server's store is not a database; send the runs one by one"), 404
    if not isinstance(body.get("runs"), list) or not body.get("experiment_id"):
        return jsonify(error="expected {experiment_id, runs: [...]}"), 400
    try:
        lineage_sql.write_plan(store, str(body["experiment_id"]), body["runs"], _put_artifact)
    except (lineage_sql.PlanError, KeyError, TypeError) as exc:
        return jsonify(error=f"bad plan: {exc}"), 400
    except MlflowException as exc:  # MLflow's validation refused a key or value: its own answer
        return exc.serialize_as_json(), exc.get_http_status_code(), {"Content-Type": "application/json"}
    return jsonify(runs=len(body["runs"]))


flask_app.add_url_rule(lineage_sql.ENDPOINT, "hirl_create_chains", create_chains, methods=["POST"])

from mlflow.server.fastapi_app import app  # noqa: E402,F401  (uvicorn serves this; Flask sits under it)
