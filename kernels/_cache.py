"""Keep Numba's on-disk cache of the kernels consistent with their sources as a whole.

Numba checks a cached kernel against the file that defines it only (its index records that file's
time stamp and size), so a kernel whose *callee* in another file changed — after ``git pull``, an
upgrade, or an edit of ``operators.py`` that ``fit.py`` inlines — would load its stale machine code
and silently compute with the old callee. :func:`refresh_stale_cache` records a SHA-256 of every
kernel source file beside the cache and, when it differs, deletes the kernels' cached entries first,
so they are compiled afresh from the current sources (once; ``./setup.sh`` does it at set-up).
"""

from __future__ import annotations

import hashlib
import os
from types import ModuleType
from typing import Iterable, List

__all__ = ["STAMP_NAME", "sources_digest", "cache_dirs", "refresh_stale_cache"]

#: File beside the cached kernels holding the digest of the sources they were compiled from.
STAMP_NAME = "hpcblend-kernels.sha256"


def sources_digest(directory: str) -> str:
    """SHA-256 (hex) of the names and contents of the ``.py`` files of ``directory``, in name order."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(directory)):
        if name.endswith(".py"):
            h.update(name.encode())
            with open(os.path.join(directory, name), "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def cache_dirs(modules: Iterable[ModuleType]) -> List[str]:
    """The directories where Numba caches the ``cache=True`` kernels defined in ``modules``."""
    dirs = set()
    for mod in modules:
        for obj in vars(mod).values():
            path = getattr(getattr(obj, "_cache", None), "_cache_path", None)
            if path and getattr(obj, "__module__", None) == mod.__name__:
                dirs.add(path)
    return sorted(dirs)


def refresh_stale_cache(directories: Iterable[str], digest: str, module_names: Iterable[str]) -> List[str]:
    """Delete the cached kernels of ``module_names`` in every directory whose stamp is not ``digest``.

    Parameters
    ----------
    directories : iterable of str
        Numba cache directories (:func:`cache_dirs`); a missing one is created (its stamp then says
        what the kernels cached there next will be compiled from).
    digest : str
        :func:`sources_digest` of the kernels' sources.
    module_names : iterable of str
        Short module names (``"fit"``, ...): cache files ``<module>.<function>-<line>.<python>.nbi|nbc``.

    Returns
    -------
    list of str
        The directories that were refreshed. Errors (a read-only cache, a file another process
        removed first) are ignored: at worst a kernel is compiled again.
    """
    names = set(module_names)
    refreshed = []
    for d in directories:
        try:
            os.makedirs(d, exist_ok=True)
        except OSError:
            continue
        stamp = os.path.join(d, STAMP_NAME)
        try:
            with open(stamp) as f:
                if f.read().strip() == digest:
                    continue
        except OSError:
            pass
        for name in os.listdir(d):
            if name.endswith((".nbi", ".nbc")) and name.split(".")[0] in names:
                try:
                    os.remove(os.path.join(d, name))
                except OSError:
                    pass
        try:
            tmp = f"{stamp}.{os.getpid()}"
            with open(tmp, "w") as f:
                f.write(digest + "\n")
            os.replace(tmp, stamp)
        except OSError:
            pass
        refreshed.append(d)
    return refreshed
