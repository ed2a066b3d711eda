"""The acceptance path through make: ``make submit EXP=demo BACKEND=k8s`` and ``EXP=demo_sweep`` against
the test API server (KUBECONFIG is the fixture's) create one Workflow each; every JobSet it would create is
accepted by the server under the real schema (server-side dry-run, strict), and the sweep's cells are
independent branches of the one DAG. Nothing trains: no controller runs the objects."""

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from jobs.backends import k8s_render as kr

from ..test_makefile import MAKE_VARIABLES
from .conftest import NAMESPACE, REPO

VENV = Path(sys.executable).parent.parent
DEMO_STAGES = {"pretrain", "knn", "linear", "finetune", "semisup_1pct", "semisup_10pct", "clustering", "transfer"}


def _make_submit(root, experiment):
    """`make submit EXP=... BACKEND=k8s` run in the throwaway root, with its own MLflow store and outputs."""
    argv = ["make", "-s", "--no-print-directory", "-f", str(REPO / "Makefile"), f"VENV={VENV}",
            "-o", f"{VENV}/.installed", "submit", f"EXP={experiment}", "BACKEND=k8s"]
    env = {k: v for k, v in root.env().items() if k not in MAKE_VARIABLES}
    assert env.get("KUBECONFIG"), "the k8s fixture sets KUBECONFIG"
    out = subprocess.run(argv, cwd=root.path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("created Workflow") == 1, out.stdout
    return out


def _the_workflow(api, out):
    """The one Workflow the submission says it created, as the server stored it."""
    [line] = [l for l in out.stdout.splitlines() if l.startswith("created Workflow ")]
    ns, name = line.split()[2].rstrip(":").split("/")
    assert ns == NAMESPACE
    return api.get_namespaced_custom_object(*kr.WORKFLOW_API[:2], NAMESPACE, kr.WORKFLOW_API[2], name)


def _dry_run_every_jobset(api, wf):
    """Each JobSet the Workflow's templates hold, dry-run created by the server (strict: no unknown field)."""
    jobsets = [m for m in kr.manifests(wf) if m["kind"] == "JobSet"]
    for js in jobsets:
        made = api.create_namespaced_custom_object(*kr.JOBSET_API[:2], NAMESPACE, kr.JOBSET_API[2], js,
                                                   dry_run="All", field_validation="Strict")
        assert made["metadata"]["name"] == js["metadata"]["name"]
        assert made["spec"]["replicatedJobs"][0]["groupName"] == "default"  # the schema's default filled in
    assert not api.list_namespaced_custom_object(*kr.JOBSET_API[:2], NAMESPACE, kr.JOBSET_API[2],
                                                 label_selector=f"hirl/submission={wf['metadata']['labels']['hirl/submission']}"
                                                 )["items"]  # dry run: nothing stored
    return jobsets


def _configmaps_validate_offline(wf):
    kv = pytest.importorskip("kubernetes_validate")
    maps = [m for m in kr.manifests(wf) if m["kind"] == "ConfigMap"]
    for m in maps:
        kv.validate(m, "1.37.0", strict=True)
    return maps


def _tasks(wf):
    """{task name: (cell label, stage label or None, [dependencies])} of the Workflow's DAG."""
    templates = {t["name"]: yaml.safe_load(t["resource"]["manifest"]) for t in wf["spec"]["templates"]
                 if "resource" in t}
    [dag] = [t["dag"] for t in wf["spec"]["templates"] if t["name"] == wf["spec"]["entrypoint"]]
    out = {}
    for t in dag["tasks"]:
        labels = templates[t["template"]]["metadata"]["labels"]
        out[t["name"]] = (labels["hirl/cell"], labels.get("hirl/stage"), t.get("dependencies") or [])
    return out


def test_make_submit_demo_creates_a_workflow_and_jobsets_the_server_accepts(api, root):
    out = _make_submit(root, "demo")
    wf = _the_workflow(api, out)
    assert f"created Workflow {NAMESPACE}/{wf['metadata']['name']}" in out.stdout, out.stdout
    jobsets = _dry_run_every_jobset(api, wf)
    assert {j["metadata"]["labels"]["hirl/stage"] for j in jobsets} == DEMO_STAGES
    assert len(_configmaps_validate_offline(wf)) == 1
    tasks = _tasks(wf)
    by_stage = {stage: name for name, (_cell, stage, _deps) in tasks.items() if stage}
    [config] = [name for name, (_cell, stage, _deps) in tasks.items() if not stage]
    assert tasks[by_stage["pretrain"]][2] == [config]
    for stage, name in by_stage.items():  # every evaluation runs after pre-training, beside the others
        if stage != "pretrain":
            assert tasks[name][2] == [config, by_stage["pretrain"]], (stage, tasks[name])
    runs = root.runs("demo")
    assert len(runs) == 8 and {r.data.tags["hirl.k8s_workflow"] for r in runs} == {wf["metadata"]["name"]}
    assert {r.info.status for r in runs} == {"SCHEDULED"}
    assert (root.path / "mlflow.db").exists()  # the root's own store, not the checkout's


def test_make_submit_demo_sweep_is_one_workflow_with_each_cell_an_independent_branch(api, root):
    wf = _the_workflow(api, _make_submit(root, "demo_sweep"))
    jobsets = _dry_run_every_jobset(api, wf)
    assert len(jobsets) == 3 * 8 + 3 * 2  # demo's eight stages and hirl_demo's two, three seeds each
    assert len(_configmaps_validate_offline(wf)) == 6
    tasks = _tasks(wf)
    cells = defaultdict(list)
    for name, (cell, _stage, deps) in tasks.items():
        cells[cell].append(name)
        for d in deps:  # no dependency crosses cells: each cell starts and fails on its own
            assert tasks[d][0] == cell, (name, d)
    assert len(cells) == 6, dict(cells)  # the config step and the stages of each cell
    assert sorted(len(names) for names in cells.values()) == [1 + 2] * 3 + [1 + 8] * 3, dict(cells)
    roots = [name for name, (_cell, _stage, deps) in tasks.items() if not deps]
    assert len(roots) == 6 and {tasks[r][0] for r in roots} == set(cells)  # one root per cell: in parallel
    runs = root.runs("demo_sweep")
    assert len(runs) == 30 and {r.data.tags["hirl.k8s_workflow"] for r in runs} == {wf["metadata"]["name"]}
    assert {r.data.tags["hirl.k8s_workload"] for r in runs} == {j["metadata"]["name"] for j in jobsets}
