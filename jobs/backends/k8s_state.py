"""The Kubernetes backend after submission: states, logs and cancel, read from the API by label.

A stage's state comes from its workload (JobSet ``status.terminalState``, its conditions and
replicated-job counts; a suspended JobSet waits for Kueue) and, while no workload exists yet, from
the Workflow's DAG node for its task. States that no stage process could write to MLflow (pods that
failed, a stage Argo never ran because its upstream failed, a Workflow deleted by hand) are settled
here (``common.settle_from_scheduler``), as the SLURM backend does from sacct.
"""

from __future__ import annotations

import sys
import time

from .. import lineage
from . import k8s_render as kr
from .base import BackendError
from .common import OPEN, log_artifact
WF_DONE = ("Succeeded", "Failed", "Error")


def _condition(obj, kind):
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind and c.get("status") == "True":
            return c
    return None


def _workload_state(obj):
    """(text, final MLflow state or None, reason) of a JobSet or batch Job as its controller wrote it."""
    kind, spec, st = obj.get("kind") or "Job", obj.get("spec") or {}, obj.get("status") or {}
    name = obj["metadata"]["name"]
    terminal = st.get("terminalState")
    if kind != "JobSet":  # a batch Job: Complete / Failed conditions
        terminal = ("Completed" if _condition(obj, "Complete") else "Failed" if _condition(obj, "Failed")
                    or (st.get("failed") or 0) > 0 else None)
    if terminal == "Completed":
        return f"{kind} Completed", "FINISHED", ""
    if terminal == "Failed":
        cond = _condition(obj, "Failed") or {}
        detail = " ".join(str(cond.get("message") or cond.get("reason") or "its pods failed").split())
        return f"{kind} Failed: {detail}", "FAILED", f"{kind} {name} failed: {detail}"[:500]
    if spec.get("suspend") or _condition(obj, "Suspended"):
        return f"{kind} queued (suspended until Kueue admits it)", None, ""
    jobs = st.get("replicatedJobsStatus") or []
    active = sum((j.get("active") or 0) + (j.get("ready") or 0) for j in jobs) if kind == "JobSet" else \
        (st.get("active") or 0)
    restarts = st.get("restarts") or 0
    text = f"{kind} Running" if active else f"{kind} created"
    return text + (f" (gang restart {restarts})" if restarts else ""), None, ""


def _task_node(wf, task):
    for node in ((wf.get("status") or {}).get("nodes") or {}).values():
        if node.get("displayName") == task:
            return node
    return None


def state_of(workload, wf, tags):
    """(text, final MLflow state or None, reason) of one stage."""
    if workload is not None:
        return _workload_state(workload)
    name = tags.get("hirl.k8s_workflow", "")
    if wf is None:
        return (f"gone: Workflow {name} not found", "KILLED",
                f"its Workflow {name} was deleted before the stage's workload existed")
    phase = (wf.get("status") or {}).get("phase") or "Pending"
    node = _task_node(wf, tags.get("hirl.k8s_task", ""))
    if node is not None and node.get("phase") in ("Failed", "Error"):
        detail = " ".join(str(node.get("message") or node["phase"]).split())
        return f"task {node['phase']}: {detail}", "FAILED", f"Argo could not create the workload: {detail}"[:500]
    if node is not None and node.get("phase") in ("Omitted", "Skipped"):
        return f"not run ({node['phase']})", "KILLED", "not run by the Workflow: its upstream did not succeed"
    if phase in WF_DONE:
        return (f"not run: Workflow {phase}", "KILLED",
                f"not run: Workflow {name} ended {phase} before creating it"[:500])
    return f"waiting in Workflow {name} ({phase})", None, ""


# -- cancel ------------------------------------------------------------------------------------------
def _delete_crds(backend, ns, selector, what):
    """Delete the JobSets (and the Workflows when ``what`` says so) matching ``selector``; their names."""
    k = backend.kube()
    co, gone = k.CustomObjectsApi(), []
    apis = [kr.JOBSET_API] + ([kr.WORKFLOW_API] if what == "all" else [])
    from kubernetes.client.rest import ApiException

    for group, version, plural in apis:
        try:
            found = backend.call(co.list_namespaced_custom_object, group, version, ns, plural,
                                 label_selector=selector, what=f"listing {plural}")
        except ApiException as exc:
            if exc.status == 404:  # the kind is not served here: nothing of it exists
                continue
            raise BackendError(f"the API server refuses to list {plural}: {kr_message(exc)}") from None
        for item in found.get("items") or []:
            name = item["metadata"]["name"]
            try:
                backend.call(co.delete_namespaced_custom_object, group, version, ns, plural, name,
                             propagation_policy="Background", what=f"deleting {plural} {name}")
                gone.append(f"{item['kind']} {name}")
            except ApiException as exc:
                if exc.status != 404:
                    raise BackendError(f"the API server refuses to delete {name}: {kr_message(exc)}") from None
    return gone


def _delete_core(backend, ns, selector):
    """Jobs, Services and ConfigMaps with the labels (indexed-job workloads, the JobSets' Jobs, the configs)."""
    from kubernetes.client.rest import ApiException

    k, gone = backend.kube(), []
    calls = [("Job", k.BatchV1Api().delete_collection_namespaced_job),
             ("ConfigMap", k.CoreV1Api().delete_collection_namespaced_config_map)]
    for kind, fn in calls:
        try:
            backend.call(fn, ns, label_selector=selector, propagation_policy="Background",
                         what=f"deleting {kind}s")
            gone.append(f"{kind}s {selector}")
        except ApiException as exc:
            if exc.status != 404:  # 404: the API is not served here (the dev server has no core/v1)
                raise BackendError(f"the API server refuses to delete {kind}s: {kr_message(exc)}") from None
    try:  # Services have no delete-collection: one by one
        items = backend.call(k.CoreV1Api().list_namespaced_service, ns, label_selector=selector,
                             what="listing Services").items
        for svc in items:
            backend.call(k.CoreV1Api().delete_namespaced_service, svc.metadata.name, ns, what="deleting a Service")
    except ApiException as exc:
        if exc.status != 404:
            raise BackendError(f"the API server refuses to delete Services: {kr_message(exc)}") from None
    return gone


def kr_message(exc):
    from .k8s import api_message

    return " ".join(api_message(exc).split())


def _runs_of(wf):
    """The stage run ids a Workflow creates workloads for (from its templates' labels)."""
    out = set()
    for obj in kr.manifests(wf):
        run = obj["metadata"]["labels"].get("hirl/run")
        if run:
            out.add(run)
    return out


def cancel(backend, handles, uri):
    """Delete what the stages' Workflows made, found by label, and nothing else: the whole submission
    (Workflow, JobSets, Jobs, ConfigMaps) when every open stage of it is cancelled, else only the
    cancelled stages' workloads (Argo then fails those branches; the other cells go on)."""
    groups, acted = {}, []
    for h in handles:
        _status, tags = lineage.run_state(h.run_id, uri)
        key = (tags.get("hirl.k8s_namespace", ""), tags.get("hirl.k8s_workflow", ""),
               tags.get("hirl.k8s_submission", ""))
        groups.setdefault(key, []).append(h)
    for (ns, wf_name, submission), group in groups.items():
        if not wf_name:
            acted += group  # never reached the cluster: only MLflow knows it
            continue
        wf = backend.get_workflow(ns, wf_name)
        ours = {h.run_id for h in group}
        others = [r for r in (_runs_of(wf) if wf is not None else set())
                  if r not in ours and lineage.run_status(r, uri) in OPEN]
        if not others:
            gone = _delete_crds(backend, ns, f"hirl/submission={submission}", "all")
            gone += _delete_core(backend, ns, f"hirl/submission={submission}")
            if wf is not None and f"Workflow {wf_name}" not in gone:  # labels edited by hand: by name
                group_, version, plural = kr.WORKFLOW_API
                backend.call(backend.kube().CustomObjectsApi().delete_namespaced_custom_object, group_, version,
                             ns, plural, wf_name, what=f"deleting Workflow {wf_name}")
            _say(f"stop submission {submission}: deleted Workflow {wf_name} and what it created "
                 f"({len(gone)} objects) in {ns}")
        else:
            for h in group:
                gone = _delete_crds(backend, ns, f"hirl/run={h.run_id}", "workloads")
                gone += _delete_core(backend, ns, f"hirl/run={h.run_id}")
                _say(f"stop {h.stage}: deleted {', '.join(gone) or 'nothing yet'} (run {h.run_id}); "
                     f"Workflow {wf_name} goes on with {len(others)} other stages")
        acted += group
    deadline = time.monotonic() + 5.0  # a running stage marks itself KILLED on SIGTERM
    while time.monotonic() < deadline and any(lineage.run_status(h.run_id, uri) == "RUNNING" for h in acted):
        time.sleep(0.5)
    for h in acted:
        if lineage.run_status(h.run_id, uri) in OPEN:
            lineage.set_run_status(h.run_id, "KILLED", uri)
    return acted


def _say(message):
    print(message, flush=True)


# -- logs ----------------------------------------------------------------------------------------------
def stage_log(backend, handle, rank=None, uri=None):
    """The pod log of node ``rank`` (default 0) while pods exist, else the run's log artifact: rank 0's
    tail only, so for another rank one line says so and no text comes back (never rank 0's as its)."""
    from kubernetes.client.rest import ApiException

    _status, tags = lineage.run_state(handle.run_id, uri)
    ns = tags.get("hirl.k8s_namespace", "")
    if tags.get("hirl.k8s_workload"):
        try:
            core = backend.kube().CoreV1Api()
            pods = backend.call(core.list_namespaced_pod, ns, label_selector=f"hirl/run={handle.run_id}",
                                what="listing the stage's pods").items
            index = str(rank or 0)
            for pod in pods:
                annotations = pod.metadata.annotations or {}
                if annotations.get("batch.kubernetes.io/job-completion-index", "0") == index:
                    return backend.call(core.read_namespaced_pod_log, pod.metadata.name, ns,
                                        what="reading the pod log")
        except (ApiException, BackendError):
            pass  # no pods (gone, or no core API here): the artifact below
    if rank:  # the artifact is rank 0's tail: showing it as another rank's log would mislead
        print(f"hirl: no pod of rank {rank} answers for {handle.stage}, and only rank 0's log tail is kept "
              f"(run {handle.run_id}'s logs/log-tail.txt: hirl logs without --rank)", file=sys.stderr)
        return ""
    text = log_artifact(handle.run_id, uri)  # logs/log-tail.txt, kept by the stage run's entrypoint
    if not text and _status != "SCHEDULED":  # a stage that never started: the CLI says so itself
        where = (f"pods of {tags.get('hirl.k8s_kind', 'JobSet')} {ns}/{tags['hirl.k8s_workload']} "
                 f"(kubectl logs -n {ns} -l hirl/run={handle.run_id})" if tags.get("hirl.k8s_workload")
                 else "nowhere yet: the stage was never submitted to Kubernetes")
        print(f"hirl: no log for {handle.stage}: no pod answers and run {handle.run_id} has no log artifact; "
              f"it would be in the {where}", file=sys.stderr)
    return text
