#!/usr/bin/env bash
# One-command set-up for hpcblend: system MPI + parallel HDF5, a .venv with
# mpi4py and an MPI-enabled h5py, and hpcblend installed editable with its test
# extras.  Idempotent: a second run only verifies (a few seconds).
#
#   ./setup.sh            # install what is missing, then verify
#   VENV=/path ./setup.sh # put the virtual environment elsewhere
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

log() { printf '[setup] %s\n' "$*"; }

# --- 1. system packages (Debian): OpenMPI and parallel HDF5 -----------------
DEB_PKGS="openmpi-bin libopenmpi-dev libhdf5-openmpi-dev pkg-config"
# Test tools: headless Chromium (report test) and a single-node Slurm (sbatch tests).
# Skip them with HPCBLEND_NO_TEST_TOOLS=1 on a production machine.
if [ "${HPCBLEND_NO_TEST_TOOLS:-0}" != "1" ]; then
    DEB_PKGS="$DEB_PKGS chromium slurmctld slurmd slurm-client munge"
fi
missing=""
for p in $DEB_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    log "installing Debian packages:$missing"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# OpenMPI refuses to start as root unless told; harmless otherwise.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# --- 2. virtual environment ------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
fi
VPY="$VENV/bin/python"
PIP="$VPY -m pip install -q"

# numba pins numpy (< 2.6): install it first so numpy is resolved once.
$VPY -c "import numba" 2>/dev/null || { log "installing numba + numpy"; $PIP "numba>=0.60"; }

# mpi4py: the PyPI binary wheel works with Debian's OpenMPI.
$VPY -c "import mpi4py" 2>/dev/null || { log "installing mpi4py"; $PIP "mpi4py>=3.1"; }

# h5py from source against Debian's parallel HDF5 (about 3 minutes, once).
if ! $VPY -c "import h5py, sys; sys.exit(0 if h5py.get_config().mpi else 1)" 2>/dev/null; then
    log "building h5py against parallel HDF5 (takes a few minutes, once)"
    $PIP "Cython>=3,<4" numpy packaging pkgconfig "setuptools>=77" wheel
    CC=mpicc HDF5_MPI=ON HDF5_PKGCONFIG_NAME=hdf5-openmpi H5PY_SETUP_REQUIRES=0 \
        $PIP --no-build-isolation --no-binary=h5py --no-cache-dir --force-reinstall --no-deps "h5py>=3.10"
fi

# --- 3. the project, editable, with test extras ----------------------------
if ! $VPY -c "import hpcblend, pytest, pytest_mpi" 2>/dev/null || [ setup.cfg -nt "$VENV/.hpcblend-installed" ]; then
    log "installing hpcblend (editable) with test extras"
    $PIP --no-build-isolation -e ".[test]" || $PIP -e ".[test]"
    touch "$VENV/.hpcblend-installed"
fi

# --- 4. verify ----------------------------------------------------------------
$VPY -c "import h5py, sys; assert h5py.get_config().mpi, 'h5py in $VENV has no MPI'; print('[setup] h5py', h5py.__version__, 'with MPI')"
out=$(mpirun --oversubscribe -n 2 "$VPY" -c "from mpi4py import MPI; c=MPI.COMM_WORLD; print('hello from rank', c.rank, 'of', c.size)" 2>&1) || { echo "$out"; log "2-rank MPI hello FAILED"; exit 1; }
[ "$(echo "$out" | grep -o "hello from rank" | wc -l)" -eq 2 ] || { echo "$out"; log "2-rank MPI hello did not print two ranks"; exit 1; }
log "2-rank MPI hello OK"

# --- 5. compile the Numba kernels once, into their cache -----------------------
# (~40 s the first time, <1 s when the cache is current), so a new user's first `hpcblend run` starts as
# fast as the second. The cache goes beside the kernels, or into NUMBA_CACHE_DIR when set; a cluster
# job that sets run.numba_cache_dir compiles once per host there instead (see slurm/README.md).
# Skip with HPCBLEND_NO_WARMUP=1.
if [ "${HPCBLEND_NO_WARMUP:-0}" != "1" ]; then
    NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $VPY -c "
from hpcblend.deblend import warm_up
from hpcblend.units.tract import warm_up_tract
print('[setup] Numba kernels compiled and cached in %.1f s' % (warm_up() + warm_up_tract()))"
fi
log "ready: source $VENV/bin/activate  (or use bin/hpcblend-mpirun)"
