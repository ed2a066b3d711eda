"""MLflow logging from global rank 0 into the stage run the orchestrator created (`MLFLOW_RUN_ID`).

Without `MLFLOW_RUN_ID` (a stage run by hand) nothing is tracked unless `MLFLOW_TRACKING_URI` is set,
in which case a fresh run is started. Other ranks get a no-op tracker, so a multi-GPU stage never
creates one run per GPU.

Tracking cannot kill a training. With a ``spool_dir`` (the stage's output directory), a write the
tracking server does not take (MLflow's client retries exhausted, connection refused) is appended to
``<spool_dir>/mlflow_spool.jsonl`` instead of raising, and every later write queues behind it, so the
run receives them in the order they were made. The spool is delivered on the next write that finds the
server answering, at the stage's end (a bounded wait, ``HIRL_TRACKING_DRAIN_S``), and by the next
attempt of the stage (a resume or requeue) when it starts. ``mlflow_spool.offset`` holds how many
bytes of the spool have been delivered, fsynced after each record, so each record is sent once; a
crash between a delivery and its offset write resends one record, which MLflow's SQL store drops as a
duplicate metric (same key, step, timestamp and value) and which is harmless for params, tags and status.
"""
from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

SPOOL = "mlflow_spool.jsonl"
OFFSET = "mlflow_spool.offset"
TERMINAL = ("FINISHED", "FAILED", "KILLED")


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


# MLflow's server answers 400 BAD_REQUEST also when its own database was overloaded for a moment (the
# connection pool exhausted under a cluster's writers, a lock wait that timed out): such a write is kept
# and sent again, never dropped.
_OVERLOADED = ("queuepool limit", "timed out", "timeout", "operationalerror", "could not connect",
               "too many connections", "database is locked", "connection refused")


def _refused(exc) -> bool:
    """The server answered and refused this write itself (a 4xx other than 429: a param changing value,
    a deleted run): sending it again cannot help, unlike a server that is down or overloaded."""
    status = getattr(exc, "get_http_status_code", None)
    code = status() if callable(status) else 500
    if any(marker in str(exc).lower() for marker in _OVERLOADED):
        return False
    return 400 <= code < 500 and code != 429


class Spool:
    """An append-only JSONL file of tracking writes and the fsynced byte offset delivered so far."""

    def __init__(self, directory):
        self.path = Path(directory) / SPOOL
        self.offset_path = Path(directory) / OFFSET
        try:
            self.offset = int(self.offset_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            self.offset = 0
        self._cut_torn_tail()

    def _cut_torn_tail(self) -> None:
        """An attempt killed in the middle of an append left part of a line: drop it, or the next record
        would be glued to it. That write was never acknowledged, so nothing is lost that was kept."""
        size = self.size()
        if not size:
            return
        with open(self.path, "rb+") as f:
            f.seek(max(0, size - 65536))
            tail = f.read()
            if tail.endswith(b"\n"):
                return
            cut = tail.rfind(b"\n")
            f.truncate(size - len(tail) + cut + 1 if cut >= 0 else max(0, size - len(tail)))
            os.fsync(f.fileno())

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def pending(self) -> bool:
        return self.size() > self.offset

    def append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def records(self):
        """(record, offset after it) for every undelivered complete line, in order."""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            position = self.offset
            for line in f:
                if not line.endswith(b"\n"):  # a write torn by a crash: never acknowledged, never sent
                    return
                position += len(line)
                yield json.loads(line), position

    def commit(self, offset: int) -> None:
        tmp = self.offset_path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(str(offset))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.offset_path)
        self.offset = offset


class Tracker:
    def __init__(self, enabled: bool, run_name: str | None = None, tags: dict | None = None,
                 spool_dir: str | os.PathLike | None = None):
        self.run_id = None
        self._client = None
        self._spool = None
        self._next_probe = 0.0  # while the server is down: when to ask it again
        if not enabled or not (os.environ.get("MLFLOW_RUN_ID") or os.environ.get("MLFLOW_TRACKING_URI")):
            return
        import mlflow
        from mlflow.tracking import MlflowClient

        self._uri = mlflow.get_tracking_uri()
        self._client = MlflowClient(self._uri)
        self._spool = Spool(spool_dir) if spool_dir is not None else None
        self.run_id = os.environ.get("MLFLOW_RUN_ID") or self._create_run(run_name)
        if self._spool is not None and self._spool.pending():
            self._drain()  # what an earlier attempt of this stage could not deliver goes first
        self._send({"op": "status", "status": "RUNNING"})
        # The image this stage runs in: its digest when a cluster backend started it in the shared image
        # (HIRL_IMAGE), else "local" for a stage run by hand in the host environment.
        image = os.environ.get("HIRL_IMAGE") or (None if os.environ.get("MLFLOW_RUN_ID") else "local")
        all_tags = {**({"hirl.image": image} if image else {}), **(tags or {})}
        if all_tags:
            self._send({"op": "tags", "values": all_tags})

    def _create_run(self, run_name):
        # A run of its own needs the server now: without a run id there is nothing to spool for.
        c = self._client
        name, exp_id = os.environ.get("MLFLOW_EXPERIMENT_NAME"), os.environ.get("MLFLOW_EXPERIMENT_ID")
        if name and not exp_id:
            exp = c.get_experiment_by_name(name)
            exp_id = exp.experiment_id if exp else c.create_experiment(name)
        return c.create_run(exp_id or "0", run_name=run_name).info.run_id

    @property
    def active(self) -> bool:
        return self._client is not None

    @property
    def spool_path(self):
        return self._spool.path if self._spool else None

    def metrics(self, values: dict, step: int | None = None) -> None:
        if self._client:
            self._send({"op": "metrics", "values": {k: float(v) for k, v in values.items()},
                        "step": int(step or 0), "ts": int(time.time() * 1000)})

    def params(self, values: dict) -> None:
        if self._client:
            self._send({"op": "params", "values": {k: str(v) for k, v in values.items()}})

    def artifact(self, path: str, artifact_path: str | None = None) -> None:
        if self._client and os.path.exists(path):
            self._send({"op": "artifact", "path": os.path.abspath(path), "artifact_path": artifact_path})

    def flush(self, wait_s: float = 0.0) -> bool:
        """Deliver the spool, retrying for up to ``wait_s``; True when nothing is left undelivered."""
        if self._spool is None:
            return True
        deadline = time.monotonic() + wait_s
        while True:
            if not self._spool.pending() or self._drain(force=True):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(_env_float("HIRL_TRACKING_PROBE_S", 5.0), left))

    def finish(self, status: str = "FINISHED") -> None:
        if not self._client:
            return
        self._send({"op": "status", "status": status, "ts": int(time.time() * 1000)})
        # A finished training may wait for the server; a killed one must stay inside the backend's grace.
        wait = _env_float("HIRL_TRACKING_DRAIN_S", 600.0)
        if not self.flush(wait if status == "FINISHED" else min(wait, 10.0)):
            print(f"[tracking] the tracking server ({self._uri}) did not answer within {wait:.0f} s: "
                  f"{self._spool.path} keeps what it did not receive; the next attempt of this stage "
                  f"delivers it", file=sys.stderr, flush=True)
        self._client = None

    # -- delivery ---------------------------------------------------------------------------------
    def _send(self, record: dict) -> None:
        spool = self._spool
        if spool is not None and spool.pending():  # keep the order: behind what is already waiting
            spool.append(record)
            self._drain()
            return
        try:
            self._apply(record)
        except Exception as exc:  # noqa: BLE001 - an Interrupted (BaseException) still stops the stage
            if spool is None:
                raise
            if _refused(exc):
                self._dropped(record, exc)
                return
            spool.append(record)
            self._down(exc)

    def _dropped(self, record, exc) -> None:
        print(f"[tracking] the tracking server refused a {record['op']} write for good, dropped "
              f"({' '.join(str(exc).split())[:200]})", file=sys.stderr, flush=True)

    def _down(self, exc) -> None:
        if not self._next_probe:
            print(f"[tracking] the tracking server ({self._uri}) did not take a write "
                  f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); training goes on, the writes are "
                  f"kept in {self._spool.path}", file=sys.stderr, flush=True)
        self._next_probe = time.monotonic() + _env_float("HIRL_TRACKING_PROBE_S", 5.0)

    def _answers(self) -> bool:
        """A quick health check (one request, no retries) before handing writes to MLflow's slow retries."""
        if not self._uri.startswith(("http://", "https://")):
            return True
        try:
            urllib.request.urlopen(self._uri.rstrip("/") + "/health", timeout=2).close()
        except urllib.error.HTTPError:
            return True  # it answered
        except (OSError, ValueError):
            return False
        return True

    def _drain(self, force: bool = False) -> bool:
        spool = self._spool
        if not force and time.monotonic() < self._next_probe:
            return False
        if not self._answers():
            self._next_probe = time.monotonic() + _env_float("HIRL_TRACKING_PROBE_S", 5.0)
            return False
        try:
            for record, end in spool.records():
                try:
                    self._apply(record)
                except Exception as exc:  # noqa: BLE001
                    if not _refused(exc):
                        raise
                    self._dropped(record, exc)  # kept, it would hold back every write after it forever
                spool.commit(end)
        except Exception as exc:  # noqa: BLE001
            self._down(exc)
            return False
        if self._next_probe:
            print("[tracking] the tracking server answers again: the kept writes are delivered",
                  file=sys.stderr, flush=True)
        self._next_probe = 0.0
        return not spool.pending()

    def _apply(self, record: dict) -> None:
        from mlflow.entities import Metric, Param, RunTag

        c, op = self._client, record["op"]
        if op == "metrics":
            c.log_batch(self.run_id, metrics=[Metric(k, v, record["ts"], record["step"])
                                              for k, v in record["values"].items()])
        elif op == "params":
            c.log_batch(self.run_id, params=[Param(k, v) for k, v in record["values"].items()])
        elif op == "tags":
            c.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in record["values"].items()])
        elif op == "status":
            if record["status"] in TERMINAL:
                c.set_terminated(self.run_id, status=record["status"], end_time=record.get("ts"))
            else:
                c.update_run(self.run_id, status=record["status"])
        elif op == "artifact" and os.path.exists(record["path"]):
            c.log_artifact(self.run_id, record["path"], record.get("artifact_path"))
