"""The stage under ``jobs.entrypoint``, the same in a pod, under submitit or by hand: the end of its log
kept as the run's ``logs/log-tail.txt`` (``hirl logs`` reads it after pods and nodes are gone), the run
settled from the stage's exit (also when the stage dies before its own tracking starts) unless the
scheduler restarts the gang into the same run, and, for a pod or a person, the stage run as a
supervised child that gets the signals its parent gets. Only global rank 0 talks to MLflow.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

from .entrypoint import (LOG_ARTIFACT, TAIL_BYTES, TAIL_LINES, _tracking, attempt, classify, global_rank,
                         mark_ended, mark_started, restart_follows)

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2)  # the stage checkpoints on them


def keep_log_tail(env, text):
    """The end of the stage's log (``TAIL_LINES`` lines, at most ``TAIL_BYTES``) as the run's
    ``logs/log-tail.txt``, so ``hirl logs`` shows it after the pods or nodes are gone (rank 0 only)."""
    run_id = env.get("MLFLOW_RUN_ID")
    if not run_id or not text or global_rank(env) != 0:
        return
    tail = "".join(text.splitlines(keepends=True)[-TAIL_LINES:])[-TAIL_BYTES:]
    _tracking(lambda lin: lin.client().log_text(run_id, tail, LOG_ARTIFACT))


DETAIL = {"oom": ": out of memory, not retried", "node": ": node fault (NCCL/ECC), already retried once",
          "interrupted": ": interrupted by a signal"}


def end_stage(env, code, log_tail=""):
    """After the stage process exited: classify, keep the log's tail, and settle the run (and close the
    chain and sweep when it was the last stage) unless the scheduler restarts the gang into the same run.
    Returns (outcome, detail)."""
    outcome = classify(code, log_tail)
    detail = "" if outcome == "ok" else f"exit code {code}" + DETAIL.get(outcome, "")
    keep_log_tail(env, log_tail)
    if outcome not in ("ok", "oom") and restart_follows(env):  # OOM would only fail again: it ends here
        if env.get("MLFLOW_RUN_ID") and global_rank(env) == 0:
            _tracking(lambda lin: lin.set_tags(env["MLFLOW_RUN_ID"], {"hirl.retry_reason": f"{outcome}: {detail}"}))
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
    stage's own, or 128 + the signal that killed it."""
    mark_started(env)
    print(f"[hirl] rank {global_rank(env)}/{env.get('WORLD_SIZE', '1')} attempt {attempt(env)} on "
          f"{os.uname().nodename}: {' '.join(argv)}",
          file=sys.stderr, flush=True)
    tail, got = _Tail(), []
    try:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as exc:
        message = f"[hirl] cannot start the stage: {exc}\n"
        sys.stderr.write(message)
        end_stage(env, 127, message)
        return 127

    def forward(signum, _frame):
        got.append(signum)
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass
    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}

    def pump():
        sink = getattr(sys.stdout, "buffer", None)
        for chunk in iter(lambda: os.read(proc.stdout.fileno(), 65536), b""):
            if sink is not None:
                sink.write(chunk)
                sink.flush()
            tail.add(chunk)
    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = proc.wait()  # a forwarded signal does not end the wait (PEP 475)
        reader.join(timeout=10.0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    end_stage(env, code, tail.text())
    return code if code >= 0 else 128 - code
