"""``hirl status``, ``logs`` and ``cancel`` of a Kubernetes submission as its DAG runs, against the real
API server: the test writes the objects and their status as Argo and the JobSet controller would (the
JobSets created in dependency order, a task Omitted after its upstream failed, a JobSet suspended until
Kueue admits it, a Workflow deleted from under its runs) and checks each stage's line and MLflow state."""

import copy

from jobs.backends import k8s_render as kr

from .conftest import NAMESPACE

JS = kr.JOBSET_API
WF = kr.WORKFLOW_API
T0 = "2026-01-01T00:00:00Z"


def _list(api, what, selector):
    return api.list_namespaced_custom_object(*what[:2], NAMESPACE, what[2], label_selector=selector)["items"]


def _submit(api, root, experiment):
    """`hirl submit --backend k8s`; the one Workflow it created."""
    out = root.hirl("submit", experiment, "--backend", "k8s")
    assert out.returncode == 0, out.stdout + out.stderr
    [wf] = _list(api, WF, f"hirl/experiment={experiment}")
    return wf


def _jobsets_of(wf):
    """{(cell label, stage): JobSet manifest} of the Workflow's resource templates."""
    return {(m["metadata"]["labels"]["hirl/cell"], m["metadata"]["labels"]["hirl/stage"]): m
            for m in kr.manifests(wf) if m["kind"] == "JobSet"}


def _create(api, jobset, suspend=None):
    """Create one JobSet as Argo's resource template does (Kueue's webhook suspends it when ``suspend``)."""
    jobset = copy.deepcopy(jobset)
    if suspend is not None:
        jobset["spec"]["suspend"] = suspend
    return api.create_namespaced_custom_object(*JS[:2], NAMESPACE, JS[2], jobset, field_validation="Strict")


def _jobset_status(api, name, **status):
    api.patch_namespaced_custom_object_status(*JS[:2], NAMESPACE, JS[2], name, {"status": status})


def _done(api, name, how, message):
    _jobset_status(api, name, terminalState=how, conditions=[
        {"type": how, "status": "True", "reason": "Test", "message": message, "lastTransitionTime": T0}])


def _running(api, name):
    _jobset_status(api, name, replicatedJobsStatus=[
        {"name": "node", "ready": 1, "active": 1, "succeeded": 0, "failed": 0, "suspended": 0}])


def _workflow_status(api, wf, phase, nodes):
    """Write the Workflow's phase and its DAG nodes ({task: (phase, message)}) as Argo's controller does."""
    name = wf["metadata"]["name"]
    now = api.get_namespaced_custom_object(*WF[:2], NAMESPACE, WF[2], name)
    now["status"] = {"phase": phase, "nodes": {
        f"{name}-{i}": {"id": f"{name}-{i}", "name": f"{name}.{task}", "displayName": task, "type": "Pod",
                        "templateName": task, "phase": node_phase, "message": message}
        for i, (task, (node_phase, message)) in enumerate(nodes.items())}}
    api.replace_namespaced_custom_object(*WF[:2], NAMESPACE, WF[2], name, now)


def _status(root, experiment, *args):
    """{stage: its line} of `hirl status` (one cell)."""
    out = root.hirl("status", experiment, *args)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def _line(text, stage):
    [line] = [l for l in text.splitlines() if l.split()[:1] == [stage] or f" {stage} " in f" {l} "]
    return line


def _runs(root, experiment):
    return {r.data.tags["hirl.stage"]: r for r in root.runs(experiment)}


def _tasks(root, experiment):
    return {s: r.data.tags["hirl.k8s_task"] for s, r in _runs(root, experiment).items()}


# -- status ------------------------------------------------------------------------------------------
def test_status_follows_the_dag_as_argo_creates_the_jobsets_in_dependency_order(api, root):
    wf = _submit(api, root, "chain")
    jobsets = {stage: js for (_cell, stage), js in _jobsets_of(wf).items()}
    task = _tasks(root, "chain")
    name = wf["metadata"]["name"]

    text = _status(root, "chain")  # submitted, not yet picked up by Argo's controller: nothing exists
    assert f"waiting in Workflow {name} (Pending)" in _line(text, "pretrain"), text
    assert f"waiting in Workflow {name} (Pending)" in _line(text, "knn"), text

    _workflow_status(api, wf, "Running", {task["pretrain"]: ("Running", "")})
    _create(api, jobsets["pretrain"])  # Argo creates pre-training's JobSet; knn's waits on it
    text = _status(root, "chain")
    assert "JobSet created" in _line(text, "pretrain"), text
    assert f"waiting in Workflow {name} (Running)" in _line(text, "knn"), text
    _running(api, jobsets["pretrain"]["metadata"]["name"])
    assert "JobSet Running" in _line(_status(root, "chain"), "pretrain")

    _done(api, jobsets["pretrain"]["metadata"]["name"], "Completed", "jobs completed")
    _workflow_status(api, wf, "Running", {task["pretrain"]: ("Succeeded", ""), task["knn"]: ("Running", "")})
    _create(api, jobsets["knn"])  # only now: knn's task depends on pre-training's
    text = _status(root, "chain")
    assert "JobSet Completed" in _line(text, "pretrain") and "JobSet created" in _line(text, "knn"), text
    runs = _runs(root, "chain")
    assert runs["pretrain"].info.status == "FINISHED" and runs["knn"].info.status == "SCHEDULED"

    _done(api, jobsets["knn"]["metadata"]["name"], "Completed", "jobs completed")
    _workflow_status(api, wf, "Succeeded", {task["pretrain"]: ("Succeeded", ""), task["knn"]: ("Succeeded", "")})
    assert "JobSet Completed" in _line(_status(root, "chain"), "knn")
    assert {r.info.status for r in _runs(root, "chain").values()} == {"FINISHED"}


def test_a_task_omitted_after_its_upstream_failed_ends_killed_with_the_reason(api, root):
    wf = _submit(api, root, "chain")
    jobsets = {stage: js for (_cell, stage), js in _jobsets_of(wf).items()}
    task = _tasks(root, "chain")
    _create(api, jobsets["pretrain"])
    _done(api, jobsets["pretrain"]["metadata"]["name"], "Failed", "pod pretrain-0 exited 1")
    _workflow_status(api, wf, "Failed", {task["pretrain"]: ("Failed", "failure condition met"),
                                         task["knn"]: ("Omitted", "omitted: depends condition not met")})
    text = _status(root, "chain")
    assert "JobSet Failed: pod pretrain-0 exited 1" in _line(text, "pretrain"), text
    assert "not run (Omitted)" in _line(text, "knn"), text
    runs = _runs(root, "chain")
    assert runs["pretrain"].info.status == "FAILED"
    assert "pod pretrain-0 exited 1" in runs["pretrain"].data.tags["hirl.reason"]
    assert runs["knn"].info.status == "KILLED"  # it never ran: not a failure of its own
    assert "upstream did not succeed" in runs["knn"].data.tags["hirl.reason"]
    assert not _list(api, JS, f"hirl/run={runs['knn'].info.run_id}")  # and nothing was created for it


def test_a_workflow_that_failed_before_creating_a_task_ends_its_stage_killed(api, root):
    """No node at all for the downstream task (Argo with plain dependencies), the Workflow Failed."""
    wf = _submit(api, root, "chain")
    task = _tasks(root, "chain")
    _workflow_status(api, wf, "Failed", {task["pretrain"]: ("Error", "jobsets.jobset.x-k8s.io is forbidden")})
    text = _status(root, "chain")
    assert "task Error: jobsets.jobset.x-k8s.io is forbidden" in _line(text, "pretrain"), text
    assert "not run: Workflow Failed" in _line(text, "knn"), text
    runs = _runs(root, "chain")
    assert runs["pretrain"].info.status == "FAILED" and "forbidden" in runs["pretrain"].data.tags["hirl.reason"]
    assert runs["knn"].info.status == "KILLED" and wf["metadata"]["name"] in runs["knn"].data.tags["hirl.reason"]


def test_a_jobset_suspended_by_kueue_is_queued_until_admitted(api, root):
    wf = _submit(api, root, "chain")
    jobsets = {stage: js for (_cell, stage), js in _jobsets_of(wf).items()}
    task = _tasks(root, "chain")
    _workflow_status(api, wf, "Running", {task["pretrain"]: ("Running", "")})
    made = _create(api, jobsets["pretrain"], suspend=True)  # Kueue's webhook suspends it on creation
    assert made["spec"]["suspend"] is True
    text = _status(root, "chain")
    assert "JobSet queued (suspended until Kueue admits it)" in _line(text, "pretrain"), text
    assert _runs(root, "chain")["pretrain"].info.status == "SCHEDULED"
    name = made["metadata"]["name"]  # Kueue admits it: un-suspends, the JobSet controller starts the pods
    api.patch_namespaced_custom_object(*JS[:2], NAMESPACE, JS[2], name, {"spec": {"suspend": False}})
    _running(api, name)
    assert "JobSet Running" in _line(_status(root, "chain"), "pretrain")


def test_a_workflow_deleted_from_under_its_runs_ends_them_killed(api, root):
    wf = _submit(api, root, "chain")
    jobsets = {stage: js for (_cell, stage), js in _jobsets_of(wf).items()}
    name = wf["metadata"]["name"]
    _create(api, jobsets["pretrain"])
    _running(api, jobsets["pretrain"]["metadata"]["name"])
    api.delete_namespaced_custom_object(*WF[:2], NAMESPACE, WF[2], name)  # by hand (kubectl delete workflow)
    text = _status(root, "chain")
    assert "JobSet Running" in _line(text, "pretrain"), text  # its JobSet still runs: it still counts
    assert f"gone: Workflow {name} not found" in _line(text, "knn"), text
    runs = _runs(root, "chain")
    assert runs["pretrain"].info.status == "SCHEDULED"
    assert runs["knn"].info.status == "KILLED" and "was deleted" in runs["knn"].data.tags["hirl.reason"]
    api.delete_namespaced_custom_object(*JS[:2], NAMESPACE, JS[2], jobsets["pretrain"]["metadata"]["name"])
    assert f"gone: Workflow {name} not found" in _line(_status(root, "chain"), "pretrain")
    assert _runs(root, "chain")["pretrain"].info.status == "KILLED"


# -- logs --------------------------------------------------------------------------------------------
def _keep_log_tail(root, run_id, text):
    """The tail the stage's entrypoint keeps as its run's artifact (rank 0's), as a pod would have."""
    from mlflow.tracking import MlflowClient

    MlflowClient(root.uri).log_text(run_id, text, "logs/log-tail.txt")


def test_logs_with_the_pods_gone_read_the_run_artifact_and_say_other_ranks_are_not_kept(api, root):
    _submit(api, root, "chain")
    run = _runs(root, "chain")["pretrain"]
    from mlflow.tracking import MlflowClient

    MlflowClient(root.uri).set_tag(run.info.run_id, "hirl.attempt", "1")  # it ran once; its pods are gone
    _keep_log_tail(root, run.info.run_id, "[rank0]: epoch 3 loss 1.25\n[rank0]: saved checkpoint\n")
    out = root.hirl("logs", "chain", "--stage", "pretrain")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout == "[rank0]: epoch 3 loss 1.25\n[rank0]: saved checkpoint\n"
    out = root.hirl("logs", "chain", "--stage", "pretrain", "--rank", "1")
    assert "epoch 3" not in out.stdout, out.stdout  # rank 0's tail is not rank 1's log
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "only rank 0" in lines[0] and "rank 1" in lines[0], out.stderr


def test_logs_of_a_stage_without_pods_or_artifact_say_where_the_log_would_be(api, root):
    _submit(api, root, "chain")
    run = _runs(root, "chain")["pretrain"]
    from mlflow.tracking import MlflowClient

    c = MlflowClient(root.uri)
    c.set_tag(run.info.run_id, "hirl.attempt", "1")
    c.update_run(run.info.run_id, status="RUNNING")
    out = root.hirl("logs", "chain", "--stage", "pretrain")
    assert out.stdout == ""
    assert "no log artifact" in out.stderr and f"-l hirl/run={run.info.run_id}" in out.stderr, out.stderr


# -- cancel ------------------------------------------------------------------------------------------
def test_cancel_of_one_cell_deletes_its_jobsets_only_and_the_sweep_workflow_goes_on(api, root):
    wf = _submit(api, root, "chain_sweep")
    made = [_create(api, js) for js in _jobsets_of(wf).values()]  # every cell's JobSets exist
    assert len(made) == 12
    runs = root.runs("chain_sweep")
    cell = next(r.data.tags["hirl.cell"] for r in runs if r.data.tags["hirl.stage"] == "pretrain")
    mine = {r.info.run_id for r in runs if r.data.tags["hirl.cell"] == cell}
    out = root.hirl("cancel", "chain_sweep", "--cell", cell[:12])
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("goes on with") == 2, out.stdout
    assert _list(api, WF, f"hirl/experiment=chain_sweep"), "the other cells' Workflow stays"
    left = _list(api, JS, "app.kubernetes.io/managed-by=hirl")
    assert len(left) == 10 and not {j["metadata"]["labels"]["hirl/run"] for j in left} & mine
    after = {r.info.run_id: r.info.status for r in root.runs("chain_sweep")}
    assert {after[r] for r in mine} == {"KILLED"}
    assert {s for r, s in after.items() if r not in mine} == {"SCHEDULED"}


def test_cancel_leaves_a_stranger_workflow_alone(api, root):
    wf = _submit(api, root, "chain")
    stranger = copy.deepcopy(wf)
    stranger["metadata"] = {"name": "someone-elses-workflow", "namespace": NAMESPACE,
                            "labels": {**wf["metadata"]["labels"], "hirl/submission": "other123"}}
    api.create_namespaced_custom_object(*WF[:2], NAMESPACE, WF[2], stranger)
    out = root.hirl("cancel", "chain")
    assert out.returncode == 0, out.stdout + out.stderr
    left = [w["metadata"]["name"] for w in _list(api, WF, "app.kubernetes.io/managed-by=hirl")]
    assert left == ["someone-elses-workflow"]
    assert {r.info.status for r in root.runs("chain")} == {"KILLED"}


def test_stage_log_reads_the_run_and_its_artifact_from_the_tracking_uri_it_is_given(root, tmp_path, monkeypatch):
    """No API server needed: a backend whose cluster does not answer, the run in a store that is not
    $MLFLOW_TRACKING_URI's."""
    from mlflow.tracking import MlflowClient

    from jobs.backends.base import BackendError, Handle
    from jobs.backends.k8s_state import stage_log

    class NoCluster:
        def kube(self):
            raise BackendError("no Kubernetes cluster configured")

    c = MlflowClient(root.uri)
    run = c.create_run(c.create_experiment("elsewhere", artifact_location=str(tmp_path / "artifacts")))
    run_id = run.info.run_id
    c.set_tag(run_id, "hirl.k8s_workload", "chain-pretrain-abc")
    c.set_tag(run_id, "hirl.k8s_namespace", NAMESPACE)
    c.log_text(run_id, "the tail\n", "logs/log-tail.txt")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'other.db'}")
    handle = Handle("pretrain", run_id, "RUNNING")
    assert stage_log(NoCluster(), handle, uri=root.uri) == "the tail\n"
    assert stage_log(NoCluster(), handle, rank=1, uri=root.uri) == ""
