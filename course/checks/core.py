"""The engine behind every exercise checker.

A checker runs the learner's function on a few inputs, compares each result with a reference
implementation, and answers in one line:

    ✓ softmax: correct on 4 cases.
    ✗ softmax: softmax over the wrong axis: each row should sum to 1 (dim=-1). Largest error 0.41.
    … softmax: not attempted yet: replace `raise NotImplementedError()` with your code.

When the values are wrong, the checker runs a library of known mistakes (``Mistake``) on the same
inputs; if the learner's output matches one of them, its hint names the likely error.

In a lesson the line is printed and the notebook carries on. Under a grader or the test suite
(``NBGRADER_EXECUTION`` or ``COURSE_STRICT_CHECKS=1`` in the environment), anything but a pass
raises :class:`ExerciseFailed`, so nbgrader withholds the points and CI fails.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..utils import describe_exception

PASSED, FAILED, NOT_ATTEMPTED = "passed", "failed", "not attempted"
_SYMBOL = {PASSED: "✓", FAILED: "✗", NOT_ATTEMPTED: "…"}


class ExerciseFailed(AssertionError):
    """Raised by a checker in strict mode (graders, CI) when an exercise does not pass."""


@dataclass(frozen=True)
class Mistake:
    """A known wrong implementation and the hint to give when a learner's output matches it."""

    hint: str
    fn: Callable[..., Any]


@dataclass
class CheckResult:
    """What a checker found. ``bool(result)`` is True only for a pass."""

    exercise: str
    status: str
    detail: str
    max_error: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def __bool__(self) -> bool:
        return self.passed

    @property
    def line(self) -> str:
        return f"{_SYMBOL[self.status]} {self.exercise}: {self.detail}"

    def __str__(self) -> str:
        return self.line

    __repr__ = __str__

    def _ipython_display_(self) -> None:
        # The checker has printed the line already; don't show it twice when a cell ends with it.
        pass


def strict_mode() -> bool:
    """True under nbgrader (it sets NBGRADER_EXECUTION) or when COURSE_STRICT_CHECKS=1."""
    return bool(os.environ.get("NBGRADER_EXECUTION")) or os.environ.get("COURSE_STRICT_CHECKS") == "1"


def report(result: CheckResult, strict: bool | None = None) -> CheckResult:
    """Print the one-line verdict; in strict mode raise on anything but a pass.

    ``strict=None`` follows the environment (see :func:`strict_mode`); True or False forces it, e.g.
    ``strict=False`` to show what a checker says about a deliberately wrong function.
    """
    print(result.line)
    if (strict_mode() if strict is None else strict) and not result.passed:
        raise ExerciseFailed(result.line)
    return result


def _describe_exception(exc: BaseException) -> str:
    return describe_exception(exc)


def _as_tuple(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_clone(v) for v in value)
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    return value


def _same_inputs(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same_inputs(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_inputs(a[k], b[k]) for k in a)
    return True


def max_abs_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest absolute difference, treating NaN or inf where the reference is finite as infinite."""
    diff = (got.detach().double() - want.detach().double()).abs()
    diff = torch.where(torch.isfinite(diff), diff, torch.full_like(diff, float("inf")))
    both_nan = torch.isnan(got.detach().double()) & torch.isnan(want.detach().double())
    diff = torch.where(both_nan, torch.zeros_like(diff), diff)
    return float(diff.max()) if diff.numel() else 0.0


def _compare(got: Any, want: Any, names: Sequence[str], atol: float, rtol: float) -> tuple[str | None, float]:
    """Return (problem or None, largest error) for one case; problems are phrased for learners."""
    got_t, want_t = _as_tuple(got), _as_tuple(want)
    if len(got_t) != len(want_t):
        return (f"returned {len(got_t)} value(s), expected {len(want_t)} ({', '.join(names)})", float("inf"))
    worst = 0.0
    for name, g, w in zip(names, got_t, want_t):
        if not isinstance(g, torch.Tensor):
            return f"{name} should be a torch.Tensor, got {type(g).__name__}", float("inf")
        if tuple(g.shape) != tuple(w.shape):
            return f"{name} has shape {tuple(g.shape)}, expected {tuple(w.shape)}", float("inf")
        if g.dtype != w.dtype and not (g.is_floating_point() and w.is_floating_point()):
            return f"{name} has dtype {g.dtype}, expected {w.dtype}", float("inf")
        err = max_abs_error(g, w)
        worst = max(worst, err)
        if not torch.allclose(g.detach().to(w.dtype), w.detach(), atol=atol, rtol=rtol, equal_nan=True):
            return f"{name} values differ", worst
    return None, worst


def check_function(
    exercise: str,
    fn: Any,
    reference: Callable[..., Any],
    cases: Sequence[tuple],
    *,
    mistakes: Sequence[Mistake] = (),
    output_names: Sequence[str] = ("output",),
    atol: float = 1e-5,
    rtol: float = 1e-4,
    strict: bool | None = None,
) -> CheckResult:
    """Check ``fn`` against ``reference`` on every case (a tuple of positional arguments).

    Returns the :class:`CheckResult` after printing its line (see :func:`report` for ``strict``).
    """
    return report(evaluate_function(exercise, fn, reference, cases, mistakes=mistakes,
                                    output_names=output_names, atol=atol, rtol=rtol), strict=strict)


def evaluate_function(
    exercise: str,
    fn: Any,
    reference: Callable[..., Any],
    cases: Sequence[tuple],
    *,
    mistakes: Sequence[Mistake] = (),
    output_names: Sequence[str] = ("output",),
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> CheckResult:
    """Like :func:`check_function` but silent: only returns the result."""
    if not callable(fn):
        return CheckResult(exercise, FAILED, f"expected a function, got {type(fn).__name__}; pass the function itself, without calling it")
    worst = 0.0
    for i, args in enumerate(cases):
        want = reference(*_clone(args))
        given = _clone(args)
        try:
            got = fn(*given)
        except NotImplementedError:
            return CheckResult(exercise, NOT_ATTEMPTED, "not attempted yet: replace `raise NotImplementedError()` with your code, then run this cell again")
        except Exception as exc:  # the learner's code may raise anything: report it in one line
            return CheckResult(exercise, FAILED, f"your function raised {_describe_exception(exc)} (case {i + 1} of {len(cases)})")
        if not _same_inputs(given, args):
            return CheckResult(exercise, FAILED, "your function changed its input in place; work on new tensors instead")
        problem, err = _compare(got, want, output_names, atol, rtol)
        worst = max(worst, err) if err != float("inf") else worst
        if problem is None:
            continue
        hint = _diagnose(got, args, mistakes, output_names, atol, rtol) if "values differ" in problem else None
        detail = f"{hint}." if hint else f"{problem}."
        if err != float("inf") or "values differ" in problem:
            detail += f" Largest error {err:.3g} (case {i + 1} of {len(cases)})."
        return CheckResult(exercise, FAILED, detail, max_error=err)
    return CheckResult(exercise, PASSED, f"correct on {len(cases)} case(s) (largest error {worst:.1e}).", max_error=worst)


def _diagnose(got: Any, args: tuple, mistakes: Sequence[Mistake], names, atol, rtol) -> str | None:
    """Return the hint of the first known mistake whose output matches ``got``."""
    for mistake in mistakes:
        try:
            wrong = mistake.fn(*_clone(args))
        except Exception:
            continue
        problem, _ = _compare(got, wrong, names, max(atol, 1e-5), max(rtol, 1e-4))
        if problem is None:
            return mistake.hint
    return None
