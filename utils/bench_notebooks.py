#!/usr/bin/env python3
"""Time every lesson top to bottom against its three-minute budget (lessons run one at a time).

    python3 bootstrap.py bench            # or: .venv/bin/python utils/bench_notebooks.py
    python utils/bench_notebooks.py notebooks/03_self_attention.ipynb

Prints one row per lesson and exits 1 if any lesson is over budget or fails. The notebooks on
disk are not changed. ``--write-readme`` puts the measured times into the README's syllabus table.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from utils.notebook_run import BUDGET_S, execute, lessons  # noqa: E402


README = Path(__file__).resolve().parents[1] / "README.md"


def write_readme_times(times: dict[str, float]) -> None:
    """Set the run-time column of each measured lesson's row in the README's syllabus table."""
    lines = README.read_text().split("\n")
    for i, line in enumerate(lines):
        m = re.search(r"\(notebooks/([^)]+\.ipynb)\)", line)
        if line.startswith("|") and m and m.group(1) in times:
            cols = line.split(" | ")
            cols[2] = f"{times[m.group(1)]:.0f} s"
            lines[i] = " | ".join(cols)
    README.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path)
    parser.add_argument("--write-readme", action="store_true", help="record the times in README.md")
    args = parser.parse_args()
    times: dict[str, float] = {}
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; budget {BUDGET_S:.0f} s per lesson")
    print(f"{'lesson':<36}{'seconds':>9}  verdict")
    status = 0
    for path in args.paths or lessons():
        try:
            _, seconds = execute(path, env={"COURSE_NO_PROGRESS": "1"})
        except Exception as err:  # report and go on to the next lesson
            print(f"{path.name:<36}{'-':>9}  FAILED: {type(err).__name__}: {str(err).splitlines()[0][:80] if str(err) else ''}")
            status = 1
            continue
        times[path.name] = seconds
        ok = seconds <= BUDGET_S
        status |= not ok
        print(f"{path.name:<36}{seconds:>9.1f}  {'ok' if ok else 'OVER BUDGET'}")
    if args.write_readme:
        write_readme_times(times)
        print(f"recorded {len(times)} run time(s) in README.md")
    return status


if __name__ == "__main__":
    sys.exit(main())
