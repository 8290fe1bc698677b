#!/usr/bin/env bash
# Start a private single-node SLURM for the tests: munged, MariaDB, slurmdbd, slurmctld and slurmd,
# every one with its configuration, state, sockets, logs and PID under STATE_DIR.
#
#   tests/slurm/start.sh STATE_DIR
#
# Idempotent: daemons already running from STATE_DIR are left alone, missing ones are started.
# Clients find the cluster through  export SLURM_CONF=STATE_DIR/etc/slurm.conf  (printed on success).
# Stop it with  tests/slurm/stop.sh STATE_DIR  (it stops exactly the PIDs recorded in STATE_DIR/pid/).
#
# Why MariaDB and slurmdbd: submitit reads every job's state with `sacct`, and sacct answers only
# from slurmdbd ("Slurm accounting storage is disabled" otherwise), which stores into MySQL/MariaDB.
#
# Exit status: 0 running; 77 SLURM cannot run on this machine (not root, no apt-get, the packages
# are missing and the Debian registry is unreachable): the caller may skip; 2 usage; 1 any other
# failure (the daemons' log tails are printed).
#
# System-wide changes: only the Debian packages (slurm-wlm, munge, slurmdbd, mariadb-server-core and
# their dependencies). munge's own postinst writes /etc/munge/munge.key; this script does not use it
# (its munged reads STATE_DIR/munge/munge.key). The packages' services are not used: where a
# policy-rc.d denies service starts (this kind of machine) nothing starts at install time.
set -euo pipefail

PACKAGES=(slurm-wlm munge slurmdbd mariadb-server-core)
CLUSTER=harnesstest
PARTITION=test
WAIT_S=${SLURM_TEST_WAIT_S:-60}

die() { echo "start.sh: error: $*" >&2; exit 1; }
cannot_run() { echo "start.sh: SLURM cannot run here: $*" >&2; exit 77; }

[[ $# -eq 1 && -n $1 ]] || { echo "usage: $0 STATE_DIR" >&2; exit 2; }
mkdir -p -- "$1"
STATE=$(cd -- "$1" && pwd -P)

[[ $(id -u) -eq 0 ]] || cannot_run "it must run as root (slurmd runs jobs as their users, and this cluster's SlurmUser is root); run the tests as root"

# ---------------------------------------------------------------- packages
installed() {
    local p
    for p in "${PACKAGES[@]}"; do
        [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || return 1
    done
}

apt_install() {
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        -o Acquire::http::Timeout=30 -o Acquire::Retries=2 -o DPkg::Lock::Timeout=300 \
        "${PACKAGES[@]}" >"$STATE/log/apt-install.log" 2>&1
}

mkdir -p "$STATE/log"
if ! installed; then
    command -v apt-get >/dev/null || cannot_run "packages ${PACKAGES[*]} are missing and there is no apt-get to install them"
    echo "start.sh: installing ${PACKAGES[*]} with apt-get" >&2
    # Update the package lists only when the install fails with the lists there are (they may be stale).
    if ! apt_install; then
        DEBIAN_FRONTEND=noninteractive timeout 300 apt-get update -q -o Acquire::http::Timeout=30 \
            -o DPkg::Lock::Timeout=300 >"$STATE/log/apt-update.log" 2>&1 || true
        if grep -qE '^(W|E|Err):.*(Failed to fetch|Could not resolve|Temporary failure|Could not connect|Unable to connect|Connection failed)' \
            "$STATE/log/apt-update.log"; then
            cannot_run "packages ${PACKAGES[*]} are missing and the Debian registry is unreachable (apt-get update: $(grep -m1 -E '^(W|E|Err):' "$STATE/log/apt-update.log"))"
        fi
        apt_install || { tail -n 20 "$STATE/log/apt-install.log" >&2; die "apt-get install ${PACKAGES[*]} failed (log above, full log $STATE/log/apt-install.log)"; }
    fi
    installed || die "apt-get reported success but ${PACKAGES[*]} are not all installed"
fi

# ---------------------------------------------------------------- layout and configuration
mkdir -p "$STATE"/{etc,munge,db/data,db/tmp,ctld,spool,pid,run}
chmod 700 "$STATE/munge" "$STATE/db"
CONF=$STATE/etc/slurm.conf
MUNGE_SOCKET=$STATE/munge/munge.socket
DB_SOCKET=$STATE/db/mysqld.sock
for s in "$MUNGE_SOCKET" "$DB_SOCKET"; do
    # A UNIX socket path holds at most 107 bytes.
    (( ${#s} < 100 )) || die "socket path $s is too long for a UNIX socket; choose a shorter STATE_DIR"
done

# Local TCP ports in use on this machine, from the kernel's tables; with "listen", listening ones only.
ports_in_use() {
    local _sl addr _rem st _rest
    while read -r _sl addr _rem st _rest; do
        [[ $addr == *:* ]] || continue  # the header line
        [[ ${1:-} == listen && $st != 0A ]] && continue
        echo $((16#${addr##*:}))
    done < <(cat /proc/net/tcp /proc/net/tcp6 2>/dev/null) | sort -un
}

# Three consecutive free ports. The search starts at a point derived from STATE_DIR so that two
# clusters started at once from different folders do not race for the same ports.
choose_ports() {
    local used port
    used=$(ports_in_use)
    port=$(( 20000 + ($(printf '%s' "$STATE" | cksum | cut -d' ' -f1) % 10000) * 3 ))
    while grep -qxE "$port|$((port + 1))|$((port + 2))" <<<"$used"; do
        port=$((port + 3))
        (( port < 60000 )) || die "no three consecutive free TCP ports between 20000 and 60000"
    done
    echo "$port"
}

if [[ ! -f $CONF ]]; then
    base=$(choose_ports)
    host=$(hostname -s)
    cpus=$(nproc)
    # RealMemory a little under what the kernel reports: slurmd marks the node invalid if it is over.
    mem=$(free -m | awk '/^Mem:/ { print int($2 * 0.95) }')
    cat >"$STATE/etc/plugstack.conf" <<EOF
# No SPANK plugins for the test cluster (instead of the system's /etc/slurm/plugstack.conf).
EOF
    cat >"$STATE/etc/slurmdbd.conf" <<EOF
# slurmdbd of the test cluster; found in the folder of SLURM_CONF.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$((base + 2))
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
# "localhost" makes the MySQL client use the UNIX socket named by MYSQL_UNIX_PORT (no TCP).
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$STATE/etc/slurmdbd.conf"  # slurmdbd refuses a configuration others can read
    cat >"$CONF.tmp" <<EOF
# Single-node test cluster written by tests/slurm/start.sh; every path lives under $STATE.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$base
SlurmdPort=$((base + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
PlugStackConfig=$STATE/etc/plugstack.conf
MailProg=/bin/true
MpiDefault=none
# No cgroups: 22.05 rejects CgroupPlugin=disabled, and this machine needs none.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# Cores are the consumable resource, memory is not: two 1-CPU jobs run side by side.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Batch jobs may be requeued (submitit requeues a job that is about to time out or is pre-empted).
JobRequeue=1
ReturnToService=2
# Short timeouts for a test: a dead daemon shows within seconds, and a cancelled job that ignores
# SIGTERM (submitit's job process does) gets SIGKILL about 7 s after scancel (slurmd waits at
# least 5 s) instead of 30+.
SlurmdTimeout=10
MessageTimeout=5
KillWait=2
# Scheduling passes every 1-2 s instead of 30-60 s: a requeued job whose wait is over starts at once.
SchedulerParameters=sched_interval=2,bf_interval=1
# sacct (which submitit reads job states from) needs accounting through slurmdbd.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$((base + 2))
# The MUNGE socket for talking to slurmdbd (AuthInfo only covers slurmctld and slurmd).
AccountingStoragePass=$MUNGE_SOCKET
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
fi
conf_value() { sed -n "s/^$1=//p" "$CONF" | head -n1; }
NODE=$(conf_value NodeName | cut -d' ' -f1)
export SLURM_CONF=$CONF MYSQL_UNIX_PORT=$DB_SOCKET

# ---------------------------------------------------------------- daemons
# shellcheck source=pids.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/pids.sh"

show_logs() {
    local f
    for f in "$STATE"/log/*.log "$STATE"/db/mysqld.log; do
        [[ -f $f ]] || continue
        echo "---- last lines of $f" >&2
        tail -n 15 "$f" >&2
    done
}
fail() { echo "start.sh: error: $*" >&2; show_logs; echo "start.sh: stop what did start with: $(dirname "$0")/stop.sh $STATE" >&2; exit 1; }

# Start daemon $1 in the foreground of its own session (command $2...), record its PID.
launch() {
    local name=$1 pid i
    shift
    if pid=$(running_pid "$STATE" "$name"); then
        echo "start.sh: $name already running (pid $pid)" >&2
        return
    fi
    setsid "$@" </dev/null >>"$STATE/log/$name.out" 2>&1 &
    pid=$!
    # setsid execs the daemon in place (the background child is not a group leader), so $! is its PID.
    for i in $(seq 50); do
        is_daemon "$pid" "$name" && break
        kill -0 "$pid" 2>/dev/null || fail "$name exited at once (see $STATE/log/$name.out)"
        sleep 0.1
    done
    is_daemon "$pid" "$name" || fail "process $pid did not become $name (see $STATE/log/$name.out)"
    echo "$pid" >"$STATE/pid/$name"
}

# Wait until command "$2..." succeeds, at most $1 seconds, checking that daemon $DAEMON still lives.
wait_for() {
    local limit=$1 t0=$SECONDS
    shift
    until "$@" >/dev/null 2>&1; do
        running_pid "$STATE" "$DAEMON" >/dev/null || fail "$DAEMON died while starting"
        (( SECONDS - t0 < limit )) || fail "$DAEMON not ready after ${limit} s (waited for: $*)"
        sleep 0.2
    done
}

need_port() {
    # A port another program listens on (perhaps another SLURM) since the configuration was
    # written: starting would talk to, or fight with, that program. (Connections of a daemon that
    # just stopped may linger in TIME_WAIT; the daemons rebind past those.)
    if ports_in_use listen | grep -qx "$2"; then
        fail "port $2 for $1 is taken by another program${HAVE_SS:+ ($(ss -Hltnp "sport = :$2" | head -n1))}; stop it, or start from a new STATE_DIR (its configuration picks free ports)"
    fi
}
HAVE_SS=$(command -v ss || true)
listening() { ports_in_use listen | grep -qx "$1"; }

munge_ok() { munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET"; }
node_idle() { [[ $(sinfo -h -n "$NODE" -o %T) == idle ]]; }
cluster_registered() { sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; }

# munged: its own key, socket, seed and log. --force: it would refuse the socket folder's
# permissions (only root can enter it, and only root uses this cluster).
if [[ ! -f $STATE/munge/munge.key ]]; then
    (umask 077; head -c 1024 /dev/urandom >"$STATE/munge/munge.key.tmp")
    chmod 400 "$STATE/munge/munge.key.tmp"
    mv "$STATE/munge/munge.key.tmp" "$STATE/munge/munge.key"
fi
DAEMON=munged
launch munged munged --foreground --force --socket="$MUNGE_SOCKET" --key-file="$STATE/munge/munge.key" \
    --log-file="$STATE/log/munged.log" --pid-file="$STATE/run/munged.pid" --seed-file="$STATE/munge/munged.seed"
wait_for 15 munge_ok

# MariaDB for slurmdbd: reachable only through its socket under STATE_DIR (no network), so the
# grant tables are skipped and nothing needs installing into the data folder first. Small InnoDB
# sizes for a database of a few jobs: slurmdbd logs "error: Database settings not recommended
# values: innodb_buffer_pool_size innodb_log_file_size" for them, which is harmless here.
DAEMON=mariadbd
running_pid "$STATE" mariadbd >/dev/null || rm -f "$DB_SOCKET"
launch mariadbd mariadbd --no-defaults --user=root --datadir="$STATE/db/data" --tmpdir="$STATE/db/tmp" \
    --socket="$DB_SOCKET" --pid-file="$STATE/run/mariadbd.pid" --log-error="$STATE/db/mysqld.log" \
    --skip-networking --skip-grant-tables --innodb-buffer-pool-size=32M --innodb-log-file-size=16M \
    --innodb-lock-wait-timeout=900
wait_for 60 test -S "$DB_SOCKET"

DAEMON=slurmdbd
DBD_PORT=$(sed -n 's/^DbdPort=//p' "$STATE/etc/slurmdbd.conf")
running_pid "$STATE" slurmdbd >/dev/null || need_port slurmdbd "$DBD_PORT"
launch slurmdbd slurmdbd -D
wait_for 60 listening "$DBD_PORT"

DAEMON=slurmctld
running_pid "$STATE" slurmctld >/dev/null || need_port slurmctld "$(conf_value SlurmctldPort)"
launch slurmctld slurmctld -D -f "$CONF"
wait_for 60 scontrol ping
# slurmctld adds its cluster to slurmdbd when it first registers; sacct needs that.
wait_for "$WAIT_S" cluster_registered

DAEMON=slurmd
running_pid "$STATE" slurmd >/dev/null || need_port slurmd "$(conf_value SlurmdPort)"
launch slurmd slurmd -D -f "$CONF" -N "$NODE"
wait_for "$WAIT_S" node_idle

echo "start.sh: SLURM running: node $NODE idle in partition $PARTITION; export SLURM_CONF=$CONF" >&2
