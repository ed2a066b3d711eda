"""bench submit_lineage: the MLflow side of ``hirl submit`` for a 100-cell sweep, on sqlite and on a server.

Each measurement is a fresh interpreter, as a user's command starts: imports, the spec, the tracking
check, then the 301 runs (sweep run, 100 chains, 200 stage runs with their params, datasets and config
artifacts) exactly as hirl submit creates them. The SLURM queueing that follows is bench slurm_submit's.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 5.0
CODE = ("import sys, time; t0 = time.perf_counter(); from jobs import lineage, lineage_bulk; "
        "from jobs.matrix import load_sweep; s = load_sweep('bench_100', root=sys.argv[1]); "
        "u = lineage.tracking_uri(); lineage.check_tracking(u); "
        "r = lineage.SweepRef(s.sweep_id, lineage.ensure_sweep_run(s, 'local', u)); "
        "lineage_bulk.ensure_chains(s.cells, 'local', uri=u, sweep=r); print(time.perf_counter() - t0)")


def bench_100_root(tmp: Path) -> None:
    shutil.copytree(ROOT / "configs", tmp / "configs")
    (tmp / "configs" / "experiments" / "bench_100.yaml").write_text(
        "name: bench_100\nstages:\n  pretrain: {config: configs/pretrain/baseline/mocov2_demo.yaml}\n"
        "  knn: {config: configs/downstream/knn/knn_demo.yaml, after: pretrain}\n"
        "matrix:\n  seed: [" + ", ".join(str(i) for i in range(100)) + "]\n")


def _server(tmp: Path):
    """HIRL_TRACKING_SERVER (make tracking-up) when set, else a throwaway sqlite-backed ``mlflow server``
    on a loopback port: (uri, the process to stop or None, what it is)."""
    if os.environ.get("HIRL_TRACKING_SERVER"):
        return os.environ["HIRL_TRACKING_SERVER"], None, "HIRL_TRACKING_SERVER"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{tmp / 'server.db'}", "--artifacts-destination",
                             str(tmp / "artifacts"), "--workers", "4"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(uri + "/health", timeout=2).close()
            break
        except OSError:
            time.sleep(0.5)
    return uri, proc, "throwaway mlflow server (sqlite-backed, 4 workers, loopback)"


def _measure(tmp: Path, uri: str) -> dict:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CODE, str(tmp)], cwd=tmp, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": uri})
    wall = time.perf_counter() - t0
    ok = done.returncode == 0
    return {"lineage_s": round(float(done.stdout.split()[-1]), 2) if ok else None, "command_wall_s": round(wall, 2),
            "ok": ok, "error": None if ok else done.stderr[-300:]}


def bench_submit_lineage() -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bench_100_root(tmp)
        out["sqlite"] = _measure(tmp, f"sqlite:///{tmp / 'mlflow.db'}")
        uri, proc, what = _server(tmp)
        try:
            out["server"] = {**_measure(tmp, uri), "server": what}
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
    out.update({"runs": 301, "target_s": TARGET_S,
                "within_target": all(v["ok"] and v["command_wall_s"] <= TARGET_S
                                     for v in (out["sqlite"], out["server"])),
                "note": "command_wall_s: a fresh interpreter from start to the last run created (imports, spec, "
                        "tracking check, 301 runs); the SLURM queueing after it is slurm_submit.sweep_100_to_queue_s"})
    return out
