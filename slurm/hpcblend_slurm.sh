# shellcheck shell=bash
# Shared part of hpcblend's sbatch scripts (sourced, not run):
#
#   HPCBLEND_ROOT=${HPCBLEND_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
#   source "$HPCBLEND_ROOT/slurm/hpcblend_slurm.sh"
#   hb_init "$@"                              # job file, run dir, venv, thread counts
#   hb_run mpirun -n "$SLURM_NTASKS" ...      # or: hb_run srun --mpi=pmix ...   (does not return)
#
# hb_run appends `bash slurm/rank_exec.sh hpcblend run [JOB] --output RUNDIR/catalog.h5
# [--resume] [options]` to the launcher command, runs it in the background and
# waits.  Signals and requeue (the driver's contract: on SIGTERM/SIGUSR1 it
# finishes the units in flight, writes a last round with its ledger and exits
# with code 3, "checkpointed, not finished"):
#   * SIGUSR1 to the batch shell (`#SBATCH --signal=B:USR1@120` before the time
#     limit, or `scancel --signal=USR1 --batch JOBID` by hand): forwarded as
#     SIGUSR1 to the launcher (mpirun and srun pass it on to every rank); when
#     hpcblend then exits without having finished, the script runs
#     `scontrol requeue $SLURM_JOB_ID`.  The requeued job keeps its job id, so
#     it finds the same run directory and continues with `--resume`.
#   * SIGTERM (scancel, or the time limit without the early warning): forwarded
#     as SIGUSR1 too (mpirun would kill the ranks on SIGTERM), so the ranks
#     checkpoint within KillWait if they can; no requeue (a cancel means stop).
#     Resubmit with HPCBLEND_RUNDIR=<the run dir> HPCBLEND_RESUME=1 to continue.
#
# Environment (all optional):
#   JOB                   job file (the positional argument wins); `none`: the built-in job
#                         (`hpcblend run` without a job file). Default jobs/demo.yaml when it
#                         exists, else the built-in job.
#   HPCBLEND_ROOT         repository (default $SLURM_SUBMIT_DIR): finds slurm/ and .venv
#   HPCBLEND_VENV         virtual environment to activate (default $HPCBLEND_ROOT/.venv; `none`: use PATH)
#   HPCBLEND_MODULES      modules to `module load` first, e.g. "openmpi/4.1 hdf5/1.14-mpi"
#   HPCBLEND_RUNS         parent of run directories (default $HPCBLEND_ROOT/runs)
#   HPCBLEND_RUNDIR       the run directory itself (default $HPCBLEND_RUNS/<job name>_<job id>)
#   HPCBLEND_RESUME       1: pass --resume when the catalog exists, even on a first attempt
#   HPCBLEND_ARGS         extra `hpcblend run` options, word-split (e.g. "--set run.progress=false")
#   HPCBLEND_NUMBA_CACHE  parent of the per-host Numba caches (default RUNDIR/numba_cache;
#                         `none`: leave NUMBA_CACHE_DIR alone)
#   HPCBLEND_MAX_REQUEUES stop requeueing after this many restarts (default 20)
#   HPCBLEND_SIGNAL_DEFER at most this many seconds (default 60) between a signal and its
#                         forwarding while hpcblend is still starting (see _hb_ready_for_signal)
#   HPCBLEND_DRY_RUN      1: print the command instead of running it

hb_log() { printf '[hpcblend-slurm %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# hb_init [JOB.yaml] [hpcblend run options...]
hb_init() {
    # signals from now on are remembered (bash would otherwise die of SIGUSR1)
    _hb_requeue=0 _hb_term=0 _hb_interrupted=0 _hb_pending=0 _hb_child=""
    trap '_hb_on_signal USR1' USR1
    trap '_hb_on_signal TERM' TERM
    HB_ROOT=$(cd "${HPCBLEND_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}" && pwd) || return 2
    HB_SLURM_DIR=$HB_ROOT/slurm
    # --- job file and options -------------------------------------------------
    HB_JOB=""
    if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
        HB_JOB=$1; shift
    elif [ -n "${JOB+set}" ]; then
        HB_JOB=$JOB
    elif [ -f "$HB_ROOT/jobs/demo.yaml" ]; then
        HB_JOB=$HB_ROOT/jobs/demo.yaml
    fi
    case "$HB_JOB" in none|"") HB_JOB="" ;; /*) ;; *) HB_JOB=$HB_ROOT/$HB_JOB ;; esac
    if [ -n "$HB_JOB" ] && [ ! -f "$HB_JOB" ]; then
        hb_log "ERROR: job file $HB_JOB not found"; return 2
    fi
    HB_OPTS=("$@")
    if [ -n "${HPCBLEND_ARGS:-}" ]; then
        # shellcheck disable=SC2206  # word splitting wanted
        HB_OPTS+=($HPCBLEND_ARGS)
    fi
    # --- run directory: stable across requeues (a requeued job keeps SLURM_JOB_ID) -----
    local jobid=${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-$$}}
    HB_RUNDIR=${HPCBLEND_RUNDIR:-${HPCBLEND_RUNS:-$HB_ROOT/runs}/${SLURM_JOB_NAME:-hpcblend}_$jobid}
    case "$HB_RUNDIR" in /*) ;; *) HB_RUNDIR=$PWD/$HB_RUNDIR ;; esac
    if [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
        HB_TASKDIR=$HB_RUNDIR/task_$SLURM_ARRAY_TASK_ID
    else
        HB_TASKDIR=$HB_RUNDIR
    fi
    HB_CATALOG=$HB_TASKDIR/catalog.h5
    HB_LOGDIR=$HB_TASKDIR/logs
    mkdir -p "$HB_LOGDIR" || return 2
    export HB_LOGDIR HB_RUNDIR
    # --- environment ----------------------------------------------------------
    if [ -n "${HPCBLEND_MODULES:-}" ] && command -v module >/dev/null 2>&1; then
        # shellcheck disable=SC2086
        module load $HPCBLEND_MODULES || { hb_log "ERROR: module load $HPCBLEND_MODULES failed"; return 2; }
    fi
    local venv=${HPCBLEND_VENV:-$HB_ROOT/.venv}
    if [ "$venv" != none ]; then
        if [ -f "$venv/bin/activate" ]; then
            # shellcheck disable=SC1091
            source "$venv/bin/activate"
        else
            hb_log "ERROR: no virtual environment at $venv (run ./setup.sh, or set HPCBLEND_VENV)"; return 2
        fi
    fi
    command -v hpcblend >/dev/null || { hb_log "ERROR: hpcblend not on PATH"; return 2; }
    local threads=${SLURM_CPUS_PER_TASK:-1}
    export NUMBA_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads OMP_NUM_THREADS=$threads
    if [ "${HPCBLEND_NUMBA_CACHE:-}" != none ]; then
        # per host (rank_exec.sh appends the host name): the Numba cache is not safe to
        # share between hosts writing at once on a network filesystem
        export HB_NUMBA_CACHE=${HPCBLEND_NUMBA_CACHE:-$HB_RUNDIR/numba_cache}
    else
        export HB_NUMBA_CACHE=none
    fi
    if [ "$(id -u)" -eq 0 ]; then
        export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    fi
    HB_ATTEMPT=${SLURM_RESTART_COUNT:-0}
    HB_RESUME=()
    if [ -e "$HB_CATALOG" ] && { [ "$HB_ATTEMPT" -gt 0 ] || [ "${HPCBLEND_RESUME:-0}" = 1 ]; }; then
        HB_RESUME=(--resume)
    fi
    # a restart after the run had already finished (the stop signal came too late to matter):
    # `--resume` refuses a complete catalog, and there is nothing left to do
    HB_COMPLETE=0
    if [ ${#HB_RESUME[@]} -gt 0 ] && HDF5_USE_FILE_LOCKING=FALSE python -c \
        'import sys, h5py; f = h5py.File(sys.argv[1], "r"); sys.exit(0 if f.attrs.get("complete", False) else 1)' \
        "$HB_CATALOG" 2>/dev/null; then
        HB_COMPLETE=1
    fi
    hb_log "job ${SLURM_JOB_ID:-?}${SLURM_ARRAY_TASK_ID:+ (array task $SLURM_ARRAY_TASK_ID)} attempt $HB_ATTEMPT" \
        "on ${SLURM_JOB_NODELIST:-$(hostname -s)}: ${SLURM_NTASKS:-1} task(s) x $threads thread(s)"
    hb_log "job file: ${HB_JOB:-<built-in job>}; run dir: $HB_TASKDIR${HB_RESUME:+ (resuming)}"
}

_hb_on_signal() {  # _hb_on_signal USR1|TERM
    _hb_interrupted=1
    case "$1" in
        USR1) _hb_requeue=1 ;;
        TERM) _hb_term=1 ;;
    esac
    hb_log "got SIG$1${_hb_child:+; asking hpcblend (pid $_hb_child) to checkpoint}"
    _hb_pending=1
}

# hpcblend's ranks handle SIGUSR1/SIGTERM only once their work loop runs (before that the
# signal's default action kills them): the first unit a rank starts is written to
# <catalog>.log/rank_<r>.inflight, so forward only when such a file is newer than this
# attempt's start, or when HPCBLEND_SIGNAL_DEFER (default 60) seconds have passed.
_hb_ready_for_signal() {
    [ -n "$(find "$HB_CATALOG.log" -maxdepth 1 -name 'rank_*.inflight' -newer "$_hb_marker" 2>/dev/null | head -n 1)" ] \
        || [ $((SECONDS - _hb_t_launch)) -ge "${HPCBLEND_SIGNAL_DEFER:-60}" ]
}

# hb_run LAUNCHER [ARGS...]: run hpcblend under the launcher, handle signals and requeue; exits.
hb_run() {
    local cmd=("$@" bash "$HB_SLURM_DIR/rank_exec.sh" hpcblend run)
    [ -n "$HB_JOB" ] && cmd+=("$HB_JOB")
    cmd+=(--output "$HB_CATALOG" "${HB_RESUME[@]}" "${HB_OPTS[@]}")
    if [ "$HB_COMPLETE" = 1 ]; then
        hb_log "done: $HB_CATALOG is already complete (finished in an earlier attempt)"
        exit 0
    fi
    hb_log "run: ${cmd[*]}"
    hb_log "rank logs: $HB_LOGDIR/rank_<r>.log"
    if [ "${HPCBLEND_DRY_RUN:-0}" = 1 ]; then exit 0; fi
    local t0=$SECONDS rc
    if [ "$_hb_requeue" = 1 ] || [ "$_hb_term" = 1 ]; then
        # stopped before hpcblend started: nothing to checkpoint (a rank without its signal
        # handlers yet would die of the forwarded signal)
        rc=3
        hb_log "signal before the start: not starting hpcblend"
    else
        _hb_marker=$HB_LOGDIR/.attempt_${HB_ATTEMPT}_start
        touch "$_hb_marker"
        _hb_t_launch=$SECONDS
        "${cmd[@]}" &
        _hb_child=$!
        _hb_wait
        rc=$_hb_rc
        _hb_checkpointed_despite_launcher
    fi
    _hb_finish "$rc" "$t0"
}

# srun --kill-on-bad-exit ends the whole step as soon as one rank exits non-zero: after a
# checkpoint the first rank to exit with 3 gets the others killed while they exit (srun then
# reports 143 or 137), although the checkpoint is complete. When a stop signal was forwarded and
# rank 0 (the catalog's writer) logged in this attempt that it stopped after a checkpoint, the
# exit code is 3. (Sets rc of the caller.)
_hb_checkpointed_despite_launcher() {
    [ "$_hb_requeue" = 1 ] || [ "$_hb_term" = 1 ] || return 0
    case "$rc" in 0|2|3) return 0 ;; esac
    local log0=$HB_LOGDIR/rank_0.log
    [ -s "$log0" ] || return 0
    # rank 0's lines since this attempt's header (rank_exec.sh: "=== <time> job J attempt A rank 0 on ...")
    if awk -v h="job ${SLURM_JOB_ID:-?} attempt $HB_ATTEMPT rank 0 " \
        'index($0, "=== ") == 1 && / attempt [0-9]+ rank / { on = (index($0, h) > 0); next }
         on && /stopped by signal after a checkpoint/ { found = 1 } END { exit !found }' "$log0"; then
        hb_log "the launcher ended with code $rc after a rank had exited with code 3 (checkpointed);" \
            "rank 0 wrote its checkpoint: exit code 3"
        rc=3
    fi
}

_hb_wait() {  # wait for $_hb_child, forwarding signals as SIGUSR1; its exit status in _hb_rc
    local said=0
    while :; do
        if [ "$_hb_pending" = 1 ]; then
            if _hb_ready_for_signal; then
                _hb_pending=0 said=0
                kill -USR1 "$_hb_child" 2>/dev/null || true
            elif kill -0 "$_hb_child" 2>/dev/null; then
                [ "$said" = 1 ] || hb_log "hpcblend is still starting; forwarding the signal once its work loop runs"
                said=1
                sleep 0.5
                continue
            fi
        fi
        _hb_interrupted=0
        wait "$_hb_child"; _hb_rc=$?
        # `wait` returns >128 when a trapped signal interrupts it: wait again for the real status
        if [ "$_hb_rc" -gt 128 ] && [ "$_hb_interrupted" = 1 ]; then continue; fi
        break
    done
}

# After a crash (a rank killed, a node lost): which rank, on which node, was working on which
# unit, from the driver's in-flight files <catalog>.log/rank_<r>.inflight (the launcher's own
# line before this one, e.g. srun's "n2: task 1: Killed", names the rank that died first).
_hb_lost_units() {
    [ -d "$HB_CATALOG.log" ] || return 0
    local line
    python - "$HB_CATALOG" 2>/dev/null <<'PY' | while IFS= read -r line; do hb_log "$line"; done
import sys
from hpcblend.parallel.markers import inflight_units
for r, rec in sorted(inflight_units(sys.argv[1]).items()):
    if rec.get("unit"):
        node = rec.get("node") or rec.get("host")
        print(f"rank {r} on node {node} (host {rec.get('host')}, pid {rec.get('pid')}) was working on unit "
              f"{rec.get('path') or rec['unit']} since {rec.get('since')} when the job ended")
PY
}

_hb_finish() {  # _hb_finish RC T0: report, then exit or requeue
    local rc=$1 t0=$2
    trap - USR1 TERM
    [ -n "$_hb_child" ] && hb_log "hpcblend exited with code $rc after $((SECONDS - t0)) s"
    if [ -n "$_hb_child" ] && [ -s "$HB_LOGDIR/rank_0.log" ]; then
        hb_log "last lines of rank 0's log:"
        tail -n 15 "$HB_LOGDIR/rank_0.log"
    fi
    if [ -n "$_hb_child" ] && [ "$rc" -ne 0 ] && [ "$rc" -ne 2 ] && [ "$rc" -ne 3 ]; then
        _hb_lost_units
    fi
    if [ "$rc" -eq 0 ]; then
        hb_log "done: $HB_CATALOG"
        exit 0
    fi
    if [ "$_hb_requeue" = 1 ] && [ "$_hb_term" = 0 ]; then
        local max=${HPCBLEND_MAX_REQUEUES:-20}
        if [ "$HB_ATTEMPT" -ge "$max" ]; then
            hb_log "not requeueing: already restarted $HB_ATTEMPT times (HPCBLEND_MAX_REQUEUES=$max)"
            exit "$rc"
        fi
        [ "$rc" -eq 3 ] || hb_log "warning: exit code $rc, not 3 (checkpointed): resuming from the last complete round"
        hb_log "requeueing job ${SLURM_JOB_ID:-?} (it will continue with --resume)"
        if scontrol requeue "${SLURM_JOB_ID:?not in a Slurm job}"; then
            exit 0
        fi
        hb_log "ERROR: scontrol requeue failed (was the job submitted with --requeue?)"
        exit "$rc"
    fi
    # checkpointed, cancelled, or crashed (anything but 2, hpcblend's one-line refusal): resumable
    if [ -e "$HB_CATALOG" ] && { [ "$rc" -ne 2 ] || [ "$_hb_term" = 1 ]; }; then
        hb_log "stopped before the end; the catalog keeps every completed write round. To continue:"
        hb_log "  HPCBLEND_RUNDIR=$HB_RUNDIR HPCBLEND_RESUME=1 sbatch <same script and arguments>"
    fi
    exit "$rc"
}
