"""Compare two catalogs column by column (timings and rank aside): what a code change did to the rows.

    .venv/bin/python profiling/compare_catalogs.py OLD.h5 NEW.h5 [--tables blends sources ...]

For every table in both catalogs: row counts, ids, and per shared column whether the values are
identical (NaN equal to NaN); columns only in one catalog are listed as added or removed, with how
many rows of a new boolean flag are set. Exit code 1 when a shared column differs.
"""

import argparse
import sys

from hpcblend.io.catalog import read_table
from hpcblend.analysis.reproduce import table_differences


def compare(old_path: str, new_path: str, tables) -> bool:
    same = True
    for name in tables:
        try:
            a, b = read_table(old_path, name), read_table(new_path, name)
        except Exception as exc:  # noqa: BLE001 - a table missing in one catalog is reported, not fatal
            print(f"{name}: not compared ({exc})")
            continue
        print(f"{name}: {len(a)} rows old, {len(b)} rows new")
        diff = table_differences(a, b)  # timings and rank aside; NaN equals NaN; columns of both
        for line in diff:
            print(f"  DIFFERS {line}")
        same &= not diff
        n_shared = sum(1 for c in a.dtype.names if c in b.dtype.names and not c.startswith(("t_", "rank")))
        added = [c for c in b.dtype.names if c not in a.dtype.names]
        removed = [c for c in a.dtype.names if c not in b.dtype.names]
        for c in added:
            extra = f" ({int(b[c].sum())} set)" if b[c].dtype.kind in "bi" and b[c].ndim == 1 else ""
            print(f"  added {c}{extra}")
        for c in removed:
            print(f"  removed {c}")
        print(f"  {n_shared} shared columns identical" if not diff else f"  {len(diff)} of {n_shared} differ")
    return same


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--tables", nargs="+", default=["patches", "blends", "sources", "models", "model_pixels"])
    args = p.parse_args(argv)
    return 0 if compare(args.old, args.new, args.tables) else 1


if __name__ == "__main__":
    sys.exit(main())
