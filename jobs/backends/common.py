"""What every backend needs, whatever runs the stage: its command line, its environment, its image
(pinned by digest), the tracking URI without credentials, the skip/keep/hold decision for a stage
whose run already exists, the level-by-level walk of many cells' DAGs, the final MLflow state from a
stage's exit, and the stage log kept as a run artifact.

Pure functions of their arguments (the artifact helpers excepted, which talk to MLflow lazily), so
the backends' renders stay golden-testable. Torch-free.
"""

from __future__ import annotations

import posixpath
import sys
from dataclasses import dataclass

from .. import names
from ..entrypoint import LOG_ARTIFACT  # noqa: F401 - the end of a stage's log, kept by the stage run itself
from ..errors import ImageError
from ..image import DIGEST_REF, pinned_reference
from .base import BackendError

IMAGE_PLACEHOLDER = "hirl-image-not-built@sha256:" + "0" * 64  # render only; submit refuses it
OPEN = ("SCHEDULED", "RUNNING")


# -- what a stage runs ---------------------------------------------------------------------------
def stage_argv(stage_type, config, python=None, nproc=1):
    """``python -m hirl_core <type> -c <config>``; with ``nproc`` > 1 one node's ranks under torchrun."""
    python = python or sys.executable
    tail = ["-m", "hirl_core", stage_type, "-c", str(config)]
    if nproc > 1:
        return [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] + tail
    return [python] + tail


def stage_config(stage):
    """Where a stage's resolved config lives, relative to the repo root."""
    return posixpath.join(stage.output_dir, "config.yaml")


def stage_env(stage, run_id, *, tracking_uri=None, cell=None, attempt_base=None):
    """The environment a stage runs with. Every backend: its run id and name, offline hub, unbuffered
    output. ``tracking_uri``: a backend that starts the stage from the submitting environment (local).
    ``cell``: a job nobody watches (SLURM, pods) closes its chain run when it is the last stage to end.
    ``attempt_base``: starts of this run before this submission, which the job's own restarts add to."""
    env = {} if tracking_uri is None else {"MLFLOW_TRACKING_URI": tracking_uri}
    env.update({"MLFLOW_RUN_ID": run_id, "HIRL_STAGE": stage.name})
    if cell is not None:
        env.update({"HIRL_EXPERIMENT": cell.experiment, "HIRL_CELL": cell.cell_id})
    if attempt_base is not None:
        env["HIRL_ATTEMPT_BASE"] = str(int(attempt_base))
    env.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    return env


def without_credentials(uri):
    """A tracking URI without user:password@: what a job description may carry. The credentials stay in
    the job's environment (SLURM) or a Secret (Kubernetes), never in a pickle or a manifest."""
    scheme, sep, rest = uri.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://{rest.split('@', 1)[1]}"
    return uri


def image_for(cell, options, profile):
    """(image reference, why not pinned) for a stage that runs in ``profile["runtime"]`` ("none": the
    host, no image). The experiment's image, then the backend's ``image`` option, then the profile's,
    then the latest `hirl image push`; a tag is pinned through the push record. ``why`` is "" when the
    reference is pinned by digest, else the reason (render shows a placeholder, submit refuses)."""
    if profile["runtime"] == "none":
        return "host", ""
    image = cell.image or options.get("image") or profile.get("image") or ""
    scheme, _, ref = image.rpartition("://")
    if image and (not names.IMAGE_REF.fullmatch(ref) or scheme not in ("", "docker", "oras")):
        raise BackendError(f"unsafe image reference {image!r}")
    if image and DIGEST_REF.search(image):
        return image, ""
    try:  # a tag, or nothing: what `hirl image push` recorded under this repo root
        return (scheme + "://" if scheme else "") + pinned_reference(ref, root=cell.root), ""
    except ImageError as exc:
        return IMAGE_PLACEHOLDER, (f"site profile {profile['name']!r} runs a {profile['runtime']} container, "
                                   f"which needs the image pinned by digest: {exc}")


def require_pinned(unpinned):
    """Refuse to submit a container job whose image is not pinned by digest (``unpinned`` says why)."""
    if unpinned:
        raise BackendError(unpinned)


# -- which stages to start -------------------------------------------------------------------------
@dataclass
class Decision:
    action: str    # run | skip | hold | keep
    reason: str = ""


def decide(plan, stage, status, upstream=None, *, upstream_queued=False, live_job=""):
    """What to do with a stage whose run is ``status``: skip a finished one (unless forced), hold one
    not selected by a retry, keep one whose earlier job still lives (``live_job``: its id and state),
    hold one whose upstream ``upstream`` (a Handle) did not finish and is not queued ahead of it
    (``upstream_queued``: the backend makes it wait), else run it."""
    if status == "FINISHED" and not plan.force:
        return Decision("skip", "finished")
    if plan.only is not None and stage.name not in plan.only:
        return Decision("hold", "not selected")
    if live_job:
        return Decision("keep", live_job)
    if upstream is not None and not upstream_queued and upstream.state != "FINISHED":
        return Decision("hold", f"upstream {upstream.stage} is {upstream.state}"
                        + (f" ({upstream.reason})" if upstream.reason else ""))
    return Decision("run")


def levels(plans):
    """[(level, [(plan, stage)])]: every plan's stages by depth in its DAG (roots first), so a backend
    can submit the same level of many cells together and a stage after what it depends on."""
    depth = {}
    for plan in plans:
        d = depth.setdefault(id(plan), {})
        for stage in plan.cell.stages:  # topological order: an upstream comes first
            d[stage.name] = 0 if not stage.upstream else d[stage.upstream] + 1
    top = max((max(d.values(), default=-1) for d in depth.values()), default=-1)
    return [(level, [(p, s) for p in plans for s in p.cell.stages if depth[id(p)][s.name] == level])
            for level in range(top + 1)]


# -- after a stage ends ----------------------------------------------------------------------------
def final_state(code, interrupted=False):
    """The run's state from the stage's exit, where the stage left it SCHEDULED or RUNNING."""
    if interrupted or code < 0:
        return "KILLED"
    return "FAILED" if code else "FINISHED"  # a clean exit is success even if the stage never closed its run


def settle(run_id, code, interrupted=False, uri=None):
    """Set the run's final state where the stage process could not; the state it ends in."""
    from .. import lineage

    status = lineage.run_status(run_id, uri)
    if status in OPEN:
        status = final_state(code, interrupted)
        lineage.set_run_status(run_id, status, uri)
    return status


def settle_from_scheduler(run_id, status, final, why, uri=None):
    """The scheduler says a stage's job ended (``final``: FAILED or KILLED; None: not ended) while its run
    is still open (``status``): no stage process will say so any more. Set it, with ``why`` as
    ``hirl.reason``; True when it did."""
    from .. import lineage

    if final is None or status not in OPEN:
        return False
    if why:
        lineage.set_tags(run_id, {"hirl.reason": why}, uri)
    lineage.set_run_status(run_id, final, uri)
    return True


def log_artifact(run_id, uri=None):
    """The stage log's tail that the stage run keeps as ``logs/log-tail.txt``, or "" (none, no store)."""
    from .. import lineage

    try:
        c = lineage.client(uri)
        if not any(f.path == LOG_ARTIFACT for f in c.list_artifacts(run_id, posixpath.dirname(LOG_ARTIFACT))):
            return ""
        return _load_text(c, run_id)
    except Exception:  # noqa: BLE001 - no artifact store reachable: no artifact
        return ""


def _load_text(c, run_id):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = c.download_artifacts(run_id, LOG_ARTIFACT, tmp)
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
