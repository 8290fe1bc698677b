#!/usr/bin/env bash
# Stop the test SLURM that tests/slurm/start.sh started from STATE_DIR.
#
#   tests/slurm/stop.sh STATE_DIR
#
# Stops exactly the processes whose PIDs start.sh recorded in STATE_DIR/pid/, and only while each PID
# still names the daemon it recorded (a PID reused by another program is left alone): SIGTERM, then
# SIGKILL after a bounded wait. Daemons go in the reverse order of their start. Removes nothing but
# the PID records of the daemons it saw gone. Jobs still on the cluster are cancelled first, so that
# no job step (slurmstepd and the job's processes) outlives slurmd. Safe to run twice.
set -uo pipefail

TERM_WAIT_S=${SLURM_TEST_STOP_WAIT_S:-15}

[[ $# -eq 1 && -n $1 ]] || { echo "usage: $0 STATE_DIR" >&2; exit 2; }
[[ -d $1 ]] || { echo "stop.sh: $1 is not a folder; nothing to stop" >&2; exit 0; }
STATE=$(cd -- "$1" && pwd -P)
export SLURM_CONF=$STATE/etc/slurm.conf

# shellcheck source=pids.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/pids.sh"

# Cancel what is left on the cluster while slurmctld and slurmd still run, and wait until the job
# steps are gone (KillWait in slurm.conf bounds how long a step may ignore SIGTERM).
if pid=$(recorded_pid "$STATE" slurmctld) && is_daemon "$pid" slurmctld && [[ -f $SLURM_CONF ]]; then
    if [[ -n $(squeue -h -o %i 2>/dev/null) ]]; then
        echo "stop.sh: cancelling the jobs left on the test cluster" >&2
        scancel --user=root 2>/dev/null
        for _ in $(seq $((TERM_WAIT_S * 5))); do
            [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break
            sleep 0.2
        done
    fi
fi

status=0
for name in slurmd slurmctld slurmdbd mariadbd munged; do
    pid=$(recorded_pid "$STATE" "$name") || continue
    if ! is_daemon "$pid" "$name"; then
        echo "stop.sh: $name (pid $pid) is not running" >&2
        rm -f "$STATE/pid/$name"
        continue
    fi
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq $((TERM_WAIT_S * 10))); do
        is_daemon "$pid" "$name" || break
        sleep 0.1
    done
    if is_daemon "$pid" "$name"; then
        echo "stop.sh: $name (pid $pid) still running ${TERM_WAIT_S} s after SIGTERM; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null
        sleep 0.5
    fi
    if is_daemon "$pid" "$name"; then
        echo "stop.sh: error: $name (pid $pid) survived SIGKILL" >&2
        status=1
    else
        echo "stop.sh: stopped $name (pid $pid)" >&2
        rm -f "$STATE/pid/$name"
    fi
done
exit $status
