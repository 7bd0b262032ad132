#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine (Debian's slurm-wlm + munge), for testing the
# sbatch scripts in jobs/. Not a mock: slurmctld and slurmd run, sbatch/srun/squeue/sacct work.
#
#   scripts/slurm_cluster.sh start   # installs slurm-wlm/munge if missing, writes a config under
#                                    # $GENDA_SLURM_DIR (default /tmp/genda-slurm), starts daemons
#   scripts/slurm_cluster.sh stop    # stops the daemons this script started
# After start: export SLURM_CONF=$GENDA_SLURM_DIR/slurm.conf
set -euo pipefail
DIR=${GENDA_SLURM_DIR:-/tmp/genda-slurm}
CONF=$DIR/slurm.conf
log() { printf '[slurm] %s\n' "$*"; }

start() {
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    log "installing slurm-wlm munge"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge
  fi
  mkdir -p "$DIR"/{state,spool,log}
  # munge: key, run dir, daemon (as the munge user).
  if [ ! -s /etc/munge/munge.key ]; then mungekey --create; fi
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge && chown munge:munge /run/munge
  if ! pgrep -x munged >/dev/null; then su -s /bin/sh munge -c /usr/sbin/munged; fi
  host=$(hostname)
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
  cat > "$CONF" <<CONF
ClusterName=genda-test
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
  export SLURM_CONF=$CONF
  stop_daemons quiet
  slurmctld -f "$CONF"
  slurmd -f "$CONF"
  for _ in $(seq 1 60); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed)'; then
      log "cluster up: $(sinfo -h -o '%P %D %T %c')"
      return 0
    fi
    sleep 0.5
  done
  log "node did not become idle:"; sinfo || true; tail -20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" || true
  return 1
}

stop_daemons() {
  for p in "$DIR/slurmd.pid" "$DIR/slurmctld.pid"; do
    if [ -s "$p" ]; then kill "$(cat "$p")" 2>/dev/null || true; rm -f "$p"; fi
  done
  [ "${1:-}" = quiet ] || log "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop_daemons ;;
  *) echo "usage: $0 start|stop"; exit 2 ;;
esac
