#!/usr/bin/env bash
# Per-rank wrapper used by hpcblend's sbatch scripts: `... rank_exec.sh COMMAND [ARGS...]`.
# Sends this rank's output to $HB_LOGDIR/rank_<r>.log (appended, one header per
# attempt, naming the node), points NUMBA_CACHE_DIR at a per-node cache
# ($HB_NUMBA_CACHE/<node>), then execs COMMAND, so signals from mpirun/srun reach
# hpcblend itself.
# The node is Slurm's node name ($SLURMD_NODENAME), else the short host name: they differ
# where several slurmd share one host (slurm/local_slurm.sh start --nodes 2) or where a
# cluster's node names are not its host names. On such a node TMPDIR also becomes
# ${TMPDIR:-/tmp}/hpcblend-<node>, so "nodes" on one host keep their temporary files apart.
# Rank logs are named by rank only: a rank number is unique in the job, and a requeued
# rank may land on another node (one file per rank keeps its attempts together).
r=${OMPI_COMM_WORLD_RANK:-${PMIX_RANK:-${SLURM_PROCID:-0}}}
host=$(hostname -s)
node=${SLURMD_NODENAME:-$host}
where="$host (pid $$)"
if [ "$node" != "$host" ]; then
    where="node $node (host $host, pid $$)"
    export TMPDIR=${TMPDIR:-/tmp}/hpcblend-$node
    mkdir -p "$TMPDIR"
fi
if [ -n "${HB_NUMBA_CACHE:-}" ] && [ "$HB_NUMBA_CACHE" != none ]; then
    export NUMBA_CACHE_DIR=$HB_NUMBA_CACHE/$node
    mkdir -p "$NUMBA_CACHE_DIR"
fi
logdir=${HB_LOGDIR:-.}
mkdir -p "$logdir"
log=$logdir/rank_$r.log
{
    echo "=== $(date '+%F %T') job ${SLURM_JOB_ID:-?} attempt ${SLURM_RESTART_COUNT:-0} rank $r on $where"
    echo "=== NUMBA_NUM_THREADS=${NUMBA_NUM_THREADS:-} NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-}"
    echo "+ $*"
} >>"$log"
exec "$@" >>"$log" 2>&1
