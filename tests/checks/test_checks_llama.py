"""Lesson 12's checker: right answers pass; learner-style wrong answers get the hint for their mistake."""
from __future__ import annotations

import pytest
from answer_library import Right, Wrong, library_tests

from course.checks.llama import check_centre

pytestmark = pytest.mark.usefixtures("lenient_checks")


def learner_centre(x):
    mean = x.sum(dim=-1, keepdim=True) / x.shape[-1]
    return x - mean


# Answers a learner might write (independent of the checker's own mistake library), in the shape
# tests/checks/answer_library.py reads: each wrong one with the words its line must contain.
WRONG_CENTRES = [
    Wrong("mean down the columns", lambda x: x - x.mean(dim=0), "wrong axis"),
    Wrong("one mean for everything", lambda x: x - x.mean(), "whole tensor"),
    Wrong("standardised instead", lambda x: (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True), "standard deviation"),
    Wrong("forgot to subtract", lambda x: x.clone(), "Largest error"),
    Wrong("returns nothing", lambda x: None, "None"),
]
RIGHT_CENTRES = [
    Right("sum over the count", learner_centre),
    Right("mean with keepdim", lambda x: x - x.mean(dim=-1, keepdim=True)),
]

LIBRARY = {check_centre: (WRONG_CENTRES, RIGHT_CENTRES)}


# Each wrong answer fails, in one line holding its words; each right answer passes.
test_each_wrong_answer_fails_with_its_words, test_each_right_answer_passes = library_tests(LIBRARY)


def test_an_unattempted_exercise_says_so():
    def centre(x):
        raise NotImplementedError()

    result = check_centre(centre)
    assert not result.passed and "not attempted yet" in result.line
