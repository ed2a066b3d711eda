"""Everything in k8s/ is a valid object: the core kinds under the real Kubernetes schemas offline
(kubernetes-validate, strict), the Kueue kinds dry-run by the API server under their CRDs."""

import pytest
import yaml

from .conftest import REPO


def test_k8s_assets_are_accepted_by_the_server_or_validate_offline(api):
    kv = pytest.importorskip("kubernetes_validate")
    kueue = {"ResourceFlavor": "resourceflavors", "ClusterQueue": "clusterqueues", "LocalQueue": "localqueues"}
    seen = set()
    for path in sorted((REPO / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            seen.add(doc["kind"])
            if doc["kind"] in kueue:
                group, version = doc["apiVersion"].split("/")
                if "namespace" in doc["metadata"]:
                    api.create_namespaced_custom_object(group, version, doc["metadata"]["namespace"],
                                                        kueue[doc["kind"]], doc, dry_run="All",
                                                        field_validation="Strict")
                else:
                    api.create_cluster_custom_object(group, version, kueue[doc["kind"]], doc, dry_run="All",
                                                     field_validation="Strict")
            else:
                kv.validate(doc, "1.37.0", strict=True)
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "PersistentVolumeClaim", "Deployment", "Service",
            "ResourceFlavor", "ClusterQueue", "LocalQueue", "ConfigMap"} <= seen, seen
