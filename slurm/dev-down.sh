#!/bin/bash
# Stop what slurm/dev-up.sh started, by PID (munged only if dev-up started it). Safe to run twice.
# HIRL_SLURM_KEEP_STATE=1 keeps $HIRL_SLURM_DIR (logs, job state, accounting database) for a look.
D=${HIRL_SLURM_DIR:-/tmp/hirl-slurm}
[ -d "$D" ] || exit 0
if [ -f "$D/slurmctld.bgpid" ] && kill -0 "$(cat "$D/slurmctld.bgpid")" 2>/dev/null; then
  # end the jobs first: their slurmstepd processes would outlive slurmd otherwise
  export SLURM_CONF=$D/slurm.conf
  ids=$(squeue -h -o %A 2>/dev/null | sort -u)
  if [ -n "$ids" ]; then
    scancel $ids 2>/dev/null
    for _ in $(seq 1 40); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.25; done
  fi
fi
for f in slurmd-n1 slurmd-n2 slurmctld slurmdbd mariadb; do
  [ -f "$D/$f.bgpid" ] && kill "$(cat "$D/$f.bgpid")" 2>/dev/null
done
for _ in $(seq 1 40); do  # wait for them to exit (the job steps they ran end with them)
  left=0; for f in slurmd-n1 slurmd-n2 slurmctld slurmdbd mariadb; do
    [ -f "$D/$f.bgpid" ] && kill -0 "$(cat "$D/$f.bgpid")" 2>/dev/null && left=1; done
  [ $left = 0 ] && break; sleep 0.25
done
rm -f "$D"/*.bgpid
if [ -f "$D/munged.ours" ]; then kill "$(cat "$D/munged.ours")" 2>/dev/null; rm -f "$D/munged.ours"; fi
[ "${HIRL_SLURM_KEEP_STATE:-0}" = 1 ] || rm -rf "$D"
true
