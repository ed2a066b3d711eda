#!/usr/bin/env bash
# Stop what docker/engine-up.sh started (the podman API service and the registry).
# Images stay on disk unless --prune: then every image but the base (localhost/debian:bookworm) and the
# registry's blobs are removed too. Each build of a new commit is ~7 GB (torch's CUDA wheels), so CI
# prunes: builds left by earlier runs once filled this host's disk mid-build.
DIR=${HIRL_ENGINE_DIR:-/tmp/hirl-engine}
for name in podman registry; do
  if [ -f "$DIR/$name.pid" ]; then
    kill "$(cat "$DIR/$name.pid")" 2>/dev/null || true
    rm -f "$DIR/$name.pid"
  fi
done
if [ "${1:-}" = "--prune" ] && [ -f "$DIR/storage.conf" ]; then
  export CONTAINERS_STORAGE_CONF=$DIR/storage.conf CONTAINERS_CONF=$DIR/containers.conf
  podman ps -aq | xargs -r podman rm -f >/dev/null 2>&1 || true
  podman images --format '{{.Id}} {{.Repository}}:{{.Tag}}' \
    | awk '$2 != "localhost/debian:bookworm" {print $1}' | sort -u | xargs -r podman rmi -f >/dev/null 2>&1 || true
  podman image prune -f >/dev/null 2>&1 || true
  rm -rf "$DIR/registry/docker"
  echo "[engine-down] pruned images and registry blobs under $DIR ($(df -h --output=avail "$DIR" | tail -1 | tr -d ' ') free)" >&2
fi
