#!/usr/bin/env bash
# A single-node SLURM on this machine, for trying and testing `scalable-assoc run --cluster`
# (tests/test_slurm.py, CI). Not for production: one node that is controller and compute
# node at once, no accounting, jobs run as the user who submits them.
#
# Needs root and the Debian/Ubuntu packages slurm-wlm and munge:
#   apt-get install -y --no-install-recommends slurm-wlm munge
# Writes /etc/slurm/slurm.conf (only if there is none, or one this script wrote), a munge
# key if there is none, starts munged, slurmctld and slurmd in the background (logs in
# /var/log/slurm/), and waits until a job runs (`srun hostname`). Running it again while
# SLURM answers changes nothing. deploy/slurm/stop-single-node.sh stops the daemons.
set -euo pipefail

WAIT_SECONDS=${WAIT_SECONDS:-60}
CONF=/etc/slurm/slurm.conf
MARK="# written by scalable_assoc deploy/slurm/start-single-node.sh"
LOGS=/var/log/slurm
PARTITION=debug

if [ "$(id -u)" -ne 0 ]; then
  echo "start-single-node.sh: run as root (it writes $CONF and starts munged, slurmctld and slurmd), e.g. sudo bash $0" >&2
  exit 1
fi
for tool in munged slurmctld slurmd sinfo srun; do
  if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$tool" ]; then
    echo "start-single-node.sh: $tool not found; install SLURM first: apt-get install -y --no-install-recommends slurm-wlm munge" >&2
    exit 1
  fi
done
export PATH="$PATH:/usr/sbin:/sbin"

running() {  # running DAEMON: its pid file names a live process of that name (no procps needed)
  local pidfile pid
  case "$1" in munged) pidfile=/run/munge/munged.pid ;; *) pidfile=/run/$1.pid ;; esac
  pid=$(cat "$pidfile" 2>/dev/null || true)
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]
}

answers() {  # SLURM runs a job on this node within a few seconds
  timeout 20 srun --quiet -N1 -n1 -t 1 hostname >/dev/null 2>&1
}

if running slurmctld && running slurmd && answers; then
  echo "SLURM already running on this node: $(sinfo -h -o '%P %D %T' | tr '\n' ' ')"
  exit 0
fi

# --- configuration ---------------------------------------------------------------------
if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
  echo "start-single-node.sh: $CONF exists and was not written by this script; leaving it alone." >&2
  echo "  (SLURM does not answer with it either; see $LOGS/. Move it away to let this script write a single-node one.)" >&2
  exit 1
fi
host=$(hostname -s)
node=$(slurmd -C | head -n 1)   # NodeName=<host> CPUs=... RealMemory=... as this machine has them
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOGS"
cat > "$CONF" <<CONFIG
$MARK
ClusterName=single
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONFIG

# --- munge -----------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  if command -v mungekey >/dev/null 2>&1 || [ -x /usr/sbin/mungekey ]; then
    mungekey --create --keyfile /etc/munge/munge.key
  else
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  fi
fi
chown munge:munge /etc/munge /etc/munge/munge.key
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
if ! running munged; then
  runuser -u munge -- munged
fi
for _ in $(seq 1 20); do
  munge -n </dev/null | unmunge >/dev/null 2>&1 && break
  sleep 0.5
done

# --- daemons ---------------------------------------------------------------------------
if ! running slurmctld; then
  nohup slurmctld -D >>"$LOGS/slurmctld.out" 2>&1 &
  sleep 1
fi
if ! running slurmd; then
  nohup slurmd -D >>"$LOGS/slurmd.out" 2>&1 &
fi

# --- wait until a job runs -------------------------------------------------------------
deadline=$((SECONDS + WAIT_SECONDS))
while [ "$SECONDS" -lt "$deadline" ]; do
  state=$(sinfo -h -n "$host" -o '%T' 2>/dev/null || true)
  case "$state" in
    down*|drain*) scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  if answers; then
    echo "SLURM running on this node: partition $PARTITION, $(sinfo -h -o '%D node(s) %c CPUs %m MB %T' | head -n 1); logs in $LOGS"
    exit 0
  fi
  sleep 1
done
echo "start-single-node.sh: SLURM did not run a job within $WAIT_SECONDS s" >&2
sinfo >&2 || true
for log in "$LOGS/slurmctld.log" "$LOGS/slurmd.log" "$LOGS/slurmctld.out" "$LOGS/slurmd.out"; do
  [ -f "$log" ] && { echo "--- $log (last 40 lines)" >&2; tail -n 40 "$log" >&2; }
done
exit 1
