"""Strict mode under a grader: fixed when the kernel first imports the course, and hints wrapped to fit."""
from __future__ import annotations

import pytest

import course
from course.checks.core import FAILED, HINT_WIDTH, CheckResult, ExerciseFailed, report, strict_mode


def test_grading_noticed_at_start_stays_on_when_a_solution_unsets_the_variable(monkeypatch):
    monkeypatch.delenv("COURSE_STRICT_CHECKS", raising=False)
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)  # what `os.environ.pop(...)` in a solution does
    monkeypatch.setattr(course, "GRADED_AT_START", True)
    assert strict_mode()
    monkeypatch.setattr(course, "GRADED_AT_START", False)
    assert not strict_mode()


def test_a_strict_failure_wraps_its_hint_so_no_line_is_cut(capsys):
    hint = "softmax over the wrong axis: normalise along the last dimension (dim=-1), so each row sums to 1. " * 3
    with pytest.raises(ExerciseFailed) as raised:
        report(CheckResult("softmax", FAILED, hint), strict=True)
    lines = str(raised.value).splitlines()
    assert len(lines) > 1 and all(len(line) <= HINT_WIDTH for line in lines)
    assert " ".join(lines) == capsys.readouterr().out.strip()  # the same words as the printed line
