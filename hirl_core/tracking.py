"""MLflow logging from global rank 0 into the stage run the orchestrator created (`MLFLOW_RUN_ID`).

Without `MLFLOW_RUN_ID` (a stage run by hand) nothing is tracked unless `MLFLOW_TRACKING_URI` is set,
in which case a fresh run is started. Other ranks get a no-op tracker, so a multi-GPU stage never
creates one run per GPU.
"""
from __future__ import annotations

import os


class Tracker:
    def __init__(self, enabled: bool, run_name: str | None = None, tags: dict | None = None):
        self.run_id = None
        self._mlflow = None
        if not enabled or not (os.environ.get("MLFLOW_RUN_ID") or os.environ.get("MLFLOW_TRACKING_URI")):
            return
        import mlflow

        self._mlflow = mlflow
        run = mlflow.start_run(run_id=os.environ.get("MLFLOW_RUN_ID") or None, run_name=run_name)
        self.run_id = run.info.run_id
        # The image this stage runs in: its digest when a cluster backend started it in the shared image
        # (HIRL_IMAGE), else "local" for a stage run by hand in the host environment.
        image = os.environ.get("HIRL_IMAGE") or (None if os.environ.get("MLFLOW_RUN_ID") else "local")
        mlflow.set_tags({**({"hirl.image": image} if image else {}), **(tags or {})})

    @property
    def active(self) -> bool:
        return self._mlflow is not None

    def metrics(self, values: dict, step: int | None = None) -> None:
        if self._mlflow:
            self._mlflow.log_metrics({k: float(v) for k, v in values.items()}, step=step)

    def params(self, values: dict) -> None:
        if self._mlflow:
            self._mlflow.log_params(values)

    def artifact(self, path: str, artifact_path: str | None = None) -> None:
        if self._mlflow and os.path.exists(path):
            self._mlflow.log_artifact(path, artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        if self._mlflow:
            self._mlflow.end_run(status=status)
            self._mlflow = None
