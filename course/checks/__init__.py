"""Exercise checkers: one line for a pass, a hint naming the likely mistake for a failure.

Each lesson's checkers live in a module of their own and are re-exported here, so a lesson does
``from course.checks import check_softmax``.
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
