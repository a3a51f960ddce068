#!/usr/bin/env bash
# Per-rank wrapper used by hpcblend's sbatch scripts: `... rank_exec.sh COMMAND [ARGS...]`.
# Sends this rank's output to $HB_LOGDIR/rank_<r>.log (appended, one header per
# attempt), points NUMBA_CACHE_DIR at a per-host cache ($HB_NUMBA_CACHE/<host>),
# then execs COMMAND, so signals from mpirun/srun reach hpcblend itself.
r=${OMPI_COMM_WORLD_RANK:-${PMIX_RANK:-${SLURM_PROCID:-0}}}
host=$(hostname -s)
if [ -n "${HB_NUMBA_CACHE:-}" ] && [ "$HB_NUMBA_CACHE" != none ]; then
    export NUMBA_CACHE_DIR=$HB_NUMBA_CACHE/$host
    mkdir -p "$NUMBA_CACHE_DIR"
fi
logdir=${HB_LOGDIR:-.}
mkdir -p "$logdir"
log=$logdir/rank_$r.log
{
    echo "=== $(date '+%F %T') job ${SLURM_JOB_ID:-?} attempt ${SLURM_RESTART_COUNT:-0} rank $r on $host (pid $$)"
    echo "=== NUMBA_NUM_THREADS=${NUMBA_NUM_THREADS:-} NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-}"
    echo "+ $*"
} >>"$log"
exec "$@" >>"$log" 2>&1
