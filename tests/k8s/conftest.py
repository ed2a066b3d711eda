"""Fixtures for the tests against a real Kubernetes API server with the real CRDs (JobSet, Argo
Workflow, Kueue): the kit at ``$HIRL_K8S_KIT`` (default ``<checkout>/../shared/infra``) serves them.
``.ci/run`` (and ``make dev-k8s-up``) start it and export KUBECONFIG; otherwise the session starts its
own on ports of its own and stops it at the end. Without the kit the tests skip, unless
HIRL_REQUIRE_K8S=1 (set in CI), which makes that a failure.

Nothing runs the objects (no controllers): tests stand in for Argo and the JobSet controller by
creating a Workflow's manifests and writing status, as those controllers would."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KIT = Path(os.environ.get("HIRL_K8S_KIT") or REPO.parent / "shared" / "infra")
NAMESPACE = "hirl"
DIGEST = "registry.example/hirl@sha256:" + "ab" * 32


def _own_instance():
    """A working dir and free ports of this session's own: test sessions side by side never share one."""
    ports = []
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(str(s.getsockname()[1]))
    return {"K8S_API_DIR": tempfile.mkdtemp(prefix="hirl-k8s-tests-"), "K8S_API_PORT": ports[0],
            "K8S_ETCD_PORT": ports[1], "K8S_ETCD_PEER_PORT": ports[2]}


def _missing(why):
    if os.environ.get("HIRL_REQUIRE_K8S") == "1":
        pytest.fail(f"HIRL_REQUIRE_K8S=1 but {why}")
    pytest.skip(why)


def _answers(kubeconfig):
    from kubernetes import client, config

    for _ in range(3):  # a server that just came up may answer 429 while its caches fill
        try:
            config.load_kube_config(config_file=kubeconfig)
            client.CustomObjectsApi().list_namespaced_custom_object("jobset.x-k8s.io", "v1alpha2", NAMESPACE,
                                                                    "jobsets", limit=1, _request_timeout=5)
            return True
        except Exception:  # noqa: BLE001 - any failure: try again, then start our own
            time.sleep(1)
    return False


@pytest.fixture(scope="session")
def k8s():
    """CustomObjectsApi on a live API server; KUBECONFIG set for the CLI subprocesses."""
    pytest.importorskip("kubernetes")
    from kubernetes import client, config

    given = os.environ.get("KUBECONFIG", "")
    if given and _answers(given):
        yield client.CustomObjectsApi()
        return
    if not (KIT / "k8s-api-up.sh").is_file():
        _missing(f"needs the Kubernetes API-server kit at {KIT} (HIRL_K8S_KIT), or KUBECONFIG of a running one")
    env = dict(os.environ, **_own_instance())
    try:
        up = subprocess.run(["bash", str(KIT / "k8s-api-up.sh")], env=env, stdout=subprocess.PIPE, text=True,
                            timeout=180)
        if up.returncode != 0:
            _missing(f"the kit's k8s-api-up.sh failed (exit {up.returncode})")
        kubeconfig = up.stdout.strip().rsplit("=", 1)[1]
        os.environ["KUBECONFIG"] = kubeconfig
        config.load_kube_config(config_file=kubeconfig)
        yield client.CustomObjectsApi()
    finally:
        subprocess.run(["bash", str(KIT / "k8s-api-down.sh")], env=env, timeout=60)
        if given:
            os.environ["KUBECONFIG"] = given
        else:
            os.environ.pop("KUBECONFIG", None)


CHAIN = """\
name: chain
description: MoCo v2 pre-training then KNN, as the demo was before it grew its other evaluations
stages:
  pretrain:
    config: configs/pretrain/baseline/mocov2_demo.yaml
  knn:
    config: configs/downstream/knn/knn_demo.yaml
    after: pretrain
"""
CHAIN_SWEEP = """\
name: chain_sweep
description: the chain and HIRL-MoCo v2's, three seeds each
matrix:
  method: [chain, hirl_demo]
  seed: [0, 1, 2]
"""


class Root:
    """A throwaway repo root: the configs, a pinned image record, a sqlite MLflow store, the hirl CLI."""

    def __init__(self, path):
        self.path = path
        self.uri = f"sqlite:///{path / 'mlflow.db'}"
        shutil.copytree(REPO / "configs", path / "configs")
        # A two-stage chain and a 2 x 3 sweep of it: the shape these tests check, whatever the demo grows into.
        experiments = path / "configs" / "experiments"
        (experiments / "chain.yaml").write_text(CHAIN)
        (experiments / "chain_sweep.yaml").write_text(CHAIN_SWEEP)
        (path / ".hirl").mkdir()
        (path / ".hirl" / "images.json").write_text(
            '{"latest": "hirl:test", "pushed": {"hirl:test": {"reference": "%s"}}}\n' % DIGEST)

    def env(self, **more):
        env = dict(os.environ, MLFLOW_TRACKING_URI=self.uri, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), **more)
        env.pop("MLFLOW_RUN_ID", None)
        return env

    def hirl(self, *args, timeout=300, **env):
        return subprocess.run([sys.executable, "-m", "jobs", *args], cwd=self.path, env=self.env(**env),
                              capture_output=True, text=True, timeout=timeout)

    def runs(self, experiment):
        """{stage: mlflow Run} of the experiment's stage runs (newest per stage and cell)."""
        from mlflow.tracking import MlflowClient

        c = MlflowClient(self.uri)
        exp = c.get_experiment_by_name(experiment)
        return [r for r in c.search_runs([exp.experiment_id], max_results=1000) if "hirl.stage" in r.data.tags]


@pytest.fixture
def root(tmp_path):
    return Root(tmp_path)


@pytest.fixture
def api(k8s):
    """The API for one test; every hirl Workflow and JobSet in the namespace is deleted after it."""
    yield k8s
    for group, version, plural in (("argoproj.io", "v1alpha1", "workflows"), ("jobset.x-k8s.io", "v1alpha2", "jobsets")):
        items = k8s.list_namespaced_custom_object(group, version, NAMESPACE, plural,
                                                  label_selector="app.kubernetes.io/managed-by=hirl")["items"]
        for item in items:
            k8s.delete_namespaced_custom_object(group, version, NAMESPACE, plural, item["metadata"]["name"])
