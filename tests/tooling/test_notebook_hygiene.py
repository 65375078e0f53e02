"""What a committed lesson must never carry: errors, machine paths, megabytes of output."""
from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MACHINE_PATH = re.compile(r"(/work/|/root/|/home/[a-z_][\w-]*/|/tmp/|[A-Z]:\\\\Users\\\\)")
MAX_BYTES = 1_500_000


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_committed_outputs_hold_no_errors_and_no_machine_paths(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            assert out.output_type != "error", f"cell {i} was committed with an error"
            text = json.dumps(out)
            assert not MACHINE_PATH.search(text), f"cell {i} output shows a machine path"
            assert "Traceback" not in text, f"cell {i} output shows a traceback"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_lesson_files_stay_small(path):
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size / 1e6:.1f} MB"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_lesson_was_executed_top_to_bottom(path):
    counts = [c.execution_count for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    assert all(c is not None for c in counts), "some cells were never run: use utils/execute_notebooks.py"
    assert counts == list(range(1, len(counts) + 1)), "cells were run out of order"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_lesson_opens_with_its_purpose_and_closes_with_a_question(path):
    cells = nbformat.read(path, as_version=4).cells
    markdown = [c.source for c in cells if c.cell_type == "markdown"]
    assert markdown and markdown[0].lstrip().startswith("# "), "the first markdown cell is the lesson title"
    assert "?" in markdown[-1], "the last markdown cell should leave the learner a question"
