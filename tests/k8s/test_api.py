"""The Kubernetes backend against a real API server with the real CRD schemas: ``hirl submit``
creates a Workflow whose JobSets the server accepts, a sweep is one Workflow with a branch per cell,
``hirl status`` follows the states the test writes as the controllers would, ``hirl cancel`` deletes
what it created and nothing else, and a cluster that does not answer is refused before any run exists."""

import copy
from pathlib import Path

import pytest
import yaml

from jobs.backends import k8s_render as kr

from .conftest import NAMESPACE, REPO

JS = kr.JOBSET_API
WF = kr.WORKFLOW_API


def _list(api, what, selector):
    return api.list_namespaced_custom_object(*what[:2], NAMESPACE, what[2], label_selector=selector)["items"]


def _workflows(api, experiment):
    return _list(api, WF, f"hirl/experiment={experiment}")


def _play_argo(api, wf):
    """Create the Workflow's JobSets as Argo's resource templates would (core objects: no core/v1 here)."""
    made = []
    for obj in kr.manifests(wf):
        if obj["kind"] == "JobSet":
            made.append(api.create_namespaced_custom_object(*JS[:2], NAMESPACE, JS[2], obj, field_validation="Strict"))
    return made


def _set_jobset(api, name, **status):
    api.patch_namespaced_custom_object_status(*JS[:2], NAMESPACE, JS[2], name, {"status": status})


def _submit(root, experiment):
    out = root.hirl("submit", experiment, "--backend", "k8s")
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def _status_lines(root, experiment):
    out = root.hirl("status", experiment)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_submit_creates_a_workflow_whose_jobsets_the_server_accepts(api, root):
    out = _submit(root, "chain")
    assert "created Workflow hirl/" in out.stdout
    [wf] = _workflows(api, "chain")
    made = _play_argo(api, wf)
    assert sorted(j["metadata"]["labels"]["hirl/stage"] for j in made) == ["knn", "pretrain"]
    assert all(j["spec"]["replicatedJobs"][0]["groupName"] == "default" for j in made)  # defaulted by the schema
    runs = {r.data.tags["hirl.stage"]: r for r in root.runs("chain")}
    for stage, run in runs.items():
        tags = run.data.tags
        assert tags["hirl.k8s_workflow"] == wf["metadata"]["name"]
        assert tags["hirl.job_id"] == f"{wf['metadata']['name']}/{tags['hirl.k8s_workload']}"
        assert tags["hirl.image"].endswith("@sha256:" + "ab" * 32)
        assert run.info.status == "SCHEDULED"


def test_status_follows_the_states_the_controllers_write(api, root):
    _submit(root, "chain")
    [wf] = _workflows(api, "chain")
    pre, knn = sorted(_play_argo(api, wf), key=lambda j: j["metadata"]["labels"]["hirl/stage"] != "pretrain")
    _set_jobset(api, pre["metadata"]["name"], replicatedJobsStatus=[
        {"name": "node", "ready": 1, "active": 1, "succeeded": 0, "failed": 0, "suspended": 0}])
    wf["status"] = {"phase": "Running", "nodes": {}}
    api.replace_namespaced_custom_object(*WF[:2], NAMESPACE, WF[2], wf["metadata"]["name"],
                                         api.get_namespaced_custom_object(*WF[:2], NAMESPACE, WF[2],
                                                                          wf["metadata"]["name"]) | {"status": wf["status"]})
    text = _status_lines(root, "chain")
    assert "JobSet Running" in text and "JobSet created" in text, text
    _set_jobset(api, pre["metadata"]["name"], terminalState="Completed", conditions=[
        {"type": "Completed", "status": "True", "reason": "AllJobsCompleted", "message": "jobs completed",
         "lastTransitionTime": "2026-01-01T00:00:00Z"}])
    _set_jobset(api, knn["metadata"]["name"], terminalState="Failed", conditions=[
        {"type": "Failed", "status": "True", "reason": "FailedJobs", "message": "pod knn-0 exited 1",
         "lastTransitionTime": "2026-01-01T00:00:00Z"}])
    text = _status_lines(root, "chain")
    assert "JobSet Completed" in text and "JobSet Failed: pod knn-0 exited 1" in text, text
    runs = {r.data.tags["hirl.stage"]: r for r in root.runs("chain")}
    assert runs["pretrain"].info.status == "FINISHED" and runs["knn"].info.status == "FAILED"
    assert "pod knn-0 exited 1" in runs["knn"].data.tags["hirl.reason"]


def test_cancel_deletes_what_it_created_and_nothing_else(api, root):
    _submit(root, "chain")
    [wf] = _workflows(api, "chain")
    made = _play_argo(api, wf)
    stranger = copy.deepcopy(made[0])
    stranger["metadata"] = {"name": "someone-elses", "namespace": NAMESPACE,
                            "labels": {**made[0]["metadata"]["labels"], "hirl/submission": "other123"}}
    api.create_namespaced_custom_object(*JS[:2], NAMESPACE, JS[2], stranger)
    try:
        out = root.hirl("cancel", "chain")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "cancelled 2 stages" in out.stdout, out.stdout
        assert not _workflows(api, "chain")
        left = [j["metadata"]["name"] for j in _list(api, JS, "app.kubernetes.io/managed-by=hirl")]
        assert "someone-elses" in left and not {m["metadata"]["name"] for m in made} & set(left)
        assert {r.info.status for r in root.runs("chain")} == {"KILLED"}
    finally:
        api.delete_namespaced_custom_object(*JS[:2], NAMESPACE, JS[2], "someone-elses")


def test_a_sweep_is_one_workflow_with_a_branch_per_cell(api, root):
    out = _submit(root, "chain_sweep")
    [wf] = _workflows(api, "chain_sweep")
    tasks = wf["spec"]["templates"][0]["dag"]["tasks"]
    roots = [t for t in tasks if not t.get("dependencies")]
    assert len(roots) == 6 and all(t["name"].endswith("--config") for t in roots)  # six independent chains
    for t in tasks:
        assert all(d.split("-")[0] == t["name"].split("-")[0] for d in t.get("dependencies", [])), t
    assert len(_play_argo(api, wf)) == 12
    assert out.stdout.count("created Workflow") == 1
    out = root.hirl("cancel", "chain_sweep")
    assert out.returncode == 0 and not _workflows(api, "chain_sweep")


def test_a_cluster_that_does_not_answer_is_refused_before_any_run(root, tmp_path):
    pytest.importorskip("kubernetes")
    dead = tmp_path / "kubeconfig"
    dead.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "dead",
        "clusters": [{"name": "dead", "cluster": {"server": "https://127.0.0.1:9", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "x"}}],
        "contexts": [{"name": "dead", "context": {"cluster": "dead", "user": "u"}}]}))
    out = root.hirl("submit", "chain", "--backend", "k8s", KUBECONFIG=str(dead), timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    [line] = out.stderr.strip().splitlines()
    assert "does not answer" in line and "make dev-k8s-up" in line
    assert not (root.path / "mlflow.db").exists()

