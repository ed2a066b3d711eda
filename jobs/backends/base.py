"""The backend interface and registry.

A backend turns a plan (a compiled cell whose stage runs already exist in MLflow)
into work: ``render`` shows exactly what would run without running it (dry run,
golden-testable), ``submit`` starts it. Backends are looked up by name and
imported on demand, so the CLI never pays for a backend it does not use.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field


class BackendError(ValueError):
    """A user mistake in choosing or configuring a backend; the message is one line."""


@dataclass
class Plan:
    cell: object                  # jobs.dag.Cell, output dirs assigned
    runs: dict | None             # stage -> jobs.lineage.StageRun; None for a dry run
    tracking_uri: str = ""
    force: bool = False


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

    def options(self, plan):
        """This backend's settings from the spec's ``resources: {<backend>: {...}}``."""
        opts = (plan.cell.resources or {}).get(self.name) or {}
        if not isinstance(opts, dict):
            raise BackendError(f"resources.{self.name} must be a mapping, got {opts!r}")
        return opts

    @abstractmethod
    def render(self, plan) -> dict:
        """{relative path: file content} of what ``submit`` would run; runs nothing."""

    @abstractmethod
    def submit(self, plan) -> Submission:
        """Start the plan's stages in DAG order."""

    @abstractmethod
    def status(self, handles) -> dict:
        """{stage: state} for submitted handles."""

    @abstractmethod
    def logs(self, handle) -> str:
        """The log text of one stage so far."""

    @abstractmethod
    def cancel(self, handles) -> None:
        """Stop submitted stages that have not finished."""


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
