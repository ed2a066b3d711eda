"""Tests of the orchestrator (jobs/); helpers shared by its test modules."""

import os
import shutil
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REPO_ROOT = Path(__file__).resolve().parents[2]


def make_root(dest):
    """A repo-like root with the fixture configs (experiments, tiny stage configs)."""
    shutil.copytree(FIXTURES / "configs", Path(dest) / "configs")
    for split in ("train", "val"):  # the fixture configs' (empty) ImageFolder, so data checks pass
        (Path(dest) / "data" / split).mkdir(parents=True, exist_ok=True)
    return Path(dest)


def make_blank_mlflow_db(path):
    """An empty, migrated MLflow sqlite store. Migrating takes seconds, so test modules
    make one template and copy it per test (each test still gets its own real store)."""
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return Path(path)


def subprocess_env(**extra):
    """Environment for a child Python that imports jobs from this checkout."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("MLFLOW_RUN_ID", None)
    return env


PYTHON = sys.executable
