#!/usr/bin/env python3
"""The README's syllabus table, generated from the lesson manifest (course/lessons.toml).

    python utils/syllabus.py --write    # rewrite the table between the README's syllabus markers
    python utils/syllabus.py            # only report whether it is out of step (exit 1 if it is)

Each row: the lesson (linked to its notebook), what you build, its measured run time, its Colab badge.
Run times come from the manifest's ``measured_s``, which `python3 bootstrap.py bench --write-readme`
and utils/execute_notebooks.py record. Nothing in the table is written by hand.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from course.lessons import Lesson, load_manifest, record_run_times  # noqa: E402
from utils.colab import badge  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TABLE_START, TABLE_END = "<!-- syllabus:start -->", "<!-- syllabus:end -->"
HEADER = ["| lesson | what you build | run time (2-core CPU) | open |", "|---|---|---|---|"]


class MarkersMissing(ValueError):
    """The README lacks the syllabus markers the table is written between."""


def row(lesson: Lesson) -> str:
    seconds = "not measured yet" if lesson.measured_s is None else f"{lesson.measured_s:.0f} s"
    return (f"| [{lesson.label}](notebooks/{lesson.notebook}) | {lesson.builds} | {seconds} | "
            f"{badge(lesson.notebook)} |")


def table() -> str:
    """The whole syllabus table, one row per lesson of the manifest, in order, then the lessons still to
    come (the manifest's ``[planned]`` numbers that have no lesson yet)."""
    manifest = load_manifest()
    lines = [*HEADER, *(row(lesson) for lesson in manifest.lessons)]
    taken = {lesson.number for lesson in manifest.lessons}
    to_come = [f"{n:02d} {title}" for n, title in sorted(manifest.planned.items()) if n not in taken]
    if to_come:
        lines += ["", f"Still to come (see the issues): {', '.join(to_come)}."]
    return "\n".join(lines)


def with_table(readme_text: str) -> str:
    """``readme_text`` with the part between the syllabus markers replaced by :func:`table`."""
    start, end = readme_text.find(TABLE_START), readme_text.find(TABLE_END)
    if start < 0 or end < start:
        raise MarkersMissing(f"README.md needs the markers {TABLE_START} and {TABLE_END} around the syllabus")
    return readme_text[:start + len(TABLE_START)] + "\n" + table() + "\n" + readme_text[end:]


def sync_readme(write: bool) -> bool:
    """Return True if the README's table already matches the manifest; rewrite it when ``write``."""
    text = README.read_text(encoding="utf-8")
    new = with_table(text)
    if new != text and write:
        README.write_text(new, encoding="utf-8")
    return new == text


def record_times(times: dict[str, float]) -> None:
    """Record measured run times (notebook file name -> seconds) in the manifest and the README's table."""
    record_run_times(times)
    sync_readme(write=True)
    print(f"recorded {len(times)} run time(s) in course/lessons.toml and README.md")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="rewrite the table in README.md")
    args = parser.parse_args()
    in_step = sync_readme(args.write)
    if not in_step and not args.write:
        print("README.md's syllabus table is out of step with course/lessons.toml (run with --write)")
        return 1
    print("README.md's syllabus table " + ("rewritten" if not in_step else "is in step"))
    return 0


if __name__ == "__main__":
    from utils import run_cli

    sys.exit(run_cli(main))
