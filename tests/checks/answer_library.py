"""Libraries of learner-style answers for the checkers, in one shape, and the figures they give.

A checker test module (tests/checks/test_checks_*.py) that exposes

    WRONG_ANSWERS = [(checker, label, fn, words), ...]   # each must fail; its line must contain ``words``
    RIGHT_ANSWERS = [(checker, label, fn), ...]          # each must pass

takes part in the figures: ``checker(fn, strict=False)`` is called for each. ``words`` names the mistake or
its structure (a hint, a structural hint, or the engine's words for a wrong type, shape or dtype); ``None``
means the line is only expected to reject the answer, without naming what is wrong (it counts as
rejected, not as named). The wrong answers are written the way a learner writes them, independently of
the checker's own mistake library.

    .venv/bin/python tests/checks/answer_library.py          # the figures over every module that has them
"""
from __future__ import annotations

import contextlib
import importlib
import io
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_answer(checker, fn):
    """The checker's result for ``fn``, without printing and without raising."""
    with contextlib.redirect_stdout(io.StringIO()):
        return checker(fn, strict=False)


def figures(modules) -> dict:
    """Count, over the libraries of ``modules``: wrong answers, rejected, named, right answers, accepted.
    Also lists the labels of the misses."""
    out = {"wrong": 0, "rejected": 0, "named": 0, "right": 0, "accepted": 0,
           "let_through": [], "unnamed": [], "refused": []}
    for module in modules:
        for checker, label, fn, words in getattr(module, "WRONG_ANSWERS", []):
            result = run_answer(checker, fn)
            out["wrong"] += 1
            if result.passed:
                out["let_through"].append(f"{module.__name__}:{label}")
                continue
            out["rejected"] += 1
            if words is not None and words in result.line:
                out["named"] += 1
            else:
                out["unnamed"].append(f"{module.__name__}:{label}: {result.line}")
        for checker, label, fn in getattr(module, "RIGHT_ANSWERS", []):
            out["right"] += 1
            result = run_answer(checker, fn)
            if result.passed:
                out["accepted"] += 1
            else:
                out["refused"].append(f"{module.__name__}:{label}: {result.line}")
    return out


def library_modules():
    """Every tests/checks/test_checks*.py module that exposes WRONG_ANSWERS or RIGHT_ANSWERS."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    found = []
    for path in sorted(HERE.glob("test_checks*.py")):
        module = importlib.import_module(path.stem)
        if hasattr(module, "WRONG_ANSWERS") or hasattr(module, "RIGHT_ANSWERS"):
            found.append(module)
    return found


def summary(f: dict) -> str:
    def share(a, b):
        return f"{a}/{b} ({100 * a / b:.0f}%)" if b else "0/0"
    return (f"wrong answers tested {f['wrong']}; rejected {share(f['rejected'], f['wrong'])}; "
            f"message names the mistake or its structure {share(f['named'], f['wrong'])}; "
            f"right answers accepted {share(f['accepted'], f['right'])}")


if __name__ == "__main__":
    import os

    os.environ["COURSE_STRICT_CHECKS"] = "0"
    total: dict = {}
    for module in library_modules():
        counts = figures([module])
        print(f"{module.__name__:<32}{summary(counts)}")
        for key, value in counts.items():
            total[key] = total.get(key, 0 if isinstance(value, int) else []) + value
    print(f"{'all':<32}{summary(total)}")
    for key in ("let_through", "refused", "unnamed"):
        for item in total[key]:
            print(f"  {key}: {item}")
