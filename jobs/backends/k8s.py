"""The Kubernetes backend: one Argo Workflow per submission whose DAG creates the stage JobSets.

``render`` (pure, ``k8s_render``) shows the Workflow and every object it creates. ``submit`` checks
the cluster first (kubeconfig, an answering API server, the JobSet and Workflow kinds served) and has
the server dry-run every object under its real schemas before anything exists, then creates the
Workflow; the cluster runs the whole chain or sweep with nobody attached. Each stage run is tagged
with its Workflow and workload (``hirl.job_id`` = ``<workflow>/<jobset>``), so ``status``, ``logs``
and ``cancel`` find them again; objects are found by label (``hirl/submission``, ``hirl/run``).

The ``kubernetes`` client is imported only here, and only when the backend is asked for.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid

from .. import lineage, names
from ..entrypoint import int_or_zero
from . import common, k8s_render as kr
from .base import Backend, BackendError, Handle, Submission

TIMEOUT_S = 5                   # an API server that takes longer is treated as not answering
OPEN = common.OPEN
WF_DONE = ("Succeeded", "Failed", "Error")
_REPORTED = set()


def _say(message):
    print(message, flush=True)


def api_message(exc):
    try:
        return json.loads(exc.body)["message"]
    except Exception:  # noqa: BLE001 - not a Status body
        return f"HTTP {getattr(exc, 'status', '?')} {getattr(exc, 'reason', '')}".strip()


class K8sBackend(Backend):
    name = "k8s"
    batches = True  # a sweep is one Workflow, its cells parallel branches

    def __init__(self):
        self._k = None

    @property
    def image(self):
        """The hirl.image tag lineage writes first (the submission records the image each stage runs)."""
        try:
            from ..image import pinned_reference
            return pinned_reference("", ".")
        except Exception:  # noqa: BLE001 - nothing pushed yet
            return "unresolved"

    # -- what would run -------------------------------------------------------------------------
    def _image(self, plan, options):
        image, why = common.image_for(plan.cell, options, {"runtime": "kubernetes", "name": "k8s", "image": None})
        return image, (f"the k8s backend runs a container, which {why.split('which ', 1)[1]}" if why else "")

    def _job(self, plan, stage, run_id, after="", attempt_base=0):
        options = self.options(plan, stage)
        image, why = self._image(plan, options)
        return kr.StageJob(plan.cell, stage, run_id, options, image, after, attempt_base), why

    def _all_jobs(self, plan):
        out = []
        for stage in plan.cell.stages:
            run_id = plan.runs[stage.name].run_id if plan.runs else "<run-id>"
            out.append(self._job(plan, stage, run_id, stage.upstream or ""))
        return out

    def render(self, plan):
        """The Workflow, the objects it creates, and each stage's config (as the ConfigMap holds it)."""
        return self._files([plan], names.short_hash(plan.cell.cell_id, 8), per_cell=False)

    def render_many(self, plans, matrix=False):
        """A sweep as ``submit_many`` creates it: one Workflow for every cell (refused in one line when it
        would be too large for one object), each object it creates in a folder per cell."""
        if len(plans) == 1:
            return self.render(plans[0])
        return self._files(plans, names.short_hash("".join(p.cell.cell_id for p in plans), 8), per_cell=True)

    def _files(self, plans, submission, per_cell):
        from hirl_core.config import dumps_config

        files = {f"{stage.output_dir}/config.yaml": dumps_config(stage.config)
                 for plan in plans for stage in plan.cell.stages}
        jobs = [j for plan in plans for j, _why in self._all_jobs(plan)]
        files.update(kr.render_files(jobs, submission, per_cell=per_cell))
        return files

    # -- the cluster ----------------------------------------------------------------------------
    def kube(self):
        """The kubernetes client module, configured from $KUBECONFIG (or in-cluster)."""
        if self._k is None:
            try:
                from kubernetes import client, config
            except ImportError:
                raise BackendError("the kubernetes client is missing: pip install 'kubernetes>=31'") from None
            path = os.environ.get("KUBECONFIG", "")
            try:
                config.load_kube_config(config_file=path if path and os.pathsep not in path else None)
            except Exception as exc:  # noqa: BLE001 - any reason means: no cluster configured
                try:
                    config.load_incluster_config()
                except Exception:  # noqa: BLE001
                    raise BackendError(f"no Kubernetes cluster configured ({' '.join(str(exc).split())[:200]}); "
                                       f"export KUBECONFIG=<file>, or start the dev API server: make dev-k8s-up"
                                       ) from None
            self._k = client
        return self._k

    def call(self, fn, *args, what="", **kwargs):
        """One API call; a cluster that does not answer is one BackendError line."""
        from kubernetes.client.rest import ApiException

        try:
            return fn(*args, _request_timeout=TIMEOUT_S, **kwargs)
        except ApiException:
            raise
        except Exception as exc:  # noqa: BLE001 - urllib3's connection errors and timeouts
            host = self.kube().Configuration.get_default_copy().host
            raise BackendError(f"the Kubernetes API at {host} does not answer ({type(exc).__name__}) while "
                               f"{what}; check KUBECONFIG, or start the dev API server: make dev-k8s-up") from None

    def _create(self, obj, dry_run=False):
        """Create one object (or have the server dry-run it); a refusal is one line naming the object."""
        from kubernetes.client.rest import ApiException

        k, meta = self.kube(), obj["metadata"]
        what = f"creating {obj['kind']} {meta['name']}"
        extra = {"dry_run": "All"} if dry_run else {}
        try:
            if obj["kind"] in ("JobSet", "Workflow"):
                group, version, plural = kr.JOBSET_API if obj["kind"] == "JobSet" else kr.WORKFLOW_API
                return self.call(k.CustomObjectsApi().create_namespaced_custom_object, group, version,
                                 meta["namespace"], plural, obj, field_validation="Strict", what=what, **extra)
            if obj["kind"] == "Job":
                return self.call(k.BatchV1Api().create_namespaced_job, meta["namespace"], obj, what=what, **extra)
            if obj["kind"] == "Service":
                return self.call(k.CoreV1Api().create_namespaced_service, meta["namespace"], obj, what=what,
                                 **extra)
        except ApiException as exc:
            if exc.status == 404:
                api = obj["apiVersion"]
                raise BackendError(f"the cluster does not serve {obj['kind']} ({api}): install it (k8s/README.md)"
                                   + ("" if obj["kind"] != "Job" else ", or use resources.k8s.workload: jobset")
                                   ) from None
            raise BackendError(f"the API server refuses {obj['kind']} {meta['name']}: "
                               f"{' '.join(api_message(exc).split())}") from None
        return None  # a ConfigMap: only the Workflow creates it (validated offline in the tests)

    def _check(self, wf):
        """Everything the Workflow would create, and the Workflow itself, dry-run by the server."""
        for obj in kr.manifests(wf) + [wf]:
            self._create(obj, dry_run=True)

    def preflight(self, plans):
        """Refuse, before any run is created, what would make the Workflow fail or a pod run the wrong code."""
        jobs = []
        for plan in plans:
            for job, why in self._all_jobs(plan):
                if why:
                    raise BackendError(why)
                jobs.append(job)
        self._check(kr.workflow(jobs, uuid.uuid4().hex[:8]))
        uri = plans[0].tracking_uri if plans else ""
        if uri and (lineage.sqlite_path(uri) or uri.startswith(("file:", "/"))):
            ns, cm = jobs[0].settings["namespace"], jobs[0].settings["mlflow_configmap"]
            _say(f"note: the pods log to the tracking URI in ConfigMap {ns}/{cm}, not to this machine's "
                 f"{uri.split(':', 1)[0]} store; set MLFLOW_TRACKING_URI to that server to see their runs")

    # -- submitting -----------------------------------------------------------------------------
    def submit(self, plan):
        return self.submit_many([plan])[0]

    def submit_many(self, plans):
        """One Workflow for all the plans' stages that need to run; one Submission per plan."""
        for plan in plans:
            if not plan.runs:
                raise BackendError("the k8s backend needs the stage runs from lineage.ensure_chain")
        jobs, results = [], []
        for plan in plans:
            handles, held = self._decide(plan, jobs)
            results.append((plan, handles, held))
        if jobs:
            submission = uuid.uuid4().hex[:8]
            wf = kr.workflow(jobs, submission)
            self._check(wf)
            self._create(wf)
            _say(f"created Workflow {wf['metadata']['namespace']}/{wf['metadata']['name']}: "
                 f"{len(jobs)} stages in {len({j.cell.cell_id for j in jobs})} cells")
            for job in jobs:
                self._record(job, wf, plans[0].tracking_uri)
        out = []
        for plan, handles, held in results:
            for h in handles.values():
                job = next((j for j in jobs if j.run_id == h.run_id), None)
                if job is not None:
                    h.reason = f"jobset {kr.workload_name(job.cell, job.stage, job.submission)}"
            out.append(Submission([handles[s.name] for s in plan.cell.stages], 1 if held else 0))
        return out

    def _decide(self, plan, jobs):
        """Skip finished and unselected stages, keep a cell an earlier Workflow still runs, hold stages
        whose upstream is neither finished nor in this submission; the rest become jobs."""
        handles, queued, held = {}, set(), False
        states = {s.name: ((r.status, {}) if r.created else lineage.run_state(r.run_id, plan.tracking_uri))
                  for s in plan.cell.stages for r in [plan.runs[s.name]]}
        live = self._live_workflow(plan, states)
        for stage in plan.cell.stages:
            run = plan.runs[stage.name]
            status, tags = states[stage.name]
            queued_up = bool(stage.upstream) and stage.upstream in queued
            d = common.decide(plan, stage, status, handles[stage.upstream] if stage.upstream else None,
                              upstream_queued=queued_up, live_job=live)
            if d.action == "skip":
                _say(f"skip {stage.name} (finished, run {run.run_id})")
            elif d.action == "keep":
                _say(f"keep {stage.name}: Workflow {live} still runs it, run {run.run_id}")
                d.reason = f"workflow {live}"
            elif d.action == "hold" and d.reason != "not selected":
                _say(f"hold {stage.name}: {d.reason}; run {run.run_id} stays {status}")
                held = True
            if d.action != "run":
                handles[stage.name] = Handle(stage.name, run.run_id, status, reason=d.reason)
                continue
            after = stage.upstream if queued_up else ""
            job, why = self._job(plan, stage, run.run_id, after, int_or_zero(tags.get("hirl.attempt")))
            if why:
                raise BackendError(why)
            jobs.append(job)
            queued.add(stage.name)
            handles[stage.name] = Handle(stage.name, run.run_id, "SCHEDULED")
        return handles, held

    def _live_workflow(self, plan, states):
        """The name of an earlier Workflow that has not ended and holds an open stage of this cell, or ""."""
        for status, tags in states.values():
            wf_name, ns = tags.get("hirl.k8s_workflow", ""), tags.get("hirl.k8s_namespace", "")
            if status in OPEN and wf_name:
                wf = self.get_workflow(ns, wf_name)
                if wf is not None and (wf.get("status") or {}).get("phase") not in WF_DONE:
                    return wf_name
        return ""

    def _record(self, job, wf, uri):
        from mlflow.entities import RunTag

        name = kr.workload_name(job.cell, job.stage, job.submission)
        tags = {"hirl.job_id": f"{wf['metadata']['name']}/{name}", "hirl.image": job.image,
                "hirl.k8s_namespace": wf["metadata"]["namespace"], "hirl.k8s_workflow": wf["metadata"]["name"],
                "hirl.k8s_workload": name, "hirl.k8s_kind": "JobSet" if job.settings["workload"] == "jobset"
                else "Job", "hirl.k8s_task": kr.task_name(job.cell, job.stage.name),
                "hirl.k8s_submission": job.submission}
        lineage.client(uri).log_batch(job.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    # -- after the fact -------------------------------------------------------------------------
    def _get(self, fn, *args):
        from kubernetes.client.rest import ApiException

        try:
            return self.call(fn, *args, what="reading the stage objects")
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise BackendError(f"the API server refuses to read {args[-1]}: {api_message(exc)}") from None

    def get_workflow(self, ns, name):
        group, version, plural = kr.WORKFLOW_API
        return self._get(self.kube().CustomObjectsApi().get_namespaced_custom_object, group, version, ns, plural,
                         name)

    def _get_workload(self, tags):
        ns, name = tags.get("hirl.k8s_namespace", ""), tags.get("hirl.k8s_workload", "")
        if tags.get("hirl.k8s_kind") == "Job":
            job = self._get(self.kube().BatchV1Api().read_namespaced_job, name, ns)
            return None if job is None else self.kube().ApiClient().sanitize_for_serialization(job)
        group, version, plural = kr.JOBSET_API
        return self._get(self.kube().CustomObjectsApi().get_namespaced_custom_object, group, version, ns, plural,
                         name)

    def status(self, handles, uri=None):
        """{stage: state text} from the workloads and the Workflow; also settles the MLflow state of a
        stage that ended without saying so (failed pods, an upstream that failed, a deleted Workflow)."""
        from .k8s_state import state_of

        uri = uri or lineage.tracking_uri()
        info = {h.stage: lineage.run_state(h.run_id, uri) for h in handles}
        out, workflows = {}, {}
        for h in handles:
            status, tags = info[h.stage]
            if not tags.get("hirl.k8s_workflow"):
                out[h.stage] = "-"
                continue
            try:
                key = (tags["hirl.k8s_namespace"], tags["hirl.k8s_workflow"])
                if key not in workflows:
                    workflows[key] = self.get_workflow(*key)
                text, final, why = state_of(self._get_workload(tags), workflows[key], tags)
            except BackendError as exc:  # MLflow's states stand alone; nothing is settled from no answer
                if str(exc) not in _REPORTED:
                    _REPORTED.add(str(exc))
                    print(f"hirl: {exc}", file=sys.stderr, flush=True)
                out[h.stage] = "no answer"
                continue
            common.settle_from_scheduler(h.run_id, status, final, why, uri)
            out[h.stage] = text
        return out

    def live_runs(self, statuses, uri=None):
        rows = [r for st in statuses for r in st.rows if r.run_id and r.status in OPEN]
        out = set()
        for r in rows:
            _status, tags = lineage.run_state(r.run_id, uri)
            if tags.get("hirl.k8s_workflow"):
                try:
                    wf = self.get_workflow(tags["hirl.k8s_namespace"], tags["hirl.k8s_workflow"])
                except BackendError:
                    continue
                if wf is not None and (wf.get("status") or {}).get("phase") not in WF_DONE:
                    out.add(r.run_id)
        return out

    def logs(self, handle, rank=None):
        from .k8s_state import stage_log

        return stage_log(self, handle, rank)

    def cancel(self, handles, uri=None):
        from .k8s_state import cancel

        return cancel(self, handles, uri or lineage.tracking_uri())
