#!/usr/bin/env bash
# Stop exactly what tracking/up.sh started: the MLflow server's process group and the PostgreSQL it
# started, by the pids it recorded. The data (database cluster, artifacts) stays in $HIRL_TRACKING_DIR
# for the next up; --purge removes it too. Nothing up: nothing to do.
set -uo pipefail
D=${HIRL_TRACKING_DIR:-/tmp/hirl-tracking}
say() { echo "tracking-down: $*" >&2; }
stop_group() {  # pid file, name
  [ -f "$1" ] || return 0
  local pid; pid=$(cat "$1")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && { kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"; }
    say "stopped $2 (pid $pid)"
  fi
  rm -f "$1"
}
stop_group "$D/mlflow.pid" "the MLflow server"
if [ -f "$D/postgres.pid" ]; then
  pid=$(cat "$D/postgres.pid")
  # only the postmaster this up started: the pid still heads this data dir's postmaster.pid
  if kill -0 "$pid" 2>/dev/null && [ "$(head -n1 "$D/pg/postmaster.pid" 2>/dev/null)" = "$pid" ]; then
    kill -INT "$pid"   # PostgreSQL's fast shutdown
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    say "stopped PostgreSQL (pid $pid)"
  fi
  rm -f "$D/postgres.pid"
fi
if [ "${1:-}" = --purge ]; then rm -rf "$D"; say "removed $D"; fi
exit 0
