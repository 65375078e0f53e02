"""The student notebooks: built from the sources, hold no solution, run to the first exercise."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from course.lessons import NOTEBOOKS, notebook_paths
from utils.build_student import BEGIN, END, MarkerError, build, strip_solutions

LESSONS = notebook_paths()


def _solution_lines(source: str) -> list[str]:
    """The meaningful lines inside solution regions (not blank, not comments, not bare keywords)."""
    lines, inside = [], False
    for line in source.splitlines():
        s = line.strip()
        if s == BEGIN:
            inside = True
        elif s == END:
            inside = False
        elif inside and s and not s.startswith("#") and s not in {"pass", "return", "else:", "try:"}:
            lines.append(s)
    return lines


def _exercise_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code" and BEGIN in c.source]


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("student")
    build(NOTEBOOKS, out)
    return out


def test_strip_solutions_keeps_indentation_and_the_function():
    src = "def f(x):\n    '''doc'''\n    ### BEGIN SOLUTION\n    y = x + 1\n    return y\n    ### END SOLUTION\n"
    out = strip_solutions(src)
    assert "y = x + 1" not in out and BEGIN not in out
    assert "    raise NotImplementedError()" in out
    namespace: dict = {}
    exec(out, namespace)  # still defines f
    with pytest.raises(NotImplementedError):
        namespace["f"](1)


def test_hidden_tests_are_removed():
    src = "check(f)\n### BEGIN HIDDEN TESTS\nassert f(2) == 3\n### END HIDDEN TESTS\n"
    assert "assert f(2)" not in strip_solutions(src)


@pytest.mark.parametrize("src, words", [
    ("### BEGIN SOLUTION\nx = 1\n", "never closed"),
    ("x = 1\n### END SOLUTION\n", "never opened"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n", "inside another"),
])
def test_unbalanced_markers_are_reported_with_their_line(src, words):
    with pytest.raises(MarkerError, match=words):
        strip_solutions(src, where="lesson cell 3")


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_student_notebook_holds_no_solution(path, student_dir):
    source = nbformat.read(path, as_version=4)
    student = nbformat.read(student_dir / path.name, as_version=4)
    assert len(source.cells) == len(student.cells)
    for src_cell, stu_cell in zip(source.cells, student.cells):
        assert BEGIN not in stu_cell.source and "HIDDEN TESTS" not in stu_cell.source
        if stu_cell.cell_type == "code":
            assert stu_cell.outputs == [] and stu_cell.execution_count is None
        for line in _solution_lines(src_cell.source):
            assert line not in stu_cell.source, f"solution line leaked into {path.name}: {line!r}"


def _run_until_first_exercise(path: Path) -> list[str]:
    """Execute a student notebook cell by cell, stopping after the first exercise's checker."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    texts = []
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            client.execute_cell(cell, index)  # raises CellExecutionError on any error
            texts.append("".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream"))
            if "exercise-check" in cell.metadata.get("tags", []):
                return texts
    pytest.fail(f"{path.name}: no exercise checker cell found")


@pytest.mark.parametrize("path", [p for p in LESSONS if _exercise_cells(nbformat.read(p, as_version=4))],
                         ids=lambda p: p.name)
def test_student_notebook_runs_to_the_first_exercise_and_says_not_attempted(path, student_dir, monkeypatch):
    monkeypatch.setenv("COURSE_STRICT_CHECKS", "0")  # a learner's kernel: report, don't raise
    texts = _run_until_first_exercise(student_dir / path.name)
    assert re.search(r"not attempted yet", texts[-1]), texts[-1]
    assert "Traceback" not in "".join(texts)
