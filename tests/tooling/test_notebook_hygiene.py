"""Every committed lesson keeps the lesson rules (utils/lesson_rules.py), and the rules catch what they name."""
from __future__ import annotations

import nbformat
import pytest

from course.lessons import lesson_for, lessons
from utils import lesson_rules as rules
from utils.colab import setup_cell_source

LESSONS = [lesson.path() for lesson in lessons()]
ids = [p.name for p in LESSONS]


def _read(path):
    return nbformat.read(path, as_version=4), lesson_for(path)


@pytest.mark.parametrize("path", LESSONS, ids=ids)
def test_committed_outputs_hold_no_errors_and_no_machine_paths(path):
    assert rules.clean_outputs(*_read(path)) == []


@pytest.mark.parametrize("path", LESSONS, ids=ids)
def test_lesson_files_stay_small(path):
    assert rules.size_problems(path) == []


@pytest.mark.parametrize("path", LESSONS, ids=ids)
def test_lesson_was_executed_top_to_bottom(path):
    assert rules.executed_in_order(*_read(path)) == []


@pytest.mark.parametrize("path", LESSONS, ids=ids)
def test_lesson_opens_with_its_title_and_closes_with_a_question(path):
    nb, lesson = _read(path)
    assert rules.title_first(nb, lesson) + rules.question_last(nb, lesson) == []


@pytest.mark.parametrize("path", LESSONS, ids=ids)
def test_every_exercise_has_nbgrader_metadata_and_a_checker_from_the_lessons_checks_module(path):
    assert rules.exercises_graded(*_read(path)) == []


# The rules themselves: each catches what it names, on a small notebook made here.

def _notebook(*cells):
    return nbformat.v4.new_notebook(cells=list(cells))


def _code(source, count=None, outputs=(), **meta):
    cell = nbformat.v4.new_code_cell(source, metadata=meta)
    cell.execution_count, cell.outputs = count, list(outputs)
    return cell


LESSON = lessons()[0]
md = nbformat.v4.new_markdown_cell


def test_rules_catch_a_missing_colab_cell_title_and_question():
    nb = _notebook(_code("print(1)", 1), md("Intro without a title."), md("The end."))
    assert rules.colab_cell_first(nb, LESSON) and rules.title_first(nb, LESSON) and rules.question_last(nb, LESSON)
    good = _notebook(_code(setup_cell_source(), 1), md(f"# {LESSON.number:02d} · Title"), md("Why?"))
    assert rules.colab_cell_first(good, LESSON) == rules.title_first(good, LESSON) == rules.question_last(good, LESSON) == []


def test_rules_catch_cells_not_run_or_run_out_of_order():
    assert "never run" in rules.executed_in_order(_notebook(_code("a", 1), _code("b")), LESSON)[0]
    assert "out of order" in rules.executed_in_order(_notebook(_code("a", 2), _code("b", 1)), LESSON)[0]


def test_rules_catch_errors_and_machine_paths_in_outputs():
    error = nbformat.v4.new_output("error", ename="ValueError", evalue="x", traceback=[])
    path = nbformat.v4.new_output("stream", name="stdout", text="saved to /home/ada/model.pt\n")
    found = rules.clean_outputs(_notebook(_code("a", 1, [error]), _code("b", 2, [path])), LESSON)
    assert any("error" in p for p in found) and any("machine path" in p for p in found)


def test_rules_catch_an_exercise_without_metadata_or_a_checker_of_the_lesson():
    solution = _code("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION")
    assert rules.exercises_graded(_notebook(solution, _code("f()")), LESSON)
    graded = {"grade": True, "grade_id": "f-check", "locked": True, "points": 1, "schema_version": 3,
              "solution": False, "task": False}
    solution.metadata["nbgrader"] = {"grade": False, "grade_id": "f", "locked": False, "schema_version": 3,
                                     "solution": True, "task": False}
    wrong_checker = rules.exercises_graded(_notebook(solution, _code("check_nothing_real(f)", nbgrader=graded)), LESSON)
    assert wrong_checker and LESSON.checks in wrong_checker[0]
    assert rules.exercises_graded(_notebook(solution, _code("check_softmax(f)", nbgrader=graded)), LESSON) == []
