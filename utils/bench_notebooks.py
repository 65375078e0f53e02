#!/usr/bin/env python3
"""Time every lesson top to bottom against its budget in the manifest (lessons run one at a time).

    python3 bootstrap.py bench            # or: .venv/bin/python utils/bench_notebooks.py
    python utils/bench_notebooks.py 03            # one lesson, by number, slug or notebook path
    python3 bootstrap.py bench --gpt-step  # instead: the course GPT's training step against torch's (utils/bench_gpt_step.py)

Prints one row per lesson and exits 1 if any lesson is over budget or fails. The notebooks on
disk are not changed. ``--write-readme`` records the measured times in course/lessons.toml and the
README's syllabus table (run it on an otherwise idle machine).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from course.lessons import lesson_for  # noqa: E402
from course.utils import describe_exception  # noqa: E402
from utils.lesson_rules import lesson_paths  # noqa: E402
from utils.notebook_run import execute  # noqa: E402
from utils.syllabus import record_times  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lessons", nargs="*", help="notebooks, numbers (12) or slugs; every lesson if none")
    parser.add_argument("--write-readme", action="store_true",
                        help="record the times in course/lessons.toml and README.md")
    parser.add_argument("--gpt-step", action="store_true",
                        help="time a training step of the course GPT against torch's fused pieces instead "
                             "(utils/bench_gpt_step.py; exits 1 over its 1.05 target)")
    args = parser.parse_args()
    if args.gpt_step:
        from utils.bench_gpt_step import main as bench_gpt_step

        return bench_gpt_step([])
    times: dict[str, float] = {}
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; budgets from course/lessons.toml")
    print(f"{'lesson':<36}{'seconds':>9}{'budget':>8}  verdict")
    status = 0
    for path in lesson_paths(args.lessons):
        try:
            budget = lesson_for(path).budget_s
            _, seconds = execute(path, env={"COURSE_NO_PROGRESS": "1"})
        except Exception as err:  # report and go on to the next lesson
            print(f"{path.name:<36}{'-':>9}{'':>8}  FAILED: {describe_exception(err, 100)}")
            status = 1
            continue
        times[path.name] = seconds
        ok = seconds <= budget
        status |= not ok
        print(f"{path.name:<36}{seconds:>9.1f}{budget:>8.0f}  {'ok' if ok else 'OVER BUDGET'}")
    if args.write_readme and times:
        record_times(times)
    return status


if __name__ == "__main__":
    from utils import run_cli

    sys.exit(run_cli(main))
