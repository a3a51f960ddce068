#!/usr/bin/env bash
# Submit a scaling study: one Slurm job per rank count, strong and/or weak scaling.
#
#   slurm/scaling_sweep.sh [options] [JOB.yaml] [-- hpcblend run options...]
#
#   --ranks "1 2 4 8 16"   rank counts (default "1 2")
#   --mode strong|weak|both (default both)
#     strong: the same job at every rank count.
#     weak:   the problem grows with the ranks: each --weak-set is passed as --set, with
#             {units} replaced by PER_RANK x ranks and {ranks} by the rank count
#   --weak-set KEY=VALUE   (repeatable) default: input.kind=demo and input.n_demo_blends={units}
#                          (synthetic blends, one unit each); for a simulated tract e.g.
#                          --per-rank 1000 --weak-set 'input.simulate.shape=[2000,{units}]'
#                          --weak-set 'input.tract_dir=.hpcblend_cache/weak_{ranks}'
#   --per-rank N           units per rank for weak scaling (default 16)
#   --ntasks-per-node N    ranks per node (default: CPUs per node / cpus-per-task, from sinfo)
#   --cpus-per-task N      Numba/BLAS threads per rank (default 1)
#   --repeat N             jobs per (mode, ranks) point (default 1)
#   --serial               each job waits for the previous one (afterany): no two
#                          points compete for the same cores or filesystem
#   --sbatch "OPTS"        more sbatch options for every job (e.g. "--partition=x --exclusive")
#   --script FILE          sbatch script (default slurm/multi_node.sbatch: srun --mpi=pmix)
#   --out DIR              sweep directory (default runs/sweep_<date>_<time>)
#   --dry-run              print the sbatch commands only
#
# Each job writes DIR/<mode>_n<ranks>[_r<k>]_<job id>/catalog.h5 (per-blend times, ranks
# and the provenance are in the catalog) and DIR/manifest.tsv lists
# mode, ranks, repeat, job id and run directory of every job.  JOB.yaml as in the
# sbatch scripts (default jobs/demo.yaml if it exists, else the built-in demo).
# The jobs share one Numba cache per host, DIR/numba_cache/<host> (HPCBLEND_NUMBA_CACHE
# overrides): only the first job on a host compiles; each job logs its cold start.
# Submit from the repository root (the jobs find .venv through SLURM_SUBMIT_DIR).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

ranks="1 2"; mode=both; weak_sets=(); per_rank=16; ntpn=""; cpt=1; repeat=1
serial=0; sbatch_opts=""; script=$here/multi_node.sbatch; out=""; dry=0; job=""
usage() { sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --ranks) ranks=$2; shift 2 ;;
        --mode) mode=$2; shift 2 ;;
        --weak-set) weak_sets+=("$2"); shift 2 ;;
        --per-rank) per_rank=$2; shift 2 ;;
        --ntasks-per-node) ntpn=$2; shift 2 ;;
        --cpus-per-task) cpt=$2; shift 2 ;;
        --repeat) repeat=$2; shift 2 ;;
        --serial) serial=1; shift ;;
        --sbatch) sbatch_opts=$2; shift 2 ;;
        --script) script=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --dry-run) dry=1; shift ;;
        -h|--help) usage 0 ;;
        --) shift; break ;;
        -*) echo "scaling_sweep.sh: unknown option $1" >&2; usage 2 ;;
        *) [ -z "$job" ] || { echo "scaling_sweep.sh: one job file only" >&2; exit 2; }; job=$1; shift ;;
    esac
done
extra=("$@")
case "$mode" in strong) modes=strong ;; weak) modes=weak ;; both) modes="strong weak" ;;
    *) echo "scaling_sweep.sh: --mode must be strong, weak or both" >&2; exit 2 ;; esac
if [ -z "$ntpn" ]; then
    # fewest CPUs of any node sinfo lists (with the partition of --sbatch, if any)
    part=$(printf '%s\n' $sbatch_opts | sed -n 's/^--partition=//p; s/^-p//p' | head -n 1)
    cpus=$(sinfo -h ${part:+-p "$part"} -o %c 2>/dev/null | sort -n | head -n 1 || true)
    cpus=${cpus%+}
    if [ -n "$cpus" ] && [ "$cpus" -ge "$cpt" ] 2>/dev/null; then ntpn=$(( cpus / cpt )); else ntpn=1000000; fi
fi
out=${out:-$root/runs/sweep_$(date +%Y%m%d_%H%M%S)}
case "$out" in /*) ;; *) out=$PWD/$out ;; esac
manifest=$out/manifest.tsv
if [ "$dry" = 0 ]; then
    mkdir -p "$out"
    [ -s "$manifest" ] || printf 'mode\tranks\trepeat\tjob_id\trun_dir\n' > "$manifest"
fi
if [ ${#weak_sets[@]} -eq 0 ]; then
    weak_sets=("input.kind=demo" "input.n_demo_blends={units}")
    if [ -n "$job" ] && [ "$mode" != strong ]; then
        echo "scaling_sweep.sh: warning: weak scaling without --weak-set runs synthetic demo blends," \
             "not $job's inputs" >&2
    fi
fi

prev=""
for m in $modes; do
    for n in $ranks; do
        for k in $(seq "$repeat"); do
            name=${m}_n${n}
            [ "$repeat" -gt 1 ] && name=${name}_r$k
            opts=(--parsable --job-name="$name" --ntasks="$n" --cpus-per-task="$cpt"
                  --output="$out/$name-%j.out")
            per_node=$(( ntpn < n ? ntpn : n ))
            opts+=(--ntasks-per-node="$per_node" --nodes=$(( (n + per_node - 1) / per_node )))
            [ "$serial" = 1 ] && [ -n "$prev" ] && opts+=(--dependency="afterany:$prev")
            # shellcheck disable=SC2206  # word splitting wanted
            [ -n "$sbatch_opts" ] && opts+=($sbatch_opts)
            args=()
            [ -n "$job" ] && args+=("$job")
            if [ "$m" = weak ]; then
                for w in "${weak_sets[@]}"; do
                    w=${w//\{units\}/$((per_rank * n))}
                    args+=(--set "${w//\{ranks\}/$n}")
                done
            fi
            args+=("${extra[@]}")
            if [ "$dry" = 1 ]; then
                echo "HPCBLEND_RUNS=$out HPCBLEND_NUMBA_CACHE=${HPCBLEND_NUMBA_CACHE:-$out/numba_cache} sbatch ${opts[*]} $script ${args[*]}"
                continue
            fi
            id=$(cd "$root" && HPCBLEND_RUNS=$out HPCBLEND_NUMBA_CACHE=${HPCBLEND_NUMBA_CACHE:-$out/numba_cache} sbatch "${opts[@]}" "$script" "${args[@]}")
            id=${id%%;*}
            prev=$id
            printf '%s\t%s\t%s\t%s\t%s\n' "$m" "$n" "$k" "$id" "$out/${name}_$id" >> "$manifest"
            echo "submitted $name: job $id"
        done
    done
done
[ "$dry" = 1 ] || echo "manifest: $manifest"
