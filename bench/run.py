"""Benchmarks → bench/results/*.json. Ratios measured in one run are what to compare; absolute times on
a shared 2-core machine are noise.

    python bench/run.py [--only foundation] [--only hierarchical_kmeans] ...
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))


def _machine(torch_free: bool = False) -> dict:
    info = {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count()}
    if torch_free:  # the orchestrator's numbers must not pay for importing torch
        return info
    import torch

    return {**info, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def bench_foundation() -> dict:
    """Demo-size MoCo v2 training throughput (images/s, steady state) and KNN feature+vote time."""
    import torch
    from torch.utils.data import DataLoader

    from hirl_core.config import load_config
    from hirl_core.data.build import build_eval_dataset, build_pretrain_dataset
    from hirl_core.evals.knn import extract_features, weighted_knn
    from hirl_core.methods import build_method

    cfg = load_config(ROOT / "configs/pretrain/baseline/mocov2_demo.yaml")
    torch.manual_seed(0)
    method = build_method(cfg)
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-3)
    loader = DataLoader(build_pretrain_dataset(cfg.data, cfg.augment), batch_size=cfg.batch_size,
                        shuffle=True, drop_last=True)
    it, warm, steps = iter(loader), 3, 15
    for i in range(warm + steps):
        if i == warm:
            t0 = time.perf_counter()
        views, _, _ = next(it)
        out = method(views)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        method.after_step(0.0)
    train_ips = steps * cfg.batch_size / (time.perf_counter() - t0)

    knn_cfg = load_config(ROOT / "configs/downstream/knn/knn_demo.yaml")
    t0 = time.perf_counter()
    tr = extract_features(method.backbone, build_eval_dataset(knn_cfg.data, "train"), 512, torch.device("cpu"))
    va = extract_features(method.backbone, build_eval_dataset(knn_cfg.data, "val"), 512, torch.device("cpu"))
    t_feat = time.perf_counter() - t0
    t0 = time.perf_counter()
    weighted_knn(*tr, *va)
    t_vote = time.perf_counter() - t0
    return {"mocov2_demo_train_images_per_s": round(train_ips, 1),
            "knn_demo_feature_extraction_s": round(t_feat, 2), "knn_demo_vote_s": round(t_vote, 2),
            "knn_demo_sizes": {"train": len(tr[0]), "val": len(va[0])}}


def bench_orchestrator() -> dict:
    """Compile a synthetic 1,000-cell matrix (10 seeds x 10 epoch counts x 10 learning rates over the demo's
    pretrain -> knn) into cells with content-hash ids (target <= 1 s), and time `hirl plan model_zoo` end
    to end in a fresh interpreter. Torch-free: jobs never imports it."""
    import tempfile

    import yaml

    from jobs.matrix import format_sweep_plan, load_sweep

    spec = {"name": "bench_1000",
            "stages": {"pretrain": {"config": "configs/pretrain/baseline/mocov2_demo.yaml"},
                       "knn": {"config": "configs/downstream/knn/knn_demo.yaml", "after": "pretrain"}},
            "matrix": {"seed": list(range(10)), "pretrain.epochs": list(range(1, 11)),
                       "optimizer.lr": [round(0.001 * i, 4) for i in range(1, 11)]}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench_1000.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        wall, cpu, plan_cpu = [], [], []
        for _ in range(3):
            t0, c0 = time.perf_counter(), time.process_time()
            sweep = load_sweep(path, root=ROOT)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            c0 = time.process_time()
            text = format_sweep_plan(sweep)
            plan_cpu.append(time.process_time() - c0)
    cells = len(sweep.cells)
    assert cells == 1000 and len({c.cell_id for c in sweep.cells}) == cells
    import resource

    zoo_wall, zoo_cpu = [], []
    for _ in range(3):  # a fresh interpreter each time, as a user runs it
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "jobs", "plan", "model_zoo"], cwd=ROOT, capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        zoo_wall.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        zoo_cpu.append(after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime)
    return {"matrix_cells": cells, "target_s": 1.0,
            "compile_1000_cells_cpu_s": round(min(cpu), 3), "compile_1000_cells_wall_s": round(min(wall), 3),
            "within_target": min(cpu) <= 1.0, "format_plan_1000_cells_cpu_s": round(min(plan_cpu), 3),
            "plan_lines": text.count("\n"), "hirl_plan_model_zoo_cpu_s": round(min(zoo_cpu), 3),
            "hirl_plan_model_zoo_wall_s": round(min(zoo_wall), 3), "hirl_plan_model_zoo_ok": done.returncode == 0,
            "note": "best of 3; CPU seconds are the measure (wall time on a shared machine includes waiting)"}


def bench_slurm_submit() -> dict:
    """A 100-cell sweep (pretrain → knn per cell) reaching the SLURM queue: MLflow lineage for all cells,
    then the backend's submission (two job arrays) until squeue lists all 200 tasks. Submitted held, so
    nothing runs; cancelled after. Uses $SLURM_CONF, else starts (and stops) the dev cluster."""
    import shutil
    import tempfile

    started = False
    if not os.environ.get("SLURM_CONF") or not shutil.which("sbatch"):
        if os.geteuid() != 0:
            return {"skipped": "no SLURM cluster (SLURM_CONF unset) and not root to start the dev cluster"}
        up = subprocess.run(["bash", str(ROOT / "slurm" / "dev-up.sh")], capture_output=True, text=True)
        if up.returncode != 0:
            return {"skipped": f"dev cluster did not start: {up.stderr.strip()[-300:]}"}
        os.environ["SLURM_CONF"] = up.stdout.strip().rsplit("=", 1)[1]
        started = True
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return _slurm_submit_100(Path(tmp))
    finally:
        if started:
            subprocess.run(["bash", str(ROOT / "slurm" / "dev-down.sh")], capture_output=True)


def _slurm_submit_100(tmp: Path) -> dict:
    import contextlib
    import io
    import shutil

    shutil.copytree(ROOT / "configs", tmp / "configs")
    (tmp / "slurm").mkdir()
    (tmp / "slurm" / "bench.yaml").write_text(f"runtime: none\npython: {sys.executable}\ntime: 10\n")
    (tmp / "configs" / "experiments" / "bench_100.yaml").write_text(
        "name: bench_100\nstages:\n  pretrain: {config: configs/pretrain/baseline/mocov2_demo.yaml}\n"
        "  knn: {config: configs/downstream/knn/knn_demo.yaml, after: pretrain}\n"
        "matrix:\n  seed: [" + ", ".join(str(i) for i in range(100)) + "]\n")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    from jobs import lineage

    lineage.client()  # the store exists (as after any earlier command): its one-time migration is not timed
    # What this interpreter paid before: a command's start, MLflow's imports, opening the store (fresh process).
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from jobs import lineage; from jobs.backends.slurm import SlurmBackend; "
                    "lineage.client(); import gc; gc.freeze()"], check=True, cwd=tmp,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    t_start = time.perf_counter() - t0
    from jobs.backends import Plan
    from jobs.backends.slurm import SlurmBackend
    from jobs.matrix import load_sweep

    t0 = time.perf_counter()
    sweep = load_sweep("bench_100", root=tmp)
    backend = SlurmBackend(site=str(tmp / "slurm" / "bench.yaml"), hold=True)  # held: queued, never started
    uri = lineage.tracking_uri()
    ref = lineage.SweepRef(sweep.sweep_id, lineage.ensure_sweep_run(sweep, backend, uri))
    from jobs.lineage_bulk import ensure_chains

    runs = ensure_chains(sweep.cells, backend, uri=uri, sweep=ref)  # as hirl submit creates them
    t_lineage = time.perf_counter() - t0
    t1 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        subs = backend.submit_many([Plan(c, r, uri) for c, r in zip(sweep.cells, runs)])
    t_submit = time.perf_counter() - t1
    ids = [h.reason.split()[-1] for s in subs for h in s.handles]
    arrays = sorted({i.split("_")[0] for i in ids})
    while True:  # until squeue shows every task
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(arrays)], capture_output=True,
                             text=True).stdout.split()
        if len(set(out) & set(ids)) == len(ids) or time.perf_counter() - t1 > 120:
            break
        time.sleep(0.05)
    t_queue = time.perf_counter() - t1
    subprocess.run(["scancel", *arrays], capture_output=True)
    return {"sweep_cells": len(sweep.cells), "jobs_in_queue": len(set(out) & set(ids)), "arrays": len(arrays),
            "sweep_100_to_queue_s": round(t_queue, 2), "sweep_100_sbatch_s": round(t_submit, 2),
            "sweep_100_mlflow_lineage_s": round(t_lineage, 2),
            "command_start_s": round(t_start, 2),
            "sweep_100_total_s": round(t_start + t_lineage + t_queue, 2), "target_s": 5.0,
            "within_target": t_start + t_lineage + t_queue <= 5.0,  # the whole submission, not its queueing alone
            "note": "to_queue = backend submit (2 job arrays, 200 pickled StageCommands) until squeue lists all "
                    "tasks; lineage = creating the 301 MLflow runs on an existing sqlite store, which hirl submit "
                    "does first; command_start = a fresh interpreter's start, imports and opening the store, which "
                    "this one paid before; total = start + lineage + to_queue"}


def bench_tracking_load() -> dict:
    """32 processes logging every step for 60 s against the PostgreSQL-backed tracking server
    (HIRL_TRACKING_SERVER, else the one tracking/up.sh starts here and stops after)."""
    from tracking_load import run_load

    uri, started = os.environ.get("HIRL_TRACKING_SERVER", ""), False
    if not uri:
        up = subprocess.run(["bash", str(ROOT / "tracking" / "up.sh")], capture_output=True, text=True, check=True)
        started = "already up" not in up.stderr
        uri = up.stdout.strip().rsplit("=", 1)[1]
    try:
        return run_load(uri, procs=32, duration=60.0, rate=20.0)
    finally:
        if started:
            subprocess.run(["bash", str(ROOT / "tracking" / "down.sh")], check=False)


sys.path.insert(0, str(ROOT / "bench"))
from science import bench_baselines, bench_hierarchical_kmeans, bench_hirl, bench_seed_loops  # noqa: E402
from submit import bench_submit_lineage  # noqa: E402

BENCHES = {"foundation": bench_foundation, "orchestrator": bench_orchestrator, "slurm_submit": bench_slurm_submit,
           "baselines": bench_baselines, "hirl": bench_hirl, "hierarchical_kmeans": bench_hierarchical_kmeans,
           "seed_loops": bench_seed_loops, "tracking_load": bench_tracking_load, "submit_lineage": bench_submit_lineage}
TORCH_FREE = {"orchestrator", "slurm_submit", "tracking_load", "submit_lineage"}
# Benches whose results are keys in another bench's file (merged into it, never overwriting it).
MERGE_INTO = {"slurm_submit": "orchestrator", "submit_lineage": "orchestrator", "hierarchical_kmeans": "hirl",
              "seed_loops": "baselines",
              "tracking_load": "tracking"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(BENCHES), action="append")
    args = parser.parse_args()
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:  # the same allocator settings the stages use
        from hirl_core.__main__ import MALLOC_ENV
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in args.only or sorted(BENCHES):
        print(f"bench {name} …", flush=True)
        result = {"bench": name, "machine": _machine(torch_free=name in TORCH_FREE), "results": BENCHES[name](),
                  "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True).stdout.strip()}
        path = RESULTS / f"{MERGE_INTO.get(name, name)}.json"
        if name in MERGE_INTO:  # one key in a shared file: keep what the other benches wrote there
            shared = json.loads(path.read_text()) if path.exists() else {"bench": MERGE_INTO[name]}
            shared.setdefault("results", {})[name] = result["results"]
            shared.setdefault("machine", result["machine"])
            result = shared
        elif path.exists():  # keep keys merged in by other benches
            kept = {k: v for k, v in json.loads(path.read_text()).get("results", {}).items()
                    if k in {n for n, into in MERGE_INTO.items() if into == name}}
            result["results"] = {**result["results"], **kept}
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result["results"], indent=2))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
