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
REPEATS = 3
CODE = ("import sys, time; t0 = time.perf_counter(); from jobs import lineage, lineage_bulk; "
        "from jobs.matrix import load_sweep; s = load_sweep(sys.argv[2], root=sys.argv[1]); "
        "u = lineage.tracking_uri(); lineage.check_tracking(u); "
        "r = lineage.SweepRef(s.sweep_id, lineage.ensure_sweep_run(s, 'local', u)); "
        "lineage_bulk.ensure_chains(s.cells, 'local', uri=u, sweep=r); print(time.perf_counter() - t0); "
        "import gc; gc.freeze()")  # as hirl's main does before the process exits


def bench_100_root(tmp: Path, name: str = "bench_100") -> None:
    if not (tmp / "configs").exists():
        shutil.copytree(ROOT / "configs", tmp / "configs")
    (tmp / "configs" / "experiments" / f"{name}.yaml").write_text(
        f"name: {name}\n" "stages:\n  pretrain: {config: configs/pretrain/baseline/mocov2_demo.yaml}\n"
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
                             str(tmp / "artifacts"), "--workers", "4", "--app-name", "hirl"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(uri + "/health", timeout=2).close()
            break
        except OSError:
            time.sleep(0.5)
    return uri, proc, "throwaway mlflow server --app-name hirl (sqlite-backed, 4 workers, loopback)"


def _measure(tmp: Path, uri: str, spec: str = "bench_100") -> dict:
    t0, c0 = time.perf_counter(), os.times()
    done = subprocess.run([sys.executable, "-c", CODE, str(tmp), spec], cwd=tmp, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": uri})
    wall, c1 = time.perf_counter() - t0, os.times()
    ok = done.returncode == 0
    return {"lineage_s": round(float(done.stdout.split()[-1]), 2) if ok else None, "command_wall_s": round(wall, 2),
            "command_cpu_s": round(c1.children_user + c1.children_system - c0.children_user - c0.children_system, 2),
            "ok": ok, "error": None if ok else done.stderr[-300:]}


def _best(tries: list) -> dict:
    """The fastest of the tries that worked (the others' wall times alongside): on shared cores the
    slower ones waited for other people's processes."""
    ok = [t for t in tries if t["ok"]] or tries
    best = min(ok, key=lambda t: t["command_wall_s"])
    return {**best, "all_command_wall_s": [t["command_wall_s"] for t in tries]}


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def bench_submit_lineage() -> dict:
    """sqlite: a store that exists (as after any earlier hirl command), and apart from it the first command
    on a fresh file, which also pays MLflow's schema migrations once. Server: a new experiment each time."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bench_100_root(tmp)
        fresh = _measure(tmp, f"sqlite:///{tmp / 'fresh.db'}")
        subprocess.run([sys.executable, "-c", "import sys; from mlflow.tracking import MlflowClient; "
                        "MlflowClient(sys.argv[1]).search_experiments()", f"sqlite:///{tmp / 'template.db'}"],
                       check=True, capture_output=True)  # a store that exists: migrated, empty
        tries = []
        for i in range(REPEATS):
            (tmp / f"sqlite{i}").mkdir()
            shutil.copy(tmp / "template.db", tmp / f"sqlite{i}" / "mlflow.db")
            tries.append({**_measure(tmp, f"sqlite:///{tmp / f'sqlite{i}' / 'mlflow.db'}"), "load_avg_1m": _load()})
        out["sqlite"] = _best(tries)
        out["sqlite_fresh_store"] = {**fresh, "note": "the first command on a new sqlite file: MLflow creates and "
                                                      "migrates its schema first (once per store)"}
        uri, proc, what = _server(tmp)
        try:
            tries = []
            for i in range(REPEATS):
                name = f"bench_100_{int(time.time())}_{i}"  # a shared server keeps earlier runs' chains: new cells
                bench_100_root(tmp, name)
                tries.append({**_measure(tmp, uri, name), "load_avg_1m": _load()})
            out["server"] = {**_best(tries), "server": what}
        finally:
            if proc is not None:
                os.killpg(proc.pid, 15)
                proc.wait(timeout=60)
    out.update({"runs": 301, "target_s": TARGET_S,
                "within_target": all(v["ok"] and v["command_wall_s"] <= TARGET_S
                                     for v in (out["sqlite"], out["server"])),
                "note": "command_wall_s: a fresh interpreter from start to the last run created (imports ~2 s, spec, "
                        "tracking check, 301 runs with params, datasets and config artifacts), best of 3; "
                        "within_target: sqlite (existing store) and server both <= target_s. The SLURM queueing after it is "
                        "slurm_submit.sweep_100_to_queue_s; the machine is 2 shared cores (load_avg_1m). Before the "
                        "one-transaction path (git 613cc49, one MLflow call per write): sqlite 11.77 s, server 24.2 s."})
    return out
