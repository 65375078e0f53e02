"""Every checker test module keeps the one shape tests/checks/answer_library.py reads, so the figures over
every checker (wrong answers rejected and named, right answers accepted) can be summed."""
from __future__ import annotations

import pytest

from answer_library import Right, Wrong, library_modules, summary

MODULES = library_modules()


def test_every_checker_module_is_read():
    names = {m.__name__ for m in MODULES}
    assert "test_checks" in names and len(names) >= 11, names


@pytest.mark.parametrize("module", MODULES, ids=[m.__name__ for m in MODULES])
def test_a_checker_module_exposes_its_library_in_the_shared_shape(module):
    library = getattr(module, "LIBRARY", None)
    assert isinstance(library, dict) and library, "a checker test module exposes LIBRARY = {checker: (wrong, right)}"
    for checker, (wrong, right) in library.items():
        assert callable(checker)
        assert wrong and right, f"{checker.__name__} needs wrong and right answers"
        assert all(isinstance(w, Wrong) and callable(w.fn) and (w.words is None or w.words) for w in wrong)
        assert all(isinstance(r, Right) and callable(r.fn) for r in right)
        names = [w.name for w in wrong] + [f"right: {r.name}" for r in right]
        assert len(names) == len(set(names)), f"{checker.__name__}: names name one answer each"


def test_the_summary_line_reads_as_figures():
    line = summary({"wrong": 4, "rejected": 4, "named": 3, "right": 2, "accepted": 2})
    assert line == ("wrong answers tested 4; rejected 4/4 (100%); message names the mistake or its structure "
                    "3/4 (75%); right answers accepted 2/2 (100%)")
