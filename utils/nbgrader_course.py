#!/usr/bin/env python3
"""Lay the lessons out as an nbgrader course, ready for release, collection, autograding and feedback.

    python utils/nbgrader_course.py                       # every lesson -> teaching/
    python utils/nbgrader_course.py 03 04 --out my-class  # some lessons, another folder

writes ``<out>/source/<lesson>/<lesson>.ipynb`` for each lesson (the source notebook, solutions and hidden
tests included: nbgrader takes them out when it releases the assignment) and ``<out>/nbgrader_config.py``
with a cell time limit that fits the course's slowest cells and a validator width that keeps every
checker's hint whole. Then, from ``<out>``, with the course's Python (nbgrader runs the notebooks, and their
check cells import the course: a grading environment without it scores correct work zero):

    nbgrader generate_assignment 03_self_attention     # release/: what students get
    nbgrader collect 03_self_attention                 # or copy into submitted/<student>/03_self_attention/
    nbgrader autograde 03_self_attention
    nbgrader generate_feedback 03_self_attention       # feedback/: HTML with each checker's hint

The README's "Teaching with nbgrader" section gives the whole recipe.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from course.checks.core import HINT_WIDTH  # noqa: E402
from utils.lesson_rules import lesson_paths  # noqa: E402

CELL_TIMEOUT_S = 300  # nbgrader's default is 30 s; the slowest training cells take ~20 s on two cores
COURSE_ID = "transformers-from-scratch"

CONFIG = f'''# nbgrader's settings for this course (written by utils/nbgrader_course.py).
c = get_config()  # noqa: F821 (nbgrader provides it)
c.CourseDirectory.course_id = "{COURSE_ID}"
# A training cell can take tens of seconds on a slow machine; nbgrader's default stops any cell after 30 s.
c.Execute.timeout = {CELL_TIMEOUT_S}
# The checkers wrap a failing exercise's hint at {HINT_WIDTH} columns; the validator (the students' Validate
# button) cuts lines longer than its width, so it gets a little more.
c.Validator.width = {HINT_WIDTH + 2}
'''


def build(out: Path, paths: list[Path]) -> list[Path]:
    """Write the nbgrader course into ``out``: one source assignment per lesson and the config."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "nbgrader_config.py").write_text(CONFIG, encoding="utf-8")
    written = []
    for path in paths:
        folder = out / "source" / path.stem
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, folder / path.name)
        written.append(folder / path.name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lessons", nargs="*", help="notebooks, numbers (03) or slugs; every lesson if none")
    parser.add_argument("--out", type=Path, default=ROOT / "teaching", help="the course folder (default teaching/)")
    args = parser.parse_args(argv)
    written = build(args.out, lesson_paths(args.lessons))
    print(f"wrote {len(written)} assignment(s) and nbgrader_config.py to {args.out}")
    print(f"next: cd {args.out} && nbgrader generate_assignment {written[0].parent.name}")
    return 0


if __name__ == "__main__":
    from utils import run_cli

    sys.exit(run_cli(main))
