"""The engine behind every exercise checker.

A checker runs the learner's function on a few inputs, compares each result with a reference
implementation, and answers in one line:

    ✓ softmax: correct on 4 cases.
    ✗ softmax: softmax over the wrong axis: each row should sum to 1 (dim=-1). Largest error 0.41.
    … softmax: not attempted yet: replace `raise NotImplementedError()` with your code.

When the values are wrong, the checker runs a library of known mistakes (``Mistake``) on the same
inputs; if the learner's output matches one of them, its hint names the likely error.

Two engines: :func:`check_function` compares tensors, :func:`check_values` compares plain Python
values (ints, lists, dicts), e.g. the pair counts of lesson 02.

In a lesson the line is printed and the notebook carries on. Under a grader or the test suite
(``NBGRADER_EXECUTION`` or ``COURSE_STRICT_CHECKS=1`` in the environment), anything but a pass
raises :class:`ExerciseFailed`, so nbgrader withholds the points and CI fails.
"""
from __future__ import annotations

import copy
import os
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any

import torch

from ..utils import describe_exception

PASSED, FAILED, NOT_ATTEMPTED = "passed", "failed", "not attempted"
HINT_WIDTH = 88  # a strict failure's message is wrapped to this width (nbgrader's validator cuts longer lines)
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
    """True under nbgrader (it sets NBGRADER_EXECUTION; what it was when the kernel first imported the course
    counts, so a solution cell cannot unset it) or when COURSE_STRICT_CHECKS=1."""
    from course import GRADED_AT_START

    return GRADED_AT_START or bool(os.environ.get("NBGRADER_EXECUTION")) or os.environ.get("COURSE_STRICT_CHECKS") == "1"


def report(result: CheckResult, strict: bool | None = None) -> CheckResult:
    """Print the one-line verdict; in strict mode raise on anything but a pass.

    ``strict=None`` follows the environment (see :func:`strict_mode`); True or False forces it, e.g.
    ``strict=False`` to show what a checker says about a deliberately wrong function.
    """
    print(result.line)
    if (strict_mode() if strict is None else strict) and not result.passed:
        # Wrapped so that nbgrader's validator, which cuts longer lines, shows the whole hint.
        raise ExerciseFailed(textwrap.fill(result.line, HINT_WIDTH, break_long_words=False))
    return result


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


def compare_outputs(got: Any, want: Any, names: Sequence[str], atol: float, rtol: float) -> tuple[str | None, float]:
    """Compare a function's output(s) with the expected ones (tensors; ``names`` names each output).

    Return (problem or None, largest error) for one case; problems are phrased for learners.
    """
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


def check_function(exercise: str, fn: Any, reference: Callable[..., Any], cases: Sequence[tuple], *,
                   strict: bool | None = None, **options: Any) -> CheckResult:
    """Check ``fn`` against ``reference`` on every case (a tuple of positional arguments) and print one line.

    ``options`` are :func:`evaluate_function`'s (``mistakes``, ``output_names``, ``atol``, ``rtol``); returns
    the :class:`CheckResult` (see :func:`report` for ``strict``).
    """
    return report(evaluate_function(exercise, fn, reference, cases, **options), strict=strict)


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
    """Run ``fn`` and ``reference`` on every case and compare (within ``atol``/``rtol``); on wrong values,
    name the first of ``mistakes`` whose output matches. Silent: only returns the result."""
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
            return CheckResult(exercise, FAILED, f"your function raised {describe_exception(exc)} (case {i + 1} of {len(cases)})")
        if not _same_inputs(given, args):
            return CheckResult(exercise, FAILED, "your function changed its input in place; work on new tensors instead")
        problem, err = compare_outputs(got, want, output_names, atol, rtol)
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
        problem, _ = compare_outputs(got, wrong, names, max(atol, 1e-5), max(rtol, 1e-4))
        if problem is None:
            return mistake.hint
    return None


# ----------------------------------------------------------------------------------------------
# The engine for plain values (ints, lists, dicts)
# ----------------------------------------------------------------------------------------------

def _normalise(value: Any, like: Any) -> tuple[Any, str | None]:
    """Bring ``value`` into the reference's form; return (value, problem or None)."""
    if isinstance(like, Mapping):
        if not isinstance(value, Mapping):
            return None, f"should return a dict, got {type(value).__name__}"
        return {k: v for k, v in value.items() if v != 0}, None
    if isinstance(like, list):
        if isinstance(value, torch.Tensor) and value.dim() == 1:
            value = value.tolist()
        if not isinstance(value, (list, tuple)):
            return None, f"should return a list, got {type(value).__name__}"
        return list(value), None
    if isinstance(like, bool):
        if not isinstance(value, bool):
            return None, f"should return True or False, got {type(value).__name__}"
        return value, None
    if isinstance(like, Integral):
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, Integral):
            return None, f"should return an int, got {type(value).__name__}"
        return int(value), None
    return value, None


def _difference(got: Any, want: Any) -> str:
    """The first difference between two equal-typed values, in words."""
    if isinstance(want, Mapping):
        for key in sorted(set(want) | set(got), key=repr):
            if got.get(key) != want.get(key):
                if key not in got:
                    return f"{key!r} is missing (expected {want[key]})"
                if key not in want:
                    return f"{key!r} should not be there (you have {got[key]})"
                return f"for {key!r} you have {got[key]}, expected {want[key]}"
        return "the dicts differ"
    if isinstance(want, list):
        for i, (g, w) in enumerate(zip(got, want)):
            if g != w:
                return f"first difference at position {i}: you have {g!r}, expected {w!r}"
        return f"length {len(got)}, expected {len(want)}"
    return f"you returned {got!r}, expected {want!r}"


def _show_args(args: tuple) -> str:
    text = ", ".join(repr(a) for a in args)
    return text if len(text) <= 60 else text[:57] + "..."


def evaluate_values(exercise: str, fn: Any, reference: Callable[..., Any], cases: Sequence[tuple],
                    mistakes: Sequence[Mistake] = ()) -> CheckResult:
    """Like :func:`evaluate_function`, for functions returning ints, lists or dicts.

    For a failure: the first difference plus, when the learner's answers match a known mistake, its
    hint. A mistake is named only if it agrees with the learner's answers on every case up to the
    first failing one, so a mistake that happens to coincide on the failing case but not on an
    earlier one is not blamed.
    """
    if not callable(fn):
        return CheckResult(exercise, FAILED, f"expected a function, got {type(fn).__name__}; "
                           "pass the function itself, without calling it")
    seen: list[tuple[tuple, Any]] = []  # (args, learner's normalised answer) for the cases so far
    for i, args in enumerate(cases):
        want = reference(*copy.deepcopy(args))
        given = copy.deepcopy(args)
        try:
            got = fn(*given)
        except NotImplementedError:
            return CheckResult(exercise, NOT_ATTEMPTED, "not attempted yet: replace `raise NotImplementedError()` "
                               "with your code, then run this cell again")
        except Exception as exc:  # learner code may raise anything: one line
            return CheckResult(exercise, FAILED, f"your function raised {describe_exception(exc)} "
                               f"(case {i + 1} of {len(cases)}: {_show_args(args)})")
        if given != args:
            return CheckResult(exercise, FAILED, "your function changed its input in place; build a new list instead")
        got, problem = _normalise(got, want)
        if problem:
            return CheckResult(exercise, FAILED, f"{problem} (case {i + 1} of {len(cases)})")
        seen.append((args, got))
        if got == want:
            continue
        hint = _diagnose_values(seen, mistakes, want)
        where = f"case {i + 1} of {len(cases)}: {_show_args(args)}"
        difference = _difference(got, want)
        if hint:
            difference = f"{hint}. {difference[0].upper()}{difference[1:]}"
        return CheckResult(exercise, FAILED, f"{difference} ({where}).")
    return CheckResult(exercise, PASSED, f"correct on {len(cases)} case(s).")


def _diagnose_values(seen: list[tuple[tuple, Any]], mistakes: Sequence[Mistake], want_like: Any) -> str | None:
    """The first mistake that gives the learner's answer on every case seen so far."""
    for mistake in mistakes:
        try:
            if all(_normalise(mistake.fn(*copy.deepcopy(args)), want_like)[0] == got for args, got in seen):
                return mistake.hint
        except Exception:
            continue
    return None


def check_values(exercise: str, fn: Any, reference: Callable[..., Any], cases: Sequence[tuple], *,
                 mistakes: Sequence[Mistake] = (), strict: bool | None = None) -> CheckResult:
    """Check ``fn`` against ``reference`` on every case, for plain values; print one line."""
    return report(evaluate_values(exercise, fn, reference, cases, mistakes), strict=strict)


def with_exception_hints(result: CheckResult, hints: Sequence[tuple[str, str]]) -> CheckResult:
    """If the learner's function raised and its message contains a known text, lead with the hint.

    ``hints``: ``(text the exception message contains, hint)`` pairs, tried in order.
    """
    if result.status == FAILED and result.detail.startswith("your function raised"):
        for text, hint in hints:
            if text in result.detail:
                result.detail = f"{hint}. Y{result.detail[1:]}"  # "Your function raised ..."
                break
    return result
