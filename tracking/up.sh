#!/usr/bin/env bash
# A shared MLflow tracking server for a cluster: PostgreSQL (Debian's package; installed when missing and
# run as root) as the backend store (through psycopg2), proxied artifact storage (clients send artifacts through the server),
# both on loopback. Progress goes to stderr; stdout is one line: export MLFLOW_TRACKING_URI=...
# Idempotent: a second run finds the running server and prints the same line. tracking/down.sh stops
# exactly what this started (the pids in $HIRL_TRACKING_DIR/*.pid).
#   HIRL_TRACKING_DIR   (/tmp/hirl-tracking)  database cluster, artifacts, logs, pid files
#   HIRL_TRACKING_PORT  (5050)                the MLflow server on 127.0.0.1
#   HIRL_TRACKING_PG_PORT (5433)              PostgreSQL on 127.0.0.1
#   HIRL_TRACKING_WORKERS (4)                 the server's worker processes
#   HIRL_TRACKING_PYTHON (.venv/bin/python)   an interpreter with mlflow and psycopg2
set -euo pipefail
cd "$(dirname "$0")/.."
D=${HIRL_TRACKING_DIR:-/tmp/hirl-tracking}
PORT=${HIRL_TRACKING_PORT:-5050}
PG_PORT=${HIRL_TRACKING_PG_PORT:-5433}
WORKERS=${HIRL_TRACKING_WORKERS:-4}
PY=${HIRL_TRACKING_PYTHON:-.venv/bin/python}
URI=http://127.0.0.1:$PORT
say() { echo "tracking-up: $*" >&2; }
fail() { say "$*"; exit 2; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
healthy() { curl -sf --max-time 2 "$URI/health" >/dev/null 2>&1; }

if alive "$D/mlflow.pid" && healthy; then
  say "already up ($D)"; echo "export MLFLOW_TRACKING_URI=$URI"; exit 0
fi
[ -x "$PY" ] || fail "no interpreter at $PY (make setup, or set HIRL_TRACKING_PYTHON)"
"$PY" -c "import mlflow, psycopg2" 2>/dev/null || fail "$PY lacks mlflow or psycopg2 (make setup installs both)"
# hirl's server app (jobs/tracking_server.py): a sweep's runs in one request instead of ~1,400
"$PY" -c "import mlflow.server as s; s._find_app('hirl')" 2>/dev/null \
  || fail "$PY has no MLflow app 'hirl' (make setup registers it: pyproject's mlflow.app entry point)"

PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
if [ -z "$PG_BIN" ]; then
  [ "$(id -u)" = 0 ] || fail "PostgreSQL is not installed: sudo apt-get install postgresql"
  say "installing PostgreSQL (Debian package postgresql)"
  export DEBIAN_FRONTEND=noninteractive
  (apt-get install -y -qq postgresql >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq postgresql >/dev/null)) \
    || fail "apt-get install postgresql failed"
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
fi
# PostgreSQL refuses to run as root: as root, the cluster belongs to the postgres user.
if [ "$(id -u)" = 0 ]; then PG_USER=postgres; as_pg() { runuser -u postgres -- "$@"; }
else PG_USER=$(id -un); as_pg() { "$@"; }; fi

mkdir -p "$D/artifacts" "$D/run"
chmod 755 "$D"
[ "$(id -u)" != 0 ] || runuser -u postgres -- test -x "$D" \
  || fail "the postgres user cannot enter $D (a parent directory is private); set HIRL_TRACKING_DIR elsewhere"
if [ "$(id -u)" = 0 ]; then chown "$PG_USER" "$D/run"; fi
if [ ! -f "$D/pg/PG_VERSION" ]; then
  say "creating the database cluster in $D/pg"
  mkdir -p "$D/pg"; [ "$(id -u)" = 0 ] && chown "$PG_USER" "$D/pg"
  # trust on loopback only: the server listens on 127.0.0.1 and nowhere else
  as_pg "$PG_BIN/initdb" -D "$D/pg" -U postgres -A trust -E UTF8 >"$D/initdb.log" 2>&1 || {
    tail -n 20 "$D/initdb.log" >&2; fail "initdb failed (log: $D/initdb.log)"; }
fi
if ! alive "$D/postgres.pid"; then
  say "starting PostgreSQL on 127.0.0.1:$PG_PORT"
  [ "$(id -u)" = 0 ] && touch "$D/postgres.log" && chown "$PG_USER" "$D/postgres.log"
  as_pg "$PG_BIN/pg_ctl" -D "$D/pg" -l "$D/postgres.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $D/run -c max_connections=200" start >/dev/null || {
    tail -n 20 "$D/postgres.log" >&2; fail "PostgreSQL did not start (log: $D/postgres.log)"; }
  head -n1 "$D/pg/postmaster.pid" >"$D/postgres.pid"
fi
psql() { "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -X -q -t "$@"; }
[ "$(psql -c "SELECT 1 FROM pg_database WHERE datname = 'mlflow'" | tr -d ' \n')" = 1 ] || psql -c "CREATE DATABASE mlflow" >/dev/null

say "starting the MLflow server on $URI ($WORKERS workers; artifacts in $D/artifacts)"
# its own session: down.sh stops the server and its workers as one process group
# Each worker's database pool (SQLAlchemy's default, 5 + 10 overflow) ran dry under 32 stage processes
# writing every step: 10 + 20 per worker stays inside PostgreSQL's max_connections=200 at 4 workers.
MLFLOW_SQLALCHEMYSTORE_POOL_SIZE=${MLFLOW_SQLALCHEMYSTORE_POOL_SIZE:-10} \
MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW=${MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW:-20} \
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid "$PY" -m mlflow server \
  --backend-store-uri "postgresql+psycopg2://postgres@127.0.0.1:$PG_PORT/mlflow" \
  --artifacts-destination "$D/artifacts" --serve-artifacts \
  --host 127.0.0.1 --port "$PORT" --workers "$WORKERS" --app-name hirl >>"$D/mlflow.log" 2>&1 </dev/null &
echo $! >"$D/mlflow.pid"
for _ in $(seq 1 240); do
  healthy && break
  alive "$D/mlflow.pid" || { tail -n 30 "$D/mlflow.log" >&2; fail "the MLflow server exited (log: $D/mlflow.log)"; }
  sleep 0.5
done
healthy || { tail -n 30 "$D/mlflow.log" >&2; fail "the MLflow server did not answer on $URI in 120 s (log: $D/mlflow.log)"; }
say "up: MLflow $URI on PostgreSQL 127.0.0.1:$PG_PORT/mlflow"
echo "export MLFLOW_TRACKING_URI=$URI"
