"""System metrics of a stage (CPU, memory, GPU utilisation and memory) through MLflow's own monitor.

``tracking.system_metrics_interval_s`` in the stage config sets the sampling interval in seconds; null
turns it off. Left out, it is on (every DEFAULT_INTERVAL_S) where a cluster backend started the stage in
the shared image (``HIRL_IMAGE`` set) and off on the local backend, where the machine is the user's own.
One process per node samples (node-local rank 0: the others would only repeat its numbers); with more
than one node each logs under ``system/node<N>/`` so the nodes' samples do not overwrite each other.
GPU numbers need pynvml (nvidia-ml-py); without it MLflow samples CPU and memory only.
"""
from __future__ import annotations

import os
import sys

DEFAULT_INTERVAL_S = 10.0


def interval(cfg) -> float | None:
    section = cfg.get("tracking") if hasattr(cfg, "get") else None
    if isinstance(section, dict) and "system_metrics_interval_s" in section:
        value = section["system_metrics_interval_s"]
        return float(value) if value else None
    return DEFAULT_INTERVAL_S if os.environ.get("HIRL_IMAGE") else None


def start(cfg, run_id: str | None = None):
    """The started monitor of this process's node, or None (off, not node-local rank 0, no run)."""
    run_id = run_id or os.environ.get("MLFLOW_RUN_ID")
    seconds = interval(cfg)
    if not run_id or not seconds or int(os.environ.get("LOCAL_RANK", "0") or 0) != 0:
        return None
    try:
        import psutil  # noqa: F401 - MLflow's monitor needs it, and only logs a warning without it
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError as exc:
        print(f"[tracking] no system metrics: {exc}", file=sys.stderr, flush=True)
        return None
    nodes = int(os.environ.get("HIRL_NNODES") or os.environ.get("SLURM_NNODES") or 1)
    node = os.environ.get("GROUP_RANK") or os.environ.get("NODE_RANK") or "0"
    monitor = SystemMetricsMonitor(run_id, sampling_interval=seconds, samples_before_logging=1,
                                   resume_logging=True, node_id=f"node{node}" if nodes > 1 else None)
    monitor.start()
    return monitor


def stop(monitor) -> None:
    if monitor is not None:
        try:
            monitor.finish()
        except Exception as exc:  # noqa: BLE001 - the stage's result does not hang on its system metrics
            print(f"[tracking] system metrics did not stop cleanly: {exc}", file=sys.stderr, flush=True)
