#!/usr/bin/env python3
"""Build the student notebooks: the lessons with every exercise's solution taken out.

    python utils/build_student.py                 # every lesson of course/lessons.toml -> student/
    python utils/build_student.py --out handout   # another folder

Source notebooks keep solutions between nbgrader's markers, in cells that carry nbgrader metadata
(``"solution": true``), so a teacher can also use nbgrader directly:

    def softmax(x):
        ### BEGIN SOLUTION
        ...
        ### END SOLUTION

The student copy keeps the marker's indentation and puts ``raise NotImplementedError()`` in its
place, so the cell still defines the function and the checker below it reports "not attempted
yet" instead of crashing. ``### BEGIN HIDDEN TESTS`` ... ``### END HIDDEN TESTS`` regions are
removed. Outputs are cleared (they could show a solution's results). No nbgrader needed.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from course.lessons import notebook_paths  # noqa: E402

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
HIDDEN_BEGIN, HIDDEN_END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
PLACEHOLDER = ["# YOUR CODE HERE", "raise NotImplementedError()"]


class MarkerError(ValueError):
    """A solution or hidden-test region is not closed, or closed without being opened."""


def _regions(lines: list[str], begin: str, end: str, where: str) -> list[tuple[int, int]]:
    spans, start = [], None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped == begin:
            if start is not None:
                raise MarkerError(f"{where}: line {i + 1} opens '{begin}' inside another")
            start = i
        elif stripped == end:
            if start is None:
                raise MarkerError(f"{where}: line {i + 1} closes '{end}' that was never opened")
            spans.append((start, i))
            start = None
    if start is not None:
        raise MarkerError(f"{where}: '{begin}' on line {start + 1} is never closed")
    return spans


def strip_solutions(source: str, where: str = "cell") -> str:
    """Replace each solution region with an indented placeholder; drop hidden-test regions."""
    lines = source.split("\n")
    for start, stop in reversed(_regions(lines, HIDDEN_BEGIN, HIDDEN_END, where)):
        del lines[start:stop + 1]
    for start, stop in reversed(_regions(lines, BEGIN, END, where)):
        indent = re.match(r"\s*", lines[start]).group(0)
        lines[start:stop + 1] = [indent + p for p in PLACEHOLDER]
    return "\n".join(lines)


def is_solution_cell(cell) -> bool:
    return bool(cell.get("metadata", {}).get("nbgrader", {}).get("solution"))


def has_markers(cell) -> bool:
    return BEGIN in cell.source or HIDDEN_BEGIN in cell.source


def student_version(nb):
    """Return a copy of the notebook ``nb`` as handed to students."""
    out = nbformat.from_dict(nb)
    for i, cell in enumerate(out.cells):
        if cell.cell_type == "code":
            if has_markers(cell):
                cell.source = strip_solutions(cell.source, where=f"cell {i}")
            cell.outputs = []
            cell.execution_count = None
    out.metadata.pop("widgets", None)
    return out


def build(source_dir: Path, out_dir: Path) -> list[Path]:
    """Write the student version of every lesson of the manifest, read from ``source_dir``, to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in notebook_paths(source_dir):
        nb = nbformat.read(path, as_version=4)
        target = out_dir / path.name
        nbformat.write(student_version(nb), target)
        written.append(target)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=ROOT / "notebooks")
    parser.add_argument("--out", type=Path, default=ROOT / "student")
    args = parser.parse_args()
    try:
        written = build(args.source, args.out)
    except MarkerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {len(written)} student notebook(s) to {args.out}")
    return 0


if __name__ == "__main__":
    from utils import run_cli

    sys.exit(run_cli(main))
