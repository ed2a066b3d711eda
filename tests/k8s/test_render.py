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
    assert c["command"][:12] == ["torchrun", "--nnodes", "2", "--nproc_per_node", "8", "--rdzv_backend", "c10d",
                                 "--rdzv_endpoint", f"{name}-node-0-0.{name}:29500", "--rdzv_id", "<run-id>-1",
                                 "--max_restarts"]
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
