"""jobs.entrypoint without a cluster: rank discovery from SLURM's (and a Kubernetes pod's) environment, the rendezvous port,
attempts, failure classes, and the submitit callable (strings only, requeued unchanged)."""

import pickle
import subprocess
import sys

import pytest

from jobs import entrypoint as ep


@pytest.mark.parametrize("text, hosts", [
    ("n1", ["n1"]),
    ("n[1-2]", ["n1", "n2"]),
    ("gpu-a[01-03,07],login", ["gpu-a01", "gpu-a02", "gpu-a03", "gpu-a07", "login"]),
    ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
    ("", []),
])
def test_expand_hostlist(text, hosts):
    assert ep.expand_hostlist(text) == hosts


def test_tasks_on_node():
    assert ep.tasks_on_node("2(x3),1", 0) == 2
    assert ep.tasks_on_node("2(x3),1", 2) == 2
    assert ep.tasks_on_node("2(x3),1", 3) == 1
    assert ep.tasks_on_node("8", 5) == 8


def test_master_port_is_shared_by_ranks_and_moves_on_requeue():
    ports = {ep.master_port("4242", r) for r in range(50)}
    assert len(ports) == 50                                   # every attempt its own rendezvous
    assert ep.master_port("4242", 3) == ep.master_port("4242", 3)
    assert all(ep.PORT_BASE <= p < ep.PORT_BASE + ep.PORT_SPAN for p in ports)
    assert ep.master_port("4242", 0) != ep.master_port("4243", 0)


SLURM = {"SLURM_JOB_ID": "777", "SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1",
         "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_TASKS_PER_NODE": "2(x2)"}


def test_dist_env_from_slurm():
    env = ep.dist_env(SLURM)
    assert env == {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "GROUP_RANK": "1", "NODE_RANK": "1",
                   "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "n1", "MASTER_PORT": str(ep.master_port("777", 0))}
    requeued = ep.dist_env({**SLURM, "SLURM_RESTART_COUNT": "1"})
    assert requeued["MASTER_PORT"] != env["MASTER_PORT"]
    assert ep.dist_env({"WORLD_SIZE": "2", "RANK": "1"}) == {}  # torchrun's own variables stand


def test_attempt_and_job_id():
    assert ep.attempt({}) == 1
    assert ep.attempt({"SLURM_RESTART_COUNT": "1"}) == 2
    assert ep.attempt({"SLURM_RESTART_COUNT": "2", "HIRL_ATTEMPT_BASE": "1"}) == 4
    assert ep.job_id({"SLURM_JOB_ID": "9", "SLURM_ARRAY_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": "3"}) == "5_3"
    assert ep.job_id({"SLURM_JOB_ID": "9"}) == "9"


@pytest.mark.parametrize("code, log, outcome", [
    (0, "", "ok"),
    (1, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "oom"),
    (137, "slurmstepd: error: Detected 1 oom-kill event(s) in StepId=1.0", "oom"),
    (1, "RuntimeError: NCCL error in: ProcessGroupNCCL.cpp:1269, unhandled system error", "node"),
    (1, "CUDA error: uncorrectable ECC error encountered", "node"),
    (143, "[pretrain] interrupted by SIGUSR2", "interrupted"),
    (2, "hirl_core: error: unknown config key 'foo'", "error"),
])
def test_classify(code, log, outcome):
    assert ep.classify(code, log) == outcome


def test_stage_command_holds_only_strings_and_requeues_itself():
    cmd = ep.StageCommand(["python", "-m", "hirl_core", "pretrain", "-c", "cfg.yaml"],
                          {"MLFLOW_RUN_ID": "abc"}, {"MLFLOW_TRACKING_URI": "sqlite:///x.db"}, cwd="/repo")
    again = pickle.loads(pickle.dumps(cmd))
    assert vars(again) == vars(cmd)
    assert all(isinstance(v, str) for v in cmd.argv + list(cmd.env.values()) + list(cmd.env_defaults.values()))
    delayed = cmd.checkpoint()
    assert vars(delayed.function) == vars(cmd) and delayed.function is not cmd
    env = cmd.environment({"MLFLOW_TRACKING_URI": "http://user:pw@mlflow:5000", **SLURM})
    assert env["MLFLOW_TRACKING_URI"] == "http://user:pw@mlflow:5000"  # the job's own wins over the default
    assert env["MLFLOW_RUN_ID"] == "abc" and env["RANK"] == "3" and env["MASTER_ADDR"] == "n1"
    assert cmd.environment({})["MLFLOW_TRACKING_URI"] == "sqlite:///x.db"


def test_stage_command_runs_and_reports_failures(tmp_path):
    ok = ep.StageCommand([sys.executable, "-c", "import os; open('env', 'w').write(os.environ['HIRL_STAGE'])"],
                         {"HIRL_STAGE": "pretrain"}, cwd=tmp_path)
    assert ok() == 0 and (tmp_path / "env").read_text() == "pretrain"
    with pytest.raises(ep.StageFailed, match="error: exit code 3"):
        ep.StageCommand([sys.executable, "-c", "raise SystemExit(3)"], cwd=tmp_path)()


def test_entrypoint_module_execs_the_command_with_ranks(tmp_path):
    code = "import os; print(os.environ['WORLD_SIZE'], os.environ['RANK'], os.environ['MASTER_ADDR'])"
    out = subprocess.run([sys.executable, "-m", "jobs.entrypoint", "--", sys.executable, "-c", code],
                         env={"PATH": "/usr/bin:/bin", **SLURM, "PYTHONPATH": str(ep.Path(ep.__file__).parents[1])},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["4", "3", "n1"]


def test_kubernetes_jobset_pod_with_one_rank_is_a_rank_itself():
    env = {"JOB_COMPLETION_INDEX": "2", "HIRL_NNODES": "4", "JOBSET_NAME": "hirl-demo-ab12",
           "REPLICATED_JOB_NAME": "workers"}
    out = ep.k8s_env(env)
    assert out["RANK"] == "2" and out["WORLD_SIZE"] == "4" and out["LOCAL_RANK"] == "0"
    assert out["MASTER_ADDR"] == "hirl-demo-ab12-workers-0-0.hirl-demo-ab12" and out["MASTER_PORT"] == "29500"
    argv = [sys.executable, "-m", "hirl_core", "pretrain", "-c", "cfg.yaml"]
    assert ep.launch_argv(argv, {**env, **out}) == argv


def test_kubernetes_pod_with_several_gpus_starts_its_ranks_with_torchrun():
    env = {"JOB_COMPLETION_INDEX": "1", "HIRL_NNODES": "2", "HIRL_NPROC_PER_NODE": "8",
           "HIRL_MASTER_ADDR": "head.svc", "HIRL_MASTER_PORT": "23456"}
    out = ep.k8s_env(env)
    assert "RANK" not in out  # torchrun assigns RANK/LOCAL_RANK per process
    argv = ep.launch_argv(["python", "-m", "hirl_core", "knn", "-c", "k.yaml"], {**env, **out})
    assert argv == ["python", "-m", "torch.distributed.run", "--nnodes=2", "--node-rank=1", "--nproc-per-node=8",
                    "--master-addr=head.svc", "--master-port=23456", "-m", "hirl_core", "knn", "-c", "k.yaml"]


def test_no_kubernetes_discovery_outside_a_pod_or_under_torchrun_or_pytorchjob():
    assert ep.k8s_env({}) == {}
    assert ep.k8s_env({"JOB_COMPLETION_INDEX": "0"}) == {}            # not a hirl multi-node job
    assert ep.k8s_env({"JOB_COMPLETION_INDEX": "0", "HIRL_NNODES": "2", "RANK": "3"}) == {}
