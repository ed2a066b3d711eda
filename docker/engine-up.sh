#!/usr/bin/env bash
# A Docker-compatible engine for `hirl image` on this host: podman's Docker API socket, a local
# registry on 127.0.0.1:5001, and the base image localhost/debian:bookworm (no base image can be pulled
# here, so it is bootstrapped from the machine's Debian mirror). Root only; no systemd needed.
# stdout: `export ...` lines for eval (DOCKER_HOST and podman's config); progress goes to stderr.
# Stop it with docker/engine-down.sh (it stops exactly what this started).
set -euo pipefail
DIR=${HIRL_ENGINE_DIR:-/tmp/hirl-engine}
PORT=${HIRL_REGISTRY_PORT:-5001}
export DEBIAN_FRONTEND=noninteractive
log() { echo "[engine-up] $*" >&2; }

need=()
for tool in podman buildah runc mmdebstrap docker-registry; do command -v "$tool" >/dev/null || need+=("$tool"); done
if ((${#need[@]})); then
  log "installing podman, buildah, runc, mmdebstrap, docker-registry (apt)"
  apt-get install -y -qq --no-install-recommends podman buildah runc conmon netavark aardvark-dns catatonit \
    mmdebstrap docker-registry uidmap >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends podman buildah runc conmon \
         netavark aardvark-dns catatonit mmdebstrap docker-registry uidmap >/dev/null; }
fi
mkdir -p "$DIR/registry"
# One build is ~7 GB in the engine plus its copy in the registry; warn before a build fails mid-commit.
free_gb=$(df -BG --output=avail "$DIR" | tail -1 | tr -dc 0-9)
if [ "${free_gb:-0}" -lt 20 ]; then
  log "warning: only ${free_gb} GB free under $DIR; a build needs ~15 GB (old builds: bash docker/engine-down.sh --prune)"
fi

# crun cannot run on this host's hybrid cgroups -> runc; the default rlimits need CAP_SYS_RESOURCE we
# lack -> lower ones; host networking needs no bridge/iptables; the host's CA bundle is mounted into
# RUN steps and containers (a TLS-intercepting proxy may sit in front of PyPI) and never baked in.
cat > "$DIR/storage.conf" <<CONF
[storage]
driver = "overlay"
runroot = "$DIR/run"
graphroot = "$DIR/storage"
CONF
cat > "$DIR/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
netns = "host"
volumes = ["/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
cat > "$DIR/registries.conf" <<CONF
unqualified-search-registries = []
[[registry]]
location = "127.0.0.1:$PORT"
insecure = true
CONF
export CONTAINERS_STORAGE_CONF=$DIR/storage.conf CONTAINERS_CONF=$DIR/containers.conf \
       CONTAINERS_REGISTRIES_CONF=$DIR/registries.conf

if ! podman image exists localhost/debian:bookworm 2>/dev/null; then
  log "bootstrapping localhost/debian:bookworm from the Debian mirror (mmdebstrap)"
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list)
  [ -f "$DIR/bookworm.tar" ] || mmdebstrap --quiet --variant=apt --include=python3,python3-venv,ca-certificates \
    bookworm "$DIR/bookworm.tar" "$mirror" >&2
  podman import --change 'CMD ["/bin/bash"]' "$DIR/bookworm.tar" localhost/debian:bookworm >/dev/null
fi

cat > "$DIR/registry.yml" <<CONF
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $DIR/registry}, delete: {enabled: true}}
http: {addr: "127.0.0.1:$PORT"}
CONF
if ! curl -sf "http://127.0.0.1:$PORT/v2/" >/dev/null; then
  docker-registry serve "$DIR/registry.yml" > "$DIR/registry.log" 2>&1 & echo $! > "$DIR/registry.pid"
fi
if ! curl -sf --unix-socket "$DIR/podman.sock" http://d/_ping >/dev/null 2>&1; then
  podman system service --time=0 "unix://$DIR/podman.sock" > "$DIR/podman.log" 2>&1 & echo $! > "$DIR/podman.pid"
fi
for _ in $(seq 1 80); do
  curl -sf --unix-socket "$DIR/podman.sock" http://d/_ping >/dev/null 2>&1 \
    && curl -sf "http://127.0.0.1:$PORT/v2/" >/dev/null && break
  sleep 0.25
done
curl -sf --unix-socket "$DIR/podman.sock" http://d/_ping >/dev/null || { log "podman API did not start: $DIR/podman.log"; exit 1; }
curl -sf "http://127.0.0.1:$PORT/v2/" >/dev/null || { log "registry did not start: $DIR/registry.log"; exit 1; }
log "engine at unix://$DIR/podman.sock, registry at 127.0.0.1:$PORT"
echo "export CONTAINERS_STORAGE_CONF=$DIR/storage.conf CONTAINERS_CONF=$DIR/containers.conf" \
     "CONTAINERS_REGISTRIES_CONF=$DIR/registries.conf DOCKER_HOST=unix://$DIR/podman.sock" \
     "HIRL_REGISTRY=127.0.0.1:$PORT"
