"""The diagnosis lessons 06-11's checkers share (course/checks/diagnosis.py): it names what an unexplained
failure has in common with the right answer, never changes a verdict, and never blames the learner for
its own trouble."""
from __future__ import annotations

import pytest
import torch

from course.checks.core import FAILED, NOT_ATTEMPTED, PASSED, Mistake
from course.checks.diagnosis import evaluate, first_difference, shape_hint, structure_hint

pytestmark = pytest.mark.usefixtures("lenient_checks")

X = torch.tensor([[1.0, -2.0, 3.0, 0.5], [0.2, 4.0, -1.0, 2.5], [3.0, 1.0, 1.5, -0.7]])
CASES = [(X,), (X[:2, :3] * 2,)]


def reference(x):
    return x.cumsum(-1)


def verdict(fn, **options):
    return evaluate("demo", fn, reference, CASES, **options)


@pytest.mark.parametrize("fn, words", [
    (lambda x: 2.5 * x.cumsum(-1), "2.5 times the answer (off by a constant factor)"),
    (lambda x: -x.cumsum(-1), "opposite sign"),
    (lambda x: x.cumsum(-1) + 0.75, "the answer plus 0.75 everywhere"),
    (lambda x: torch.zeros_like(x), "all zeros"),
    (lambda x: torch.nn.functional.pad(x.cumsum(-1), (1, 0))[..., :-1], "shifted by one position along dim 1 (one step too late)"),
    (lambda x: x.cumsum(-1) / torch.where(x.cumsum(-1) > 3, 0.0, 1.0), "inf at"),
    (lambda x: torch.cat([x[:1].cumsum(-1), x[1:].cumsum(0)]), "right at index 0 of dim 0"),
    (lambda x: torch.cat([x.cumsum(-1)[:, :-1], x.cumsum(-1)[:, -1:] + 1], -1), "right except at the last index of dim 1"),
])
def test_a_failure_no_mistake_explains_gets_its_structure(fn, words):
    result = verdict(fn)
    assert result.status == FAILED and words in result.line, result.line
    assert ("values differ: " in result.line or "your output has inf" in result.line) and "\n" not in result.line


def test_a_transpose_is_named():
    square = torch.arange(9.0).reshape(3, 3) ** 1.5
    result = evaluate("demo", lambda x: x.T.clone(), lambda x: x.clone(), [(square,)])
    assert "transpose of the answer" in result.line, result.line


def test_nan_gets_the_checkers_own_words():
    result = verdict(lambda x: x.cumsum(-1) * torch.nan, nonfinite_hint="exp() overflowed")
    assert "it has NaN at 12 of 12 entries where the answer is finite; exp() overflowed" in result.line, result.line


def test_a_mistake_is_named_even_when_its_shape_is_wrong():
    mistakes = [Mistake("summed the whole row: keep a running total", lambda x: x.sum(-1))]
    result = verdict(lambda x: x.sum(-1), mistakes=mistakes)
    assert result.line.startswith("✗ demo: summed the whole row: keep a running total (output has shape (3,), expected (3, 4))")


def test_a_mistake_is_named_only_if_it_fits_every_case_up_to_the_failing_one():
    # The learner is right on case 1 and wrong on case 2; both mistakes give its answer on case 2, but
    # only the second also gives the right answer on case 1.
    learner = lambda x: x.cumsum(-1) if x.shape[1] == 4 else x.cumsum(-1) * 3   # noqa: E731
    wrong_earlier = Mistake("wrong earlier too", lambda x: x.cumsum(-1) * 3)
    fits = Mistake("fits both cases", lambda x: x.cumsum(-1) * (3 if x.shape[1] == 3 else 1))
    assert "wrong earlier too" not in verdict(learner, mistakes=[wrong_earlier]).line
    assert "fits both cases" in verdict(learner, mistakes=[wrong_earlier, fits]).line


def test_when_two_mistakes_fit_the_later_cases_choose():
    first = Mistake("first", lambda x: x.cumsum(-1) * 2 if x.shape[1] == 4 else x)
    second = Mistake("second", lambda x: x.cumsum(-1) * 2)
    result = verdict(lambda x: x.cumsum(-1) * 2, mistakes=[first, second])
    assert "second" in result.line and "first" not in result.line, result.line


@pytest.mark.parametrize("got, want, words", [
    ((4, 3), (3, 4), "the last two axes are swapped"),
    ((3,), (3, 1), "a size-1 axis is missing"),
    ((3, 1, 4), (3, 4), "an extra size-1 axis"),
    ((3, 3), (3, 1), "axis 1 should have size 1 but grew to 3 by broadcasting"),
    ((5, 2), (3, 4), None),
])
def test_shape_hints(got, want, words):
    assert shape_hint(got, want) == words if words is None else words in shape_hint(got, want)


def test_ids_and_masks_say_where_the_first_difference_is():
    got, want = torch.tensor([[1, 2, 3], [4, 9, 6]]), torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert first_difference(got, want) == "1 of 6 entries differ, the first at index (1, 1): you have 9, expected 5"
    assert first_difference(torch.tensor(True), torch.tensor(False)) == "you have True, expected False"


def test_the_checkers_locator_speaks_before_the_generic_structure():
    def locate(args, name, got, want):
        return "wrong only where the checker says"
    text = structure_hint((X,), 2 * X, X, ("output",), locate=locate)
    assert text == "wrong only where the checker says"


def test_a_later_output_is_named_when_it_says_more():
    def locate(args, name, got, want):
        return "the weights leak" if name == "weights" else None
    text = structure_hint((X,), (X + torch.rand(3, 4), X * 0), (X, X), ("out", "weights"), locate=locate)
    assert text == "in weights, the weights leak"


def test_a_diagnosis_that_breaks_leaves_the_engines_line():
    def locate(args, name, got, want):
        raise RuntimeError("a bug in the checker")
    result = verdict(lambda x: x.cumsum(-1) ** 3, locate=locate)
    assert result.status == FAILED and "a bug in the checker" not in result.line
    assert "output: values differ" in result.line  # the engine's own line


def test_passes_raises_in_place_and_unattempted_are_left_to_the_engine():
    assert verdict(lambda x: torch.cumsum(x, dim=1)).status == PASSED

    def todo(x):
        raise NotImplementedError()
    assert verdict(todo).status == NOT_ATTEMPTED
    line = verdict(lambda x: x @ x, exception_hints=[("cannot be multiplied", "multiply elementwise")]).line
    assert line.startswith("✗ demo: multiply elementwise. Your function raised RuntimeError")

    def in_place(x):
        return x.cumsum_(-1)
    line = verdict(in_place).line
    assert "in place" in line and "values differ" not in line
