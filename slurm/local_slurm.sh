#!/usr/bin/env bash
# A real single-node Slurm for tests, started by hand as root without systemd.
#
#   slurm/local_slurm.sh start    # munged + slurmctld + slurmd; waits until the node is idle
#   slurm/local_slurm.sh status   # daemons' pids and `sinfo`
#   slurm/local_slurm.sh stop     # stop slurmd and slurmctld (munged is left running)
#   slurm/local_slurm.sh env      # only print the export line
#
# `start` and `status` print, as their last line, the line the caller needs:
#   export SLURM_CONF=/tmp/hpcblend-slurm/slurm.conf
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
# Needs: root, Debian packages slurmctld slurmd slurm-client munge (setup.sh
# installs them).  On failure the last lines of the daemons' logs are printed
# and the exit status is non-zero.
set -euo pipefail

DIR=${HPCBLEND_SLURM_DIR:-/tmp/hpcblend-slurm}
CONF=$DIR/slurm.conf
CTLD_PORT=${HPCBLEND_SLURMCTLD_PORT:-16817}
SLURMD_PORT=${HPCBLEND_SLURMD_PORT:-16818}
NODE=$(hostname -s)
WAIT_S=${HPCBLEND_SLURM_WAIT:-60}
CRED_EXPIRE=${HPCBLEND_SLURM_CRED_EXPIRE:-5}
MIN_JOB_AGE=${HPCBLEND_SLURM_MIN_JOB_AGE:-300}
export SLURM_CONF=$CONF

log() { printf '[local_slurm] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; show_logs; exit 1; }

show_logs() {
    local f
    for f in "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" "$DIR/log/munged.log"; do
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
    cat > "$CONF.tmp" <<EOF
# Written by slurm/local_slurm.sh: a single-node test cluster, no systemd, no cgroups.
ClusterName=hpcblend-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
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
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    mv -f "$CONF.tmp" "$CONF"
}

node_state() { sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n 1 || true; }

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
    if pid_alive "$DIR/run/slurmctld.pid" && pid_alive "$DIR/run/slurmd.pid" && [ "$(node_state)" = idle ]; then
        log "already running"
    else
        pid_alive "$DIR/run/slurmctld.pid" && pid_alive "$DIR/run/slurmd.pid" || { cmd_stop quiet; write_conf; }
        if ! pid_alive "$DIR/run/slurmctld.pid"; then
            log "starting slurmctld"
            : > "$DIR/log/slurmctld.log"
            # -c: start with no jobs from an earlier session (a test cluster keeps no history)
            slurmctld -c || die "slurmctld did not start"
        fi
        local i
        for i in $(seq $((WAIT_S * 5))); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
        scontrol ping 2>/dev/null | grep -q UP || die "slurmctld does not answer (scontrol ping)"
        if ! pid_alive "$DIR/run/slurmd.pid"; then
            log "starting slurmd"
            : > "$DIR/log/slurmd.log"
            slurmd || die "slurmd did not start"
        fi
        local st=""
        for i in $(seq $((WAIT_S * 5))); do
            st=$(node_state)
            case "$st" in
                idle) break ;;
                down|drained|draining|drain) scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
            esac
            pid_alive "$DIR/run/slurmctld.pid" || die "slurmctld exited"
            pid_alive "$DIR/run/slurmd.pid" || die "slurmd exited"
            sleep 0.2
        done
        [ "$st" = idle ] || die "node $NODE is '$st', not idle, after ${WAIT_S}s"
        log "node $NODE idle; $(sinfo -h -o '%P %D %c CPUs %m MB' | head -n 1)"
    fi
    echo "export SLURM_CONF=$CONF"
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
    local quiet=${1:-}
    [ -n "$quiet" ] || log "stopping slurmd and slurmctld"
    if [ -f "$CONF" ] && pid_alive "$DIR/run/slurmctld.pid"; then
        # cancel what is still queued or running so slurmd leaves no job processes behind
        scancel --quiet --full --partition=debug 2>/dev/null || true
        sleep 0.2
    fi
    kill_pidfile slurmd
    kill_pidfile slurmctld
}

cmd_status() {
    export PATH=$PATH:/usr/sbin
    local n
    for n in slurmctld slurmd; do
        if pid_alive "$DIR/run/$n.pid"; then echo "$n: running (pid $(cat "$DIR/run/$n.pid"))"
        else echo "$n: stopped"; fi
    done
    if munge_ok; then echo "munge: ok"; else echo "munge: not answering"; fi
    if pid_alive "$DIR/run/slurmctld.pid"; then sinfo -N -l 2>/dev/null || true; fi
    echo "export SLURM_CONF=$CONF"
    pid_alive "$DIR/run/slurmctld.pid" && pid_alive "$DIR/run/slurmd.pid"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    logs) show_logs ;;
    *) echo "usage: $0 start|stop|status|env|logs" >&2; exit 2 ;;
esac
