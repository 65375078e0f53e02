"""The libraries of learner-style answers keep the one shape tests/checks/answer_library.py reads, so the
figures over every checker (wrong answers rejected and named, right answers accepted) can be summed."""
from __future__ import annotations

import pytest

from answer_library import library_modules, summary

MODULES = library_modules()


@pytest.mark.parametrize("module", MODULES, ids=[m.__name__ for m in MODULES])
def test_a_library_has_the_shared_shape(module):
    wrong, right = getattr(module, "WRONG_ANSWERS", []), getattr(module, "RIGHT_ANSWERS", [])
    assert wrong and right, "a checker library needs wrong and right answers"
    for entry in wrong:
        checker, label, fn, words = entry
        assert callable(checker) and callable(fn) and isinstance(label, str)
        assert words is None or (isinstance(words, str) and words)
    for checker, label, fn in right:
        assert callable(checker) and callable(fn) and isinstance(label, str)
    labels = [(c.__name__, label) for c, label, *_ in wrong] + [(c.__name__, label, "right") for c, label, _ in right]
    assert len(labels) == len(set(labels)), "labels name one answer each"


def test_the_summary_line_reads_as_figures():
    line = summary({"wrong": 4, "rejected": 4, "named": 3, "right": 2, "accepted": 2})
    assert line == ("wrong answers tested 4; rejected 4/4 (100%); message names the mistake or its structure "
                    "3/4 (75%); right answers accepted 2/2 (100%)")
