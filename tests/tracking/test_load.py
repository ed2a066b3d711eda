"""32 concurrent stage-like processes log a metric write every step for ~20 s into their own runs on the
shared PostgreSQL-backed tracking server (make tracking-up; HIRL_TRACKING_SERVER): every value arrives
exactly once (counted per run, key and step) and every run ends FINISHED. The full-size run (60 s) is
the bench: python bench/run.py --only tracking_load."""
import importlib.util
from pathlib import Path

import pytest

from .server import shared_server_or_skip

REPO = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("tracking_load", REPO / "bench" / "tracking_load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(300)
def test_32_processes_logging_every_step_deliver_every_metric_exactly_once():
    uri = shared_server_or_skip()
    result = _bench().run_load(uri, procs=32, duration=20.0, rate=20.0, timeout=240)
    assert result["exactly_once"], result
    assert result["run_statuses"] == ["FINISHED"], result
    assert result["steps_logged"] >= 32 * 10, result  # every process kept logging, not just a few
