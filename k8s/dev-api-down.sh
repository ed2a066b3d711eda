#!/usr/bin/env bash
# Stop exactly what dev-api-up.sh started (the kit stops the two processes it recorded).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
kit="${HIRL_K8S_KIT:-$here/../../shared/infra}"
if [ ! -f "$kit/k8s-api-down.sh" ]; then
  echo "dev-api-down: no API-server kit at $kit (set HIRL_K8S_KIT); nothing stopped" >&2
  exit 0
fi
exec bash "$kit/k8s-api-down.sh"
