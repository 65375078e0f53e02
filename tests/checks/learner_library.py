"""Libraries of learner-style solutions for the checker tests, and their figures.

A test module lists, for each checker, ``Wrong`` implementations (written the way a learner would,
independently of the checker's own mistake list, each with the words its verdict must hold) and
``Right`` ones (correct, but written differently: einsum, loops, float64 inside, -1e9 fills). Its
tests assert each verdict; :func:`figures` counts them, so the numbers of several modules can be
summed::

    from learner_library import figures
    figures(test_checks_layers.LIBRARY)   # {'wrong': 64, 'rejected': 64, 'named': 61, 'right': 20, 'accepted': 20}

A rejection *names the mistake or its structure* when its line says more than the engine's bare
"values differ", an unexplained exception or a count of returned values: a hint, a shape, a dtype,
an in-place change, NaN, a structural remark.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from course.checks.core import CheckResult


@dataclass(frozen=True)
class Wrong:
    """A wrong learner solution and the words its verdict must contain."""

    name: str
    fn: Callable[..., Any]
    words: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Right:
    """A correct learner solution, written another way."""

    name: str
    fn: Callable[..., Any]

    def __str__(self) -> str:
        return self.name


Library = Mapping[Callable[..., CheckResult], tuple[Sequence[Wrong], Sequence[Right]]]

def names_the_mistake(result: CheckResult) -> bool:
    """A rejection whose line says more than "values differ", an unexplained exception or a count of values."""
    if result.passed:
        return False
    detail = result.detail
    if detail.startswith("your function raised") or "value(s), expected" in detail:
        return False
    return "values differ" not in detail or "values differ:" in detail


def wrong_cases(library: Library) -> list[tuple]:
    """``(checker, wrong)`` pairs, for ``pytest.mark.parametrize``."""
    return [(checker, w) for checker, (wrongs, _) in library.items() for w in wrongs]


def right_cases(library: Library) -> list[tuple]:
    return [(checker, r) for checker, (_, rights) in library.items() for r in rights]


def case_id(value: Any) -> str:
    return getattr(value, "name", None) or getattr(value, "__name__", "")


def figures(library: Library) -> dict[str, int]:
    """Run every solution of the library through its checker (lenient) and count the verdicts."""
    out = {"wrong": 0, "rejected": 0, "named": 0, "right": 0, "accepted": 0}
    for checker, (wrongs, rights) in library.items():
        for w in wrongs:
            result = checker(w.fn, strict=False)
            out["wrong"] += 1
            out["rejected"] += not result.passed
            out["named"] += names_the_mistake(result)
        for r in rights:
            out["right"] += 1
            out["accepted"] += checker(r.fn, strict=False).passed
    return out


def main() -> None:
    """Print the figures of every checker test module that has a ``LIBRARY``, and their sum:
    ``python tests/checks/learner_library.py`` (from the repository root)."""
    import contextlib
    import importlib
    import io
    import os
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    sys.path[:0] = [str(here), str(here.parents[1])]
    os.environ["COURSE_STRICT_CHECKS"] = "0"
    total = dict.fromkeys(("wrong", "rejected", "named", "right", "accepted"), 0)
    for path in sorted(here.glob("test_checks_*.py")):
        library = getattr(importlib.import_module(path.stem), "LIBRARY", None)
        if library is None:
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            counts = figures(library)
        print(f"{path.stem:28s} {counts}")
        total = {k: total[k] + counts[k] for k in total}
    print(f"{'total':28s} {total}")
    if total["wrong"]:
        print(f"rejected {total['rejected'] / total['wrong']:.1%}, named {total['named'] / total['wrong']:.1%} "
              f"of {total['wrong']} wrong; accepted {total['accepted']} of {total['right']} right")


if __name__ == "__main__":
    main()
