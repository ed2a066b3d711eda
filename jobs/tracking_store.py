"""Where MLflow lives: the tracking URI, a quick check that a server answers, and one client per URI
(a fresh sqlite store created under a lock). MLflow is imported inside functions only: importing it takes
seconds and ``hirl plan`` must stay fast."""

from __future__ import annotations

import os

DEFAULT_DB = "mlflow.db"


def tracking_uri():
    """``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db`` (absolute: stages run elsewhere)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{os.path.abspath(DEFAULT_DB)}"


def check_tracking(uri=None):
    """An http(s) tracking server must answer now, in one quick request: MLflow's own client would retry
    a dead one for minutes and then raise a long traceback, after some runs or jobs may already exist."""
    import urllib.error
    import urllib.request

    from .errors import SpecError

    uri = uri or tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    timeout = float(os.environ.get("HIRL_TRACKING_PROBE_TIMEOUT_S") or 5)
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # it answered (an auth proxy may refuse /health)
    except (OSError, ValueError) as exc:
        why = getattr(exc, "reason", exc)
        raise SpecError(f"the tracking server MLFLOW_TRACKING_URI={uri} does not answer ({why}); start it "
                        f"(make tracking-up) or point MLFLOW_TRACKING_URI at one that runs") from None


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
        db = sqlite_path(uri)
        if db:
            _clients[uri] = _open_sqlite_store(MlflowClient, uri, db)
        else:
            _clients[uri] = MlflowClient(tracking_uri=uri)
    return _clients[uri]


def _open_sqlite_store(MlflowClient, uri, db):
    """MLflow creates and migrates a fresh sqlite store on first use with nothing guarding it: two
    processes opening it at once both migrate and one dies (``table _alembic_tmp_... already exists``).
    A lock file next to the database lets one create it while the others wait."""
    import fcntl

    os.makedirs(os.path.dirname(db) or ".", exist_ok=True)
    with open(db + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        c = MlflowClient(tracking_uri=uri)
        c.search_experiments(max_results=1)  # creates and migrates the store, under the lock
    return c
