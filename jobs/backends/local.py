"""Run a cell's stages as local processes, one after another in DAG order, in the foreground.

Each stage gets its resolved config at ``<output_dir>/config.yaml`` and its MLflow
run through ``MLFLOW_RUN_ID``; it marks its own run RUNNING/FINISHED/FAILED. This
backend only fills in what a stage could not: a crash (FAILED), a signal or
Ctrl-C (KILLED), or a clean exit that never closed its run (FINISHED).
"""

from __future__ import annotations

import os
import posixpath
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

from hirl_core.config import dump_config, dumps_config

from .. import lineage
from .base import Backend, BackendError, Handle, Submission

PENDING = ("SCHEDULED", "RUNNING")
INTERRUPTED_RC = 130  # the shell's code for Ctrl-C


def _say(message):
    print(message, flush=True)


class LocalBackend(Backend):
    name = "local"
    image = "local"

    def __init__(self, command_for=None, grace_s=30.0):
        # command_for(stage) -> argv replaces the hirl_core command (tests, custom launchers).
        self.command_for = command_for
        self.grace_s = grace_s  # how long a stage may take to checkpoint after SIGTERM
        self._proc = None

    # -- what would run -------------------------------------------------------
    def nproc(self, plan):
        n = self.options(plan).get("nproc_per_node", 1)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise BackendError(f"resources.local.nproc_per_node must be a positive integer, got {n!r}")
        return n

    @staticmethod
    def hirl_command(stage, nproc=1, python=None):
        python = python or sys.executable
        config = posixpath.join(stage.output_dir, "config.yaml")
        tail = ["-m", "hirl_core", stage.type, "-c", config]
        if nproc > 1:
            return [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] + tail
        return [python] + tail

    def command(self, stage, nproc):
        return list(self.command_for(stage)) if self.command_for else self.hirl_command(stage, nproc)

    @staticmethod
    def stage_env(stage, run_id, uri):
        return {"MLFLOW_TRACKING_URI": uri, "MLFLOW_RUN_ID": run_id, "HIRL_STAGE": stage.name,
                "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}

    def render(self, plan):
        """Configs and a commands listing, byte-stable: the interpreter shows as ``python``
        and the tracking URI (an absolute path) is left out."""
        nproc = self.nproc(plan)
        files = {}
        lines = [f"# hirl local backend: experiment {plan.cell.experiment}, cell {plan.cell.cell_id}",
                 "# run from the repo root, one stage after another; each also gets MLFLOW_TRACKING_URI", ""]
        for stage in plan.cell.stages:
            files[posixpath.join(stage.output_dir, "config.yaml")] = dumps_config(stage.config)
            run_id = plan.runs[stage.name].run_id if plan.runs else "<run-id>"
            argv = self.command(stage, nproc)
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
        nproc = self.nproc(plan)
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
                    _say(f"hold {stage.name}: {held}; run {run.run_id} stays {run.status}")
                    handles[stage.name] = Handle(stage.name, run.run_id, run.status, log_path, reason=held)
                    continue
                status = lineage.run_status(run.run_id, plan.tracking_uri)
                if status == "FINISHED" and not plan.force:
                    _say(f"skip {stage.name} (finished, run {run.run_id})")
                    handles[stage.name] = Handle(stage.name, run.run_id, status, log_path, reason="finished")
                    continue
                handle, interrupted = self._run_stage(stage, run.run_id, status, plan, nproc, log_path)
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

    def _run_stage(self, stage, run_id, status, plan, nproc, log_path):
        out = Path(plan.cell.root, stage.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        dump_config(stage.config, out / "config.yaml")
        argv = self.command(stage, nproc)
        env = dict(os.environ, **self.stage_env(stage, run_id, plan.tracking_uri))
        was = "" if status == "SCHEDULED" else f", was {status}"
        _say(f"run {stage.name} (run {run_id}{was}): {shlex.join(argv)}")
        interrupted = False
        with open(log_path, "ab") as log:  # append: a resumed stage keeps its earlier attempts
            # Own session: Ctrl-C reaches only us, and we stop the whole group (torchrun + workers).
            proc = subprocess.Popen(argv, cwd=plan.cell.root, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            self._proc = proc
            try:
                _pump(proc.stdout, log)
                proc.wait()
            except KeyboardInterrupt:
                interrupted = True
                _say(f"\ninterrupted: stopping {stage.name} (SIGTERM, then up to {self.grace_s:g} s)")
                self._terminate(proc)
            finally:
                proc.stdout.close()
                self._proc = None
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
        status = lineage.run_status(run_id, uri)
        if status in PENDING:
            if interrupted or code < 0:
                status = "KILLED"
            elif code != 0:
                status = "FAILED"
            else:
                status = "FINISHED"  # a clean exit is success even if the stage never closed its run
            lineage.set_run_status(run_id, status, uri)
        elif code and status == "FINISHED":
            _say(f"warning: run {run_id} is FINISHED but its process exited with code {code}")
        return status

    # -- after the fact -------------------------------------------------------
    def status(self, handles):
        return {h.stage: lineage.run_status(h.run_id) for h in handles}

    def logs(self, handle):
        try:
            with open(handle.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def cancel(self, handles):
        """Stop our running stage, if any, and mark never-started stages KILLED."""
        if self._proc is not None and self._proc.poll() is None:
            self._terminate(self._proc)
        for h in handles:
            if lineage.run_status(h.run_id) == "SCHEDULED":
                lineage.set_run_status(h.run_id, "KILLED")


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _pump(source, log):
    """Copy the child's output to the terminal and the log as it comes (progress bars too)."""
    sink = getattr(sys.stdout, "buffer", None)
    while True:
        chunk = source.read1(65536)
        if not chunk:
            return
        log.write(chunk)
        log.flush()
        if sink is not None:
            sys.stdout.flush()  # our own text written before must come out first
            sink.write(chunk)
            sink.flush()
        else:
            sys.stdout.write(chunk.decode("utf-8", errors="replace"))
            sys.stdout.flush()
