#!/usr/bin/env bash
# A real Slurm for tests, started by hand as root without systemd: one node (default), or
# N nodes on this one machine (N slurmd daemons, `slurmd -N n1` ... `-N nN`).
#
#   slurm/local_slurm.sh start    # munged + slurmctld + slurmd; waits until the node is idle
#   slurm/local_slurm.sh status   # daemons' pids and `sinfo`
#   slurm/local_slurm.sh stop     # stop slurmd and slurmctld (munged is left running)
#   slurm/local_slurm.sh env      # only print the export line
#   slurm/local_slurm.sh start --nodes 2   # the same with two nodes n1, n2 (status/stop/env/logs
#                                          # take --nodes too: it picks the cluster's directory)
#
# `start` and `status` print, as their last line, the line the caller needs:
#   export SLURM_CONF=/tmp/hpcblend-slurm/slurm.conf
# (with --nodes N: export SLURM_CONF=/tmp/hpcblend-slurm-<N>n/slurm.conf OMPI_MCA_osc=sm,pt2pt
#  MPI4PY_RC_THREAD_LEVEL=serialized, on one line).
# Everything (slurm.conf, state, spool, logs, pid files) lives in one private
# directory, $HPCBLEND_SLURM_DIR (default /tmp/hpcblend-slurm); nothing is
# written to /etc/slurm.  Idempotent: `start` on a running cluster only checks
# it, `stop` on a stopped one does nothing.  The daemons listen on ports
# $HPCBLEND_SLURMCTLD_PORT / $HPCBLEND_SLURMD_PORT (default 16817 / 16818, not
# Slurm's 6817/6818, so a system Slurm on the same machine is not disturbed).
# HPCBLEND_SLURM_CRED_EXPIRE (default 5 s: a requeued job waits this long before it
# may start again) and HPCBLEND_SLURM_MIN_JOB_AGE (default 300 s) tune slurm.conf;
# they take effect when the daemons (re)start.
#
# --nodes N (N > 1): a separate cluster, so both can run at once: directory
# /tmp/hpcblend-slurm-<N>n, slurmctld port 16827, slurmd ports 17001 ... 17000+N (the same
# variables override them; HPCBLEND_SLURMD_PORT is the first node's port), nodes n1 ... nN
# with CPUs=max(1, nproc/N) each (HPCBLEND_SLURM_NODE_CPUS), all on this host, in one
# partition `debug` with OverSubscribe=YES.  Each slurmd reads its own copy of slurm.conf
# (its own TmpFS) and mpi.conf (its own PMIxCliTmpDirBase: otherwise the steps of two
# "nodes" create the same /tmp/spmix_appdir_* and srun fails with "File exists"), under
# $DIR/etc/<node>/; DebugFlags=NO_CONF_HASH lets the copies differ from slurmctld's.
#
# Needs: root, Debian packages slurmctld slurmd slurm-client munge (setup.sh
# installs them).  On failure the last lines of the daemons' logs are printed
# and the exit status is non-zero.
set -euo pipefail

CMD=${1:-}
[ $# -gt 0 ] && shift
NODES=1
while [ $# -gt 0 ]; do
    case "$1" in
        --nodes) NODES=${2:-}; shift 2 || { echo "--nodes needs a number" >&2; exit 2; } ;;
        --nodes=*) NODES=${1#--nodes=}; shift ;;
        *) echo "usage: $0 start|stop|status|env|logs [--nodes N]" >&2; exit 2 ;;
    esac
done
case "$NODES" in ''|*[!0-9]*|0) echo "--nodes: expected a number >= 1, got '$NODES'" >&2; exit 2 ;; esac
HOST=$(hostname -s)
if [ "$NODES" -eq 1 ]; then
    DIR=${HPCBLEND_SLURM_DIR:-/tmp/hpcblend-slurm}
    CTLD_PORT=${HPCBLEND_SLURMCTLD_PORT:-16817}
    SLURMD_PORT=${HPCBLEND_SLURMD_PORT:-16818}
    NODE_NAMES=("$HOST")
else
    DIR=${HPCBLEND_SLURM_DIR:-/tmp/hpcblend-slurm-${NODES}n}
    CTLD_PORT=${HPCBLEND_SLURMCTLD_PORT:-16827}
    SLURMD_PORT=${HPCBLEND_SLURMD_PORT:-17001}
    NODE_NAMES=()
    for i in $(seq "$NODES"); do NODE_NAMES+=("n$i"); done
fi
CONF=$DIR/slurm.conf
NODE=${NODE_NAMES[0]}
WAIT_S=${HPCBLEND_SLURM_WAIT:-60}
CRED_EXPIRE=${HPCBLEND_SLURM_CRED_EXPIRE:-5}
MIN_JOB_AGE=${HPCBLEND_SLURM_MIN_JOB_AGE:-300}
export SLURM_CONF=$CONF
# What a caller needs (the last line of start and status): SLURM_CONF and, with N nodes, the MPI
# settings that let ranks on different "nodes" (talking TCP) share an MPI window: OpenMPI 4.1 has
# only osc/pt2pt for that, which Debian's openmpi-mca-params.conf disables (osc = ^ucx,pt2pt) and
# which refuses MPI_THREAD_MULTIPLE, mpi4py's default thread level (see slurm/README.md).
MPI_EXPORTS="OMPI_MCA_osc=sm,pt2pt MPI4PY_RC_THREAD_LEVEL=serialized"
export_line() {
    if [ "$NODES" -eq 1 ]; then echo "export SLURM_CONF=$CONF"
    else echo "export SLURM_CONF=$CONF $MPI_EXPORTS"; fi
}

log() { printf '[local_slurm] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; show_logs; exit 1; }

show_logs() {
    local f
    for f in "$DIR/log/slurmctld.log" "$DIR"/log/slurmd*.log "$DIR/log/munged.log"; do
        [ -s "$f" ] || continue
        printf '%s\n' "----- last lines of $f -----" >&2
        tail -n 25 "$f" >&2
    done
}

pid_alive() {  # pid_alive PIDFILE: its process runs and is the daemon the file is named after
    local pid name
    [ -s "$1" ] || return 1
    pid=$(cat "$1")
    name=$(basename "$1" .pid)
    name=${name%%.*}  # slurmd.n1.pid: a slurmd
    kill -0 "$pid" 2>/dev/null || return 1
    [ ! -r "/proc/$pid/comm" ] || [ "$(cat "/proc/$pid/comm")" = "$name" ]
}

# --- munge -------------------------------------------------------------------
munge_ok() { command -v munge >/dev/null && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_ok; then return 0; fi
    command -v munged >/dev/null || die "munged not found (apt-get install munge)"
    local owner=munge
    id munge >/dev/null 2>&1 || owner=root
    mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge "$DIR/log"
    if [ ! -s /etc/munge/munge.key ]; then
        log "creating /etc/munge/munge.key"
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile=/etc/munge/munge.key --force
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        fi
    fi
    chown "$owner:$owner" /etc/munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
    chmod 0700 /etc/munge /var/lib/munge /var/log/munge
    chmod 0400 /etc/munge/munge.key
    chmod 0755 /run/munge
    log "starting munged (as $owner)"
    if [ "$owner" = munge ] && command -v runuser >/dev/null; then
        runuser -u munge -- /usr/sbin/munged --log-file=/var/log/munge/munged.log \
            || die "munged did not start"
    else
        /usr/sbin/munged --force --log-file=/var/log/munge/munged.log || die "munged did not start"
    fi
    local i
    for i in $(seq 50); do munge_ok && return 0; sleep 0.1; done
    cp -f /var/log/munge/munged.log "$DIR/log/munged.log" 2>/dev/null || true
    die "munge does not answer (munge -n | unmunge fails)"
}

# --- slurm.conf ----------------------------------------------------------------
write_conf() {
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/run"
    local cpus mem_mb
    cpus=$(nproc)
    # RealMemory a bit below the memory available now (90 %), in MB
    mem_mb=$(awk '/^MemAvailable:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
    [ -n "$mem_mb" ] && [ "$mem_mb" -gt 0 ] || mem_mb=1000
    # what differs between one node and N nodes on this host
    local title cluster slurmd_port daemon_files nodes partition i
    if [ "$NODES" -eq 1 ]; then
        title="a single-node test cluster"
        cluster=hpcblend-local
        slurmd_port="SlurmdPort=$SLURMD_PORT"$'\n'
        daemon_files="SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log"
        nodes="NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN"
        partition="PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
    else
        title="a $NODES-node test cluster on this one host (slurmd -N ${NODE_NAMES[0]} ... -N ${NODE_NAMES[$((NODES - 1))]})"
        cluster=hpcblend-local-${NODES}n
        slurmd_port=""
        # %n: the node's name, so that every slurmd has its own spool directory, pid and log file
        daemon_files="SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.%n.log
# every slurmd reads its own copy of this file (its own TmpFS): the copies' hashes differ
DebugFlags=NO_CONF_HASH"
        cpus=${HPCBLEND_SLURM_NODE_CPUS:-$((cpus / NODES))}
        [ "$cpus" -ge 1 ] || cpus=1
        mem_mb=$((mem_mb / NODES))
        nodes=""
        for i in $(seq 0 $((NODES - 1))); do
            [ -z "$nodes" ] || nodes+=$'\n'
            nodes+="NodeName=${NODE_NAMES[$i]} NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((SLURMD_PORT + i))"
            nodes+=" CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN"
            mkdir -p "$DIR/spool/${NODE_NAMES[$i]}"
        done
        partition="PartitionName=debug Nodes=$(IFS=,; echo "${NODE_NAMES[*]}") Default=YES MaxTime=INFINITE"
        partition+=" State=UP OverSubscribe=YES"
    fi
    cat > "$CONF.tmp" <<EOF
# Written by slurm/local_slurm.sh: $title, no systemd, no cgroups.
ClusterName=$cluster
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
${slurmd_port}SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job may start again only after the credential lifetime (default 120 s)
AuthInfo=cred_expire=$CRED_EXPIRE
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
SwitchType=switch/none
MailProg=/bin/true
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=5
# schedule pending jobs (a requeued one, when it becomes eligible) within a second or two
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2,sched_min_interval=100000
# how long "scontrol show job" still lists a finished job (there is no accounting database).
# "sbatch --wait" polls after 2, 8, then every 32 s, but every 8 s when MinJobAge <= 16 (tests)
MinJobAge=$MIN_JOB_AGE
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
StateSaveLocation=$DIR/state
$daemon_files
SlurmctldDebug=info
SlurmdDebug=info
$nodes
$partition
EOF
    mv -f "$CONF.tmp" "$CONF"
    [ "$NODES" -eq 1 ] || write_node_confs
}

# N nodes: $DIR/etc/<node>/slurm.conf (a copy with the node's own TmpFS) and mpi.conf (the
# node's own PMIxCliTmpDirBase), read by that node's slurmd only (slurmd -f; mpi.conf is
# looked up next to slurm.conf)
write_node_confs() {
    local n d
    for n in "${NODE_NAMES[@]}"; do
        d=$DIR/etc/$n
        mkdir -p "$d" "$DIR/tmp/$n"
        { cat "$CONF"; echo "TmpFS=$DIR/tmp/$n"; } > "$d/slurm.conf.tmp"
        mv -f "$d/slurm.conf.tmp" "$d/slurm.conf"
        echo "PMIxCliTmpDirBase=$DIR/tmp/$n" > "$d/mpi.conf"
    done
}

# pid file name (without .pid) of node $1's slurmd: slurmd (one node), slurmd.<node> (N nodes)
slurmd_name() { if [ "$NODES" -eq 1 ]; then echo slurmd; else echo "slurmd.$1"; fi; }

slurmds_alive() {  # every node's slurmd runs
    local n
    for n in "${NODE_NAMES[@]}"; do pid_alive "$DIR/run/$(slurmd_name "$n").pid" || return 1; done
}

# the nodes the existing slurm.conf defines are the ones asked for (HPCBLEND_SLURM_DIR reused with another --nodes)
conf_matches() {
    [ -f "$CONF" ] && [ "$(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' "$CONF" | paste -sd,)" = "$(IFS=,; echo "${NODE_NAMES[*]}")" ]
}

node_state() { sinfo -h -N -n "${1:-$NODE}" -o %T 2>/dev/null | head -n 1 || true; }

# the state of every node: "idle" when all are idle, else the first other state as "<node>:<state>"
nodes_state() {
    local n st
    for n in "${NODE_NAMES[@]}"; do
        st=$(node_state "$n")
        [ "$st" = idle ] || { echo "$n:${st:-unknown}"; return 0; }
    done
    echo idle
}

start_slurmd() {  # start_slurmd NODE
    local n=$1 name
    name=$(slurmd_name "$n")
    pid_alive "$DIR/run/$name.pid" && return 0
    log "starting slurmd${2:+ $n}"
    : > "$DIR/log/$name.log"
    if [ "$NODES" -eq 1 ]; then
        slurmd || die "slurmd did not start"
    else
        # its own copy of the configuration directory (TmpFS, PMIxCliTmpDirBase of this node)
        SLURM_CONF=$DIR/etc/$n/slurm.conf slurmd -f "$DIR/etc/$n/slurm.conf" -N "$n" \
            || die "slurmd -N $n did not start"
    fi
}

require_binaries() {
    local b
    for b in slurmctld slurmd sinfo scontrol sbatch munged; do
        command -v "$b" >/dev/null || PATH=$PATH:/usr/sbin command -v "$b" >/dev/null \
            || die "$b not found (apt-get install slurmctld slurmd slurm-client munge)"
    done
    [ "$(id -u)" -eq 0 ] || die "must run as root (slurmd runs jobs as any user)"
}

cmd_start() {
    export PATH=$PATH:/usr/sbin
    require_binaries
    mkdir -p "$DIR"
    start_munge
    if conf_matches && pid_alive "$DIR/run/slurmctld.pid" && slurmds_alive && [ "$(nodes_state)" = idle ]; then
        log "already running"
    else
        conf_matches && pid_alive "$DIR/run/slurmctld.pid" && slurmds_alive || { cmd_stop quiet; write_conf; }
        if ! pid_alive "$DIR/run/slurmctld.pid"; then
            log "starting slurmctld"
            : > "$DIR/log/slurmctld.log"
            # -c: start with no jobs from an earlier session (a test cluster keeps no history)
            slurmctld -c || die "slurmctld did not start"
        fi
        local i n
        for i in $(seq $((WAIT_S * 5))); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
        scontrol ping 2>/dev/null | grep -q UP || die "slurmctld does not answer (scontrol ping)"
        for n in "${NODE_NAMES[@]}"; do
            if [ "$NODES" -eq 1 ]; then start_slurmd "$n"; else start_slurmd "$n" named; fi
        done
        local st=""
        for i in $(seq $((WAIT_S * 5))); do
            st=$(nodes_state)
            case "$st" in
                idle) break ;;
                *:down*|*:drain*) scontrol update NodeName="${st%%:*}" State=RESUME 2>/dev/null || true ;;
            esac
            pid_alive "$DIR/run/slurmctld.pid" || die "slurmctld exited"
            for n in "${NODE_NAMES[@]}"; do
                pid_alive "$DIR/run/$(slurmd_name "$n").pid" || die "$(slurmd_name "$n") exited"
            done
            sleep 0.2
        done
        if [ "$NODES" -eq 1 ]; then
            st=${st#*:}
            [ "$st" = idle ] || die "node $NODE is '$st', not idle, after ${WAIT_S}s"
            log "node $NODE idle; $(sinfo -h -o '%P %D %c CPUs %m MB' | head -n 1)"
        else
            [ "$st" = idle ] || die "node ${st%%:*} is '${st#*:}', not idle, after ${WAIT_S}s"
            log "nodes ${NODE_NAMES[*]} idle; $(sinfo -h -o '%P %D nodes x %c CPUs %m MB' | head -n 1)"
        fi
    fi
    export_line
}

kill_pidfile() {  # kill_pidfile NAME
    local f=$DIR/run/$1.pid pid i
    pid_alive "$f" || { rm -f "$f"; return 0; }
    pid=$(cat "$f")
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        log "$1 (pid $pid) ignores SIGTERM; SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
}

cmd_stop() {
    local quiet=${1:-} f
    [ -n "$quiet" ] || log "stopping slurmd and slurmctld"
    if [ -f "$CONF" ] && pid_alive "$DIR/run/slurmctld.pid"; then
        # cancel what is still queued or running so slurmd leaves no job processes behind
        scancel --quiet --full --partition=debug 2>/dev/null || true
        sleep 0.2
    fi
    # every slurmd this directory has a pid file of (slurmd.pid, or slurmd.<node>.pid per node)
    for f in "$DIR"/run/slurmd.pid "$DIR"/run/slurmd.*.pid; do
        if [ -e "$f" ]; then kill_pidfile "$(basename "$f" .pid)"; fi
    done
    kill_pidfile slurmctld
}

cmd_status() {
    export PATH=$PATH:/usr/sbin
    local n
    for n in slurmctld "${NODE_NAMES[@]}"; do
        [ "$n" = slurmctld ] || n=$(slurmd_name "$n")
        if pid_alive "$DIR/run/$n.pid"; then echo "$n: running (pid $(cat "$DIR/run/$n.pid"))"
        else echo "$n: stopped"; fi
    done
    if munge_ok; then echo "munge: ok"; else echo "munge: not answering"; fi
    if pid_alive "$DIR/run/slurmctld.pid"; then sinfo -N -l 2>/dev/null || true; fi
    export_line
    pid_alive "$DIR/run/slurmctld.pid" && slurmds_alive
}

case "$CMD" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) export_line ;;
    logs) show_logs ;;
    *) echo "usage: $0 start|stop|status|env|logs [--nodes N]" >&2; exit 2 ;;
esac
