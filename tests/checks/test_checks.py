"""The checker engines (tensors and plain values) and the softmax checker: passes, hints, and bad input,
one line each."""
from __future__ import annotations

import pytest
import torch

from course.checks import ExerciseFailed, check_softmax, evaluate_function
from course.checks.basics import SOFTMAX_MISTAKES, softmax_cases
from course.checks.core import FAILED, NOT_ATTEMPTED, PASSED, Mistake, check_values, evaluate_values


def _softmax_result(fn):
    return evaluate_function("softmax", fn, lambda x: torch.softmax(x, dim=-1), softmax_cases(),
                             mistakes=SOFTMAX_MISTAKES, atol=1e-6)


def correct_softmax(x):
    z = x - x.max(dim=-1, keepdim=True).values
    return z.exp() / z.exp().sum(dim=-1, keepdim=True)


# A library of wrong softmaxes, each with the words its hint must contain.
WRONG_SOFTMAXES = {
    "wrong axis": (lambda x: torch.softmax(x, dim=0), "wrong axis"),
    "no normalisation": (lambda x: x.exp(), "not normalised"),
    "sum over everything": (lambda x: x.exp() / x.exp().sum(), "whole tensor"),
    "log-softmax": (lambda x: torch.log_softmax(x, dim=-1), "log-softmax"),
    "no max subtraction": (lambda x: x.exp() / x.exp().sum(dim=-1, keepdim=True), "overflow"),
}


def test_correct_softmax_passes_with_one_line():
    result = _softmax_result(correct_softmax)
    assert result.status == PASSED and result.passed
    assert "\n" not in result.line and result.line.startswith("✓ softmax")


@pytest.mark.parametrize("name", list(WRONG_SOFTMAXES))
def test_each_wrong_softmax_fails_with_its_hint(name):
    fn, words = WRONG_SOFTMAXES[name]
    result = _softmax_result(fn)
    assert not result.passed
    assert words in result.line, result.line
    assert "Largest error" in result.line
    assert "\n" not in result.line


def test_unattempted_exercise_says_not_attempted_yet():
    def softmax(x):
        raise NotImplementedError()

    result = _softmax_result(softmax)
    assert result.status == NOT_ATTEMPTED
    assert "not attempted yet" in result.line


def test_function_that_raises_gives_one_line_with_the_error():
    result = _softmax_result(lambda x: x.reshape(-1, 7))
    assert not result.passed and "raised RuntimeError" in result.line and "\n" not in result.line


def test_wrong_shape_names_both_shapes():
    result = _softmax_result(lambda x: torch.softmax(x, dim=-1).transpose(-1, -2))
    assert "has shape (3, 1), expected (1, 3)" in result.line


def test_wrong_type_and_wrong_dtype_are_named():
    assert "should be a torch.Tensor, got list" in _softmax_result(lambda x: x.tolist()).line
    assert "dtype torch.int64" in _softmax_result(lambda x: torch.zeros_like(x, dtype=torch.long)).line


def test_passing_a_value_instead_of_a_function_is_explained():
    result = _softmax_result(torch.zeros(3))
    assert "expected a function, got Tensor" in result.line


def test_in_place_change_of_the_input_is_caught():
    def softmax_in_place(x):
        x.sub_(x.max(dim=-1, keepdim=True).values).exp_()
        return x / x.sum(dim=-1, keepdim=True)

    assert "in place" in _softmax_result(softmax_in_place).line


def test_strict_mode_raises_on_failure_and_quiet_mode_prints(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_STRICT_CHECKS", "1")
    with pytest.raises(ExerciseFailed, match="wrong axis"):
        check_softmax(lambda x: torch.softmax(x, dim=0))
    capsys.readouterr()
    monkeypatch.setenv("COURSE_STRICT_CHECKS", "0")
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    result = check_softmax(lambda x: torch.softmax(x, dim=0))
    assert not result.passed
    assert capsys.readouterr().out.strip() == result.line


def test_nbgrader_autograding_is_strict(monkeypatch):
    monkeypatch.setenv("COURSE_STRICT_CHECKS", "0")
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    with pytest.raises(ExerciseFailed, match="not attempted"):
        check_softmax(lambda x: (_ for _ in ()).throw(NotImplementedError()))


def test_a_mistake_that_itself_crashes_is_skipped_not_reported():
    def boom(x):
        raise ValueError("bad mistake")

    result = evaluate_function("id", lambda x: x + 1, lambda x: x, [(torch.zeros(2),)],
                               mistakes=[Mistake("never", boom)])
    assert not result.passed and "never" not in result.line and "values differ" in result.line


# --- the engine for plain values ------------------------------------------------------------------
def test_value_checker_compares_ints_and_rejects_other_types():
    result = evaluate_values("double", lambda n: 2.0 * n, lambda n: 2 * n, [(3,)])
    assert result.status == FAILED and "should return an int, got float" in result.line
    assert evaluate_values("double", lambda n: torch.tensor(2 * n), lambda n: 2 * n, [(3,)]).passed


def test_value_checker_raises_in_strict_mode_and_prints_one_line(capsys):
    with pytest.raises(ExerciseFailed):
        check_values("double", lambda n: n, lambda n: 2 * n, [(3,)], strict=True)
    assert capsys.readouterr().out.count("\n") == 1
