"""What SLURM says about jobs: squeue while slurmctld holds them (it keeps the pending reason, such as
``DependencyNeverSatisfied``), sacct through submitit's parser for older ones. argv lists only."""

from __future__ import annotations

import subprocess

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


def _run(argv):
    """stdout of a SLURM client, "" when it is missing (status away from the cluster) or fails."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
