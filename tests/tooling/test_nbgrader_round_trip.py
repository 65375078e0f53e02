"""A teacher's nbgrader round trip on one lesson: release, submissions, autograde, feedback, scores.

Skipped where nbgrader is not installed (CI installs it: COURSE_EXTRAS=nbgrader).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from course.checks.core import HINT_WIDTH
from course.lessons import lesson_for
from utils.build_student import BEGIN, END
from utils.nbgrader_course import CELL_TIMEOUT_S, build

pytest.importorskip("nbgrader", reason="nbgrader is not installed (CI installs it with COURSE_EXTRAS=nbgrader)")

LESSON = lesson_for("03")  # four exercises, a few seconds to run
WRONG_ID = "attention-scores"  # the first exercise, answered without the 1/sqrt(d_k) scale
WRONG_SCORES = "    return q @ k.transpose(-2, -1)"
CHEAT = '    import os\n    os.environ.pop("NBGRADER_EXECUTION", None)  # a student switching grading off\n'


def _nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    for name in ("COURSE_STRICT_CHECKS", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT"):
        env.pop(name, None)  # a grader's environment, not the test suite's
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _solutions(source: Path) -> dict[str, str]:
    """grade_id -> the solution cell's code without the markers (what a student who solved it submits)."""
    found = {}
    for cell in nbformat.read(source, as_version=4).cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            found[meta["grade_id"]] = "\n".join(l for l in cell.source.splitlines() if l.strip() not in (BEGIN, END))
    return found


def _submit(course: Path, student: str, answers: dict[str, str]) -> None:
    """A submission: the released notebook with ``answers`` (grade_id -> code) in its solution cells."""
    released = course / "release" / LESSON.name / LESSON.notebook
    nb = nbformat.read(released, as_version=4)
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in answers:
            cell.source = answers[grade_id]
    folder = course / "submitted" / student / LESSON.name
    folder.mkdir(parents=True)
    nbformat.write(nb, folder / LESSON.notebook)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    course = tmp_path_factory.mktemp("class")
    build(course, [LESSON.path()])
    _nbgrader(course, "generate_assignment", LESSON.name, "--force")
    right = _solutions(LESSON.path())
    wrong_scores = re.sub(r"(?ms)^    d_k = .*?$\n.*?return .*?$", WRONG_SCORES, right[WRONG_ID])
    assert wrong_scores != right[WRONG_ID]
    # The wrong answer also tries to switch grading off from inside its solution cell.
    cheat = wrong_scores.replace("    return", CHEAT + "    return", 1)
    _submit(course, "solved", right)
    _submit(course, "blank", {})
    _submit(course, "one_wrong", {**right, WRONG_ID: cheat})
    started = time.perf_counter()
    _nbgrader(course, "autograde", LESSON.name, "--force")
    seconds = (time.perf_counter() - started) / 3
    _nbgrader(course, "generate_feedback", LESSON.name, "--force")
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        scores = {s: (gradebook.find_submission(LESSON.name, s).score, gradebook.find_submission(LESSON.name, s).max_score)
                  for s in ("solved", "blank", "one_wrong")}
    print(f"\nnbgrader autograde: {seconds:.1f} s per submission of {LESSON.notebook}; scores {scores}")
    return course, scores


def test_the_released_assignment_holds_no_solution_and_no_hidden_test(graded):
    course, _ = graded
    released = (course / "release" / LESSON.name / LESSON.notebook).read_text(encoding="utf-8")
    assert BEGIN not in released and "HIDDEN TESTS" not in released and "raise NotImplementedError()" in released


def test_autograde_gives_full_marks_to_the_solution_and_none_to_a_blank_notebook(graded):
    _, scores = graded
    assert scores["solved"] == (4.0, 4.0)
    assert scores["blank"] == (0.0, 4.0)


def test_one_wrong_exercise_loses_exactly_its_point_even_if_it_unsets_grading_and_feedback_gives_its_hint(graded):
    course, scores = graded
    assert scores["one_wrong"] == (3.0, 4.0)  # 4.0 if strict mode were read from os.environ at check time
    feedback = (course / "feedback" / "one_wrong" / LESSON.name / f"{LESSON.name}.html").read_text(encoding="utf-8")
    assert "scale" in feedback and "ExerciseFailed" in feedback


def test_the_course_config_fits_the_slowest_cells_and_keeps_hints_whole(graded):
    course, _ = graded
    config = (course / "nbgrader_config.py").read_text(encoding="utf-8")
    assert f"c.Execute.timeout = {CELL_TIMEOUT_S}" in config
    assert f"c.Validator.width = {HINT_WIDTH + 2}" in config
