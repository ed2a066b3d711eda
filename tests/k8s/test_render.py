"""What the Kubernetes backend renders, without a cluster: the golden JobSet of a 2-node x 8-GPU
HIRL-MoCo v3 pre-training, the Workflow's DAG, the core objects (Indexed Job, Service, ConfigMap)
under the real Kubernetes schemas (kubernetes-validate, strict), hostile values carried as data,
and no secret in anything rendered."""

import copy
from pathlib import Path

import pytest
import yaml

from jobs import resources as res
from jobs.backends import BackendError, Plan
from jobs.backends.k8s import K8sBackend
from jobs.dag import assign_outputs
from jobs.matrix import load_sweep
from jobs.spec import SpecError

from .. import hostile
from ..jobs.goldens import check_golden
from .conftest import DIGEST, REPO

GOLDEN = Path(__file__).resolve().parent / "golden"
K8S_VERSION = "1.37.0"
POOL = {"nodes": 2, "gpus_per_node": 8, "cpus_per_task": 10, "mem": "480G", "time": "3-00:00:00",
        "k8s": {"gpu_pool": "h100", "queue": "research",
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}}


def _cell(name="hirl_mocov3", overrides=(), resources=None, index=0):
    cell = load_sweep(name, root=str(REPO), overrides=overrides).cells[index]
    if resources is not None:
        cell.resources = res.validate(resources, "test")
    cell.image = DIGEST
    cell.root = "/srv/hirl"
    return assign_outputs(cell)


def _render(cell):
    return K8sBackend().render(Plan(cell, None))


def _docs(files, suffix):
    return {p: yaml.safe_load(t) for p, t in files.items() if p.endswith(suffix)}


def test_golden_jobset_of_a_two_node_pretraining():
    files = _render(_cell(resources=POOL))
    assert _render(_cell(resources=POOL)) == files  # pure: the same plan renders the same bytes
    check_golden("hirl_mocov3/pretrain.jobset.yaml", files["k8s/pretrain.jobset.yaml"], GOLDEN)
    js = yaml.safe_load(files["k8s/pretrain.jobset.yaml"])
    rj = js["spec"]["replicatedJobs"][0]
    job, pod = rj["template"]["spec"], rj["template"]["spec"]["template"]["spec"]
    assert (job["completions"], job["parallelism"], job["completionMode"], job["backoffLimit"]) == (2, 2, "Indexed", 0)
    assert js["spec"]["failurePolicy"]["maxRestarts"] == 3 and js["spec"]["network"]["enableDNSHostnames"]
    assert js["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "research" and js["spec"]["suspend"] is True
    c = pod["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8" == c["resources"]["requests"]["nvidia.com/gpu"]
    assert pod["tolerations"] == POOL["k8s"]["tolerations"] and pod["nodeSelector"] == {"hirl/gpu-pool": "h100"}
    name = js["metadata"]["name"]
    # the pod's main process is the entrypoint's pod launcher: it turns a final failure into FINAL_EXIT
    assert c["command"][:5] == ["python", "-m", "jobs.entrypoint", "--pod", "torchrun"]
    assert c["command"][5:21] == ["--nnodes", "2", "--nproc_per_node", "8", "--rdzv_backend", "c10d",
                                  "--rdzv_endpoint", f"{name}-node-0-0.{name}:29500",
                                  "--rdzv_id", "<run-id>-1-$(JOBSET_RESTART_ATTEMPT)", "--max_restarts", "0",
                                  "--shutdown-timeout", "285", "-m", "jobs.entrypoint"]
    assert c["args"] == ["pretrain", "-c", "/etc/hirl/config.yaml"] and c["image"] == DIGEST
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16384Mi"}} in pod["volumes"]
    assert pod["terminationGracePeriodSeconds"] == 300 and job["activeDeadlineSeconds"] == 3 * 86400
    assert len(name) <= 40 and len(f"{name}-node-0-0") <= 63


def test_a_gang_pod_knows_its_restart_budget_and_attempt():
    """``jobs.entrypoint`` leaves the run open for the next gang only while JobSet's restarts last: the
    pod gets maxRestarts and the restart-attempt label (downward API); an Indexed Job never restarts."""
    def env(workload):
        files = _render(_cell("demo", resources={"k8s": {"workload": workload, "max_restarts": 5}}))
        doc = yaml.safe_load(files[f"k8s/pretrain.{'jobset' if workload == 'jobset' else 'job'}.yaml"])
        spec = doc["spec"]["replicatedJobs"][0]["template"]["spec"] if workload == "jobset" else doc["spec"]
        return {e["name"]: e for e in spec["template"]["spec"]["containers"][0]["env"]}
    gang = env("jobset")
    assert gang["HIRL_MAX_RESTARTS"] == {"name": "HIRL_MAX_RESTARTS", "value": "5"}
    assert gang["JOBSET_RESTART_ATTEMPT"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.labels['jobset.sigs.k8s.io/restart-attempt']"}}
    assert not {"HIRL_MAX_RESTARTS", "JOBSET_RESTART_ATTEMPT"} & set(env("indexed-job"))


def test_workflow_creates_the_stages_in_dependency_order():
    wf = yaml.safe_load(_render(_cell())["k8s/workflow.yaml"])
    tasks = {t["name"]: t for t in wf["spec"]["templates"][0]["dag"]["tasks"]}
    cfg = next(n for n in tasks if n.endswith("--config"))
    pre = next(n for n in tasks if n.endswith("-pretrain"))
    assert tasks[pre]["dependencies"] == [cfg]
    for n, t in tasks.items():
        if n not in (cfg, pre):
            assert t["dependencies"] == [cfg, pre], n  # every evaluation waits for the pre-training
    for t in wf["spec"]["templates"][1:]:
        r = t["resource"]
        assert r["action"] == "create" and r["setOwnerReference"] is True
        if yaml.safe_load(r["manifest"])["kind"] == "JobSet":
            assert r["successCondition"] == "status.terminalState == Completed"
            assert r["failureCondition"] == "status.terminalState == Failed"
    assert wf["spec"]["serviceAccountName"] == "hirl-workflow"


def test_core_objects_validate_offline_under_the_real_schemas():
    kv = pytest.importorskip("kubernetes_validate")
    files = _render(_cell("demo", resources={"k8s": {"workload": "indexed-job", "nodes": 2}}))
    kinds = set()
    for path, doc in _docs(files, ".yaml").items():
        if path.startswith("k8s/") and doc["apiVersion"] in ("v1", "batch/v1"):
            kv.validate(doc, K8S_VERSION, strict=True)
            kinds.add(doc["kind"])
    assert kinds == {"Job", "Service", "ConfigMap"}
    job = yaml.safe_load(files["k8s/pretrain.job.yaml"])
    svc = yaml.safe_load(files["k8s/pretrain.service.yaml"])
    assert job["spec"]["template"]["spec"]["subdomain"] == svc["metadata"]["name"] == job["metadata"]["name"]
    assert svc["spec"]["clusterIP"] == "None"
    wf = yaml.safe_load(files["k8s/workflow.yaml"])
    tasks = [t["name"] for t in wf["spec"]["templates"][0]["dag"]["tasks"]]
    assert tasks.index(next(t for t in tasks if t.endswith("pretrain--svc"))) < tasks.index(
        next(t for t in tasks if t.endswith("-pretrain")))


def test_bad_k8s_settings_are_one_line_errors():
    for bad, word in (({"workload": "pods"}, "workload"), ({"max_restarts": -1}, "max_restarts"),
                      ({"shm_size": "lots"}, "shm_size"), ({"data_pvc": "My_PVC"}, "data_pvc")):
        with pytest.raises(SpecError, match=word) as err:
            res.validate({"k8s": bad}, "resources")
        assert "\n" not in str(err.value)


def test_an_unpinned_image_is_refused_before_submit(tmp_path):
    cell = _cell("demo")
    cell.image, cell.root = "", str(tmp_path)
    files = K8sBackend().render(Plan(cell, None))  # a dry run shows a placeholder ...
    assert "hirl-image-not-built@sha256:" in files["k8s/pretrain.jobset.yaml"]
    with pytest.raises(BackendError, match="pinned by digest"):  # ... submit refuses it, before any cluster call
        K8sBackend().preflight([Plan(cell, None)])


@pytest.mark.parametrize("value", hostile.VALUES, ids=hostile.ids(hostile.VALUES))
def test_hostile_values_stay_data(value):
    kv = pytest.importorskip("kubernetes_validate")
    cell = _cell("demo")
    cell.stages[0].config["description"] = value  # free text that reaches the ConfigMap
    files = _render(cell)
    cm = yaml.safe_load(files["k8s/config.configmap.yaml"])
    kv.validate(cm, K8S_VERSION, strict=True)
    assert yaml.safe_load(cm["data"]["pretrain.yaml"])["description"] == value
    wf = yaml.safe_load(files["k8s/workflow.yaml"])
    assert yaml.safe_load(wf["spec"]["templates"][1]["resource"]["manifest"]) == cm


@pytest.mark.parametrize("name", hostile.NAMES, ids=hostile.ids(hostile.NAMES))
def test_hostile_matrix_values_give_valid_names(name, tmp_path):
    spec = tmp_path / "hostile_sweep.yaml"
    spec.write_text(yaml.safe_dump({"description": "hostile", "matrix": {"method": ["demo"],
                                                                          "pretrain.data.root": [name]}}))
    try:
        sweep = load_sweep(str(spec), root=str(REPO))
    except SpecError as exc:  # refused when the spec loads: one line
        assert "\n" not in str(exc)
        return
    cell = assign_outputs(sweep.cells[0])
    cell.image = DIGEST
    from jobs import names

    for path, doc in _docs(_render(cell), ".yaml").items():
        if path.startswith("k8s/"):
            meta = doc["metadata"]
            assert names.is_dns1123_label(meta["name"]), meta["name"]
            assert all(names.is_label_value(v) for v in meta["labels"].values()), meta["labels"]


def test_no_secret_in_any_rendered_manifest(monkeypatch):
    secret = "s3cr3t-Pa55"
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"https://alice:{secret}@mlflow.example:5000")
    files = K8sBackend().render(Plan(_cell(resources=POOL), None, f"https://alice:{secret}@mlflow.example:5000"))
    text = "".join(files.values())
    assert secret not in text and "alice" not in text and "mlflow.example" not in text
    env = yaml.safe_load(files["k8s/pretrain.jobset.yaml"])["spec"]["replicatedJobs"][0]["template"]["spec"][
        "template"]["spec"]["containers"][0]["env"]
    refs = {e["name"]: e["valueFrom"] for e in env if "valueFrom" in e}
    assert refs["MLFLOW_TRACKING_URI"] == {"configMapKeyRef": {"name": "hirl-mlflow", "key": "MLFLOW_TRACKING_URI"}}
    assert "secretKeyRef" in refs["MLFLOW_TRACKING_PASSWORD"]
    assert copy.deepcopy(refs) == refs


# -- failure policies: final failures fail fast, disruptions restart the gang uncounted ---------------
def _workload(files, workload="jobset"):
    doc = yaml.safe_load(files[f"k8s/pretrain.{'jobset' if workload == 'jobset' else 'job'}.yaml"])
    job = doc["spec"]["replicatedJobs"][0]["template"]["spec"] if workload == "jobset" else doc["spec"]
    return doc, job


def test_a_final_failure_fails_the_jobset_and_a_disruption_restarts_the_gang_uncounted():
    """OOM and bad input (the pod exits FINAL_EXIT, or 2) fail the Job at once (podFailurePolicy FailJob)
    and the JobSet with it (FailJobSet on reason PodFailurePolicy); a preempted or evicted pod
    (DisruptionTarget) fails its Job too, and JobSet restarts the whole gang without counting it against
    maxRestarts; any other failure (exit 1, a node fault) restarts the gang, counted."""
    from jobs.entrypoint import FINAL_EXIT

    js, job = _workload(_render(_cell(resources=POOL)))
    assert job["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy requires it
    assert job["podFailurePolicy"] == {"rules": [
        {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "FailJob", "onExitCodes": {"containerName": "stage", "operator": "In", "values": [2, FINAL_EXIT]}}]}
    rules = js["spec"]["failurePolicy"]["rules"]
    assert [(r["action"], r["onJobFailureReasons"]) for r in rules] == [
        ("RestartJobSetAndIgnoreMaxRestarts", ["PodFailurePolicy"]), ("FailJobSet", ["PodFailurePolicy"])]
    # the Job controller's message for a pod-condition match: "Pod <ns>/<pod> has condition DisruptionTarget
    # matching FailJob rule at index 0"; for an exit code: "Container stage for pod ... failed with exit code 86 ..."
    import re
    disrupted = "Pod hirl/x-node-0-0-abcde has condition DisruptionTarget matching FailJob rule at index 0"
    oom = f"Container stage for pod hirl/x-node-0-0-abcde failed with exit code {FINAL_EXIT} matching FailJob rule at index 1"
    assert any(re.search(p, disrupted) for p in rules[0]["onJobFailureMessagePatterns"])
    assert not any(re.search(p, oom) for p in rules[0]["onJobFailureMessagePatterns"])
    for r in rules:  # the JobSet webhook's rule-name pattern
        assert re.fullmatch(r"[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?", r["name"]), r["name"]


def test_an_indexed_job_fails_fast_on_a_final_failure_and_replaces_a_disrupted_pod():
    kv = pytest.importorskip("kubernetes_validate")
    from jobs.entrypoint import FINAL_EXIT

    files = _render(_cell("demo", resources={"k8s": {"workload": "indexed-job"}}))
    doc, job = _workload(files, "indexed-job")
    kv.validate(doc, K8S_VERSION, strict=True)
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    assert job["podFailurePolicy"]["rules"] == [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "FailJob", "onExitCodes": {"containerName": "stage", "operator": "In", "values": [2, FINAL_EXIT]}}]


def test_the_rendered_jobset_and_workflow_pass_the_server_dry_run(k8s):
    """The real JobSet and Workflow CRD schemas (strict: no field pruned) accept the failure policies."""
    files = _render(_cell(resources=POOL))
    backend = K8sBackend()
    backend._check(yaml.safe_load(files["k8s/workflow.yaml"]))  # every JobSet, then the Workflow, dry-run


# -- torchrun: grace period and rendezvous id ---------------------------------------------------------
@pytest.mark.parametrize("grace, timeout", [(300, 285), (20, 10), (1, 1), (0, 0)])
def test_torchrun_waits_for_its_workers_within_the_grace_period(grace, timeout):
    """torchrun's --shutdown-timeout (30 s by default) is the grace period less a margin, so the stage
    gets the grace period to finish the checkpoint it is writing before torchrun or the kubelet kills it."""
    files = _render(_cell("demo", resources={"k8s": {"grace_period_s": grace}}))
    js, job = _workload(files)
    pod = job["template"]["spec"]
    command = pod["containers"][0]["command"]
    assert pod["terminationGracePeriodSeconds"] == grace
    assert command[command.index("--shutdown-timeout") + 1] == str(timeout)


def test_each_gang_restart_gets_a_fresh_rendezvous_id():
    """The kubelet expands $(JOBSET_RESTART_ATTEMPT) in the command from the pod's env (the restart-attempt
    label, downward API), so attempt 1 of run R rendezvouses as R-1-0, its first gang restart as R-1-1."""
    js, job = _workload(_render(_cell("demo")))
    c = job["template"]["spec"]["containers"][0]
    rdzv = c["command"][c["command"].index("--rdzv_id") + 1]
    assert rdzv == "<run-id>-1-$(JOBSET_RESTART_ATTEMPT)"
    assert "JOBSET_RESTART_ATTEMPT" in {e["name"] for e in c["env"]}
    doc, job = _workload(_render(_cell("demo", resources={"k8s": {"workload": "indexed-job"}})), "indexed-job")
    c = job["template"]["spec"]["containers"][0]
    assert c["command"][c["command"].index("--rdzv_id") + 1] == "<run-id>-1"  # an Indexed Job never restarts


# -- a sweep: one Workflow, as submit creates it, and not over the size an object may have -------------
def _sweep_plans(name="demo_sweep"):
    plans = []
    for cell in load_sweep(name, root=str(REPO)).cells:
        cell.image = DIGEST
        plans.append(Plan(assign_outputs(cell), None))
    return plans


def test_plan_of_a_sweep_renders_the_one_workflow_submit_creates():
    from jobs.backends import k8s_render as kr

    backend, plans = K8sBackend(), _sweep_plans()
    files = backend.render_many(plans)
    workflows = [p for p in files if p.endswith(".workflow.yaml") or p.endswith("/workflow.yaml")]
    assert workflows == ["k8s/workflow.yaml"]
    wf = yaml.safe_load(files["k8s/workflow.yaml"])
    # what submit_many builds for the same stages (its submission id is random: compare with this one's)
    submission = wf["metadata"]["labels"]["hirl/submission"]
    jobs = [j for p in plans for j, _why in backend._all_jobs(p)]
    assert wf == yaml.safe_load(kr.to_yaml(kr.workflow(jobs, submission)))
    cells = {t["name"].split("-")[0].split("--")[0] for t in wf["spec"]["templates"][0]["dag"]["tasks"]}
    assert len(cells) == len(plans) == 6
    configmaps = [m for m in kr.manifests(wf) if m["kind"] == "ConfigMap"]
    assert len(configmaps) == 6
    for plan in plans:  # each object also as a file of its own, per cell
        folder = f"k8s/{plan.cell.cell_id[:8]}"
        assert f"{folder}/pretrain.jobset.yaml" in files and f"{folder}/config.configmap.yaml" in files
        assert f"{plan.cell.stages[0].output_dir}/config.yaml" in files
    assert backend.render_many(plans[:1]) == backend.render(plans[0])  # one cell: the same files as render


def test_a_workflow_over_the_object_size_limit_is_refused_before_anything_is_created(monkeypatch):
    from jobs.backends import k8s_render as kr

    backend, plans = K8sBackend(), _sweep_plans()
    one = len(kr.workflow_json(kr.workflow([j for j, _ in backend._all_jobs(plans[0])], "abcdef12")))
    monkeypatch.setattr(kr, "MAX_WORKFLOW_BYTES", 3 * one)
    calls = []
    monkeypatch.setattr(K8sBackend, "_create", lambda self, obj, dry_run=False: calls.append(obj))
    with pytest.raises(BackendError) as err:
        backend.preflight(plans)
    text = str(err.value)
    assert "\n" not in text and "6 cells" in text and "CELL=" in text and "limit" in text, text
    assert calls == []  # refused before the first API call
    backend.preflight(plans[:2])  # two cells fit
    assert calls


# -- hostile values in resources.k8s --------------------------------------------------------------------
K8S_TEXT_KEYS = ("gpu_pool", "namespace", "priority_class", "queue", "image", "data_pvc", "checkpoint_pvc",
                 "mlflow_configmap", "mlflow_secret", "service_account")


def _render_k8s(settings):
    """The files, or the SpecError/BackendError message; bad values must be one line."""
    try:
        resources = res.validate({"k8s": settings}, "resources")
    except SpecError as exc:
        return str(exc)
    cell = _cell("demo")
    cell.resources = resources
    try:
        return _render(cell)
    except BackendError as exc:
        return str(exc)


def _check_valid(files, value):
    kv = pytest.importorskip("kubernetes_validate")
    for path, doc in _docs(files, ".yaml").items():
        if not path.startswith("k8s/"):
            continue
        if doc["apiVersion"] in ("v1", "batch/v1"):
            kv.validate(doc, K8S_VERSION, strict=True)
        assert yaml.safe_load(yaml.safe_dump(doc)) == doc
    wf = yaml.safe_load(files["k8s/workflow.yaml"])
    from jobs.backends import k8s_render as kr
    assert [m for m in kr.manifests(wf) if m["kind"] != "ConfigMap"]  # the manifests read back as objects


@pytest.mark.parametrize("key", K8S_TEXT_KEYS)
@pytest.mark.parametrize("value", hostile.VALUES, ids=hostile.ids(hostile.VALUES))
def test_hostile_k8s_settings_are_refused_in_one_line_or_stay_data(key, value):
    out = _render_k8s({key: value})
    if isinstance(out, str):
        assert "\n" not in out and key in out, out
        return
    _check_valid(out, value)
    assert value in "".join(out.values()) or key == "image"


@pytest.mark.parametrize("field", ("key", "operator", "value", "effect"))
@pytest.mark.parametrize("value", hostile.VALUES, ids=hostile.ids(hostile.VALUES))
def test_hostile_tolerations_are_refused_in_one_line_or_stay_data(field, value):
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule", field: value}
    if field == "value":
        toleration["operator"] = "Equal"
    out = _render_k8s({"tolerations": [toleration]})
    if isinstance(out, str):
        assert "\n" not in out and "tolerations" in out, out
        return
    _check_valid(out, value)
    _doc, job = _workload(out)
    assert job["template"]["spec"]["tolerations"] == [toleration]


@pytest.mark.parametrize("settings, where", [
    ({"gpu_pool": "A100.sxm_80-GB"}, lambda pod, meta: pod["nodeSelector"]["hirl/gpu-pool"]),
    ({"namespace": "n" * 63}, lambda pod, meta: meta["namespace"]),
    ({"priority_class": "p-" + "1" * 61}, lambda pod, meta: pod["priorityClassName"]),
    ({"queue": "q" * 63}, lambda pod, meta: meta["labels"]["kueue.x-k8s.io/queue-name"]),
    ({"tolerations": [{"key": "example.com/Gpu_type", "operator": "Equal", "value": "H100.x_y-z",
                       "effect": "NoExecute", "tolerationSeconds": 0}]}, lambda pod, meta: pod["tolerations"]),
])
def test_edge_of_legal_k8s_settings_render_valid_manifests(settings, where):
    """The longest and oddest values validation lets through land where they belong, under the real schemas."""
    kv = pytest.importorskip("kubernetes_validate")
    out = _render_k8s({**settings, "workload": "indexed-job"})
    assert not isinstance(out, str), out
    _check_valid(out, "")
    doc, job = _workload(out, "indexed-job")
    value = next(iter(settings.values()))
    assert where(job["template"]["spec"], doc["metadata"]) == value
    kv.validate(doc, K8S_VERSION, strict=True)
