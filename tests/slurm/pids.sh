# Sourced by start.sh and stop.sh: the PID records of the test cluster's daemons (STATE/pid/NAME).

# True if PID $1 is a live process named $2. A zombie (a daemon that exited and that its new
# parent, init, has not reaped yet) counts as gone.
is_daemon() {
    [[ $(cat "/proc/$1/comm" 2>/dev/null) == "$2" ]] || return 1
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }  # the fields after "(comm) "; the first is the state
    [[ ${stat%% *} != Z ]]
}

# The PID recorded for daemon $2 under state folder $1, if it holds one.
recorded_pid() {
    local f=$1/pid/$2 pid
    [[ -f $f ]] || return 1
    pid=$(<"$f")
    [[ $pid =~ ^[0-9]+$ ]] || { echo "${0##*/}: $f does not hold a PID; ignored" >&2; return 1; }
    echo "$pid"
}

# The recorded PID of daemon $2 under $1 if that process is still that daemon.
running_pid() {
    local pid
    pid=$(recorded_pid "$1" "$2") && is_daemon "$pid" "$2" && echo "$pid"
}
