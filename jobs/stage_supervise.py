"""The stage under ``jobs.entrypoint``, the same in a pod, under submitit or by hand: the end of its log
kept as the run's ``logs/log-tail.txt`` (``hirl logs`` reads it after pods and nodes are gone), the run
settled from the stage's exit (also when the stage dies before its own tracking starts) unless the
scheduler restarts the gang into the same run, and, for a pod or a person, the stage run as a
supervised child that gets the signals its parent gets. Only global rank 0 talks to MLflow.

``launch_pod`` is a Kubernetes pod's main process around torchrun: the pod's exit code is
``FINAL_EXIT`` when a worker failed for good (out of memory, bad input), which the Job's
``podFailurePolicy`` turns into a failed Job that JobSet does not restart.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

from .entrypoint import (FINAL_EXIT, FINAL_FILE_ENV, LOG_ARTIFACT, TAIL_BYTES, TAIL_LINES, USAGE_EXITS, attempt,
                         best_effort_tracking, classify, global_rank, is_final, mark_ended, mark_started,
                         restart_follows)

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2)  # the stage checkpoints on them


def keep_log_tail(env, text):
    """The end of the stage's log (``TAIL_LINES`` lines, at most ``TAIL_BYTES``) as the run's
    ``logs/log-tail.txt``, so ``hirl logs`` shows it after the pods or nodes are gone (rank 0 only)."""
    run_id = env.get("MLFLOW_RUN_ID")
    if not run_id or not text or global_rank(env) != 0:
        return
    tail = "".join(text.splitlines(keepends=True)[-TAIL_LINES:])[-TAIL_BYTES:]
    best_effort_tracking(lambda lin: lin.client().log_text(run_id, tail, LOG_ARTIFACT))


DETAIL = {"oom": ": out of memory, not retried", "node": ": node fault (NCCL/ECC), already retried once",
          "interrupted": ": interrupted by a signal"}


def end_stage(env, code, log_tail=""):
    """After the stage process exited: classify, keep the log's tail, and settle the run (and close the
    chain and sweep when it was the last stage) unless the scheduler restarts the gang into the same run.
    Returns (outcome, detail)."""
    outcome = classify(code, log_tail)
    final = is_final(code, outcome)
    detail = "" if outcome == "ok" else f"exit code {code}" + DETAIL.get(outcome, "")
    keep_log_tail(env, log_tail)
    if final and env.get(FINAL_FILE_ENV):  # every rank: the pod's launcher exits FINAL_EXIT for it
        try:
            with open(env[FINAL_FILE_ENV], "a", encoding="utf-8") as f:
                f.write(f"{outcome} {detail}\n")
        except OSError as exc:
            print(f"[hirl] warning: cannot note the final failure in {env[FINAL_FILE_ENV]}: {exc}", file=sys.stderr)
    if outcome != "ok" and not final and restart_follows(env):  # OOM, bad input would only fail again
        if env.get("MLFLOW_RUN_ID") and global_rank(env) == 0:
            best_effort_tracking(lambda lin: lin.set_tags(env["MLFLOW_RUN_ID"], {"hirl.retry_reason": f"{outcome}: {detail}"}))
        return outcome, detail
    mark_ended(env, outcome, detail)
    return outcome, detail


class _Tail:
    """The last ``TAIL_BYTES`` of what the stage printed."""

    def __init__(self):
        self.data, self.lock = bytearray(), threading.Lock()

    def add(self, chunk):
        with self.lock:
            self.data += chunk
            if len(self.data) > 2 * TAIL_BYTES:
                del self.data[:-TAIL_BYTES]

    def text(self):
        with self.lock:
            return bytes(self.data[-TAIL_BYTES:]).decode("utf-8", errors="replace")


def supervise(argv, env, cwd=None):
    """Run the stage as a child (a pod's container, or by hand): its output goes on to ours and its tail is
    kept; SIGTERM/SIGINT/SIGHUP/SIGUSR2 go on to it (it checkpoints and exits 143); the run is marked
    started and ended (also when the stage exits before its own tracking starts). The exit code: the
    stage's own (``FINAL_EXIT`` for out of memory), or 128 + the signal that killed it."""
    mark_started(env)
    print(f"[hirl] rank {global_rank(env)}/{env.get('WORLD_SIZE', '1')} attempt {attempt(env)} on "
          f"{os.uname().nodename}: {' '.join(argv)}",
          file=sys.stderr, flush=True)
    tail = _Tail()
    try:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as exc:
        message = f"[hirl] cannot start the stage: {exc}\n"
        sys.stderr.write(message)
        end_stage(env, 127, message)
        return 127

    def pump():
        sink = getattr(sys.stdout, "buffer", None)
        for chunk in iter(lambda: os.read(proc.stdout.fileno(), 65536), b""):
            if sink is not None:
                sink.write(chunk)
                sink.flush()
            tail.add(chunk)
    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    with signals_forwarded(proc, FORWARDED):
        code = proc.wait()  # a forwarded signal does not end the wait (PEP 475)
        reader.join(timeout=10.0)
    outcome, _detail = end_stage(env, code, tail.text())
    if outcome == "oom":
        return FINAL_EXIT
    return shell_code(code)


def shell_code(code):
    """A child's exit code as a shell reports it: 128 + N for a child killed by signal N."""
    return code if code >= 0 else 128 - code


@contextlib.contextmanager
def signals_forwarded(proc, signals):
    """Pass ``signals`` on to ``proc`` for the block, then restore the previous handlers."""
    def forward(signum, _frame):
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass
    previous = {sig: signal.signal(sig, forward) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


POD_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # the ones torchrun passes on to its workers


def launch_pod(argv, env):
    """A pod's main process: run ``argv`` (torchrun, whose workers are ``jobs.entrypoint``) with SIGTERM
    passed on (torchrun gives its workers ``--shutdown-timeout`` to checkpoint, then kills them), and exit
    as it did, except ``FINAL_EXIT`` when a worker of this pod failed for good (it notes that in the file
    ``$HIRL_FINAL_FILE``): torchrun exits 1 for any failure, and the Job's podFailurePolicy must see which
    failures not to restart. torchrun's own bad arguments (exit 2) are final too."""
    if not argv:
        print("[hirl] --pod needs the command to run (torchrun ...)", file=sys.stderr)
        return 2
    folder = tempfile.mkdtemp(prefix="hirl-pod-")
    env = {**env, FINAL_FILE_ENV: os.path.join(folder, "final")}
    try:
        try:
            proc = subprocess.Popen(argv, env=env)
        except OSError as exc:
            message = f"[hirl] cannot start {argv[0]}: {exc}\n"
            sys.stderr.write(message)
            end_stage(env, 127, message)
            return FINAL_EXIT
        with signals_forwarded(proc, POD_SIGNALS):
            code = proc.wait()
        try:
            with open(env[FINAL_FILE_ENV], encoding="utf-8") as f:
                noted = f.read().split("\n")[0]
        except OSError:
            noted = ""
        if noted or code in USAGE_EXITS:
            print(f"[hirl] failed for good ({noted or f'exit code {code}'}): exit {FINAL_EXIT}, not restarted",
                  file=sys.stderr, flush=True)
            return FINAL_EXIT
        return shell_code(code)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
