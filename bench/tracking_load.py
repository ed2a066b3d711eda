"""Tracking under a cluster's load: N concurrent stage-like processes, each logging metrics every step
through the stage-side logger (hirl_core.tracking.Tracker, spool included) into its own run on one
tracking server, for a fixed time; then every (run, key, step) is counted: it must be there exactly once.

    python bench/tracking_load.py --uri http://127.0.0.1:5050 [--procs 32] [--duration 60] [--rate 20]

Loopback only, and it stops by itself: each worker logs for ``duration`` seconds after a common start.
A worker logs ``rate`` steps per second at most; when the server is slower, the step rate falls instead
(a training waits for its logging call), and the numbers say so.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("loss", "lr")


def _worker(args) -> int:
    sys.path.insert(0, str(ROOT))
    from hirl_core.tracking import Tracker

    work = Path(args.work)
    tracker = Tracker(True, spool_dir=work / args.run_id)
    (work / f"ready-{args.run_id}").touch()
    while not (work / "go").exists():
        time.sleep(0.01)
    start = float((work / "go").read_text())
    while time.time() < start:
        time.sleep(0.001)
    period, step, spent = 1.0 / args.rate, 0, []
    end = start + args.duration
    while time.time() < end:
        began = time.perf_counter()
        tracker.metrics({"loss": 1.0 / (step + 1), "lr": 0.001}, step=step)
        spent.append(time.perf_counter() - began)
        step += 1
        wait = start + step * period - time.time()
        if wait > 0:
            time.sleep(wait)
    logged_s = time.time() - start
    drain0 = time.perf_counter()
    tracker.finish("FINISHED")
    print(json.dumps({"run_id": args.run_id, "steps": step, "logged_s": logged_s, "spent": spent,
                      "finish_s": time.perf_counter() - drain0,
                      "spooled": (work / args.run_id / "mlflow_spool.jsonl").exists()}))
    return 0


def run_load(uri: str, procs: int = 32, duration: float = 60.0, rate: float = 20.0, timeout: float = 600) -> dict:
    """Run the load against ``uri`` and count what arrived; the bench's and the test's numbers."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.create_experiment(f"tracking-load-{int(time.time() * 1000)}")
    run_ids = [c.create_run(exp, run_name=f"load-{i}").info.run_id for i in range(procs)]
    with tempfile.TemporaryDirectory(prefix="hirl-load-") as tmp:
        work = Path(tmp)
        env = dict(os.environ, MLFLOW_TRACKING_URI=uri, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        workers = [subprocess.Popen([sys.executable, __file__, "--worker", "--run-id", rid, "--work", tmp,
                                     "--duration", str(duration), "--rate", str(rate)],
                                    env={**env, "MLFLOW_RUN_ID": rid}, stdout=subprocess.PIPE, text=True)
                   for rid in run_ids]
        deadline = time.monotonic() + timeout
        try:
            while len(list(work.glob("ready-*"))) < procs:  # all imported and tracking: a common start
                if any(w.poll() is not None for w in workers) or time.monotonic() > deadline:
                    raise RuntimeError("a load worker ended or hung before the start")
                time.sleep(0.1)
            start = time.time() + 1.0
            (work / "go.tmp").write_text(repr(start))
            os.replace(work / "go.tmp", work / "go")
            outs = [w.communicate(timeout=max(1.0, deadline - time.monotonic()))[0] for w in workers]
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
                    w.wait()
    reports = [json.loads(o.strip().splitlines()[-1]) for o in outs]
    assert all(w.returncode == 0 for w in workers), "a load worker failed"
    missing = duplicated = 0
    for rep in reports:
        for key in KEYS:
            steps = [m.step for m in c.get_metric_history(rep["run_id"], key)]
            missing += len(set(range(rep["steps"])) - set(steps))
            duplicated += len(steps) - len(set(steps))
    statuses = {c.get_run(r).info.status for r in run_ids}
    spent = sorted(s for rep in reports for s in rep["spent"])
    steps = sum(rep["steps"] for rep in reports)
    logged_s = max(rep["logged_s"] for rep in reports)
    return {
        "uri": uri, "processes": procs, "duration_s": duration, "target_steps_per_s_per_process": rate,
        "steps_logged": steps, "metric_values_logged": steps * len(KEYS),
        "server_requests_per_s": round(steps / logged_s, 1),  # one log_batch request per step
        "steps_per_s_per_process": round(steps / logged_s / procs, 2),
        "client_overhead_ms_per_step": {"mean": round(1000 * statistics.fmean(spent), 2),
                                        "p50": round(1000 * spent[len(spent) // 2], 2),
                                        "p99": round(1000 * spent[int(len(spent) * 0.99)], 2)},
        "finish_s_max": round(max(rep["finish_s"] for rep in reports), 2),
        "runs_that_spooled": sum(rep["spooled"] for rep in reports),
        "missing": missing, "duplicated": duplicated, "exactly_once": missing == 0 and duplicated == 0,
        "run_statuses": sorted(statuses),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--uri", default=os.environ.get("HIRL_TRACKING_SERVER") or os.environ.get("MLFLOW_TRACKING_URI"))
    p.add_argument("--procs", type=int, default=32)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--rate", type=float, default=20.0)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--run-id", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return _worker(args)
    if not args.uri or not args.uri.startswith("http"):
        p.error(f"--uri must be a tracking server's http(s) address, got {args.uri!r} (make tracking-up prints one)")
    print(json.dumps(run_load(args.uri, args.procs, args.duration, args.rate), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
