"""Run a cell's stages as local processes, one after another in DAG order, in the foreground.

Each stage gets its resolved config at ``<output_dir>/config.yaml`` and its MLflow
run through ``MLFLOW_RUN_ID``; it marks its own run RUNNING/FINISHED/FAILED. This
backend only fills in what a stage could not: a crash (FAILED), a signal or
Ctrl-C (KILLED), or a clean exit that never closed its run (FINISHED).

Each stage runs under ``jobs.backends.local_watch`` in a session of its own, writing its log
file itself; the submitter tails that file to the terminal, so the stage outlives a submitter that
dies (and then the watcher settles the runs). While a stage runs, ``<output_dir>/pid`` holds the
watcher's process id (its process group: watcher and stage) and the run's tags
``hirl.job_id``/``hirl.attempt`` say which process and which start it is; ``hirl cancel`` from
another shell uses them. A stage whose run turns KILLED while the submission is under way
(cancelled) is not started.
"""

from __future__ import annotations

import json
import os
import posixpath
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from hirl_core.config import dump_config, dumps_config

from .. import claim, lineage
from ..entrypoint import int_or_zero
from . import common, local_watch
from .base import INTERRUPTED_RC, Backend, BackendError, Handle, Submission

PENDING = ("SCHEDULED", "RUNNING")


def _say(message):
    print(message, flush=True)


class LocalBackend(Backend):
    name = "local"
    image = "local"

    def __init__(self, command_for=None, grace_s=30.0):
        # command_for(stage) -> argv replaces the hirl_core command (tests, custom launchers).
        self.command_for = command_for
        self.grace_s = grace_s  # how long a stage may take to checkpoint after SIGTERM

    def preflight(self, plans):
        """Every stage's dataset is here (each distinct one checked once): a stage runs on this machine."""
        _check_data([plan.cell for plan in plans])

    def handle(self, cell, row):
        log_path = os.path.join(cell.root, row.output_dir, "log.txt") if row.output_dir else ""
        return Handle(row.stage, row.run_id, row.status, log_path)

    # -- what would run -------------------------------------------------------
    def nproc(self, plan, stage=None):
        n = self.options(plan, stage).get("nproc_per_node", 1)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise BackendError(f"resources.local.nproc_per_node must be a positive integer, got {n!r}")
        return n

    @staticmethod
    def hirl_command(stage, nproc=1, python=None):
        return common.stage_argv(stage.type, common.stage_config(stage), python, nproc)

    def command(self, stage, nproc):
        return list(self.command_for(stage)) if self.command_for else self.hirl_command(stage, nproc)

    @staticmethod
    def stage_env(stage, run_id, uri):
        return common.stage_env(stage, run_id, tracking_uri=uri)  # the submitter settles the chain itself

    def render(self, plan):
        """Configs and a commands listing, byte-stable: the interpreter shows as ``python``
        and the tracking URI (an absolute path) is left out."""
        files = {}
        lines = [f"# hirl local backend: experiment {plan.cell.experiment}, cell {plan.cell.cell_id}",
                 "# run from the repo root, one stage after another; each also gets MLFLOW_TRACKING_URI", ""]
        if plan.cell.label:
            # escaped: a newline in a matrix value would end the comment and start a shell command
            label = "".join(c if c.isprintable() else repr(c)[1:-1] for c in plan.cell.label)
            lines.insert(1, f"# matrix point: {label}")
        for stage in plan.cell.stages:
            files[posixpath.join(stage.output_dir, "config.yaml")] = dumps_config(stage.config)
            run_id = plan.runs[stage.name].run_id if plan.runs else "<run-id>"
            argv = self.command(stage, self.nproc(plan, stage))
            if argv and argv[0] == sys.executable:
                argv[0] = "python"
            env = self.stage_env(stage, run_id, "")
            env.pop("MLFLOW_TRACKING_URI")
            prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
            lines.append(f"# {stage.name} ({stage.type}), after: {stage.upstream or '-'}")
            lines.append(f"{prefix} {shlex.join(argv)}")
        files["local/commands.sh"] = "\n".join(lines) + "\n"
        return files

    # -- running --------------------------------------------------------------
    def submit(self, plan):
        if not plan.runs:
            raise BackendError("the local backend needs the stage runs from lineage.ensure_chain")
        nprocs = {stage.name: self.nproc(plan, stage) for stage in plan.cell.stages}
        handles, interrupted = {}, False
        on_main = threading.current_thread() is threading.main_thread()
        if on_main:  # a supervisor's SIGTERM must stop the stage too, as Ctrl-C does
            old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            for stage in plan.cell.stages:
                run = plan.runs[stage.name]
                log_path = str(Path(plan.cell.root, stage.output_dir, "log.txt"))
                held = self._hold_reason(stage, handles, interrupted)
                if held:
                    # read again: a `hirl cancel` from another shell may have turned it KILLED meanwhile
                    now = lineage.run_status(run.run_id, plan.tracking_uri)
                    _say(f"hold {stage.name}: {held}; run {run.run_id} {_stays(now)}")
                    handles[stage.name] = Handle(stage.name, run.run_id, now, log_path, reason=held)
                    continue
                status, tags = lineage.run_state(run.run_id, plan.tracking_uri)
                if status == "KILLED" and run.status != "KILLED":
                    _say(f"hold {stage.name}: cancelled; run {run.run_id} is KILLED")
                    handles[stage.name] = Handle(stage.name, run.run_id, status, log_path, reason="cancelled")
                    continue
                d = common.decide(plan, stage, status)  # the upstream was judged above: it ran here
                if d.action != "run":
                    _say(f"skip {stage.name} ({_finished(run)})" if d.action == "skip" else
                         f"hold {stage.name}: {d.reason}; run {run.run_id} stays {status}")
                    handles[stage.name] = Handle(stage.name, run.run_id, status, log_path, reason=d.reason)
                    continue
                attempt = int_or_zero(tags.get("hirl.attempt")) + 1
                handle, interrupted = self._run_stage(stage, run.run_id, status, plan, nprocs[stage.name],
                                                      log_path, attempt)
                handles[stage.name] = handle
        finally:
            if on_main:  # None: the old handler was not set from Python
                signal.signal(signal.SIGTERM, old_term if old_term is not None else signal.SIG_DFL)
        ordered = [handles[s.name] for s in plan.cell.stages]
        if interrupted:
            rc = INTERRUPTED_RC
        else:
            rc = 0 if all(h.state == "FINISHED" for h in ordered) else 1
        return Submission(ordered, rc)

    @staticmethod
    def _hold_reason(stage, handles, interrupted):
        if interrupted:
            return "interrupted"
        if stage.upstream and handles[stage.upstream].state != "FINISHED":
            return f"upstream {stage.upstream} is {handles[stage.upstream].state}"
        return ""

    def _run_stage(self, stage, run_id, status, plan, nproc, log_path, attempt=1):
        out = Path(plan.cell.root, stage.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        dump_config(stage.config, out / "config.yaml")
        argv = self.command(stage, nproc)
        env = dict(os.environ, **self.stage_env(stage, run_id, plan.tracking_uri))
        was = "" if status == "SCHEDULED" else f", was {status}"
        _say(f"run {stage.name} (run {run_id}{was}): {shlex.join(argv)}")
        interrupted = False
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_CHECKOUT, env.get("PYTHONPATH", "")) if p)
        env[local_watch.ARGV_VAR] = json.dumps(argv)
        watch = [sys.executable, "-m", "jobs.backends.local_watch", "--pid-file", str(out / PID_FILE),
                 "--submitter", str(os.getpid()), "--experiment", plan.cell.experiment, "--cell", plan.cell.cell_id]
        (out / PID_FILE).unlink(missing_ok=True)  # one a killed watcher left: not this attempt's
        with open(log_path, "ab") as log:  # append: a resumed stage keeps its earlier attempts
            shown = [log.tell()]  # how far the terminal has seen the log
            # The stage writes into its log itself, never into a pipe of ours: it outlives this process
            # (a closed terminal) under its watcher, in its own session, where Ctrl-C reaches only us
            # and we stop the whole group (watcher, torchrun and workers).
            proc = subprocess.Popen(watch, cwd=plan.cell.root, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    pass_fds=claim.held_fds())  # the cell stays claimed while the stage runs
        try:
            lineage.set_tags(run_id, {"hirl.job_id": str(_wait_for_stage_pid(out / PID_FILE, proc) or proc.pid),
                                      "hirl.attempt": str(attempt)}, plan.tracking_uri)
            # RUNNING from the start (the stage says so too once it is up): a resumed FAILED or
            # KILLED run is then judged by this attempt's exit, and `hirl cancel` finds it.
            lineage.set_run_status(run_id, "RUNNING", plan.tracking_uri)
            _tail(log_path, shown, proc)
        except KeyboardInterrupt:
            interrupted = True
            _say(f"\ninterrupted: stopping {stage.name} (SIGTERM, then up to {self.grace_s:g} s)")
            self._terminate(proc)
            _tail(log_path, shown, proc)  # what the stage says while it stops
        finally:
            if proc.poll() is None:  # an error above while the stage still runs: do not orphan it
                self._terminate(proc)
            (out / PID_FILE).unlink(missing_ok=True)
        code = proc.returncode if proc.returncode is not None else -signal.SIGKILL
        state = self._reconcile(run_id, code, interrupted, plan.tracking_uri)
        _say(f"{'done' if state == 'FINISHED' else 'stop'} {stage.name}: {state} (exit code {code}, "
             f"run {run_id}, log {posixpath.join(stage.output_dir, 'log.txt')})")
        return Handle(stage.name, run_id, state, log_path, returncode=code), interrupted

    def _terminate(self, proc):
        for sig, timeout in ((signal.SIGTERM, self.grace_s), (signal.SIGKILL, None)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
                return
            except (subprocess.TimeoutExpired, KeyboardInterrupt):  # too slow, or a second Ctrl-C
                continue

    @staticmethod
    def _reconcile(run_id, code, interrupted, uri):
        """Set the run's final status where the stage process could not."""
        status = common.settle(run_id, code, interrupted, uri)
        if code and status == "FINISHED":
            _say(f"warning: run {run_id} is FINISHED but its process exited with code {code}")
        return status

    # -- after the fact -------------------------------------------------------
    def live_runs(self, statuses, uri=None):
        return {r.run_id for st in statuses for r in st.rows if r.status == "RUNNING" and r.output_dir and
                _stage_pid(Handle(r.stage, r.run_id, r.status, str(Path(st.cell.root, r.output_dir, "log.txt"))))}

    def logs(self, handle, rank=None):
        """The stage's ``log.txt`` (all attempts). Ranks share one stream locally: ``rank`` keeps
        the lines torchrun prefixed with ``[rank<N>]:``, or everything for rank 0 when none are."""
        try:
            with open(handle.log_path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            return ""
        if rank is None:
            return text
        prefix = f"[rank{rank}]:"
        lines = text.splitlines(keepends=True)
        if any(line.startswith("[rank") for line in lines):
            return "".join(line for line in lines if line.startswith(prefix))
        return text if rank == 0 else ""

    def cancel(self, handles, uri=None):
        """Stop stages from any process: never-started runs turn KILLED first (a running submit then
        holds them), running ones get SIGTERM via the pid in their output dir (SIGKILL after
        ``grace_s``), and any run left unfinished is marked KILLED. Returns the handles acted on."""
        uri = uri or lineage.tracking_uri()
        acted = []
        for h in handles:
            if lineage.run_status(h.run_id, uri) == "SCHEDULED":
                lineage.set_run_status(h.run_id, "KILLED", uri)
                acted.append(h)
        # A submit that read SCHEDULED just before we marked it may still start that stage: look
        # again until a round finds no running stage left to stop.
        signalled = set()
        for _round in range(5):
            live = []
            for h in handles:
                if id(h) in signalled or lineage.run_status(h.run_id, uri) != "RUNNING":
                    continue
                pid = _stage_pid(h)
                if pid is not None:
                    _say(f"stop {h.stage}: SIGTERM to process group {pid} (run {h.run_id})")
                    _signal_group(pid, signal.SIGTERM)
                    live.append((h, pid))
                    signalled.add(id(h))
            _wait_gone([pid for _, pid in live], self.grace_s)
            for h, pid in live:
                if _alive(pid):
                    _say(f"stop {h.stage}: still alive after {self.grace_s:g} s, SIGKILL")
                    _signal_group(pid, signal.SIGKILL)
            _wait_gone([pid for _, pid in live], 5.0)
            acted += [h for h, _ in live if h not in acted]
            if _round and not live:
                break
            time.sleep(0.3)
        for h in handles:  # the stage marks itself KILLED on SIGTERM; a stage that could not is marked here
            if lineage.run_status(h.run_id, uri) in PENDING:
                lineage.set_run_status(h.run_id, "KILLED", uri)
                if h not in acted:
                    acted.append(h)
        return acted


def _check_data(cells):
    from hirl_core.config import ConfigError
    from hirl_core.data import check_data
    from hirl_core.stages import stage_type

    seen = set()
    for cell in cells:
        for stage in cell.stages:
            data = stage.config.get("data")
            if not isinstance(data, dict):
                continue
            splits = tuple(stage_type(stage.type).splits)  # what the registry says the type reads
            key = (json.dumps(data, sort_keys=True, default=str), splits)
            if key in seen:
                continue
            seen.add(key)
            try:
                check_data(data, splits=splits)
            except ConfigError as exc:
                raise ConfigError(f"stage {stage.name!r}: {exc}") from None


PID_FILE = "pid"
_CHECKOUT = str(Path(__file__).resolve().parents[2])  # where `jobs` is imported from: the watcher's too


def _finished(run):
    if run.reused_from:  # the same stage, same config and upstream, finished in another chain
        return f"finished in run {run.reused_from}, reused as run {run.run_id}"
    return f"finished, run {run.run_id}"


def _stays(status):
    return "stays SCHEDULED" if status == "SCHEDULED" else f"is {status}"


def _wait_for_stage_pid(pid_file, watcher, timeout=30.0):
    """The stage's pid from the watcher's pid file ("<group> <stage>"), once it is written; None if the
    watcher ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and watcher.poll() is None:
        try:
            return int(pid_file.read_text().split()[1])
        except (OSError, ValueError, IndexError):
            time.sleep(0.02)
    return None


def _stage_pid(handle):
    """The live process id recorded for a stage, checked to be that stage (not a reused pid)."""
    pid_file = Path(handle.log_path).parent / PID_FILE
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if not _alive(pid):
        return None
    environ = Path(f"/proc/{pid}/environ")
    if environ.parent.exists():
        try:
            if f"MLFLOW_RUN_ID={handle.run_id}".encode() not in environ.read_bytes().split(b"\0"):
                return None
        except OSError:
            return None
    return pid


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead, waiting for its parent to reap it
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _signal_group(pid, sig):
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_gone(pids, timeout):
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _tail(path, shown, proc, every_s=0.2):
    """Copy what the stage appends to its log to the terminal until it exits (progress bars too);
    ``shown[0]``: the offset the terminal has seen. Reading the file, not a pipe, leaves the stage free."""
    sink = getattr(sys.stdout, "buffer", None)
    with open(path, "rb") as f:
        while True:
            done = proc.poll() is not None
            f.seek(shown[0])
            chunk = f.read()
            shown[0] += len(chunk)
            if chunk:
                if sink is not None:
                    sys.stdout.flush()  # our own text written before must come out first
                    sink.write(chunk)
                    sink.flush()
                else:
                    sys.stdout.write(chunk.decode("utf-8", errors="replace"))
                    sys.stdout.flush()
            if done:
                return
            time.sleep(every_s)
