#!/usr/bin/env bash
# `dev-api.sh up`: a real Kubernetes API server with the JobSet, Argo Workflow and Kueue CRDs on
# 127.0.0.1, for BACKEND=k8s and tests/k8s (schemas, status, watch; no controllers and no core/v1: see
# the kit's README); progress goes to stderr, stdout is one line: export KUBECONFIG=...
# `dev-api.sh down`: stop exactly what `up` started (the kit stops the two processes it recorded).
# Both wrap the kit at $HIRL_K8S_KIT (default <checkout>/../shared/infra).
set -euo pipefail
action="${1:-}"
case "$action" in
  up|down) ;;
  *) echo "usage: dev-api.sh up|down (got '${action}')" >&2; exit 2 ;;
esac
here="$(cd "$(dirname "$0")" && pwd)"
kit="${HIRL_K8S_KIT:-$here/../../shared/infra}"
if [ ! -f "$kit/k8s-api-$action.sh" ]; then
  echo "dev-api $action: no API-server kit at $kit (set HIRL_K8S_KIT to the folder with k8s-api-$action.sh)" >&2
  [ "$action" = down ] && exit 0   # nothing was started, so nothing to stop
  exit 2
fi
exec bash "$kit/k8s-api-$action.sh"
