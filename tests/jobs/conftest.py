"""Fixtures the orchestrator's tests share: a blank MLflow store made once (its schema migration takes
seconds), copied into each test's own folder."""
import shutil

import pytest

from . import make_blank_mlflow_db, make_root


@pytest.fixture(scope="session")
def blank_db(tmp_path_factory):
    return make_blank_mlflow_db(tmp_path_factory.mktemp("template") / "mlflow.db")


@pytest.fixture
def root(tmp_path, monkeypatch, blank_db):
    """A project root with the tiny configs and its own sqlite store, as the working directory."""
    shutil.copy(blank_db, tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    return make_root(tmp_path)
