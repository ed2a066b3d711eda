"""Real MLflow tracking servers for the tests: a throwaway one on sqlite (started and stopped by the
test, on a free loopback port), or the shared PostgreSQL-backed one ``make tracking-up`` starts
(``HIRL_TRACKING_SERVER``; ``.ci/run`` sets it and ``HIRL_REQUIRE_TRACKING=1``, which turns the skip of
a test that needs it into a failure)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(uri: str, timeout: float = 1.0) -> bool:
    try:
        urllib.request.urlopen(uri + "/health", timeout=timeout).close()
        return True
    except OSError:
        return False


class ThrowawayServer:
    """``mlflow server`` on a sqlite file under ``root``; stop() and start() keep the same port and store."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self, timeout: float = 90.0) -> "ThrowawayServer":
        (self.root / "artifacts").mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not healthy(self.uri):
            assert self.proc.poll() is None, (self.root / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the MLflow server did not answer in time"
            time.sleep(0.3)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server and its workers
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        deadline = time.monotonic() + 30
        while healthy(self.uri) and time.monotonic() < deadline:
            time.sleep(0.2)


def shared_server_or_skip() -> str:
    """The URI of the tracking-up server; skip without it, fail under HIRL_REQUIRE_TRACKING=1."""
    uri = os.environ.get("HIRL_TRACKING_SERVER", "")
    if uri and healthy(uri, 5):
        return uri
    why = (f"needs the shared tracking server: HIRL_TRACKING_SERVER={uri or '(unset)'} "
           f"{'does not answer' if uri else ''} (make tracking-up, then export HIRL_TRACKING_SERVER=<its URI>)")
    if os.environ.get("HIRL_REQUIRE_TRACKING") == "1":
        pytest.fail(f"HIRL_REQUIRE_TRACKING=1 but the test {why}", pytrace=False)
    pytest.skip(why)
