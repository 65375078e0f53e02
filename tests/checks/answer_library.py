"""Libraries of learner-style answers for the checkers, in one shape, and the figures they give.

Every checker test module (tests/checks/test_checks*.py) exposes, for each checker it tests,

    LIBRARY = {checker: (wrong answers, right answers), ...}

of ``Wrong(name, fn, words)`` (each must fail, and its line must contain ``words``) and ``Right(name, fn)``
(each must pass). The answers are written the way a learner writes them, independently of the checker's
own mistake library; the right ones another way than the course's (einsum, loops, float64 inside, -1e9
fills). ``words`` names the mistake or its structure (a hint, a structural hint, or the engine's words for
a wrong type, shape or dtype); ``None`` marks an answer (a holdout, written after the checker was
finished) whose line is only expected to reject it. The module asserts each verdict with the two tests
:func:`library_tests` makes; :func:`figures` counts them::

    .venv/bin/python tests/checks/answer_library.py    # per module and in total, over every checker module
"""
from __future__ import annotations

import contextlib
import importlib
import io
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from course.checks.core import CheckResult

HERE = Path(__file__).resolve().parent
KEYS = ("wrong", "rejected", "named", "right", "accepted")


@dataclass(frozen=True)
class Wrong:
    """A wrong learner answer and the words its line must contain (None: it must only be rejected)."""

    name: str
    fn: Callable[..., Any]
    words: str | None

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Right:
    """A correct learner answer, written another way."""

    name: str
    fn: Callable[..., Any]

    def __str__(self) -> str:
        return self.name


Library = Mapping[Callable[..., CheckResult], tuple[Sequence[Wrong], Sequence[Right]]]


def wrong_cases(library: Library) -> list[tuple]:
    """``(checker, wrong)`` pairs, for ``pytest.mark.parametrize`` (with ``ids=case_id``)."""
    return [(checker, w) for checker, (wrongs, _) in library.items() for w in wrongs]


def right_cases(library: Library) -> list[tuple]:
    """``(checker, right)`` pairs, for ``pytest.mark.parametrize`` (with ``ids=case_id``)."""
    return [(checker, r) for checker, (_, rights) in library.items() for r in rights]


def case_id(value: Any) -> str:
    return getattr(value, "name", None) or getattr(value, "__name__", "")


def run_answer(checker: Callable[..., CheckResult], fn: Callable[..., Any]) -> CheckResult:
    """The checker's result for ``fn``, without printing and without raising."""
    return _run_printed(checker, fn)[0]


def _run_printed(checker, fn) -> tuple[CheckResult, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = checker(fn, strict=False)
    return result, out.getvalue()


def library_tests(library: Library) -> tuple[Callable, Callable]:
    """The two tests every checker test module runs on its ``LIBRARY``: each wrong answer fails, in one
    printed line holding its words; each right answer passes, in one printed line. In the module::

        test_each_wrong_answer_fails_with_its_words, test_each_right_answer_passes = library_tests(LIBRARY)
    """
    import pytest

    @pytest.mark.parametrize("checker, wrong", wrong_cases(library), ids=case_id)
    def test_each_wrong_answer_fails_with_its_words(checker, wrong):
        result, printed = _run_printed(checker, wrong.fn)
        assert not result.passed, result.line
        assert (wrong.words or "") in result.line, result.line
        assert printed == result.line + "\n", printed

    @pytest.mark.parametrize("checker, right", right_cases(library), ids=case_id)
    def test_each_right_answer_passes(checker, right):
        result, printed = _run_printed(checker, right.fn)
        assert result.passed, result.line
        assert printed == result.line + "\n" and printed.startswith("✓ "), printed

    return test_each_wrong_answer_fails_with_its_words, test_each_right_answer_passes



def mistake_tests(checkers: dict[str, tuple[Callable[..., CheckResult], list]]) -> tuple[Callable, Callable]:
    """The two tests of a checker module's own mistake library, for ``checkers = {name: (checker, mistakes)}``:
    each known mistake's wrong implementation fails with that mistake's hint, in one line; and within a checker
    no two mistakes share a hint. In the module::

        test_each_known_mistake_fails_with_its_own_hint, test_hints_within_a_checker_are_all_different = \\
            mistake_tests(CHECKERS)
    """
    import pytest

    cases = [(name, i) for name, (_, mistakes) in checkers.items() for i in range(len(mistakes))]

    @pytest.mark.parametrize("name, index", cases, ids=[f"{n}-{i}" for n, i in cases])
    def test_each_known_mistake_fails_with_its_own_hint(name, index):
        checker, mistakes = checkers[name]
        mistake = mistakes[index]
        result = checker(mistake.fn, strict=False)
        assert not result.passed
        assert mistake.hint in result.line, result.line
        assert "\n" not in result.line

    def test_hints_within_a_checker_are_all_different():
        for _, mistakes in checkers.values():
            hints = [m.hint for m in mistakes]
            assert len(hints) == len(set(hints))

    return test_each_known_mistake_fails_with_its_own_hint, test_hints_within_a_checker_are_all_different


def unattempted_test(library: Library) -> Callable:
    """A test that every checker of ``library``, given the student notebook's unsolved stub (a function that
    raises NotImplementedError), fails with "not attempted yet". In the module::

        test_an_unattempted_exercise_says_so = unattempted_test(LIBRARY)
    """
    import pytest

    @pytest.mark.parametrize("checker", list(library), ids=lambda c: c.__name__)
    def test_an_unattempted_exercise_says_so(checker):
        def unattempted(*args):
            raise NotImplementedError()

        result = checker(unattempted)
        assert not result.passed and "not attempted yet" in result.line

    return test_an_unattempted_exercise_says_so

def names_the_mistake(result: CheckResult, words: str | None) -> bool:
    """A rejection whose line holds the answer's ``words``, when those say more than the engine's bare
    "values differ" and the line more than an unexplained exception."""
    if result.passed or not words or words not in result.line:
        return False
    return "values differ" not in words and not result.detail.startswith("your function raised")


def figures(library: Library, label: str = "") -> dict:
    """Run every answer of ``library`` through its checker (lenient) and count: wrong answers, rejected,
    named (see :func:`names_the_mistake`), right answers, accepted; with the misses listed by name."""
    out: dict = dict.fromkeys(KEYS, 0) | {"let_through": [], "unnamed": [], "refused": []}
    prefix = f"{label}:" if label else ""
    for checker, (wrongs, rights) in library.items():
        for w in wrongs:
            result = run_answer(checker, w.fn)
            out["wrong"] += 1
            if result.passed:
                out["let_through"].append(f"{prefix}{checker.__name__}:{w.name}")
                continue
            out["rejected"] += 1
            if names_the_mistake(result, w.words):
                out["named"] += 1
            else:
                out["unnamed"].append(f"{prefix}{checker.__name__}:{w.name}: {result.line}")
        for r in rights:
            out["right"] += 1
            result = run_answer(checker, r.fn)
            if result.passed:
                out["accepted"] += 1
            else:
                out["refused"].append(f"{prefix}{checker.__name__}:{r.name}: {result.line}")
    return out


def library_modules() -> list:
    """Every checker test module, tests/checks/test_checks*.py (each must expose LIBRARY)."""
    for path in (str(HERE), str(HERE.parents[1])):
        if path not in sys.path:
            sys.path.insert(0, path)
    return [importlib.import_module(path.stem) for path in sorted(HERE.glob("test_checks*.py"))]


def summary(f: dict) -> str:
    def share(a, b):
        return f"{a}/{b} ({100 * a / b:.0f}%)" if b else "0/0"
    return (f"wrong answers tested {f['wrong']}; rejected {share(f['rejected'], f['wrong'])}; "
            f"message names the mistake or its structure {share(f['named'], f['wrong'])}; "
            f"right answers accepted {share(f['accepted'], f['right'])}")


def main() -> None:
    """Print the figures of every checker test module and their total, then the misses."""
    import os
    import warnings

    os.environ["COURSE_STRICT_CHECKS"] = "0"
    warnings.filterwarnings("ignore", message="The use of `x.T`")  # some wrong answers use x.T on a batch on purpose
    total: dict = {}
    for module in library_modules():
        counts = figures(module.LIBRARY, module.__name__)
        print(f"{module.__name__:<28}{summary(counts)}")
        for key, value in counts.items():
            total[key] = total.get(key, 0 if isinstance(value, int) else []) + value
    print(f"{'all':<28}{summary(total)}")
    for key in ("let_through", "refused", "unnamed"):
        for item in total[key]:
            print(f"  {key}: {item}")


if __name__ == "__main__":
    main()
