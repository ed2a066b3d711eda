"""Pure parts of the SLURM backend: site profiles, sbatch parameters, the rendered batch script.

A *site profile* (``slurm/<site>.yaml``, or any YAML path) says how jobs run at a site:
the container runtime (``none``: the host's environment; ``pyxis``: ``srun --container-image``;
``apptainer``: ``apptainer exec --nv``), the image (pinned by digest), mounts, and defaults for
partition, account, QOS, time limit, the preemption signal lead time and how many time-limit
requeues a stage may use. The experiment's ``resources`` (common keys, then ``resources.slurm``,
then the stage's own) win over the profile.

Everything here is a function of (plan, profile): no clock, no cluster, no environment, so
``hirl plan --backend slurm --out DIR`` is golden-testable. The batch script is submitit's own
(``_make_sbatch_string``, the text ``sbatch`` receives), so what is rendered is what is submitted.
User strings never reach it raw: names are validated or slugged (``jobs.names``), every value is
shell-quoted by submitit's ``#SBATCH`` writer and srun argument join, and the interpreter prefix is
built with ``shlex.join``. No secret is ever in it: the tracking URI travels in the job's environment.
"""

from __future__ import annotations

import math
import os
import re
import shlex

import yaml

from .. import names, resources as res
from . import common
from .base import BackendError
from .common import IMAGE_PLACEHOLDER, image_for  # noqa: F401 - shared by every container backend

RUNTIMES = ("none", "pyxis", "apptainer")
PROFILE_KEYS = ("description", "runtime", "python", "image", "mounts", "partition", "account", "qos",
                "constraint", "time", "signal_delay_s", "max_timeout_requeues", "array_parallelism")
SUBMISSION_PLACEHOLDER = "<submission>"   # the fresh per-submission folder name
DEFAULT_SITE = "none"
_SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_PATH = re.compile(r"/[A-Za-z0-9_./+@=-]*")  # mount paths: no ':' or ',' (pyxis/apptainer syntax)
_PYTHON = re.compile(r"[A-Za-z0-9_./+-]+")


def _bad(where, what):
    raise BackendError(f"{where}: {what}")


def find_profile(site, root):
    """The profile file for a site name (``<root>/slurm/<site>.yaml``) or a path to a YAML file."""
    site = site or DEFAULT_SITE
    if site.endswith((".yaml", ".yml")) or "/" in site:
        path = site if os.path.isabs(site) else os.path.join(root, site)
    else:
        if not _SITE_NAME.fullmatch(site):
            _bad("SITE", f"bad site name {site!r}")
        path = os.path.join(root, "slurm", f"{site}.yaml")
    if not os.path.isfile(path):
        folder = os.path.join(root, "slurm")
        known = sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml")) if os.path.isdir(folder) else []
        _bad("SITE", f"no site profile {path}; known: {', '.join(known) or '(none)'}")
    return path


def load_profile(site, root):
    """The validated profile as a dict (``name`` and ``path`` added)."""
    path = find_profile(site, root)
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except yaml.YAMLError as exc:
        _bad(path, f"invalid YAML: {' '.join(str(exc).split())}")
    if not isinstance(raw, dict):
        _bad(path, "a site profile is a mapping")
    for key in raw:
        if key not in PROFILE_KEYS:
            _bad(path, f"unknown key {key!r}; allowed: {', '.join(PROFILE_KEYS)}")
    prof = {"runtime": "none", "python": "python3", "image": None, "mounts": [], "time": "02:00:00",
            "signal_delay_s": 120, "max_timeout_requeues": 3, "array_parallelism": 64, **raw}
    if prof["runtime"] not in RUNTIMES:
        _bad(path, f"runtime must be one of {', '.join(RUNTIMES)}, got {prof['runtime']!r}")
    if not isinstance(prof["python"], str) or not _PYTHON.fullmatch(prof["python"]):
        _bad(path, f"python must be a plain path or command name, got {prof['python']!r}")
    try:  # the same checks as the experiment's resources.slurm
        res.validate({"slurm": {k: prof.get(k) for k in ("partition", "account", "qos", "constraint", "time")}},
                     path)
    except ValueError as exc:
        _bad(path, str(exc))
    for key in ("signal_delay_s", "max_timeout_requeues", "array_parallelism"):
        if not isinstance(prof[key], int) or isinstance(prof[key], bool) or prof[key] < 0:
            _bad(path, f"{key} must be a whole number, got {prof[key]!r}")
    mounts = prof["mounts"] or []
    if not isinstance(mounts, list) or not all(isinstance(m, str) and all(_PATH.fullmatch(p) for p in m.split(":", 1))
                                               for m in mounts):
        _bad(path, "mounts must be a list of absolute 'SRC' or 'SRC:DST' paths (no ',' or spaces)")
    prof["mounts"] = mounts
    prof["name"] = os.path.splitext(os.path.basename(path))[0]
    prof["path"] = path
    return prof


def _pyxis_image(image):
    """enroot's URI form: the registry host is separated by '#' (``host#repo@sha256:...``)."""
    head, sep, rest = image.partition("/")
    return f"{head}#{rest}" if sep and ("." in head or ":" in head or head == "localhost") else image


def _mount_pairs(root, profile):
    if not _PATH.fullmatch(root):
        raise BackendError(f"the repo root {root!r} cannot be mounted into a container (characters outside "
                           f"[A-Za-z0-9_./+@=-]); move the checkout or use the 'none' runtime")
    pairs = [f"{root}:{root}"]
    pairs += [m if ":" in m else f"{m}:{m}" for m in profile["mounts"]]
    return pairs


def launcher(root, profile, image):
    """(python command prefix as shell text, extra srun argv) for submitit."""
    runtime, python = profile["runtime"], profile["python"]
    if runtime == "none":
        return shlex.quote(python), []
    pairs = _mount_pairs(root, profile)
    if runtime == "pyxis":
        return shlex.quote(python), [f"--container-image={_pyxis_image(image)}",
                                     f"--container-mounts={','.join(pairs)}", f"--container-workdir={root}"]
    argv = ["apptainer", "exec", "--nv", "--pwd", root]
    for pair in pairs:
        argv += ["--bind", pair]
    ref = image if "://" in image else f"docker://{image}"
    return shlex.join(argv + [ref, python]), []


def time_minutes(value):
    seconds = res.parse_time_s(value)
    if seconds is None:
        raise BackendError(f"resources.slurm.time: bad time limit {value!r}")
    return max(1, math.ceil(seconds / 60))


def job_name(cell, stage):
    return names.slurm_job_name("hirl", cell.experiment, cell.method, stage.name, cell.cell_id[:8])


def sbatch_params(cell, stage, options, profile, *, dependency="", hold=False):
    """submitit SlurmExecutor parameters for one stage job (or array of same-shape stages)."""
    nodes = int(options.get("nodes") or 1)
    gpus = int(options.get("gpus_per_node") or 0)
    # one task per GPU (the entrypoint makes each a torch rank); CPU jobs say ntasks_per_node
    tasks = int(options.get("ntasks_per_node") or gpus or 1)
    params = {"job_name": job_name(cell, stage), "nodes": nodes, "ntasks_per_node": tasks,
              "time": time_minutes(options.get("time") or profile["time"]),
              "signal_delay_s": int(profile["signal_delay_s"]), "wckey": None,
              "array_parallelism": int(options.get("array_parallelism") or profile["array_parallelism"] or 1)}
    if gpus:
        params["gpus_per_node"] = gpus
    if options.get("cpus_per_task"):
        params["cpus_per_task"] = int(options["cpus_per_task"])
    if options.get("mem") is not None:
        params["mem"] = f"{res.parse_mem_mib(options['mem'])}M"
    for key in ("partition", "account", "qos", "constraint"):
        value = options.get(key) or profile.get(key)
        if value:
            params[key] = str(value)
    if options.get("exclusive"):
        params["exclusive"] = True
    # A newline would end the #SBATCH line early; '%' would be expanded in the log-file patterns.
    if re.search(r"[\x00-\x1f\x7f%]", cell.root):
        raise BackendError(f"the repo root {cell.root!r} holds a control character or '%', which sbatch cannot "
                           f"carry in its directives and log paths; move the checkout")
    extra = {"requeue": True, "chdir": cell.root}
    if dependency:
        params["dependency"] = dependency
        extra["kill-on-invalid-dep"] = "yes"  # else a failed upstream leaves its evaluations pending forever
    if hold:
        extra["hold"] = True
    params["additional_parameters"] = extra
    return params


def submitit_command(python, folder):
    return " ".join([python, "-u -m submitit.core._submit", shlex.quote(str(folder))])


def batch_script(params, python, srun_args, folder, map_count=None):
    """The exact text sbatch receives (submitit's writer; values shell-quoted by it)."""
    from submitit.slurm.slurm import _make_sbatch_string

    kwargs = dict(params)
    if map_count is not None:
        kwargs["map_count"] = map_count
    if srun_args:
        kwargs["srun_args"] = list(srun_args)
    return _make_sbatch_string(command=submitit_command(python, folder), folder=folder, **kwargs)


def stage_env(cell, stage, run_id, attempt_base=0):
    """The stage's own environment (no tracking URI: it comes from the job's environment); the job
    closes its chain run when it is the last stage to end (common.stage_env)."""
    return common.stage_env(stage, run_id, cell=cell, attempt_base=attempt_base)


def stage_argv(stage, profile):
    return common.stage_argv(stage.type, common.stage_config(stage), profile["python"])


def describe(cell, stage, profile, image, argv, env, dependency):
    """A readable note of what runs in each task (the pickled StageCommand holds just this)."""
    lines = [f"# hirl slurm job: experiment {cell.experiment}, cell {cell.cell_id}, stage {stage.name} "
             f"({stage.type}), after: {stage.upstream or '-'}",
             f"# site profile: {profile['name']} (runtime {profile['runtime']}), image: {image}",
             "# the batch script runs submitit in every task; submitit unpickles jobs.entrypoint.StageCommand,",
             "# which sets WORLD_SIZE/RANK/LOCAL_RANK/MASTER_ADDR/MASTER_PORT from SLURM and runs:",
             f"argv: {shlex.join(argv)}",
             "env: " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()),
             "     (+ MLFLOW_TRACKING_URI from the submitting environment)",
             f"dependency: {dependency + ' (--kill-on-invalid-dep=yes)' if dependency else '-'}",
             f"on USR2 (preemption, or {profile['signal_delay_s']} s before the time limit): rank 0 requeues "
             f"the same command; the stage resumes from its checkpoint"]
    return "\n".join(lines) + "\n"
