"""Everything in k8s/ is a valid object: the core kinds under the real Kubernetes schemas offline
(kubernetes-validate, strict; no API server needed), the Kueue kinds dry-run by the API server under
their CRDs. Credentials are Secret references only, to the Secret the README says to create."""

import re

import pytest
import yaml

from .conftest import REPO

K8S_VERSION = "1.37.0"
KUEUE = {"ResourceFlavor": "resourceflavors", "ClusterQueue": "clusterqueues", "LocalQueue": "localqueues"}
CORE = {"Namespace", "ServiceAccount", "Role", "RoleBinding", "PersistentVolumeClaim", "Deployment", "Service",
        "ConfigMap"}


def _docs():
    """[(file name, object)] of every YAML document in k8s/."""
    out = []
    for path in sorted((REPO / "k8s").glob("*.yaml")):
        out += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def _secret_refs(node):
    """(secret name, key) of every secretKeyRef under ``node``."""
    if isinstance(node, dict):
        if "secretKeyRef" in node:
            yield node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]
        for value in node.values():
            yield from _secret_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _secret_refs(value)


def test_k8s_core_objects_validate_offline_under_the_real_schemas():
    kv = pytest.importorskip("kubernetes_validate")
    seen = set()
    for name, doc in _docs():
        if doc["kind"] in KUEUE:
            continue
        try:
            kv.validate(doc, K8S_VERSION, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"k8s/{name}: {doc['kind']} {doc['metadata'].get('name')}: {exc.message}")
        seen.add(doc["kind"])
    assert seen == CORE, seen


def test_credentials_are_secret_references_to_the_secret_the_readme_creates():
    docs = _docs()
    assert "Secret" not in {doc["kind"] for _name, doc in docs}  # no credential is ever a file here
    refs = {ref for _name, doc in docs for ref in _secret_refs(doc)}
    assert refs == {("hirl-mlflow-db", "POSTGRES_USER"), ("hirl-mlflow-db", "POSTGRES_PASSWORD")}, refs
    readme = (REPO / "k8s" / "README.md").read_text()
    created = re.search(r"create secret generic (\S+)((?:\s+\\?\s*--from-literal=\w+=\S+)+)", readme)
    assert created and created.group(1) == "hirl-mlflow-db", "README: kubectl create secret generic hirl-mlflow-db"
    assert set(re.findall(r"--from-literal=(\w+)=", created.group(2))) == {"POSTGRES_USER", "POSTGRES_PASSWORD"}
    for _name, doc in docs:  # env values: references, never a literal password or a URI with one
        text = yaml.safe_dump(doc)
        assert not re.search(r"postgresql://\w+:\w+@", text), text


def test_k8s_kueue_objects_are_accepted_by_the_server(api):
    seen = set()
    for _name, doc in _docs():
        if doc["kind"] not in KUEUE:
            continue
        seen.add(doc["kind"])
        group, version = doc["apiVersion"].split("/")
        if "namespace" in doc["metadata"]:
            api.create_namespaced_custom_object(group, version, doc["metadata"]["namespace"], KUEUE[doc["kind"]],
                                                doc, dry_run="All", field_validation="Strict")
        else:
            api.create_cluster_custom_object(group, version, KUEUE[doc["kind"]], doc, dry_run="All",
                                             field_validation="Strict")
    assert seen == set(KUEUE), seen
