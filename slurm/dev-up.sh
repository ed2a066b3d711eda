#!/bin/bash
# A 2-node SLURM 22.05 dev cluster on this one host (nodes n1, n2 on loopback), with accounting
# (slurmdbd + MariaDB: submitit reads job states through sacct) and fake GPUs through GRES.
# Needs root on Debian 12; installs slurmctld/slurmd/slurmdbd/munge/mariadb with apt when missing.
#
#   eval "$(bash slurm/dev-up.sh)"     # progress on stderr; stdout is: export SLURM_CONF=...
#   bash slurm/dev-down.sh              # stops exactly what this started (by PID)
#
# Idempotent: run again while it is up and it only prints the export line.
# Env: HIRL_SLURM_DIR (default /tmp/hirl-slurm), HIRL_SLURM_CPUS (per node, default 16: oversubscribed
# on purpose so 2x2-task CPU jobs fit on a 2-core laptop), HIRL_SLURM_GPUS (fake GPUs per node, default 8;
# 0 = no GRES), HIRL_SLURM_ACCOUNTING (1 = slurmdbd + MariaDB, the default; 0 = none: sacct and
# `hirl status` then cannot see finished jobs).
set -euo pipefail
exec 3>&1 1>&2   # everything on stderr but the export line, so `eval "$(bash slurm/dev-up.sh)"` is safe
# (the daemons get 3>&- : one holding the pipe open would make that $(...) wait forever)
D=${HIRL_SLURM_DIR:-/tmp/hirl-slurm}
CPUS=${HIRL_SLURM_CPUS:-16}
GPUS=${HIRL_SLURM_GPUS:-8}
ACCT=${HIRL_SLURM_ACCOUNTING:-1}
say() { echo "dev-up: $*" >&2; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if alive "$D/slurmctld.bgpid" && alive "$D/slurmd-n1.bgpid" && alive "$D/slurmd-n2.bgpid"; then
  say "already up ($D)"; echo "export SLURM_CONF=$D/slurm.conf" >&3; exit 0
fi
[ "$(id -u)" = 0 ] || { say "needs root (the daemons run as root on this single host)"; exit 1; }

PKGS="slurmctld slurmd slurm-client munge"; [ "$ACCT" = 1 ] && PKGS="$PKGS slurmdbd mariadb-server"
need=0; for b in slurmctld slurmd sbatch munged; do command -v $b >/dev/null || need=1; done
[ "$ACCT" = 1 ] && { command -v slurmdbd >/dev/null && command -v mariadbd >/dev/null || need=1; }
if [ $need = 1 ]; then
  say "installing $PKGS"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends $PKGS >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends $PKGS >/dev/null; }
fi
mkdir -p "$D/state" "$D/spool" "$D/log"

GRES_NODE=""; GRES_TYPES=""; rm -f "$D/gres.conf"
if [ "$GPUS" -gt 0 ]; then  # device files stand in for GPUs: GRES allocation and CUDA_VISIBLE_DEVICES work
  mkdir -p "$D/dev"
  for i in $(seq 0 $((GPUS - 1))); do [ -e "$D/dev/nvidia$i" ] || mknod "$D/dev/nvidia$i" c 195 "$i"; done
  printf 'AutoDetect=off\nNodeName=n[1-2] Name=gpu File=%s/dev/nvidia[0-%d]\n' "$D" $((GPUS - 1)) > "$D/gres.conf"
  GRES_NODE="Gres=gpu:$GPUS"; GRES_TYPES="GresTypes=gpu"
fi

# munge: reuse a running daemon; remember whether we started it so dev-down stops only ours
[ -s /etc/munge/munge.key ] || { mungekey -c -f -k /etc/munge/munge.key; chown munge:munge /etc/munge/munge.key
                                 chmod 600 /etc/munge/munge.key; }
mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! { [ -S /run/munge/munge.socket.2 ] && munge -n >/dev/null 2>&1; }; then
  runuser -u munge -- /usr/sbin/munged 3>&- && cp /run/munge/munged.pid "$D/munged.ours"
fi

# the emulated node names must resolve: the torch rendezvous uses MASTER_ADDR = the first host (n1)
grep -qE '^127\.0\.0\.1 n1 n2$' /etc/hosts || echo '127.0.0.1 n1 n2' >> /etc/hosts

if [ "$ACCT" = 1 ]; then
  ACCT_LINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=${HIRL_SLURM_DBD_PORT:-6819}
JobAcctGatherType=jobacct_gather/linux"
else
  ACCT_LINES="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
# FirstJobId: ids restart when the state dir is new, and submitit would then read a stale result file
# of an old job with the same id; a time-based start (and a fresh submitit folder per submission) avoid it.
cat > "$D/slurm.conf" <<CONF
ClusterName=hirl-dev
$GRES_TYPES
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort=${HIRL_SLURMCTLD_PORT:-6817}
AuthType=auth/munge
# a requeued job waits cred_expire seconds before it may start again (default 120): short for a dev cluster
AuthInfo=cred_expire=10
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool/%n
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd-%n.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MpiDefault=none
JobCompType=jobcomp/none
$ACCT_LINES
FirstJobId=$(( ($(date +%s) % 600000) * 100 + 1 ))
JobRequeue=1
ReturnToService=2
SlurmdTimeout=300
InactiveLimit=0
KillWait=5
MinJobAge=300
SlurmdParameters=config_overrides
NodeName=n[1-2] NodeHostname=$(hostname) NodeAddr=127.0.0.1 Port=${HIRL_SLURMD_PORTS:-17001-17002} CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=8000 State=UNKNOWN $GRES_NODE
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$D/slurm.conf

if [ "$ACCT" = 1 ]; then
  say "starting MariaDB + slurmdbd"
  mkdir -p "$D/mariadb/data" "$D/mariadb/run" && chown -R mysql:mysql "$D/mariadb"
  [ -d "$D/mariadb/data/mysql" ] || mariadb-install-db --user=mysql --datadir="$D/mariadb/data" \
      --auth-root-authentication-method=socket >/dev/null
  alive "$D/mariadb.bgpid" || {
    mariadbd --user=mysql --datadir="$D/mariadb/data" --socket="$D/mariadb/run/mysqld.sock" \
      --pid-file="$D/mariadb/run/mysqld.pid" --bind-address=127.0.0.1 --port="${HIRL_SLURM_DB_PORT:-3307}" \
      --innodb-buffer-pool-size=64M >"$D/log/mariadb.log" 2>&1 3>&- &
    echo $! > "$D/mariadb.bgpid"; }
  for _ in $(seq 1 80); do mariadb -S "$D/mariadb/run/mysqld.sock" -e 'select 1' >/dev/null 2>&1 && break; sleep 0.25; done
  mariadb -S "$D/mariadb/run/mysqld.sock" -e "create user if not exists 'slurm'@'localhost' identified by 'slurmpw';
    grant all on slurm_acct_db.* to 'slurm'@'localhost';"
  # a local-only database password for a throwaway dev cluster; slurmdbd refuses a world-readable file
  cat > "$D/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=${HIRL_SLURM_DBD_PORT:-6819}
SlurmUser=root
LogFile=$D/log/slurmdbd.log
PidFile=$D/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=${HIRL_SLURM_DB_PORT:-3307}
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
CONF
  chmod 600 "$D/slurmdbd.conf"   # slurmdbd reads the slurmdbd.conf next to $SLURM_CONF
  alive "$D/slurmdbd.bgpid" || { slurmdbd -D >"$D/log/slurmdbd.out" 2>&1 3>&- & echo $! > "$D/slurmdbd.bgpid"; }
  for _ in $(seq 1 80); do grep -q "slurmdbd version .* started" "$D/log/slurmdbd.log" 2>/dev/null && break; sleep 0.25; done
fi

say "starting slurmctld + slurmd n1, n2"
alive "$D/slurmctld.bgpid" || { slurmctld -D -i >"$D/log/slurmctld.out" 2>&1 3>&- & echo $! > "$D/slurmctld.bgpid"; }
for n in n1 n2; do
  alive "$D/slurmd-$n.bgpid" || { slurmd -D -N $n >"$D/log/slurmd-$n.out" 2>&1 3>&- & echo $! > "$D/slurmd-$n.bgpid"; }
done
for _ in $(seq 1 120); do [ "$(sinfo -h -o '%t %D' 2>/dev/null)" = "idle 2" ] && break; sleep 0.5; done
if [ "$(sinfo -h -o '%t %D' 2>/dev/null)" != "idle 2" ]; then
  say "the nodes did not come up; logs in $D/log (clean up with: bash slurm/dev-down.sh)"
  tail -n 20 "$D/log/slurmctld.log" >&2 || true; exit 1
fi
sinfo
echo "export SLURM_CONF=$D/slurm.conf" >&3
