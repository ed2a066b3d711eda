"""The SLURM backend, on submitit: one job per stage, the DAG held by SLURM itself.

Each stage is one batch job (``nodes`` × one task per GPU, or ``ntasks_per_node`` for CPU jobs)
whose tasks run ``jobs.entrypoint.StageCommand``: argv and environment strings only, never state
pickled at submit time, so a requeued job resumes from the stage's on-disk checkpoint into the same
MLflow run. An evaluation is submitted right after its pre-training with
``--dependency=afterok:<id> --kill-on-invalid-dep=yes``, so the chain runs with nobody watching and a
failed pre-training cancels its evaluations. In a sweep, the stages of the cells that share a shape
go out as one job array (``%N`` throttle), evaluations against the pre-training array with
``aftercorr``. Every submission gets a fresh submitit folder (stale result files of a reused job id
are never read), recorded in the run's tags ``hirl.job_id`` and ``hirl.slurm_folder``.

``status`` reads squeue (reasons such as ``DependencyNeverSatisfied``) and sacct through submitit,
and sets the MLflow state where no stage process could (cancelled by a dependency, killed hard).
The site profile comes from ``HIRL_SLURM_SITE`` (``make submit BACKEND=slurm SITE=pyxis``).
"""

from __future__ import annotations

import json
import os
import posixpath
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from hirl_core.config import dump_config, dumps_config

from .. import lineage, lineage_sql, names
from ..entrypoint import StageCommand, int_or_zero
from . import common, slurm_render as rnd
from .base import Backend, BackendError, Handle, Submission
from .slurm_query import FAILED_STATES, LIVE, SlurmUnavailable, check_cluster, query



_REPORTED = set()  # SLURM trouble status has already printed


def _say(message):
    print(message, flush=True)


def _stamp():
    """A fresh, sortable folder name per submission."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


@dataclass
class _Item:
    plan: object
    stage: object
    run_id: str
    dependency: str        # "" or a job id ("123", "123_4") that must end OK first
    attempt_base: int
    params: dict = None
    python: str = ""
    srun_args: tuple = ()
    image: str = ""


class SlurmBackend(Backend):
    name = "slurm"
    batches = True  # same-shape stages of a sweep go out as one job array

    def __init__(self, site=None, command_for=None, hold=False):
        self.site = site or os.environ.get("HIRL_SLURM_SITE") or rnd.DEFAULT_SITE
        self.command_for = command_for   # command_for(stage) -> argv replaces hirl_core's (tests)
        self.hold = hold                 # submit held (benchmarks): the jobs queue but never start
        self._profiles = {}

    def profile(self, root="."):
        root = os.path.abspath(root)
        if root not in self._profiles:
            self._profiles[root] = rnd.load_profile(self.site, root)
        return self._profiles[root]

    @property
    def image(self):
        """The hirl.image tag lineage writes first (the submission then records the image each job runs)."""
        try:
            prof = list(self._profiles.values())[-1] if self._profiles else self.profile()
        except BackendError:
            return "unresolved"
        return "host" if prof["runtime"] == "none" else (prof.get("image") or rnd.IMAGE_PLACEHOLDER)

    # -- what would run -------------------------------------------------------
    def _prepare(self, plan, stage, dependency):
        prof = self.profile(plan.cell.root)
        options = self.options(plan, stage)
        image, unpinned = rnd.image_for(plan.cell, options, prof)
        python, srun_args = rnd.launcher(plan.cell.root, prof, image)
        params = rnd.sbatch_params(plan.cell, stage, options, prof, dependency=dependency and f"afterok:{dependency}",
                                   hold=self.hold)
        if "cpus_per_task" in params:  # srun of SLURM 22.05 does not inherit it from sbatch
            srun_args = [f"--cpus-per-task={params['cpus_per_task']}"] + srun_args
        return prof, image, unpinned, python, srun_args, params

    def argv(self, stage, prof):
        return list(self.command_for(stage)) if self.command_for else rnd.stage_argv(stage, prof)

    def render(self, plan):
        """Per stage: its config, the sbatch script submitit would submit, and what each task runs."""
        files, cell = {}, plan.cell
        for stage in cell.stages:
            files[posixpath.join(stage.output_dir, "config.yaml")] = dumps_config(stage.config)
            dep = f"<{stage.upstream} job id>" if stage.upstream else ""
            prof, image, _unpinned, python, srun_args, params = self._prepare(plan, stage, dep)
            folder = posixpath.join(cell.root, stage.output_dir, "slurm", rnd.SUBMISSION_PLACEHOLDER)
            files[f"slurm/{stage.name}.sbatch"] = rnd.batch_script(params, python, srun_args, folder)
            run_id = plan.runs[stage.name].run_id if plan.runs else "<run-id>"
            env = rnd.stage_env(cell, stage, run_id)
            files[f"slurm/{stage.name}.job.txt"] = rnd.describe(cell, stage, prof, image, self.argv(stage, prof),
                                                               env, params.get("dependency", ""))
        return files

    # -- submitting -----------------------------------------------------------
    def submit(self, plan):
        return self.submit_many([plan])[0]

    def submit_many(self, plans):
        """Submit the stages of many cells: level by level (pre-trainings, then what follows them),
        same-shape stages of several cells as one array. Returns one Submission per plan."""
        for plan in plans:
            if not plan.runs:
                raise BackendError("the slurm backend needs the stage runs from lineage.ensure_chain")
        handles = {id(p): {} for p in plans}
        job_of = {}                                   # (plan id, stage) -> job id to depend on
        live, self._tags = self._live_jobs(plans)
        held = set()
        for _level, stages in common.levels(plans):
            todo = []
            for plan, stage in stages:
                item, handle = self._decide(plan, stage, handles[id(plan)], job_of, live)
                if handle is not None:
                    handles[id(plan)][stage.name] = handle
                    if handle.reason.startswith("upstream"):
                        held.add(id(plan))
                if item is not None:
                    todo.append(item)
            for group in self._groups(todo):
                for item, jid, folder in self._submit_group(group):
                    job_of[(id(item.plan), item.stage.name)] = jid
                    handles[id(item.plan)][item.stage.name] = Handle(
                        item.stage.name, item.run_id, "SCHEDULED", _log_path(folder, jid), reason=f"job {jid}")
        out = []
        for plan in plans:
            ordered = [handles[id(plan)][s.name] for s in plan.cell.stages]
            out.append(Submission(ordered, 1 if id(plan) in held else 0))
        return out

    def _decide(self, plan, stage, done, job_of, live):
        """(item to submit or None, handle or None) for one stage."""
        run = plan.runs[stage.name]
        status, tags = (run.status, {}) if run.created else self._tags[run.run_id]
        old = tags.get("hirl.job_id", "")
        dependency = job_of.get((id(plan), stage.upstream), "") if stage.upstream else ""
        d = common.decide(plan, stage, status, done[stage.upstream] if stage.upstream else None,
                          upstream_queued=bool(dependency), live_job=old if live.get(old) in LIVE else "")
        if d.action == "skip":
            _say(f"skip {stage.name} (finished, run {run.run_id})")
        elif d.action == "keep":
            _say(f"keep {stage.name}: already queued as job {old} ({live[old]}), run {run.run_id}")
            job_of[(id(plan), stage.name)] = old
            return None, Handle(stage.name, run.run_id, status, reason=f"job {old}")
        elif d.action == "hold" and d.reason != "not selected":
            _say(f"hold {stage.name}: {d.reason}; run {run.run_id} stays {status}")
        if d.action != "run":
            return None, Handle(stage.name, run.run_id, status, reason=d.reason)
        base = int_or_zero(tags.get("hirl.attempt"))
        return _Item(plan, stage, run.run_id, dependency, base), None

    def preflight(self, plans):
        """Refuse, before any run is created, what would make sbatch fail or a job run the wrong code."""
        for plan in plans:
            for stage in plan.cell.stages:
                common.require_pinned(self._prepare(plan, stage, "")[2])
        check_cluster()

    def _groups(self, items):
        """Items of one level grouped by job shape; a group of one is a plain job."""
        groups = {}
        for item in items:
            prof, image, unpinned, python, srun_args, params = self._prepare(item.plan, item.stage, item.dependency)
            common.require_pinned(unpinned)
            item.params, item.python, item.srun_args, item.image = params, python, tuple(srun_args), image
            shape = {k: v for k, v in params.items() if k not in ("job_name", "dependency", "additional_parameters")}
            key = json.dumps([item.plan.cell.root, item.stage.name, item.stage.type, shape, python, srun_args],
                             sort_keys=True, default=str)
            groups.setdefault(key, []).append(item)
        return list(groups.values())

    def _submit_group(self, group):
        """[(item, job id, submitit folder)] for one group: an array where the dependencies allow."""
        if len(group) > 1:
            deps = [i.dependency for i in group]
            if not any(deps):
                return self._submit_array(group, "")
            heads = {d.split("_")[0] for d in deps if "_" in d}
            if len(heads) == 1 and all("_" in d for d in deps):
                order = sorted(group, key=lambda i: int(i.dependency.split("_")[1]))
                if [int(i.dependency.split("_")[1]) for i in order] == list(range(len(order))):
                    return self._submit_array(order, heads.pop())
        return [self._submit_one(item) for item in group]

    def _command(self, item):
        prof = self.profile(item.plan.cell.root)
        env = rnd.stage_env(item.plan.cell, item.stage, item.run_id, item.attempt_base)
        if getattr(item, "image", "host") != "host":  # the stage tags its run with the digest it runs in
            env["HIRL_IMAGE"] = item.image
        defaults = {"MLFLOW_TRACKING_URI": _strip_credentials(item.plan.tracking_uri or lineage.tracking_uri())}
        out = Path(item.plan.cell.root, item.stage.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        dump_config(item.stage.config, out / "config.yaml")
        return StageCommand(self.argv(item.stage, prof), env, defaults, cwd=item.plan.cell.root)

    def _executor(self, folder, item, params):
        import submitit

        prof = self.profile(item.plan.cell.root)
        try:
            ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=prof["max_timeout_requeues"],
                                        python=item.python)
        except RuntimeError as exc:
            raise BackendError(f"no SLURM here ({exc}); run on a login node, or start the dev cluster: "
                               f"make dev-slurm-up") from None
        ex.update_parameters(**params, srun_args=list(item.srun_args))
        return ex

    def _submit_one(self, item):
        folder = os.path.join(item.plan.cell.root, item.stage.output_dir, "slurm", _stamp())
        ex = self._executor(folder, item, item.params)
        job = _sbatch(lambda: ex.submit(self._command(item)), item.stage.name)
        jid = str(job.job_id)
        after = f" after job {item.dependency} (afterok)" if item.dependency else ""
        _say(f"queued {item.stage.name}: job {jid}{after}, run {item.run_id}")
        self._record(item, jid, folder)
        return item, jid, folder

    def _submit_array(self, group, upstream_array):
        first = group[0]
        cell = first.plan.cell
        folder = os.path.join(cell.root, "outputs", cell.experiment, "slurm",
                              f"{_stamp()}-{names.file_name(first.stage.name)}")
        params = dict(first.params)
        params["job_name"] = names.slurm_job_name("hirl", cell.experiment, first.stage.name, "array")
        extra = dict(params.get("additional_parameters") or {})
        params.pop("dependency", None)
        extra.pop("kill-on-invalid-dep", None)
        if upstream_array:  # task i waits for task i of the upstream array only
            params["dependency"] = f"aftercorr:{upstream_array}"
            extra["kill-on-invalid-dep"] = "yes"
        params["additional_parameters"] = extra
        ex = self._executor(folder, first, params)
        commands = [self._command(item) for item in group]

        def submit():
            with ex.batch():
                return [ex.submit(c) for c in commands]
        jobs = _sbatch(submit, first.stage.name)
        ids = [str(j.job_id) for j in jobs]
        after = f" after array {upstream_array} (aftercorr)" if upstream_array else ""
        _say(f"queued {first.stage.name}: array {ids[0].split('_')[0]} of {len(ids)} cells "
             f"(at most {min(len(ids), params['array_parallelism'])} at once){after}")
        # one write for the whole array (a transaction each was 5 s of a 100-cell sweep's submission)
        lineage_sql.set_tags(first.plan.tracking_uri or lineage.tracking_uri(),
                             {item.run_id: self._job_tags(item, jid, folder) for item, jid in zip(group, ids)})
        return [(item, jid, folder) for item, jid in zip(group, ids)]

    def _job_tags(self, item, jid, folder):
        return {"hirl.job_id": jid, "hirl.slurm_folder": folder, "hirl.image": item.image,  # the image it really runs
                "hirl.slurm_site": self.profile(item.plan.cell.root)["name"]}

    def _record(self, item, jid, folder):
        from mlflow.entities import RunTag

        tags = self._job_tags(item, jid, folder)
        lineage.client(item.plan.tracking_uri).log_batch(item.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    # -- after the fact -------------------------------------------------------
    def _live_jobs(self, plans):
        """({job id: SLURM state} of the jobs earlier submissions left, {run id: (status, tags)})."""
        state = {}
        for plan in plans:
            for stage in plan.cell.stages:
                run = plan.runs[stage.name]
                if not run.created:
                    state[run.run_id] = lineage.run_state(run.run_id, plan.tracking_uri)
        ids = [tags.get("hirl.job_id", "") for _s, tags in state.values()]
        return {jid: st for jid, (st, _r) in query([i for i in ids if i]).items()}, state

    def status(self, handles, uri=None):
        """{stage: scheduler state text}; also sets MLflow states the jobs could not set themselves."""
        uri = uri or lineage.tracking_uri()
        info = {h.stage: lineage.run_state(h.run_id, uri) for h in handles}
        try:
            found = query([tags.get("hirl.job_id", "") for _s, tags in info.values() if tags.get("hirl.job_id")])
        except SlurmUnavailable as exc:  # MLflow's states stand alone; nothing is settled from no answer
            if str(exc) not in _REPORTED:  # one line per command, not one per cell
                _REPORTED.add(str(exc))
                print(f"hirl: {exc}", file=sys.stderr, flush=True)
            return {h.stage: "no answer" if info[h.stage][1].get("hirl.job_id") else "-" for h in handles}
        out = {}
        for h in handles:
            status, tags = info[h.stage]
            jid = tags.get("hirl.job_id", "")
            if not jid or jid not in found:
                out[h.stage] = "-" if not jid else "unknown to SLURM"
                continue
            state, reason = found[jid]
            if state == "CANCELLED" and reason.startswith("Dependency"):
                reason = "DependencyNeverSatisfied"  # sacct keeps only "Dependency"
            reason = "" if reason == "None" else reason
            why = tags.get("hirl.reason", "")
            if status in common.OPEN and state not in LIVE and state != "COMPLETED":
                why = why or ("cancelled by SLURM: its upstream job did not succeed"
                              if reason == "DependencyNeverSatisfied" else f"SLURM job {jid} ended {state}")
                common.settle_from_scheduler(h.run_id, status, "FAILED" if state in FAILED_STATES else "KILLED",
                                             why, uri)
            text = f"{state} ({reason})" if reason else state
            out[h.stage] = f"{text}: {why}" if why and state not in LIVE and state != "COMPLETED" else text
        return out

    def live_runs(self, statuses, uri=None):
        rows = [r for st in statuses for r in st.rows if r.job_id and r.status in ("SCHEDULED", "RUNNING")]
        try:
            found = query([r.job_id for r in rows])
        except SlurmUnavailable:  # no answer: nothing is known to be queued
            return set()
        return {r.run_id for r in rows if r.job_id in found and found[r.job_id][0] in LIVE}

    def logs(self, handle, rank=None):
        """Rank ``rank``'s (default 0) stdout and stderr of the stage's latest job, all attempts."""
        _status, tags = lineage.run_state(handle.run_id)
        jid, folder = tags.get("hirl.job_id", ""), tags.get("hirl.slurm_folder", "")
        if not jid or not folder:
            return ""
        text = ""
        for suffix in ("out", "err"):
            path = Path(_log_path(folder, jid, rank or 0, suffix))
            if path.is_file():
                text += path.read_text(encoding="utf-8", errors="replace")
        return text

    def cancel(self, handles, uri=None):
        """scancel the stages' jobs (through submitit); runs that cannot say so themselves turn KILLED."""
        import submitit

        uri = uri or lineage.tracking_uri()
        acted = []
        for h in handles:
            _status, tags = lineage.run_state(h.run_id, uri)
            jid, folder = tags.get("hirl.job_id", ""), tags.get("hirl.slurm_folder", "")
            if jid:
                submitit.SlurmJob(folder=folder or ".", job_id=jid).cancel(check=False)
                _say(f"stop {h.stage}: scancel {jid} (run {h.run_id})")
            acted.append(h)
        deadline = time.monotonic() + 15.0  # a running stage marks itself KILLED on SIGTERM
        while time.monotonic() < deadline and any(lineage.run_status(h.run_id, uri) == "RUNNING" for h in handles):
            time.sleep(0.5)
        for h in handles:
            if lineage.run_status(h.run_id, uri) in ("SCHEDULED", "RUNNING"):
                lineage.set_run_status(h.run_id, "KILLED", uri)
        return acted


def _sbatch(fn, what):
    from submitit.core.utils import FailedJobError  # submitit's own wrapper of sbatch's non-zero exit

    try:
        return fn()
    except (subprocess.CalledProcessError, FailedJobError) as exc:
        err = getattr(exc, "stderr", None) or getattr(exc, "output", None) or str(exc)
        err = err.decode(errors="replace") if isinstance(err, bytes) else str(err)
        raise BackendError(f"sbatch refused {what}: {' '.join(err.split()) or exc}") from None


def _log_path(folder, jid, rank=0, suffix="out"):
    return os.path.join(folder, f"{jid}_{rank}_log.{suffix}")


_strip_credentials = common.without_credentials  # the job description carries no password
