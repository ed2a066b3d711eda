"""The local backend's stage watcher: the process a local stage runs under, in the stage's own session.

    HIRL_STAGE_ARGV='["python", "-m", "hirl_core", ...]' \
    python -m jobs.backends.local_watch --pid-file P --submitter PID --experiment E --cell C

The stage's argv travels in the environment, not on this command line: whoever looks for the stage
process by its command line (``pgrep -f hirl_core``) finds the stage, not its watcher.

It writes its pid file (``<group> <stage pid>``: ``hirl cancel`` signals the group, the watcher and the
stage; the stage's pid is the run's ``hirl.job_id``), starts the stage with its
output straight into the stage's ``log.txt`` (never into a pipe of the submitter, so a stage outlives
a closed terminal or an OOM-killed shell instead of dying of SIGPIPE at its next print), waits, and
removes the pid file. A live submitter settles the run and starts what comes next. A gone one (this
process was re-parented) cannot: the watcher sets the run's final state where the stage could not,
turns the chain's stages that will never start KILLED with the reason (those of the sweep's chains
that never started too) and closes the chains and the sweep, so their states stay true.
SIGTERM/SIGINT/SIGHUP reach the stage through the process group; the watcher only notes them and
waits. It exits as the stage did (the same code, or the same signal), so the submitter sees the
stage's own exit.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from . import common

ARGV_VAR = "HIRL_STAGE_ARGV"
ORPHANED = ("the submitting process ended before this stage could start; "
            "`hirl retry` (make retry) runs it")


def _args(argv):
    p = argparse.ArgumentParser(prog="python -m jobs.backends.local_watch")
    p.add_argument("--pid-file", required=True)
    p.add_argument("--submitter", type=int, required=True)
    p.add_argument("--experiment", required=True)
    p.add_argument("--cell", required=True)
    args = p.parse_args(argv)
    try:
        args.command = [str(a) for a in json.loads(os.environ.pop(ARGV_VAR, ""))]
    except ValueError:
        args.command = []
    if not args.command:
        p.error(f"{ARGV_VAR} must hold the stage's argv as a JSON list")
    return args


final_state = common.final_state
settle = common.settle


def main(argv=None):
    args = _args(sys.argv[1:] if argv is None else argv)
    interrupted = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # the stage gets them too (same group)
        signal.signal(sig, lambda signum, frame: interrupted.append(signum))
    try:
        proc = subprocess.Popen(args.command, stdin=subprocess.DEVNULL)  # stdout/stderr: ours, the log file
    except OSError as exc:
        print(f"[hirl] cannot start the stage: {exc}", file=sys.stderr, flush=True)
        return 127
    tmp = Path(args.pid_file + ".tmp")
    tmp.write_text(f"{os.getpid()} {proc.pid}\n")
    os.replace(tmp, args.pid_file)
    code = proc.wait()  # a noted signal does not end the wait (PEP 475)
    Path(args.pid_file).unlink(missing_ok=True)
    run_id = os.environ.get("MLFLOW_RUN_ID", "")
    try:
        # A live submitter settles the run itself (and starts what comes next); only an orphaned stage
        # pays for importing MLflow here.
        if run_id and os.getppid() != args.submitter:
            from .. import lineage_end

            settle(run_id, code, bool(interrupted))
            lineage_end.end_orphaned_chain(args.experiment, args.cell, ORPHANED)
    except Exception as exc:  # noqa: BLE001 - the stage's own exit matters more than a tracking hiccup
        print(f"[hirl] warning: MLflow: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    if code < 0:  # die of the same signal, so the submitter reads the stage's own -N
        if -code not in (signal.SIGKILL, signal.SIGSTOP):  # those two have no handler to reset
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main())
