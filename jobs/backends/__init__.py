"""Backends that run a compiled cell: local processes today; SLURM and Kubernetes register the same way."""

from .base import Backend, BackendError, Handle, Plan, Submission, available_backends, get_backend, register_backend

__all__ = ["Backend", "BackendError", "Handle", "Plan", "Submission", "available_backends", "get_backend",
           "register_backend"]

register_backend("slurm", "jobs.backends.slurm:SlurmBackend")  # submitit; imported only when asked for
register_backend("k8s", "jobs.backends.k8s:K8sBackend")  # the kubernetes client; likewise
