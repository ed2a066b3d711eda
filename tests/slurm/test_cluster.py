"""The SLURM backend against a real cluster (2 emulated nodes, accounting): the demo chain with
SLURM holding the DAG, a 2-node × 2-task gloo job, a failing pre-training, USR2 → requeue → resume,
and a sweep as job arrays. Skipped, with the reason, only where there is no SLURM at all."""

import json
import posixpath
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, cancel_all, squeue, wait_for

pytestmark = pytest.mark.slow
LINEAGE_TAGS = {"mlflow.parentRunId", "hirl.stage", "hirl.stage_type", "hirl.cell", "hirl.upstream_run_id",
                "hirl.backend", "hirl.config_hash", "hirl.image", "hirl.experiment", "hirl.output_dir"}
DONE = ("FINISHED", "FAILED", "KILLED")
LIVE = ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "REQUEUED", "SUSPENDED")


def _wait_done(root, exp, names, timeout=1200):
    """The stage runs once they and their SLURM jobs have ended."""
    def done():
        stages = root.stages(exp)
        if not all(stages.get(n) and stages[n].info.status in DONE for n in names):
            return None
        jobs = [stages[n].data.tags.get("hirl.job_id") for n in names]
        return stages if not any((squeue(j) or ("",))[0] in LIVE for j in jobs if j) else None
    return wait_for(done, timeout, f"stages {names} of {exp} and their jobs to end", interval=3.0)


def test_make_submit_runs_the_demo_chain_through_slurm(root):
    exp = root.experiment("tiny")
    res = subprocess.run(["make", "-s", "-f", str(REPO / "Makefile"), "submit", f"EXP={exp}", "BACKEND=slurm",
                          "SITE=test"], cwd=root.path, env=root.env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    stages = root.stages(exp)
    pre_id, knn_id = stages["pretrain"].data.tags["hirl.job_id"], stages["knn"].data.tags["hirl.job_id"]
    try:
        assert f"queued knn: job {knn_id} after job {pre_id} (afterok)" in res.stdout
        # SLURM holds the DAG: the evaluation waits in PD (Dependency) while the pre-training has not ended
        assert squeue(knn_id) == ("PENDING", "Dependency")
        assert squeue(pre_id)[0] in ("PENDING", "RUNNING")
        stages = _wait_done(root, exp, ["pretrain", "knn"])
    except BaseException:
        cancel_all([pre_id, knn_id])
        raise
    client, runs = root.runs(exp)
    chains = [r for r in runs if r.data.tags.get("hirl.kind") == "chain"]
    assert len(chains) == 1 and len(runs) == 3 and set(stages) == {"pretrain", "knn"}
    assert chains[0].info.status == "FINISHED"  # closed by the last job, nobody watching
    for name, run in stages.items():  # the local backend's structure, on SLURM
        tags = run.data.tags
        assert run.info.status == "FINISHED", (name, tags.get("hirl.reason"))
        assert LINEAGE_TAGS <= set(tags) and tags["mlflow.parentRunId"] == chains[0].info.run_id
        assert tags["hirl.backend"] == "slurm" and tags["hirl.attempt"] == "1" and run.info.run_name == name
        assert tags["hirl.job_id"] in (pre_id, knn_id) and Path(tags["hirl.slurm_folder"]).is_dir()
    assert stages["knn"].data.tags["hirl.upstream_run_id"] == stages["pretrain"].info.run_id
    losses = client.get_metric_history(stages["pretrain"].info.run_id, "loss")
    assert sorted(m.step for m in losses) == [0, 1]
    assert 0.0 < stages["knn"].data.metrics["knn_top1_k20"] <= 1.0
    assert Path(root.path, stages["pretrain"].data.tags["hirl.output_dir"], "backbone.pth").is_file()

    status = root.hirl("status", exp)
    assert status.returncode == 0, status.stderr
    for name in ("pretrain", "knn"):
        line = next(l for l in status.stdout.splitlines() if l.strip().startswith(name))
        assert "FINISHED" in line and "COMPLETED" in line, status.stdout
    assert "chain run" in status.stdout and "FINISHED" in status.stdout.splitlines()[0]
    logs = root.hirl("logs", exp, "--stage", "pretrain")
    assert "[hirl] rank 0/1 attempt 1" in logs.stdout and "epoch 2/2" in logs.stdout
    again = root.hirl("submit", exp, "--backend", "slurm")
    assert again.returncode == 0 and again.stdout.count("skip ") == 2, again.stdout


def test_two_nodes_two_tasks_train_with_world_size_4_and_identical_weights(root):
    from jobs import lineage
    from jobs.backends import Plan
    from jobs.backends.slurm import SlurmBackend
    from jobs.matrix import load_sweep

    exp = root.experiment("ddp", epochs=1, subset=512, knn=False,
                          extra=", nodes: 2, ntasks_per_node: 2, gpus_per_node: 0")
    cell = load_sweep(exp, root=root.path).cells[0]
    probe = str(Path(__file__).with_name("ddp_probe.py"))
    backend = SlurmBackend(site=str(root.path / "slurm" / "test.yaml"),
                           command_for=lambda st: [sys.executable, probe, posixpath.join(st.output_dir, "config.yaml")])
    runs = lineage.ensure_chain(cell, backend, uri=root.uri)
    sub = backend.submit(Plan(cell, runs, root.uri))
    job = sub.handles[0].reason.split()[-1]
    try:
        stages = _wait_done(root, exp, ["pretrain"], timeout=900)
    except BaseException:
        cancel_all([job])
        raise
    run = stages["pretrain"]
    assert run.info.status == "FINISHED", run.data.tags.get("hirl.reason")
    assert run.data.params["world_size"] == "4" and run.data.tags["hirl.nodes"] == "n[1-2]"
    out = Path(root.path, cell.stages[0].output_dir)
    ranks = [json.loads((out / f"weights-rank{r}.json").read_text()) for r in range(4)]
    assert [r["world_size"] for r in ranks] == [4] * 4
    assert sorted((r["slurm_nodeid"], r["slurm_procid"]) for r in ranks) == [("0", "0"), ("0", "1"), ("1", "2"),
                                                                              ("1", "3")]
    assert len({r["master"] for r in ranks}) == 1 and ranks[0]["master"].startswith("n1:")
    assert len({r["params"] for r in ranks}) == 1, ranks  # every rank holds the same weights


def test_failing_pretrain_cancels_its_evaluation_and_status_says_why(root):
    exp = root.experiment("broken")
    res = root.hirl("submit", exp, "--backend", "slurm", "--set", "pretrain.data.root=/nonexistent-hirl-data")
    assert res.returncode == 0, res.stdout + res.stderr
    stages = root.stages(exp)
    pre_id, knn_id = stages["pretrain"].data.tags["hirl.job_id"], stages["knn"].data.tags["hirl.job_id"]
    try:
        wait_for(lambda: (squeue(knn_id) or ("",))[0] == "CANCELLED", 600, "the evaluation to be cancelled", 2.0)
    finally:
        cancel_all([knn_id])
    assert squeue(knn_id) == ("CANCELLED", "DependencyNeverSatisfied")
    status = root.hirl("status", exp, "--set", "pretrain.data.root=/nonexistent-hirl-data")
    assert status.returncode == 0, status.stderr
    pre_line = next(l for l in status.stdout.splitlines() if l.strip().startswith("pretrain"))
    knn_line = next(l for l in status.stdout.splitlines() if l.strip().startswith("knn"))
    assert "FAILED" in pre_line and "exit code 2" in pre_line, status.stdout
    assert "KILLED" in knn_line and "DependencyNeverSatisfied" in knn_line and "upstream" in knn_line, status.stdout
    stages = root.stages(exp)
    assert stages["pretrain"].info.status == "FAILED" and stages["knn"].info.status == "KILLED"
    assert "did not succeed" in stages["knn"].data.tags["hirl.reason"]


def test_usr2_requeues_and_resumes_in_the_same_run_with_the_same_loss(root):
    """Preemption: USR2 mid-pretrain → submitit (rank 0) requeues → the job resumes from the epoch
    checkpoint in the same MLflow run (attempt 2) and ends with the loss of an uninterrupted run."""
    kw = dict(epochs=4, subset=512, knn=False)
    exp, ref = root.experiment("preempt", **kw), root.experiment("reference", **kw)
    for name in (exp, ref):
        res = root.hirl("submit", name, "--backend", "slurm")
        assert res.returncode == 0, res.stdout + res.stderr
    run = root.stages(exp)["pretrain"]
    job, ref_job = run.data.tags["hirl.job_id"], root.stages(ref)["pretrain"].data.tags["hirl.job_id"]
    out = Path(root.path, run.data.tags["hirl.output_dir"])
    try:
        wait_for(lambda: (out / "checkpoint.pth").is_file(), 900, "the first epoch checkpoint", 0.2)
        subprocess.run(["scancel", "--signal=USR2", job], check=True)  # what SLURM sends before preempting
        wait_for(lambda: squeue(job) and squeue(job)[0] == "PENDING" or
                 root.stages(exp)["pretrain"].data.tags.get("hirl.attempt") == "2", 120, "the requeue")
        stages = _wait_done(root, exp, ["pretrain"], timeout=1200)
        reference = _wait_done(root, ref, ["pretrain"], timeout=1200)
    except BaseException:
        cancel_all([job, ref_job])
        raise
    run, ref_run = stages["pretrain"], reference["pretrain"]
    assert run.info.status == "FINISHED" and ref_run.info.status == "FINISHED", run.data.tags.get("hirl.reason")
    assert run.info.run_id == root.stages(exp)["pretrain"].info.run_id          # one run, never a second
    assert run.data.tags["hirl.attempt"] == "2" and run.data.tags["hirl.job_id"] == job  # requeued, same job
    client = root.runs(exp)[0]
    resumed = [m.value for m in client.get_metric_history(run.info.run_id, "resumed_from_epoch")]
    assert 0 in resumed and max(resumed) >= 1, resumed
    losses = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}
    ref_losses = {m.step: m.value for m in client.get_metric_history(ref_run.info.run_id, "loss")}
    assert sorted(losses) == sorted(ref_losses) == [0, 1, 2, 3]
    assert losses[3] == pytest.approx(ref_losses[3], rel=1e-5), (losses, ref_losses)
    log = root.hirl("logs", exp, "--stage", "pretrain").stdout
    assert "Caught signal SIGUSR2" in log and "resuming from" in log and "attempt 2" in log


def test_a_sweep_goes_out_as_job_arrays_with_corresponding_dependencies(root):
    from jobs import lineage
    from jobs.backends import Plan
    from jobs.backends.slurm import SlurmBackend
    from jobs.matrix import load_sweep

    root.experiment("tiny")
    spec = root.path / "configs" / "experiments" / "seeds.yaml"
    spec.write_text(f"name: seeds{root.suffix}\n"  # on the shared server: this test's own experiment
                    "matrix:\n  method: [tiny]\n  seed: [0, 1, 2]\nresources:\n  slurm: {array_parallelism: 2}\n")
    sweep = load_sweep("seeds", root=root.path)
    backend = SlurmBackend(site=str(root.path / "slurm" / "test.yaml"), hold=True)  # queued, never started
    plans = [Plan(c, lineage.ensure_chain(c, backend, uri=root.uri), root.uri) for c in sweep.cells]
    subs = backend.submit_many(plans)
    ids = [h.reason.split()[-1] for s in subs for h in s.handles]
    try:
        pre = [i for i in ids[0::2]]
        knn = [i for i in ids[1::2]]
        assert len({i.split("_")[0] for i in pre}) == 1 and [i.split("_")[1] for i in pre] == ["0", "1", "2"]
        assert len({i.split("_")[0] for i in knn}) == 1 and [i.split("_")[1] for i in knn] == ["0", "1", "2"]
        info = subprocess.run(["scontrol", "show", "job", knn[0].split("_")[0]], capture_output=True,
                              text=True).stdout
        assert f"Dependency=aftercorr:{pre[0].split('_')[0]}" in info
        arr = subprocess.run(["scontrol", "show", "job", pre[0].split("_")[0]], capture_output=True, text=True).stdout
        assert "ArrayTaskThrottle=2" in arr
        # `hirl cancel` reaches every task through submitit (scancel) and the runs turn KILLED
        res = root.hirl("cancel", "seeds")
        assert res.returncode == 0 and "cancelled 6 stages in 3 cells" in res.stdout, res.stdout + res.stderr
        wait_for(lambda: all((squeue(i) or ("CANCELLED",))[0] == "CANCELLED" for i in ids), 60, "the cancellation")
        _client, runs = root.runs("seeds")
        assert sorted(r.info.status for r in runs if "hirl.stage" in r.data.tags) == ["KILLED"] * 6
    finally:
        cancel_all({i.split("_")[0] for i in ids})


def _submit_command(root, exp, code):
    """Submit a one-stage experiment whose job runs ``python -c code`` instead of the stage."""
    from jobs import lineage
    from jobs.backends import Plan
    from jobs.backends.slurm import SlurmBackend
    from jobs.matrix import load_sweep

    cell = load_sweep(exp, root=root.path).cells[0]
    backend = SlurmBackend(site=str(root.path / "slurm" / "test.yaml"),
                           command_for=lambda st: [sys.executable, "-c", code])
    runs = lineage.ensure_chain(cell, backend, uri=root.uri)
    return backend.submit(Plan(cell, runs, root.uri)).handles[0].reason.split()[-1]


FAIL = "import os, sys; print('on', os.environ['SLURMD_NODENAME'], flush=True); sys.exit({msg!r})"


def test_node_faults_are_retried_once_on_another_node_and_oom_fails_fast(root):
    nccl = _submit_command(root, root.experiment("nccl", knn=False), FAIL.format(
        msg="RuntimeError: NCCL error in: ProcessGroupNCCL.cpp:1269, unhandled system error"))
    oom = _submit_command(root, root.experiment("oom", knn=False), FAIL.format(
        msg="torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB"))
    try:
        nccl_run = _wait_done(root, "nccl", ["pretrain"], timeout=600)["pretrain"]
        oom_run = _wait_done(root, "oom", ["pretrain"], timeout=600)["pretrain"]
    except BaseException:
        cancel_all([nccl, oom])
        raise
    assert oom_run.info.status == "FAILED" and oom_run.data.tags["hirl.failure"] == "oom"
    assert oom_run.data.tags["hirl.attempt"] == "1" and "out of memory" in oom_run.data.tags["hirl.reason"]
    tags = nccl_run.data.tags
    assert nccl_run.info.status == "FAILED" and tags["hirl.failure"] == "node" and tags["hirl.attempt"] == "2"
    assert "node fault on n" in tags["hirl.retry_reason"] and "already retried once" in tags["hirl.reason"]
    first = tags["hirl.retry_reason"].split()[-1]
    job = subprocess.run(["scontrol", "show", "job", nccl], capture_output=True, text=True).stdout
    assert f"ExcNodeList={first}" in job and "Restarts=1" in job
    log = root.hirl("logs", "nccl", "--stage", "pretrain").stdout
    nodes = [line.split()[1] for line in log.splitlines() if line.startswith("on n")]
    assert nodes[0] == first and nodes[-1] != first, log  # the retry ran elsewhere


def test_time_limit_requeues_are_bounded(root):
    """A USR2 after min(80 %, limit - 10 min) of the time limit counts as a timeout (submitit's rule:
    always, for a 5-minute limit); the profile allows one time-limit requeue, so the second USR2 ends
    the job instead of requeueing it (preemption requeues, by contrast, are unlimited)."""
    (root.path / "slurm" / "test.yaml").write_text(
        f"runtime: none\npython: {sys.executable}\ntime: 5\nsignal_delay_s: 10\nmax_timeout_requeues: 1\n")
    exp = root.experiment("timeout", knn=False, time=5)
    job = _submit_command(root, exp, "import time; print('sleeping', 'now', flush=True); time.sleep(600)")
    log = lambda: root.hirl("logs", exp, "--stage", "pretrain").stdout  # noqa: E731
    try:
        for attempt in (1, 2):
            wait_for(lambda: log().count("sleeping now") == attempt, 300, f"attempt {attempt} to run", 2.0)
            subprocess.run(["scancel", "--signal=USR2", job], check=True)
        run = _wait_done(root, exp, ["pretrain"], timeout=300)["pretrain"]
    except BaseException:
        cancel_all([job])
        raise
    text = log()
    assert "Requeued job" in text and "timed-out too many times" in text, text
    assert run.info.status == "FAILED" and run.data.tags["hirl.failure"] == "timeout"
    assert run.data.tags["hirl.attempt"] == "2"
