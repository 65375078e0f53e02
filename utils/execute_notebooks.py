#!/usr/bin/env python3
"""Re-execute lessons in place so their committed outputs are what the code computes now.

    python utils/execute_notebooks.py                       # every lesson
    python utils/execute_notebooks.py notebooks/00_setup.ipynb
    python utils/execute_notebooks.py --write-readme        # and record each run time in README.md

Fails (exit 1) if a cell errors, a lesson goes over its three-minute budget, or an output shows a
machine path. Outputs are never edited by hand; this is how they get into the repository.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from utils.bench_notebooks import write_readme_times  # noqa: E402
from utils.notebook_run import BUDGET_S, execute, lessons, scrub  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path)
    parser.add_argument("--write-readme", action="store_true",
                        help="record the run times in README.md (run on an otherwise idle machine)")
    args = parser.parse_args()
    status, times = 0, {}
    for path in args.paths or lessons():
        nb, seconds = execute(path, env={"COURSE_STRICT_CHECKS": "1", "COURSE_NO_PROGRESS": "1"})
        leaks = scrub(nb)
        nbformat.write(nb, path)
        flag = "" if seconds <= BUDGET_S else f"  OVER the {BUDGET_S:.0f} s budget"
        print(f"{path.name}: {seconds:.1f} s{flag}")
        times[path.name] = seconds
        if leaks:
            print(f"  outputs show machine paths: {', '.join(leaks)}")
        status |= bool(flag or leaks)
    if args.write_readme:
        write_readme_times(times)
    return status


if __name__ == "__main__":
    sys.exit(main())
