"""In-job side of cluster backends: rank discovery, the stage command, failure handling.

    python -m jobs.entrypoint pretrain -c outputs/.../config.yaml      # inside an allocation
    python -m jobs.entrypoint -- <any command>                         # same environment, own command
    python -m jobs.entrypoint --pod torchrun ... -m jobs.entrypoint ...  # a pod's main process

Discovers the torch distributed environment from SLURM's (``SLURM_PROCID``/``SLURM_NTASKS``/
``SLURM_LOCALID``/``SLURM_JOB_NODELIST``), from a Kubernetes Indexed Job/JobSet pod's
(``JOB_COMPLETION_INDEX`` + ``HIRL_NNODES``; torchrun starts the ranks of a multi-GPU pod), or keeps
torchrun's (and Kubeflow PyTorchJob's) when it is already set, then runs
``python -m hirl_core <stage> -c <config>`` as a supervised child (``jobs.stage_supervise``: signals
passed on, the run marked started and ended, the log's tail kept as a run artifact) and exits as it
did. It is the image's entrypoint. ``MASTER_ADDR`` is the allocation's first host and
``MASTER_PORT`` is derived from the job id *and* the restart count, so a requeued job never meets
a stale rendezvous of its previous attempt (submitit #1613). The attempt counts SLURM requeues and
JobSet gang restarts (``JOBSET_RESTART_ATTEMPT``); a restart resumes into the same MLflow run.

Failures a restart cannot fix end the job for good: out of memory (the same job runs out again) and
bad input (exit 2: the stage's one-line refusal of its config; 126/127: the stage cannot start). The
entrypoint exits ``FINAL_EXIT`` on out of memory (bad input keeps its 2). ``--pod`` is the main
process of a Kubernetes pod: it runs torchrun, which exits 1 for any failure of its workers, and
exits ``FINAL_EXIT`` when one of them failed for good (each worker says so in ``$HIRL_FINAL_FILE``),
so that the Job's ``podFailurePolicy`` (FailJob on exit codes 2 and ``FINAL_EXIT``) fails the Job and
JobSet does not restart the gang into the same failure. Anything else (exit 1, a node fault, a
signal) is retried by the scheduler while its restarts last.

``StageCommand`` is what the SLURM backend hands to submitit: a picklable callable holding only
argv and environment strings. Nothing live is pickled at submit time, so a requeued job rebuilds
everything from disk and resumes from ``<output_dir>/checkpoint.pth`` (fairchem #1055). Its
``checkpoint()`` returns itself unchanged: submitit's USR2 handler (global rank 0) then requeues.

Torch-free and MLflow-lazy: only global rank 0 talks to MLflow (attempt tags, a final status the
stage could not set), so a multi-node job never opens one connection per GPU; ``global_rank`` knows
it also before torchrun has set ``RANK``.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

PORT_BASE, PORT_SPAN = 20000, 20000
LOG_ARTIFACT = "logs/log-tail.txt"          # the end of the stage's log, kept by its run (pods and nodes go)
TAIL_BYTES, TAIL_LINES = 1 << 20, 2000
INTERRUPTED = (143, 130, -15, -12, -2)      # SIGTERM/SIGUSR2/SIGINT, as exit code or -signal
FINAL_EXIT = 86                             # failed for good: the scheduler must not retry (podFailurePolicy)
USAGE_EXITS = (2, 126, 127)                 # bad input (the stage's refusal), cannot execute, not found
FINAL_FILE_ENV = "HIRL_FINAL_FILE"          # where a pod's workers note a final failure for ``--pod``
# Exit-log patterns. Out-of-memory is the job's own fault: retrying wastes the allocation.
OOM = re.compile(r"CUDA out of memory|OutOfMemoryError|torch\.OutOfMemoryError|MemoryError|"
                 r"oom-kill|oom_kill|Out Of Memory|Cannot allocate memory", re.IGNORECASE)
# Hardware/interconnect trouble is the node's fault: one retry elsewhere.
NODE_FAULT = re.compile(r"NCCL (error|WARN.*(unhandled|system) error)|ncclSystemError|ncclInternalError|"
                        r"ncclUnhandledCudaError|ECC error|uncorrectable ECC|\bXid\b|GPU is lost|"
                        r"unspecified launch failure|CUDA error: an illegal memory access|NVLink error",
                        re.IGNORECASE)


# -- SLURM environment ---------------------------------------------------------------------------
def expand_hostlist(text):
    """SLURM's compressed host list (``n[1-3,5],gpu-a[01-02]``) as a list of host names."""
    hosts, i, text = [], 0, (text or "").strip()
    while i < len(text):
        prefixes, j = [""], i
        while j < len(text) and text[j] != ",":
            if text[j] == "[":
                end = text.index("]", j)
                parts = []
                for rng in text[j + 1:end].split(","):
                    lo, _, hi = rng.partition("-")
                    parts += [f"{n:0{len(lo)}d}" for n in range(int(lo), int(hi or lo) + 1)]
                prefixes = [p + s for p in prefixes for s in parts]
                j = end + 1
            else:
                prefixes = [p + text[j] for p in prefixes]
                j += 1
        hosts += prefixes
        i = j + 1
    return [h for h in hosts if h]


def tasks_on_node(tasks_per_node, node_id):
    """Tasks on node ``node_id`` from ``SLURM_TASKS_PER_NODE`` (``2(x3),1``)."""
    counts = []
    for part in (tasks_per_node or "").split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if m:
            counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts[node_id] if node_id < len(counts) else (counts[0] if counts else 1)


def master_port(job_id, restart_count=0):
    """A rendezvous port that every rank of one attempt agrees on and the next attempt does not reuse."""
    h = int(hashlib.sha256(str(job_id).encode()).hexdigest()[:8], 16)
    return PORT_BASE + (h + 1009 * int(restart_count)) % PORT_SPAN  # 1009 is coprime to the span


def int_or_zero(text):
    """An integer tag or variable; 0 when it is unset or not a number (a hand-edited tag, say)."""
    try:
        return int(str(text or "0").strip())
    except ValueError:
        return 0


def attempt(environ=None):
    """This start of the stage: starts before this job (a retry) + the scheduler's restarts of this job
    (SLURM requeues; JobSet gang restarts, from its ``jobset.sigs.k8s.io/restart-attempt`` label) + 1."""
    env = os.environ if environ is None else environ
    return (int_or_zero(env.get("HIRL_ATTEMPT_BASE")) + int_or_zero(env.get("SLURM_RESTART_COUNT"))
            + int_or_zero(env.get("JOBSET_RESTART_ATTEMPT")) + 1)


def global_rank(environ=None):
    """Who this process is among all ranks, also before torchrun has set ``RANK`` (a pod whose entrypoint
    starts torchrun itself): node rank × processes per node + local rank (0 for a node's launcher).
    Only global rank 0 talks to MLflow."""
    env = os.environ if environ is None else environ
    if str(env.get("RANK", "")).strip():
        return int_or_zero(env["RANK"])
    node = int_or_zero(env.get("NODE_RANK") or env.get("GROUP_RANK") or env.get("JOB_COMPLETION_INDEX"))
    per_node = max(1, int_or_zero(env.get("LOCAL_WORLD_SIZE") or env.get("HIRL_NPROC_PER_NODE") or "1"))
    return node * per_node + int_or_zero(env.get("LOCAL_RANK"))


def restart_follows(environ=None):
    """True when the scheduler restarts the whole gang after this failure (JobSet ``maxRestarts`` not used
    up, as the pod's ``HIRL_MAX_RESTARTS`` says): the stage run then stays open for the next attempt."""
    env = os.environ if environ is None else environ
    if not str(env.get("HIRL_MAX_RESTARTS", "")).strip():
        return False
    return int_or_zero(env.get("JOBSET_RESTART_ATTEMPT")) < int_or_zero(env["HIRL_MAX_RESTARTS"])


def job_id(environ=None):
    env = os.environ if environ is None else environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID", "")


def dist_env(environ=None):
    """torch.distributed's variables for this task; {} outside SLURM (torchrun's own then stand)."""
    env = os.environ if environ is None else environ
    if "SLURM_PROCID" not in env or "SLURM_JOB_ID" not in env:
        return {}
    hosts = expand_hostlist(env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", ""))
    node = int_or_zero(env.get("SLURM_NODEID"))
    world = env.get("SLURM_NTASKS") or env.get("SLURM_NPROCS") or "1"
    return {"WORLD_SIZE": str(int(world)), "RANK": str(int_or_zero(env["SLURM_PROCID"])),
            "LOCAL_RANK": str(int_or_zero(env.get("SLURM_LOCALID"))), "GROUP_RANK": str(node), "NODE_RANK": str(node),
            "LOCAL_WORLD_SIZE": str(tasks_on_node(env.get("SLURM_TASKS_PER_NODE", ""), node)),
            "MASTER_ADDR": hosts[0] if hosts else "127.0.0.1",
            # SLURM_JOB_ID is unique per array task; the restart count moves the port on requeue
            "MASTER_PORT": str(master_port(env["SLURM_JOB_ID"], int_or_zero(env.get("SLURM_RESTART_COUNT"))))}


def k8s_env(environ=None):
    """Kubernetes Indexed Job / JobSet pods: node rank from ``JOB_COMPLETION_INDEX``, the node count and
    processes per pod from ``HIRL_NNODES``/``HIRL_NPROC_PER_NODE`` (the job spec sets them), the
    rendezvous host from ``HIRL_MASTER_ADDR`` or JobSet's stable name of pod 0. {} elsewhere (and under
    Kubeflow's PyTorchJob, which sets torch's variables itself)."""
    env = os.environ if environ is None else environ
    if "JOB_COMPLETION_INDEX" not in env or "HIRL_NNODES" not in env or "RANK" in env:
        return {}
    node, nnodes = int_or_zero(env["JOB_COMPLETION_INDEX"]), max(1, int_or_zero(env["HIRL_NNODES"]))
    nproc = max(1, int_or_zero(env.get("HIRL_NPROC_PER_NODE") or "1"))
    master = env.get("HIRL_MASTER_ADDR") or (
        f"{env['JOBSET_NAME']}-{env.get('REPLICATED_JOB_NAME', 'workers')}-0-0.{env['JOBSET_NAME']}"
        if env.get("JOBSET_NAME") else "127.0.0.1")
    out = {"MASTER_ADDR": master, "MASTER_PORT": env.get("HIRL_MASTER_PORT") or "29500",
           "NODE_RANK": str(node), "GROUP_RANK": str(node), "LOCAL_WORLD_SIZE": str(nproc)}
    if nproc == 1:  # one process per pod: it is a rank itself
        out.update({"RANK": str(node), "WORLD_SIZE": str(nnodes), "LOCAL_RANK": "0"})
    else:  # several GPUs per pod: torchrun spawns the ranks (launch_argv)
        out["HIRL_TORCHRUN"] = f"{nnodes}:{node}:{nproc}"
    return out


def launch_argv(argv, env):
    """The stage command, wrapped in torchrun when a pod must start several ranks itself."""
    spec = env.get("HIRL_TORCHRUN")
    if not spec or len(argv) < 3 or argv[1:3] != ["-m", "hirl_core"]:
        return list(argv)
    nnodes, node, nproc = spec.split(":")
    return [argv[0], "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--node-rank={node}",
            f"--nproc-per-node={nproc}", f"--master-addr={env['MASTER_ADDR']}",
            f"--master-port={env['MASTER_PORT']}", "-m", "hirl_core", *argv[3:]]


def classify(returncode, log_tail=""):
    """ok | interrupted | oom | node | error: what a stage's exit means for a retry."""
    if returncode == 0:
        return "ok"
    if OOM.search(log_tail or "") or (returncode in (-9, 137) and "Killed" in (log_tail or "")):
        return "oom"
    if NODE_FAULT.search(log_tail or ""):
        return "node"
    if returncode in INTERRUPTED:
        return "interrupted"
    return "error"


def is_final(returncode, outcome):
    """True for a failure that a restart cannot fix: out of memory, or bad input (``USAGE_EXITS``)."""
    return outcome == "oom" or (outcome != "ok" and returncode in USAGE_EXITS)


# -- MLflow from rank 0 --------------------------------------------------------------------------
def best_effort_tracking(fn, *args):
    """Best effort: a tracking server hiccup must not fail a training job."""
    try:
        from . import lineage

        return fn(lineage, *args)
    except Exception as exc:  # noqa: BLE001 - report and go on
        print(f"[hirl] warning: MLflow: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return None


def mark_started(env):
    run_id = env.get("MLFLOW_RUN_ID")
    if not run_id or global_rank(env) != 0:
        return
    tags = {"hirl.attempt": str(attempt(env)), "hirl.job_id": job_id(env),
            "hirl.nodes": env.get("SLURM_JOB_NODELIST", "")}
    best_effort_tracking(lambda lin: lin.set_tags(run_id, {k: v for k, v in tags.items() if v}))


def mark_ended(env, outcome, detail=""):
    """Set the final status where the stage could not (killed hard, bad input before tracking)."""
    run_id = env.get("MLFLOW_RUN_ID")
    if not run_id or global_rank(env) != 0:
        return

    def update(lin):
        status = lin.run_status(run_id)
        if status == "FINISHED":  # the stage completed; a signal during its exit changes nothing
            return
        if detail:
            lin.set_tags(run_id, {"hirl.failure": outcome, "hirl.reason": detail[:500]})
        if status in ("SCHEDULED", "RUNNING"):
            lin.set_run_status(run_id, "FINISHED" if outcome == "ok" else
                               "KILLED" if outcome == "interrupted" else "FAILED")

    def close_chain(lin):  # nobody watches a cluster's chain: the stage that ends it closes the chain run
        if env.get("HIRL_EXPERIMENT") and env.get("HIRL_CELL"):
            lin.end_chain(env["HIRL_EXPERIMENT"], env["HIRL_CELL"])
    best_effort_tracking(update)
    if outcome != "interrupted":  # a requeue follows an interruption: the chain is not over
        best_effort_tracking(close_chain)


# -- the submitit callable -------------------------------------------------------------------------
class StageFailed(RuntimeError):
    """The stage exited non-zero; the message says how it was classified."""


class StageCommand:
    """Run ``argv`` in this task with the distributed environment set; picklable (strings only)."""

    def __init__(self, argv, env=None, env_defaults=None, cwd=None):
        self.argv = [str(a) for a in argv]
        self.env = {str(k): str(v) for k, v in (env or {}).items()}
        # set only when the job's environment lacks them (a URI with credentials stays out of the pickle)
        self.env_defaults = {str(k): str(v) for k, v in (env_defaults or {}).items()}
        self.cwd = None if cwd is None else str(cwd)

    def __repr__(self):
        return f"StageCommand({self.argv!r})"

    def checkpoint(self, *args, **kwargs):
        """submitit's preemption hook: requeue the very same command; the stage resumes from disk."""
        import submitit

        return submitit.helpers.DelayedSubmission(StageCommand(self.argv, self.env, self.env_defaults, self.cwd))

    def environment(self, base=None):
        env = dict(os.environ if base is None else base)
        for key, value in self.env_defaults.items():
            env.setdefault(key, value)
        env.update(self.env)
        env.update(dist_env(env))
        return env

    def __call__(self):
        from .stage_supervise import end_stage, keep_log_tail

        env = self.environment()
        mark_started(env)
        rank = env.get("RANK", "0")
        print(f"[hirl] rank {rank}/{env.get('WORLD_SIZE', '1')} attempt {attempt(env)} on "
              f"{os.uname().nodename}: {' '.join(self.argv)}", flush=True)
        proc = subprocess.Popen(self.argv, env=env, cwd=self.cwd)  # output goes to this task's log
        try:
            code = proc.wait()
        except BaseException as exc:  # submitit's USR2 handler: let the stage stop at its next step
            _wait(proc, 20.0)
            keep_log_tail(env, _log_tail())
            if not isinstance(exc, SystemExit):  # not requeued: the time-limit requeues are used up
                mark_ended(env, "timeout", f"{type(exc).__name__}: {exc}")
            raise
        tail = _log_tail()
        if classify(code, tail) == "node" and rank == "0" and _retry_elsewhere(env):
            keep_log_tail(env, tail)
            sys.exit(-1)  # like submitit after a requeue: no result file, the job is not over
        outcome, detail = end_stage(env, code, tail)
        if outcome == "ok":
            return code
        raise StageFailed(f"{outcome}: {detail}")


def _retry_elsewhere(env):
    """Requeue this job once with the failing node excluded; the dependents' afterok stays valid
    because the job id does not change."""
    jid, node = env.get("SLURM_JOB_ID"), env.get("SLURMD_NODENAME") or os.uname().nodename
    folder = Path(env.get("SUBMITIT_FOLDER") or ".")
    marker = folder / f".{job_id(env) or jid}.node-retry"
    if not jid or marker.exists():
        return False
    marker.write_text(node + "\n")
    print(f"[hirl] node fault on {node}: requeue job {jid} once without it", file=sys.stderr, flush=True)
    if env.get("MLFLOW_RUN_ID"):
        best_effort_tracking(lambda lin: lin.set_tags(env["MLFLOW_RUN_ID"], {"hirl.retry_reason": f"node fault on {node}"}))
    if subprocess.run(["scontrol", "requeue", jid], check=False).returncode != 0:
        return False
    # ExcNodeList can only change once the job is pending again; SIGTERM is bypassed by submitit
    for _ in range(40):
        if subprocess.run(["scontrol", "update", f"JobId={jid}", f"ExcNodeList={node}"], check=False,
                          capture_output=True).returncode == 0:
            break
        time.sleep(0.25)
    return True


def _log_tail(limit=TAIL_BYTES):
    """The end of this task's stdout + stderr files (submitit's per-task logs)."""
    text = ""
    try:
        import submitit

        paths = submitit.JobEnvironment().paths
        for path in (paths.stdout, paths.stderr):
            try:
                with open(path, "rb") as f:
                    f.seek(max(0, os.path.getsize(path) - limit))
                    text += f.read().decode("utf-8", errors="replace")
            except OSError:
                pass
    except Exception:  # noqa: BLE001 - not under submitit (tests): nothing to read
        pass
    return text


def _wait(proc, timeout):
    try:
        proc.wait(timeout=timeout)
    except BaseException:  # noqa: BLE001 - the scheduler kills what is left
        pass


def stage_argv(stage_type, config, python=None):
    from .backends.common import stage_argv as argv  # the one builder every backend uses

    return argv(stage_type, config, python)


def main(argv=None):
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.split("\n\n")[1])
        return 0 if args else 2
    env = dict(os.environ)
    if args[0] == "--pod":  # the pod's main process: torchrun's launcher, which starts this module per rank
        from .stage_supervise import launch_pod

        return launch_pod(args[1:], env)
    env.update(dist_env(env) or k8s_env(env))
    command = args[1:] if args[0] == "--" else launch_argv(stage_argv(args[0], "", None)[:4] + args[1:], env)
    from .stage_supervise import supervise

    return supervise(command, env)


if __name__ == "__main__":
    sys.exit(main())
