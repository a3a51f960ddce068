"""Keep a rank's freed memory for its next work unit (glibc ``mallopt``), instead of faulting in fresh pages.

A tract rank allocates and frees the same large arrays for every patch (the coadd planes, the detection
and significance images, a large parent's model arrays: tens to hundreds of MB each). glibc serves
allocations above its mmap threshold (at most 32 MB) with fresh ``mmap`` pages and returns them on
``free``, so every patch pays the page faults of touching them again — on a virtual machine about 7 µs per
4 KiB page, 0.3 s for 180 MB. With mmap disabled and a high trim threshold the freed pages stay in the
heap and are reused; the resident size stays at the rank's high-water mark, which a batch rank reaches
on its first large unit anyway. Never changes a result.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["M_MMAP_MAX", "M_TRIM_THRESHOLD", "TRIM_THRESHOLD_BYTES", "keep_freed_memory"]

#: ``mallopt`` parameters (glibc's ``malloc.h``).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: Free memory at the top of the heap kept rather than returned to the system (bytes).
TRIM_THRESHOLD_BYTES = 1 << 30


def keep_freed_memory(enabled: bool = True) -> bool:
    """Ask glibc's allocator to keep freed memory in the process (``run.keep_freed_memory``).

    Parameters
    ----------
    enabled : bool
        False: leave the allocator as it is.

    Returns
    -------
    bool
        True when glibc accepted both settings; False when disabled, not on Linux, or the C library has
        no ``mallopt`` (musl, macOS): the run goes on with the default allocator.
    """
    if not enabled or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
