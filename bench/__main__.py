"""`python -m bench [NAME ...]`: run the benchmarks and print each figure beside its floor.

Every benchmark module exposes `run() -> list[dict]` with rows
`{"figure", "value", "unit", "goal", "floor", "ratio"}` measured in the same run, so the
ratio to the floor (the raw tool doing the same work) is meaningful on any machine.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

BENCHMARKS = [
    "store",
    "queue",
    "engine",
    "prepare",
    "server",
    "api",
    "backup",
    "aws",
    "swift",
    "zaqar",
]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    return "" if value is None else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: {BENCHMARKS})")
    parser.add_argument("--json", action="store_true", help="print rows as JSON lines")
    args = parser.parse_args(argv)
    names = args.names or BENCHMARKS
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    rows: list[dict[str, Any]] = []
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        for row in module.run():
            rows.append({"bench": name, **row})
            if args.json:
                print(json.dumps(rows[-1]), flush=True)
    if not args.json:
        header = ("bench", "figure", "value", "unit", "floor", "ratio", "goal")
        table = [header] + [tuple(_fmt(r.get(k)) for k in header) for r in rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        for row in table:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
