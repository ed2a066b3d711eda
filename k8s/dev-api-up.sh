#!/usr/bin/env bash
# A real Kubernetes API server with the JobSet, Argo Workflow and Kueue CRDs on 127.0.0.1, for
# BACKEND=k8s and tests/k8s (schemas, status, watch; no controllers and no core/v1: see the kit's
# README). It wraps the kit at $HIRL_K8S_KIT (default <checkout>/../shared/infra).
# Progress goes to stderr; stdout is one line: export KUBECONFIG=...
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
kit="${HIRL_K8S_KIT:-$here/../../shared/infra}"
if [ ! -f "$kit/k8s-api-up.sh" ]; then
  echo "dev-api-up: no API-server kit at $kit (set HIRL_K8S_KIT to the folder with k8s-api-up.sh)" >&2
  exit 2
fi
exec bash "$kit/k8s-api-up.sh"
