"""Exercise checkers: one line for a pass, a hint naming the likely mistake for a failure.

The engines live in :mod:`course.checks.core`; the checkers of each course module live in a checker
module of the same name (``checks.tokenizers`` checks exercises on :mod:`course.tokenizers`,
``checks.attention`` on :mod:`course.attention`, ``checks.mlm`` on :mod:`course.mlm`, ...; ``basics``
holds lesson 00's softmax), and a lesson imports them from there, e.g.
``from course.checks.attention import check_causal_mask``.
"""
from .basics import check_softmax
from .core import (CheckResult, ExerciseFailed, Mistake, check_function, check_values, evaluate_function, evaluate_values,
                   strict_mode)

__all__ = [
    "CheckResult",
    "ExerciseFailed",
    "Mistake",
    "check_function",
    "evaluate_function",
    "check_values",
    "evaluate_values",
    "strict_mode",
    "check_softmax",
]
