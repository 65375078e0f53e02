#!/usr/bin/env python3
"""The rules every committed lesson notebook keeps, in one place.

    python utils/lesson_rules.py                  # check every lesson of course/lessons.toml
    python utils/lesson_rules.py 03                # one lesson, by number, slug or notebook path

Each rule is a function that takes a lesson's notebook and returns what it breaks, one line a problem
(an empty list when it keeps the rule). The hygiene tests run each rule on every lesson, the notebook
executor runs them all after executing a lesson, and utils/new_lesson.py writes a skeleton that keeps
them. CONTRIBUTING.md says the same rules in words.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import json
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from course.lessons import NOTEBOOKS, Lesson, lesson_for, notebook_paths  # noqa: E402
from utils.colab import setup_cell_source  # noqa: E402

BEGIN = "### BEGIN SOLUTION"
NBGRADER_KEYS = {"grade", "grade_id", "locked", "schema_version", "solution", "task"}
MACHINE_PATH = re.compile(r"(/work/|/root/|/home/[a-z_][\w-]*/|/tmp/|[A-Z]:\\\\Users\\\\)")
MAX_BYTES = 1_500_000


def _markdown(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "markdown"]


def colab_cell_first(nb, lesson: Lesson) -> list[str]:
    """The first cell is the Colab set-up cell, exactly as utils/colab.py writes it."""
    first = nb.cells[0] if nb.cells else None
    if first is None or first.cell_type != "code" or first.source != setup_cell_source():
        return ["the first cell is not the Colab set-up cell (run: python utils/colab.py --write)"]
    return []


def title_first(nb, lesson: Lesson) -> list[str]:
    """The first markdown cell is the lesson's title: ``# NN · Title``."""
    markdown = _markdown(nb)
    want = f"# {lesson.number:02d} · "
    if not markdown or not markdown[0].lstrip().startswith(want):
        return [f"the first markdown cell should be the lesson's title, starting {want!r}"]
    return []


def question_last(nb, lesson: Lesson) -> list[str]:
    """The last markdown cell sums up and leaves the learner a question."""
    markdown = _markdown(nb)
    if not markdown or "?" not in markdown[-1]:
        return ["the last markdown cell should leave the learner a question"]
    return []


def executed_in_order(nb, lesson: Lesson) -> list[str]:
    """Every code cell was run once, top to bottom, in one kernel (by utils/execute_notebooks.py)."""
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    if any(c is None for c in counts):
        return ["some cells were never run: use utils/execute_notebooks.py"]
    if counts != list(range(1, len(counts) + 1)):
        return ["cells were run out of order: use utils/execute_notebooks.py"]
    return []


def clean_outputs(nb, lesson: Lesson) -> list[str]:
    """No committed output is an error, shows a traceback, or names a machine path."""
    found = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            text = json.dumps(out)
            if out.output_type == "error" or "Traceback" in text:
                found.append(f"cell {i} was committed with an error or a traceback")
            if MACHINE_PATH.search(text):
                found.append(f"cell {i} output shows a machine path")
    return found


def exercises_graded(nb, lesson: Lesson) -> list[str]:
    """Each exercise cell carries nbgrader's solution metadata and is followed by a locked, graded check
    cell that calls a checker of the lesson's checks module; grade ids are unique."""
    found, ids = [], []
    try:
        checks = importlib.import_module(lesson.checks)
    except ImportError as err:
        return [f"its checks module {lesson.checks} (course/lessons.toml) cannot be imported: {err}"]
    for i, cell in enumerate(nb.cells):
        meta = cell.get("metadata", {}).get("nbgrader")
        if cell.cell_type == "code" and BEGIN in cell.source:
            if not (meta and meta.get("solution") is True and NBGRADER_KEYS <= meta.keys()):
                found.append(f"cell {i} holds a solution but lacks nbgrader's solution metadata")
            following = nb.cells[i + 1] if i + 1 < len(nb.cells) else None
            check_meta = following.get("metadata", {}).get("nbgrader", {}) if following else {}
            if not (check_meta.get("grade") is True and check_meta.get("locked") is True
                    and check_meta.get("points", 0) > 0):
                found.append(f"cell {i + 1} should be the exercise's locked, graded check cell")
            elif not any(hasattr(checks, name) for name in re.findall(r"\b(check_\w+)\(", following.source)):
                found.append(f"cell {i + 1} calls no checker of {lesson.checks} (the lesson's checks module)")
        elif meta and meta.get("solution"):
            found.append(f"cell {i} is marked as a solution but has no {BEGIN} region")
        if meta:
            ids.append(meta.get("grade_id"))
    if len(ids) != len(set(ids)):
        found.append("grade_id values must be unique within a notebook")
    return found


def imported_modules(nb) -> set[str]:
    """The course modules a notebook's code cells import from, directly or through a package that
    re-exports them: ``from course.models import GPT`` counts for course.models.gpt, where GPT is defined."""
    found: set[str] = set()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        python = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
        try:
            tree = ast.parse(python)  # IPython's magics and shell lines left out
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                for alias in node.names:
                    found.add(f"{node.module}.{alias.name}")  # from course import positional
                    try:
                        obj = getattr(importlib.import_module(node.module), alias.name)
                    except (ImportError, AttributeError):
                        continue
                    home = getattr(obj, "__module__", None)
                    if isinstance(home, str):
                        found.add(home)  # from course.models import GPT -> course.models.gpt
    return found


def imports_its_modules(nb, lesson: Lesson) -> list[str]:
    """The lesson imports every module the manifest says it builds (so the manifest stays true)."""
    found = imported_modules(nb)
    return [f"the lesson never imports {module}, which course/lessons.toml says it builds"
            for module in lesson.modules if module not in found]


RULES = [colab_cell_first, title_first, question_last, executed_in_order, clean_outputs, exercises_graded,
         imports_its_modules]


def size_problems(path: Path) -> list[str]:
    """The file stays small enough to review and to open on a slow connection."""
    size = Path(path).stat().st_size
    return [f"{Path(path).name} is {size / 1e6:.1f} MB; keep it under {MAX_BYTES / 1e6:.1f} MB"] if size >= MAX_BYTES else []


def problems(path: Path) -> list[str]:
    """Everything the lesson notebook at ``path`` breaks, across all the rules."""
    lesson = lesson_for(path)
    nb = nbformat.read(path, as_version=4)
    return size_problems(path) + [p for rule in RULES for p in rule(nb, lesson)]


PLACEHOLDER = "(author:"


def placeholders(path: Path) -> list[str]:
    """Notes, not problems: cells that still hold the scaffold's ``(author: ...)`` placeholders."""
    nb = nbformat.read(path, as_version=4)
    return [f"cell {i} still holds a placeholder for the author" for i, c in enumerate(nb.cells) if PLACEHOLDER in c.source]


def unlisted_notebooks(folder: Path = NOTEBOOKS) -> list[str]:
    """Notebooks in ``folder`` that the manifest lacks (nothing runs, checks or builds them)."""
    listed = {p.name for p in notebook_paths(folder)}
    return [f"{p.name} is not in course/lessons.toml, so nothing tests, builds or lists it"
            for p in sorted(Path(folder).glob("*.ipynb")) if p.name not in listed]


def lesson_paths(names: list[str]) -> list[Path]:
    """The notebooks of the lessons named on a command line (paths, numbers, names or slugs); all if none."""
    return [Path(n) if Path(n).is_file() else lesson_for(n).path() for n in names] or notebook_paths()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lessons", nargs="*", help="notebooks, numbers (12) or slugs; every lesson if none")
    args = parser.parse_args(argv)
    status = 0
    for path in lesson_paths(args.lessons):
        found = problems(path)
        print(f"{path.name}: " + ("keeps every rule" if not found else f"{len(found)} problem(s)"))
        for problem in found:
            print(f"  - {problem}")
        for note in placeholders(path):
            print(f"  note: {note}")
        status |= bool(found)
    if not args.lessons:
        for problem in unlisted_notebooks():
            print(f"- {problem}")
            status = 1
    return status


if __name__ == "__main__":
    from utils import run_cli

    sys.exit(run_cli(main))
