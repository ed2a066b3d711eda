"""What SLURM says about jobs: squeue while slurmctld holds them (it keeps the pending reason, such as
``DependencyNeverSatisfied``), sacct through submitit's parser for older ones. argv lists only."""

from __future__ import annotations

import os
import shutil
import subprocess

from .base import BackendError

LIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
        "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT")
FAILED_STATES = ("FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED")


def query(job_ids):
    """{job id: (state, reason)}: squeue for jobs slurmctld still holds (it has the pending reason,
    e.g. DependencyNeverSatisfied), then sacct through submitit's watcher for older ones. Array tasks
    that never started live in one record of the whole array ("123_[0-9%4]" in sacct, "123" in
    squeue -r), so the array's own id is asked for too."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    arrays = sorted({i.split("_")[0] for i in ids if "_" in i})
    rows = {}
    for line in _run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%r", "-j", ",".join(ids + arrays)]).splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            rows[parts[0]] = (parts[1], parts[2])
    found = {i: rows.get(i) or rows.get(i.split("_")[0] if "_" in i else "") for i in ids}
    found = {i: v for i, v in found.items() if v}
    missing = [i for i in ids if i not in found]
    if missing:
        from submitit.slurm.slurm import SlurmInfoWatcher

        ask = sorted(set(missing) | {i.split("_")[0] for i in missing if "_" in i})
        cmd = ["sacct", "-X", "-o", "JobID,State,Reason", "--parsable2"] + [a for i in ask for a in ("-j", i)]
        for jid, row in SlurmInfoWatcher().read_info(_run(cmd)).items():  # expands "123_[0-9%4]"
            if jid in missing:
                found[jid] = (row.get("State", "UNKNOWN").split()[0], row.get("Reason", ""))
    return found


class SlurmUnavailable(BackendError):
    """No SLURM cluster answers here (clients missing, no configuration, controller down); one line."""


HINT = "submit from a SLURM login node, or start the dev cluster: make dev-slurm-up"
ANSWER_S = 20  # a dead controller fails the clients' connect retries after ~10 s


def _conf_problem():
    conf = os.environ.get("SLURM_CONF")
    if conf and not os.path.isfile(conf):  # the clients would retry reading it for 60 s
        return f"SLURM_CONF={conf} is not a file"
    return ""


def _run(argv, timeout=ANSWER_S):
    """stdout of a SLURM client; SlurmUnavailable with the client's own reason when it is missing,
    has no configuration, or cannot reach the controller. Unknown job ids are no error (sacct follows)."""
    problem = _conf_problem()
    if problem:
        raise SlurmUnavailable(f"{problem}; {HINT}")
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
    except FileNotFoundError:
        raise SlurmUnavailable(f"{argv[0]} not found on PATH: no SLURM clients here; {HINT}") from None
    except subprocess.TimeoutExpired:
        raise SlurmUnavailable(f"{argv[0]} got no answer within {timeout} s{_where()}; {HINT}") from None
    if proc.returncode and "accounting storage is disabled" in proc.stderr:
        return ""  # a cluster without slurmdbd: finished jobs are unknowable, the live ones are in squeue
    if proc.returncode and "Invalid job id" not in proc.stderr:
        raise SlurmUnavailable(f"{argv[0]} failed: {_reason(proc)}{_where()}")
    return proc.stdout


def check_cluster():
    """Refuse (SlurmUnavailable) unless the clients are here and the controller answers; instant when it
    is down (``scontrol ping`` does not retry)."""
    for tool in ("sbatch", "srun", "squeue", "scontrol"):
        if shutil.which(tool) is None:
            raise SlurmUnavailable(f"{tool} not found on PATH: no SLURM clients here; {HINT}")
    problem = _conf_problem()
    if problem:
        raise SlurmUnavailable(f"{problem}; {HINT}")
    try:
        proc = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, check=False, timeout=ANSWER_S)
    except subprocess.TimeoutExpired:
        raise SlurmUnavailable(f"the SLURM controller does not answer within {ANSWER_S} s{_where()}; {HINT}") from None
    if proc.returncode or " is UP" not in proc.stdout:
        raise SlurmUnavailable(f"the SLURM controller does not answer (scontrol ping: {_reason(proc)}){_where()}; "
                               f"{HINT}")


def _reason(proc):
    """The first line that says what went wrong (the clients print banners of asterisks around it)."""
    for line in (proc.stderr + "\n" + proc.stdout).splitlines():
        line = line.strip()
        if line and not set(line) <= set("* ") and "RESTORE SLURMCTLD" not in line:
            return " ".join(line.split())
    return f"exit code {proc.returncode}"


def _where():
    conf = os.environ.get("SLURM_CONF")
    return f" (SLURM_CONF={conf})" if conf else " (SLURM_CONF is unset)"
