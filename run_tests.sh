#!/usr/bin/env bash
# The test command: serial suite, then the MPI tests under 2 ranks (pytest-mpi).
# Exits non-zero when any test fails or when no test ran.
set -uo pipefail
cd "$(dirname "$0")"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
PY=.venv/bin/python
$PY -m pytest -q tests "$@"
rc=$?
if [ $rc -ne 0 ]; then echo "serial tests failed (exit $rc)"; exit $rc; fi
mpirun --oversubscribe -n 2 -x NUMBA_NUM_THREADS -x OPENBLAS_NUM_THREADS $PY -m pytest -q --with-mpi -m mpi tests
rc=$?
if [ $rc -ne 0 ]; then echo "MPI tests failed (exit $rc)"; exit $rc; fi
