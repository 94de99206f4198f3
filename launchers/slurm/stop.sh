#!/usr/bin/env bash
# Stop the daemons started by launchers/slurm/start.sh, each by the PID in its pid file (never by name).
set -u
alive() {  # alive PID NAME: PID is a live (non-zombie) process named NAME
  [ "$(cat /proc/"$1"/comm 2>/dev/null)" = "$2" ] && ! grep -q '^State:.*Z' /proc/"$1"/status
}
for entry in slurmd:/run/slurmd.pid slurmctld:/run/slurmctld.pid slurmdbd:/run/slurmdbd.pid \
             mariadbd:/run/mysqld/mysqld.pid munged:/run/munge/munged.pid; do
  name=${entry%%:*}; pf=${entry#*:}
  p=$(cat "$pf" 2>/dev/null) || continue
  alive "$p" "$name" || continue
  echo "[slurm/stop] stopping $name ($p)"
  kill "$p"
  for _ in $(seq 1 100); do alive "$p" "$name" || break; sleep 0.2; done
  alive "$p" "$name" && { echo "[slurm/stop] $name ($p) still alive, SIGKILL"; kill -9 "$p"; }
done
exit 0
