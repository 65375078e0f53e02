"""Exercise checkers: one line for a pass, a hint naming the likely mistake for a failure.

The engine lives in :mod:`course.checks.core`; each lesson's checkers live in a module named after
the topic (``basics``, ``rnn``, ``tokens``, ``attention``, ``positional``, ``layers``, ...), and a lesson
imports them from there, e.g. ``from course.checks.attention import check_causal_mask``.
"""
from .basics import check_softmax
from .core import CheckResult, ExerciseFailed, Mistake, check_function, evaluate_function, strict_mode

__all__ = [
    "CheckResult",
    "ExerciseFailed",
    "Mistake",
    "check_function",
    "evaluate_function",
    "strict_mode",
    "check_softmax",
]
