#!/usr/bin/env bash
# Stop what docker/engine-up.sh started (the podman API service and the registry); images stay on disk.
DIR=${HIRL_ENGINE_DIR:-/tmp/hirl-engine}
for name in podman registry; do
  if [ -f "$DIR/$name.pid" ]; then
    kill "$(cat "$DIR/$name.pid")" 2>/dev/null || true
    rm -f "$DIR/$name.pid"
  fi
done
