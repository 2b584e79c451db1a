#!/usr/bin/env bash
# Stops what deploy/slurm/start-single-node.sh started: slurmd, slurmctld and munged, by
# the process ids in their pid files (jobs still running end with the node). Leaves the
# configuration and the logs.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
  echo "stop-single-node.sh: run as root, e.g. sudo bash $0" >&2
  exit 1
fi
stopped=()
for entry in slurmd:/run/slurmd.pid slurmctld:/run/slurmctld.pid munged:/run/munge/munged.pid; do
  daemon=${entry%%:*} pidfile=${entry#*:}
  pid=$(cat "$pidfile" 2>/dev/null || true)
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$daemon" ]; then
    kill -TERM "$pid"
    for _ in $(seq 1 20); do [ -d "/proc/$pid" ] || break; sleep 0.5; done
    stopped+=("$daemon")
  fi
done
echo "stopped: ${stopped[*]:-nothing was running}"
