"""Hints for failures the engine reports only as "values differ", a wrong shape or a wrong dtype.

:func:`evaluate` runs :func:`course.checks.core.evaluate_function` and, when the learner's answer is
wrong, looks again at the first failing case, in this order:

1. a known mistake that gives the learner's answers on every case up to the failing one (so one
   that merely coincides on the failing case is not blamed), whatever the shape or dtype; when
   several do, the later cases choose between them. This replaces the engine's pick, which looks at
   the failing case alone;
2. NaN or inf where the answer is finite, with the exercise's own reading of it (``nonfinite_hint``:
   an exp() that overflowed, a row with nothing left);
3. a checker's own ``locate(args, name, got, want)``, which says where the answer is wrong in the
   exercise's terms (only the tokens tied at the k-th value, only at distance w, ...);
4. the generic structure of the difference: a wrong shape explained (swapped axes, a lost or extra
   size-1 axis, an axis grown by broadcasting), all zeros, a transpose, a constant factor, a constant
   shift, a shift by one position along an axis, right only at index 0 of dim 0 (the first example
   of a batch), wrong only at the first or last index of an axis, or, for ids and masks, where the
   first difference is.

The diagnosis never changes a verdict, and if it fails itself the engine's line stands.

These helpers are generic: they belong in ``core.py`` and move there once the engine's rework (time
limits, NaN and dtype naming) has landed. Until then lessons 06-11's checkers call :func:`check` or
:func:`evaluate` instead of ``check_function`` or ``evaluate_function``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .core import FAILED, CheckResult, Mistake, compare_outputs, evaluate_function, report, with_exception_hints

Locate = Callable[[tuple, str, torch.Tensor, torch.Tensor], "str | None"]

__all__ = ["evaluate", "check", "structure_hint", "shape_hint", "first_difference"]


def _as_tuple(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_clone(v) for v in value)
    return value


def check(exercise: str, fn: Any, reference: Callable[..., Any], cases: Sequence[tuple], *,
          strict: bool | None = None, **options: Any) -> CheckResult:
    """:func:`evaluate`, then print the line (and raise in strict mode), like ``check_function``."""
    return report(evaluate(exercise, fn, reference, cases, **options), strict=strict)


def evaluate(exercise: str, fn: Any, reference: Callable[..., Any], cases: Sequence[tuple], *,
             mistakes: Sequence[Mistake] = (), output_names: Sequence[str] = ("output",), atol: float = 1e-5,
             rtol: float = 1e-4, exception_hints: Sequence[tuple[str, str]] = (),
             nonfinite_hint: str | None = None, locate: Locate | None = None) -> CheckResult:
    """``evaluate_function`` plus the diagnosis above.

    ``exception_hints``: ``(text in the exception message, hint)`` pairs for a learner function that
    raises; ``nonfinite_hint``: what NaN or inf usually means in this exercise (an ``exp`` that
    overflowed, a row with nothing left); ``locate``: the checker's own "where is it wrong".
    """
    result = evaluate_function(exercise, fn, reference, cases, mistakes=mistakes, output_names=output_names,
                               atol=atol, rtol=rtol)
    if result.status != FAILED:
        return result
    if exception_hints:
        result = with_exception_hints(result, exception_hints)
    try:
        found = _explain(fn, reference, cases, mistakes, output_names, atol, rtol, nonfinite_hint, locate)
    except Exception:  # the diagnosis is a bonus: if it breaks, the engine's line stands
        found = None
    if found is None:
        return result
    kind, problem, text = found
    detail = result.detail
    named = next((m.hint for m in mistakes if m.hint in detail), None)
    if named is not None:           # the engine's pick, from the failing case alone: keep it only if it is ours
        if kind == "mistake" and text == named:
            return result
        detail = detail.replace(named, problem, 1)
    return CheckResult(result.exercise, FAILED, _merge(detail, kind, problem, text),
                       max_error=result.max_error, extra=result.extra)


def _merge(detail: str, kind: str, problem: str, text: str | None) -> str:
    """Put the hint into the engine's line, in place of its bare problem where that is found."""
    if kind == "none":
        return detail
    if kind == "mistake":
        new = text if problem.endswith("values differ") else f"{text} ({problem})"
    else:
        new = f"{problem}: {text}"
    if problem in detail:
        return detail.replace(problem, new, 1)
    return f"{new}. {detail}"


def _explain(fn, reference, cases, mistakes, names, atol, rtol, nonfinite_hint, locate):
    """(kind, the engine's problem, hint) for the first failing case, or None when the learner's function
    raised or changed its input before failing (the engine's own line says so).

    A mistake is named only if it gives the learner's answer on every case up to the failing one (so one
    that merely coincides on the failing case is not blamed); among those, one that also gives the
    learner's answers on the later cases comes first. kind "none": no mistake and no structure found.
    """
    seen: list[tuple[tuple, Any]] = []      # (args, the learner's output), case by case
    failing = None
    later = iter(enumerate(cases))
    for _, args in later:
        want = reference(*_clone(args))
        given = _clone(args)
        try:
            got = fn(*given)
        except Exception:
            return None
        if not _same(given, args):
            return None
        seen.append((args, got))
        problem, _ = compare_outputs(got, want, names, atol, rtol)
        if problem is not None:
            failing = (args, got, want, problem)
            break
    if failing is None:
        return None
    args, got, want, problem = failing
    tol = (max(atol, 1e-5), max(rtol, 1e-4))
    candidates = [m for m in mistakes if all(_agrees(m, a, g, names, tol) for a, g in seen)]
    if len(candidates) > 1:   # let the remaining cases choose between them
        for _, more in later:
            given = _clone(more)
            try:
                out = fn(*given)
            except Exception:
                break
            if not _same(given, more):
                break
            fits = [m for m in candidates if _agrees(m, more, out, names, tol)]
            if not fits:
                break
            candidates = fits
    if candidates:
        return "mistake", problem, candidates[0].hint
    text = structure_hint(args, got, want, names, atol, rtol, nonfinite_hint, locate)
    return ("structure", problem, text) if text else ("none", problem, None)


def _agrees(mistake: Mistake, args: tuple, got: Any, names, tol) -> bool:
    try:
        wrong = mistake.fn(*_clone(args))
    except Exception:
        return False
    return compare_outputs(got, wrong, names, *tol)[0] is None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return True


# ----------------------------------------------------------------------------------------------
# The structure of a difference
# ----------------------------------------------------------------------------------------------

def structure_hint(args: tuple, got: Any, want: Any, names: Sequence[str], atol: float = 1e-5, rtol: float = 1e-4,
                   nonfinite_hint: str | None = None, locate: Locate | None = None) -> str | None:
    """What the wrong outputs have in common with the right ones, in words (or None).

    In order: a wrong shape; NaN or inf where the answer is finite (in any output); the checker's own
    ``locate`` (in any output); then, output by output, the generic structure of the difference.
    """
    got_t, want_t = _as_tuple(got), _as_tuple(want)
    if len(got_t) != len(want_t):
        return None
    wrong = []
    for name, g, w in zip(names, got_t, want_t):
        if not isinstance(g, torch.Tensor) or not isinstance(w, torch.Tensor):
            return None
        if tuple(g.shape) != tuple(w.shape):
            return shape_hint(g.shape, w.shape)
        if g.dtype != w.dtype and not (g.is_floating_point() and w.is_floating_point()):
            return None
        g, w = g.detach(), w.detach()
        if w.is_floating_point():
            if not torch.allclose(g.to(w.dtype), w, atol=atol, rtol=rtol, equal_nan=True):
                wrong.append((name, g.double(), w.double()))
        elif not torch.equal(g, w):
            wrong.append((name, g, w))

    def named(name: str, text: str) -> str:
        return text if len(names) == 1 or name == names[0] else f"in {name}, {text}"

    for name, g, w in wrong:
        if w.is_floating_point():
            text = _nonfinite(g, w, nonfinite_hint)
            if text:
                return named(name, text)
    if locate:
        for name, g, w in wrong:
            text = locate(args, name, g, w)
            if text:
                return named(name, text)
    for name, g, w in wrong:
        text = _float_hint(g, w, atol, rtol) if w.is_floating_point() else first_difference(g, w)
        if text:
            return named(name, text)
    return None


def shape_hint(got_shape, want_shape) -> str | None:
    """A wrong shape explained: swapped axes, a lost or extra size-1 axis, an axis grown by broadcasting."""
    g, w = tuple(got_shape), tuple(want_shape)
    if len(g) == len(w) >= 2 and g[:-2] == w[:-2] and g[-2:] == w[-2:][::-1]:
        return "the last two axes are swapped"
    if tuple(d for d in g if d != 1) == tuple(d for d in w if d != 1):
        return ("a size-1 axis is missing (a reduction without keepdim=True?)" if len(g) < len(w)
                else "an extra size-1 axis")
    if len(g) == len(w):
        grown = [i for i, (a, b) in enumerate(zip(g, w)) if a != b]
        if grown and all(w[i] == 1 for i in grown):
            return (f"axis {grown[0]} should have size 1 but grew to {g[grown[0]]} by broadcasting "
                    "(a reduction without keepdim=True?)")
    return None


def _close(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, atol=atol, rtol=rtol, equal_nan=True))


def _nonfinite(g: torch.Tensor, w: torch.Tensor, hint: str | None) -> str | None:
    bad = ~torch.isfinite(g) & torch.isfinite(w)
    if not bad.any():
        return None
    kinds = " or ".join(k for k, present in (("NaN", torch.isnan(g[bad]).any()), ("inf", torch.isinf(g[bad]).any()))
                        if present)
    text = f"it has {kinds} at {int(bad.sum())} of {g.numel()} entries where the answer is finite"
    return f"{text}; {hint}" if hint else text


def _float_hint(g: torch.Tensor, w: torch.Tensor, atol: float, rtol: float) -> str | None:
    finite = torch.isfinite(w)
    if not bool(torch.equal(torch.isfinite(g), finite)):
        return None
    gf, wf = g[finite], w[finite]
    if gf.numel() and bool((gf == 0).all()) and not bool((wf == 0).all()):
        return "it is all zeros"
    if g.dim() >= 2 and g.shape[-1] == g.shape[-2] and g.shape[-1] > 1 and _close(g, w.transpose(-2, -1), atol, rtol):
        return "it is the transpose of the answer (the last two axes swapped)"
    if gf.numel() > 1 and bool((wf != 0).any()):
        c = float((gf * wf).sum() / (wf * wf).sum())
        if abs(c - 1) > 1e-3 and c != 0 and _close(gf, c * wf, atol, rtol):
            return "it has the opposite sign" if abs(c + 1) < 1e-3 else \
                f"it is {c:.4g} times the answer (off by a constant factor)"
        delta = float((gf - wf).mean())
        if abs(delta) > atol and _close(gf, wf + delta, atol, rtol) and not _close(gf, wf, atol, rtol):
            return f"it is the answer plus {delta:.4g} everywhere (off by a constant)"
    for axis in range(g.dim()):
        n = g.shape[axis]
        if n < 2 or _close(w.narrow(axis, 1, n - 1), w.narrow(axis, 0, n - 1), atol, rtol):
            continue
        if _close(g.narrow(axis, 1, n - 1), w.narrow(axis, 0, n - 1), atol, rtol):
            return f"it is the answer shifted by one position along dim {axis} (one step too late)"
        if _close(g.narrow(axis, 0, n - 1), w.narrow(axis, 1, n - 1), atol, rtol):
            return f"it is the answer shifted by one position along dim {axis} (one step too early)"
    return _confined(g, w, atol, rtol)


def _confined(g: torch.Tensor, w: torch.Tensor, atol: float, rtol: float) -> str | None:
    """Wrong only for the later examples of a batch, or only at the first or last index of an axis."""
    wrong = ~torch.isclose(g, w, atol=atol, rtol=rtol, equal_nan=True)
    if g.dim() >= 2 and g.shape[0] > 1 and not wrong[0].any():
        return ("right at index 0 of dim 0 and wrong at the others (when dim 0 is the batch: something fixed to "
                "example 0, or mixed across examples?)")
    for axis in range(g.dim()):
        n = g.shape[axis]
        if n < 3:
            continue
        hit = wrong.movedim(axis, 0).reshape(n, -1).any(dim=1)
        if bool(hit.all()):
            continue
        if bool(hit[-1]) and not bool(hit[:-1].any()):
            return f"it is right except at the last index of dim {axis}"
        if bool(hit[0]) and not bool(hit[1:].any()):
            return f"it is right except at the first index of dim {axis}"
    return None


def first_difference(g: torch.Tensor, w: torch.Tensor) -> str:
    """For ids and masks: how many entries differ and where the first one is."""
    wrong = g != w
    if g.dim() == 0:
        return f"you have {_item(g)}, expected {_item(w)}"
    index = tuple(int(i) for i in wrong.nonzero()[0])
    at = index[0] if len(index) == 1 else index
    return (f"{int(wrong.sum())} of {g.numel()} entries differ, the first at index {at}: "
            f"you have {_item(g[index])}, expected {_item(w[index])}")


def _item(t: torch.Tensor) -> Any:
    value = t.item()
    return round(value, 4) if isinstance(value, float) else value
