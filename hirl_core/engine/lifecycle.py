"""The lifecycle every stage process shares: pre-training and each evaluation use it, none copies it.

    life = StageLifecycle(cfg, "linear", info)       # finds the last good checkpoint of an earlier attempt
    state = life.state                                 # None on a first start
    ... build the model, load ``state`` ...
    with life.tracked({"arch": ...}) as tracker:       # rank 0 logs into the pre-created run
        for epoch in range(life.start_epoch, epochs):
            ...
            life.save_epoch(epoch, {"model": ..., "optimizer": ...}, metrics)
        tracker.metrics(final)

What it guarantees:
- only global rank 0 tracks, into the run the orchestrator created (``MLFLOW_RUN_ID``), and writes
  ``config.yaml``; a tracking outage waits in the output directory (``hirl_core.tracking``);
- SIGTERM / SIGUSR2 (a scheduler's preemption, ``hirl cancel``) stop the stage at once: the run ends
  KILLED, the process exits 143, the last epoch checkpoint is the resume point;
- each epoch's checkpoint is written atomically together with that epoch's metrics: a signal arriving
  in between waits until both are done, so a resumed run never skips or repeats an epoch's metrics;
- a restarted attempt resumes from that checkpoint into the same MLflow run (its id is in the file);
- any other exception ends the run FAILED and propagates.
"""
from __future__ import annotations

import contextlib
import random
import signal
import sys
from pathlib import Path

import numpy as np
import torch

from .. import system_metrics
from ..config import dump_config
from ..tracking import Tracker
from . import checkpoint as ckpt
from .distributed import DistInfo, barrier


class Interrupted(BaseException):
    """SIGTERM/SIGUSR2 arrived: stop now; the last epoch checkpoint is the resume point.

    A BaseException, as KeyboardInterrupt: the signal may land inside a library call that turns every
    ``Exception`` into its own error (MLflow's SQL store wraps them in MlflowException), and the run would
    then end FAILED instead of KILLED."""


_deferred: list[str] | None = None  # while a list, signals are queued here instead of raised


def _raise_interrupted(signum, _frame):
    name = signal.Signals(signum).name
    if _deferred is not None:
        _deferred.append(name)
        return
    raise Interrupted(name)


@contextlib.contextmanager
def signals_deferred():
    """Hold SIGTERM/SIGUSR2 back for the block; one that arrived meanwhile is raised at its end.

    A flag rather than pthread_sigmask: the kernel may hand a process signal to any other thread, and
    Python then runs the handler in the main thread whatever the main thread's mask says."""
    global _deferred
    _deferred = []
    try:
        yield
    finally:
        pending, _deferred = _deferred, None
    if pending:
        raise Interrupted(pending[0])


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class StageLifecycle:
    def __init__(self, cfg, name: str, info: DistInfo, epochs: int | None = None):
        self.cfg, self.name, self.info = cfg, name, info
        self.epochs = epochs  # the stage's length, for its messages
        self.out = Path(cfg.output_dir)
        self.state, self.resume_point = ckpt.load_training_checkpoint(
            self.out, warn=lambda text: self.say(f"warning: {text}"))
        self.start_epoch = int(self.state["epoch"]) if self.state else 0
        self.resume_epoch = self.start_epoch
        self.tracker: Tracker | None = None

    def _of(self, epoch: int) -> str:
        return f"{epoch}/{self.epochs}" if self.epochs else str(epoch)

    def say(self, text: str) -> None:
        if self.info.is_main:
            print(f"[{self.name}] {text}", flush=True)

    @contextlib.contextmanager
    def tracked(self, params: dict | None = None):
        """The tracked body of the stage: FINISHED at its end, KILLED (exit 143) on a signal, FAILED on
        an error. ``params`` are logged at the first start only (MLflow refuses a param changing value)."""
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            if not (self.out / "config.yaml").exists():
                dump_config(self.cfg, self.out / "config.yaml")
        tracker = self.tracker = Tracker(self.info.is_main, spool_dir=self.out)
        monitor = system_metrics.start(self.cfg, tracker.run_id)  # node-local rank 0 of every node (when on)
        previous = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGTERM, signal.SIGUSR2)}
        try:
            if tracker.active:
                tracker.artifact(str(self.out / "config.yaml"))
                if self.start_epoch == 0 and params:
                    tracker.params(params)
                if self.epochs:  # a trained stage: every attempt says where it began (0: from scratch)
                    tracker.metrics({"resumed_from_epoch": self.start_epoch}, step=self.start_epoch)
            if self.start_epoch:
                self.say(f"resuming from {self.resume_point} at epoch {self._of(self.start_epoch)}")
            yield tracker
            tracker.finish("FINISHED")
        except Interrupted as why:
            for s in previous:  # a second signal must not cut the KILLED write short (SIGKILL still can)
                signal.signal(s, signal.SIG_IGN)
            if self.resume_point is not None:
                self.say(f"interrupted by {why}; resume point: {self.resume_point} (epoch {self._of(self.resume_epoch)})")
            else:
                self.say(f"interrupted by {why}; no checkpoint yet: a restart begins at epoch 1")
            tracker.finish("KILLED")
            sys.exit(143)
        except BaseException:
            tracker.finish("FAILED")
            raise
        finally:
            system_metrics.stop(monitor)
            for s, h in previous.items():
                signal.signal(s, h)

    def save_epoch(self, epoch: int, payload: dict, metrics: dict, step: int | None = None) -> None:
        """Checkpoint the state after ``epoch`` (0-based) and log its metrics, as one step a signal cannot
        split. ``payload`` holds what the stage restores (model, optimiser, ...); the epoch, the config
        and the run id are added here. ``step``: the metrics' step when it is not ``epoch`` (a stage
        running phases one after the other counts epochs across them, each phase's curve from 0)."""
        with signals_deferred():
            # the file replaced becomes the fallback, unless it is the unusable one resumed around
            keep = self.resume_point == self.out / ckpt.CHECKPOINT
            if self.info.is_main:
                ckpt.atomic_save({**payload, "epoch": epoch + 1, "config": self.cfg.to_dict(),
                                  "mlflow_run_id": self.tracker.run_id if self.tracker else None},
                                 self.out / ckpt.CHECKPOINT, previous=self.out / ckpt.PREVIOUS if keep else None)
            self.resume_point, self.resume_epoch = self.out / ckpt.CHECKPOINT, epoch + 1
            if self.tracker is not None:
                self.tracker.metrics(metrics, step=epoch if step is None else step)
        barrier()
