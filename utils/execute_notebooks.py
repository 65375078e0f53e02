#!/usr/bin/env python3
"""Re-execute lessons in place so their committed outputs are what the code computes now.

    python utils/execute_notebooks.py                       # every lesson in course/lessons.toml
    python utils/execute_notebooks.py 00                    # one lesson, by number, slug or notebook path
    python utils/execute_notebooks.py --gpu                 # the lessons the manifest marks gpu = true
    python utils/execute_notebooks.py --write-readme        # and record each run time (manifest, README)

Fails (exit 1) if a cell errors, a lesson goes over its budget, or the executed notebook breaks a lesson
rule (utils/lesson_rules.py: an output showing a machine path, a traceback, ...). Outputs are never edited
by hand; this is how they get into the repository.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from course.lessons import lesson_for, lessons  # noqa: E402
from utils.lesson_rules import lesson_paths, placeholders, problems  # noqa: E402
from utils.notebook_run import CellExecutionError, CellTimeoutError, describe_cell_error, execute, scrub  # noqa: E402
from utils.syllabus import record_times  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lessons", nargs="*", help="notebooks, numbers (12) or slugs; every lesson if none")
    parser.add_argument("--gpu", action="store_true", help="only the lessons with GPU cells")
    parser.add_argument("--write-readme", action="store_true",
                        help="record the run times in course/lessons.toml and README.md (run on an idle machine)")
    args = parser.parse_args(argv)
    paths = lesson_paths(args.lessons) if args.lessons else [l.path() for l in lessons() if l.gpu or not args.gpu]
    status, times = 0, {}
    for path in paths:
        budget = lesson_for(path).budget_s
        try:
            nb, seconds = execute(path, env={"COURSE_STRICT_CHECKS": "1", "COURSE_NO_PROGRESS": "1"})
        except (CellExecutionError, CellTimeoutError) as err:
            print(f"{path.name}: FAILED, nothing written: {describe_cell_error(err)}")
            status = 1
            continue
        leaks = scrub(nb)
        nbformat.write(nb, path)
        flag = "" if seconds <= budget else f"  OVER its {budget:.0f} s budget"
        print(f"{path.name}: {seconds:.1f} s{flag}")
        times[path.name] = seconds
        if leaks:
            print(f"  outputs show machine paths: {', '.join(leaks)}")
        broken = problems(path)
        for problem in broken:
            print(f"  {problem}")
        for note in placeholders(path):
            print(f"  note: {note}")
        status |= bool(flag or leaks or broken)
    if args.write_readme and times:
        record_times(times)
    return status


if __name__ == "__main__":
    from utils import run_cli

    sys.exit(run_cli(main))
