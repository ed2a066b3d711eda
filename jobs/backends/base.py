"""The backend interface and registry.

A backend turns a plan (a compiled cell whose stage runs already exist in MLflow)
into work: ``render`` shows exactly what would run without running it (dry run,
golden-testable), ``submit`` starts it. The class below is the whole contract the CLI relies on
(it never asks which backend it has); what backends share lives in ``jobs.backends.common``.
Backends are looked up by name and imported on demand, so the CLI never pays for a backend it
does not use.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field


INTERRUPTED_RC = 130  # the shell's code for Ctrl-C: a submission the user stopped


class BackendError(ValueError):
    """A user mistake in choosing or configuring a backend; the message is one line."""


@dataclass
class Plan:
    cell: object                  # jobs.dag.Cell, output dirs assigned
    runs: dict | None             # stage -> jobs.lineage.StageRun; None for a dry run
    tracking_uri: str = ""
    force: bool = False
    only: set | None = None       # run just these stages (retry); others are skipped or held


@dataclass
class Handle:
    """One stage as submitted: enough to ask for its status or logs later."""
    stage: str
    run_id: str
    state: str                    # the stage run's MLflow status when submit returned
    log_path: str = ""
    returncode: int | None = None
    reason: str = ""              # why it was skipped or held back


@dataclass
class Submission:
    handles: list = field(default_factory=list)
    returncode: int = 0           # 0: every stage finished (or was already finished)


class Backend(ABC):
    name = ""
    image = "local"               # recorded as the hirl.image tag of each stage run

    def options(self, plan, stage=None):
        """This backend's settings: the spec's common ``resources`` keys, then its ``<backend>``
        section, then the stage's own ``resources`` over both (see jobs.resources)."""
        from .. import resources

        merged = plan.cell.resources or {}
        if stage is not None and getattr(stage, "resources", None):
            merged = resources.merge(merged, stage.resources)
        section = merged.get(self.name)
        if section is not None and not isinstance(section, dict):
            raise BackendError(f"resources.{self.name} must be a mapping, got {section!r}")
        return resources.effective(merged, self.name)

    batches = False               # submit_many takes a whole sweep at once (a queue: SLURM arrays, one Workflow)

    def preflight(self, plans):
        """Refuse, before any run is created, what would make the submission fail (data missing here,
        an image not pinned, no cluster answering): a BackendError (or ConfigError) of one line."""

    @abstractmethod
    def render(self, plan) -> dict:
        """{relative path: file content} of what ``submit`` would run; runs nothing."""

    def render_many(self, plans, matrix=False) -> dict:
        """The files of a whole submission (``hirl plan --out``): each plan's ``render``, a sweep's
        (``matrix``) backend files in a folder per cell. A backend that submits a sweep as one object
        (k8s: one Workflow) renders that object, as ``submit_many`` would create it."""
        import posixpath

        from .. import names
        from ..dag import OUTPUT_ROOT

        files = {}
        for plan in plans:
            for rel, content in self.render(plan).items():
                if matrix and not rel.startswith(OUTPUT_ROOT + "/"):
                    head, tail = posixpath.split(rel)  # one per cell: local/<cell>/commands.sh
                    rel = posixpath.join(head, names.file_name(plan.cell.cell_id), tail)
                files[rel] = content
        return files

    @abstractmethod
    def submit(self, plan) -> Submission:
        """Start the plan's stages in DAG order."""

    def submit_many(self, plans) -> list:
        """One Submission per plan; a backend with ``batches`` submits them together."""
        return [self.submit(plan) for plan in plans]

    def handle(self, cell, row) -> Handle:
        """The Handle of a stage run that exists (``row``: a jobs.lineage status row), for status, logs
        and cancel from any shell; where its log is, if the backend keeps one as a file here."""
        return Handle(row.stage, row.run_id, row.status)

    def status(self, handles, uri=None) -> dict:
        """{stage: the scheduler's view (state, reason)} for submitted handles; a backend also sets the
        MLflow states no stage process could. {}: nothing beyond the MLflow states (local)."""
        return {}

    @abstractmethod
    def logs(self, handle, rank=None) -> str:
        """The log text of one stage so far (one rank's lines where the backend keeps them apart); "" when
        the backend holds none (any more): the caller then shows the run's log artifact."""

    @abstractmethod
    def cancel(self, handles, uri=None) -> list:
        """Stop submitted stages that have not finished; return the handles it stopped or marked."""

    def live_runs(self, statuses, uri=None) -> set:
        """Run ids among ``statuses`` (jobs.lineage.CellStatus) whose work this backend still holds (a
        queued job, a live process): after a broken submission those end by themselves."""
        return set()


# name -> "module:Class"; imported only when asked for.
_REGISTRY = {"local": "jobs.backends.local:LocalBackend"}


def register_backend(name, target):
    _REGISTRY[name] = target


def available_backends():
    return sorted(_REGISTRY)


def get_backend(name, **kwargs) -> Backend:
    if name not in _REGISTRY:
        raise BackendError(f"unknown backend {name!r}; available: {', '.join(available_backends())}")
    module, _, cls = _REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), cls)(**kwargs)
