"""The engine behind every exercise checker.

A checker runs the learner's function on a few inputs, compares each result with a reference
implementation, and answers in one line:

    ✓ softmax: correct on 4 cases.
    ✗ softmax: softmax over the wrong axis: each row should sum to 1 (dim=-1). Largest error 0.41.
    … softmax: not attempted yet: replace `raise NotImplementedError()` with your code.

When the answer is wrong, the checker runs a library of known mistakes (``Mistake``) on the same
inputs; a mistake that gives the learner's output on the failing case and on every case before it has its
hint name the likely error (one that merely coincides on the failing case is not blamed; when several fit,
the later cases choose). A wrong value that matches no known mistake gets, in order, the checker's own
words for NaN or inf (``nonfinite_hint``), its own "where is it wrong" (``locate``), a structural hint
where one applies (transposed, normalised over the wrong axis, off by a constant factor, shifted by one
position, wrong only at the boundary, wrong only for batch > 1, the right numbers in the wrong places), or
for ids and masks how many entries differ and the first one. A wrong shape is explained where it can be
(swapped axes, a lost batch axis, a reduction without keepdim=True), and NaN or inf in the output is
named with the row where it appears.

Two engines: :func:`check_function` compares tensors (its options: :func:`evaluate_function`),
:func:`check_values` compares plain Python values (ints, lists, dicts), e.g. the pair counts of lesson
02. Both give every call of the learner's function a time limit (:data:`DEFAULT_TIME_LIMIT_S`, or
``COURSE_CHECK_TIME_LIMIT`` in the environment), so a loop that never ends is reported in one line
instead of blocking the notebook.

In a lesson the line is printed and the notebook carries on. Under a grader or the test suite
(``NBGRADER_EXECUTION`` or ``COURSE_STRICT_CHECKS=1`` in the environment), anything but a pass
raises :class:`ExerciseFailed`, so nbgrader withholds the points and CI fails.
"""
from __future__ import annotations

import contextlib
import copy
import ctypes
import math
import os
import re
import signal
import sysconfig
import textwrap
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Number
from pathlib import Path
from typing import Any

import torch

from ..utils import describe_exception

PASSED, FAILED, NOT_ATTEMPTED = "passed", "failed", "not attempted"
HINT_WIDTH = 88  # a strict failure's message is wrapped to this width (nbgrader's validator cuts longer lines)
_SYMBOL = {PASSED: "✓", FAILED: "✗", NOT_ATTEMPTED: "…"}

DEFAULT_TIME_LIMIT_S = 5.0
"""Seconds the learner's function may take on one case (``COURSE_CHECK_TIME_LIMIT`` overrides it)."""

_NOT_ATTEMPTED_TEXT = "not attempted yet: replace `raise NotImplementedError()` with your code, then run this cell again"


class ExerciseFailed(AssertionError):
    """Raised by a checker in strict mode (graders, CI) when an exercise does not pass."""


class CheckTimeout(Exception):
    """Raised by :func:`call_with_time_limit` when the function did not return in time."""


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


# ----------------------------------------------------------------------------------------------
# Running the learner's function: a time limit, and who is to blame for an exception
# ----------------------------------------------------------------------------------------------

def time_limit_s(seconds: float | None = None) -> float:
    """The time limit per case: ``seconds`` if given, else ``COURSE_CHECK_TIME_LIMIT``, else the default.
    0 or a negative number means no limit."""
    if seconds is not None:
        return float(seconds)
    try:
        return float(os.environ.get("COURSE_CHECK_TIME_LIMIT", DEFAULT_TIME_LIMIT_S))
    except ValueError:
        return DEFAULT_TIME_LIMIT_S


class _TimeUp(BaseException):
    """Raised inside the learner's code when its time is up. A BaseException, so that a learner's
    ``except Exception`` inside the loop does not swallow it."""


def call_with_time_limit(fn: Callable[..., Any], args: Sequence[Any] = (), seconds: float | None = None) -> Any:
    """``fn(*args)``, raising :class:`CheckTimeout` if it has not returned after ``seconds``.

    On the main thread of a Unix process (a notebook's kernel, pytest) a SIGALRM timer interrupts the
    function, even a ``while True: pass``; any timer set before is restored afterwards. Elsewhere the
    function runs in a daemon thread: after ``seconds`` the checker stops waiting and asks the thread to
    stop (it stops at the next Python line; a single long torch call finishes first).
    """
    seconds = time_limit_s(seconds)
    if seconds <= 0 or not math.isfinite(seconds):
        return fn(*args)
    try:
        if hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread():
            return _call_with_alarm(fn, args, seconds)
        return _call_in_thread(fn, args, seconds)
    except _TimeUp:
        raise CheckTimeout(f"did not return within {seconds:g} s") from None


def _call_with_alarm(fn, args, seconds):
    def on_alarm(signum, frame):
        raise _TimeUp()

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.monotonic()
    try:
        return fn(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler if old_handler is not None else signal.SIG_DFL)
        if old_delay > 0:  # someone else's timer was running: give it back what is left of it
            signal.setitimer(signal.ITIMER_REAL, max(old_delay - (time.monotonic() - start), 1e-3), old_interval)


def _call_in_thread(fn, args, seconds):
    box: dict[str, Any] = {}
    grad_enabled = torch.is_grad_enabled()  # grad mode is per thread: take the caller's along

    def target():
        try:
            with torch.set_grad_enabled(grad_enabled):
                box["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="course-check", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        with contextlib.suppress(Exception):  # CPython: raise _TimeUp in the thread at its next line
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(_TimeUp))
        raise _TimeUp()
    if "error" in box:
        raise box["error"]
    return box.get("value")


_THIS_FILE = str(Path(__file__).resolve())
_CHECKS_DIR = str(Path(__file__).resolve().parent) + os.sep
_LIBRARY_DIRS = tuple({str(Path(p).resolve()) for key in ("stdlib", "platstdlib", "purelib", "platlib")
                       if (p := sysconfig.get_paths().get(key))})
_SIGNATURE_ERROR = re.compile(r"\(\) (takes|missing|got an unexpected|got multiple)")


def _in_checks(obj: Any) -> bool:
    code = getattr(obj, "__code__", None)
    return code is not None and str(Path(code.co_filename).resolve()).startswith(_CHECKS_DIR)


def _is_checker_wrapper(fn: Any) -> bool:
    """``fn`` is a checker's wrapper around the learner's function: defined in course/checks and holding,
    in its closure, a callable defined elsewhere (the learner's)."""
    if not _in_checks(fn):
        return False
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if callable(value) and not isinstance(value, type) and not _in_checks(value):
            return True
    return False


def _raised_in_checker(exc: BaseException, fn: Any) -> bool:
    """True when an exception raised while calling ``fn`` came from a checker's own wrapper code (see
    :func:`_is_checker_wrapper`) without passing through any code of the learner's; a call with the wrong
    arguments is the learner's signature, not the checker's."""
    if not _is_checker_wrapper(fn) or (isinstance(exc, TypeError) and _SIGNATURE_ERROR.search(str(exc))):
        return False
    files = []
    tb = exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        files.append(str(Path(name).resolve()) if name else "")
        tb = tb.tb_next
    files = [f for f in files if f != _THIS_FILE]
    return bool(files) and all(f.startswith(_CHECKS_DIR) or f.startswith(_LIBRARY_DIRS) for f in files)


@dataclass
class _Call:
    """The outcome of one call of the learner's function: a value, or a finished CheckResult detail."""

    value: Any = None
    status: str | None = None  # None: the function returned ``value``
    detail: str = ""


def _call_learner(fn, args, where: str, seconds: float | None, context) -> _Call:
    try:
        with (context() if context is not None else contextlib.nullcontext()):
            return _Call(call_with_time_limit(fn, args, seconds))
    except NotImplementedError:
        return _Call(status=NOT_ATTEMPTED, detail=_NOT_ATTEMPTED_TEXT)
    except CheckTimeout:
        return _Call(status=FAILED, detail=f"your function did not return within {time_limit_s(seconds):g} s "
                                           f"({where}): look for a loop that never ends")
    except Exception as exc:  # the learner's code may raise anything: report it in one line
        if _raised_in_checker(exc, fn):
            return _Call(status=FAILED, detail=f"the checker's own code failed while running your function "
                                               f"({describe_exception(exc)}; {where}); this is a bug in the "
                                               f"checker, not necessarily in your code")
        return _Call(status=FAILED, detail=f"your function raised {describe_exception(exc)} ({where})")


def describe_value(value: Any) -> str:
    """A short description of what a function returned, for messages."""
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}, dtype {value.dtype}"
    if type(value).__module__ == "numpy" and hasattr(value, "shape"):
        return f"a NumPy array of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} item(s)"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


# ----------------------------------------------------------------------------------------------
# Comparing tensors
# ----------------------------------------------------------------------------------------------

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
        if not isinstance(b, torch.Tensor) or a.shape != b.shape or a.dtype != b.dtype:
            return False
        if torch.equal(a, b):
            return True
        return a.is_floating_point() and bool(((a == b) | (a.isnan() & b.isnan())).all())  # NaN equals NaN here
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
    same_inf = torch.isinf(want.detach().double()) & (got.detach().double() == want.detach().double())
    diff = torch.where(both_nan | same_inf, torch.zeros_like(diff), diff)
    return float(diff.max()) if diff.numel() else 0.0


def _index(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for size in reversed(shape):
        out.append(flat % size)
        flat //= size
    return tuple(reversed(out))


def _fmt_index(index: Sequence[int]) -> str:
    return "[" + ", ".join(str(i) for i in index) + "]"


def _fmt_number(x: Any) -> str:
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _close(g: torch.Tensor, w: torch.Tensor, atol: float, rtol: float) -> torch.Tensor:
    """Elementwise: ``g`` matches ``w`` (NaN matches NaN, an infinity matches the same infinity)."""
    g, w = g.detach(), w.detach()
    if g.is_complex() or w.is_complex():
        return torch.isclose(g.to(torch.complex128), w.to(torch.complex128), atol=atol, rtol=rtol, equal_nan=True)
    if g.is_floating_point() or w.is_floating_point():
        return torch.isclose(g.double(), w.double(), atol=atol, rtol=rtol, equal_nan=True)
    return g == w


def _wrong_values(name: str) -> str:
    return "the values differ" if name == "values" else f"{name}: values differ"


@dataclass
class _Problem:
    """What is wrong with one output: its kind (count, none, type, shape, dtype, nan, values), the words
    for the learner, which output, and the largest error (floating outputs only)."""

    kind: str
    text: str
    output: int = 0
    error: float | None = None
    first: str = ""  # non-floating values: where the first difference is, and both values


def _expected_names(names: Sequence[str], n: int) -> list[str]:
    names = list(names)
    return names[:n] if len(names) >= n else names + [f"output {i + 1}" for i in range(len(names), n)]


def _check_container(got: Any, want: Any, names: list[str]) -> _Problem | None:
    """The learner returned the right number of things, in the right container."""
    n = len(names)
    multi = isinstance(want, (tuple, list))
    listing = ", ".join(names)
    if got is None:
        expected = f"; expected {n} values ({listing})" if multi else ""
        return _Problem("none", f"your function returned None{expected}: did you forget `return`?")
    if multi:
        if isinstance(got, (tuple, list)):
            if len(got) != n:
                return _Problem("count", f"returned {len(got)} values, expected {n} ({listing})")
            return None
        what = f"one tensor (shape {tuple(got.shape)})" if isinstance(got, torch.Tensor) else describe_value(got)
        return _Problem("count", f"returned {what}, expected {n} values ({listing}): "
                                 f"return them together, `return {listing}`")
    if isinstance(got, tuple):
        return _Problem("count", f"returned a tuple of {len(got)} values, expected one tensor ({names[0]})")
    return None


def _check_tensor(name: str, g: Any, w: torch.Tensor) -> _Problem | None:
    """Type, shape and dtype of one output (the values come later)."""
    if g is None:
        return _Problem("none", f"{name} is None: did you forget to compute or return it?")
    if not isinstance(g, torch.Tensor):
        if isinstance(g, list):
            return _Problem("type", f"{name} should be a torch.Tensor, got a list of {len(g)} item(s): "
                                    "build it with torch operations (or torch.stack / torch.tensor)")
        if type(g).__module__ == "numpy":
            return _Problem("type", f"{name} should be a torch.Tensor, got a NumPy array: stay in torch "
                                    "(or convert with torch.from_numpy)")
        extra = " (return the 0-d tensor itself, without .item())" if isinstance(g, Number) and w.dim() == 0 else ""
        return _Problem("type", f"{name} should be a torch.Tensor, got {type(g).__name__}{extra}")
    gs, ws = tuple(g.shape), tuple(w.shape)
    if gs != ws:
        return _Problem("shape", f"{name} has {_shape_words(gs, ws)}")
    if g.dtype != w.dtype and not (g.is_floating_point() and w.is_floating_point()):
        extra = (" (a mask is boolean: build it with a comparison, or convert with .bool())"
                 if w.dtype == torch.bool else "")
        return _Problem("dtype", f"{name} has dtype {g.dtype}, expected {w.dtype}{extra}")
    return None


def _shape_words(gs: tuple, ws: tuple) -> str:
    if ws == ():
        return f"shape {gs}, expected a single number (a 0-d tensor, shape ()): reduce over every dimension"
    text = f"shape {gs}, expected {ws}"
    if len(gs) == len(ws) >= 2 and gs[:-2] == ws[:-2] and gs[-2:] == ws[-2:][::-1]:
        return text + ": the last two axes are swapped (a transpose too many, or one missing?)"
    if gs == ():
        return text + ": you reduced it to a single number"
    if gs == ws[1:]:
        return text + ": the first (batch) axis is missing"
    if len(gs) == len(ws) + 1 and gs[1:] == ws and gs[0] == 1:
        return text + ": an extra axis of size 1 in front"
    if len(gs) == len(ws) and sorted(gs) == sorted(ws):
        return text + ": the same sizes in another order (axes permuted?)"
    if tuple(d for d in gs if d != 1) == tuple(d for d in ws if d != 1):
        return text + (": a size-1 axis is missing (a reduction without keepdim=True?)" if len(gs) < len(ws)
                       else ": an extra size-1 axis")
    if len(gs) == len(ws):
        grown = [i for i, (a, b) in enumerate(zip(gs, ws)) if a != b]
        if grown and all(ws[i] == 1 for i in grown):
            return text + (f": axis {grown[0]} should have size 1 but grew to {gs[grown[0]]} by broadcasting "
                           "(a reduction without keepdim=True?)")
    return text


def _nonfinite_problem(name: str, g: torch.Tensor, w: torch.Tensor) -> _Problem | None:
    """NaN or inf in the learner's output where the reference has a finite value."""
    if not g.is_floating_point():
        return None
    bad = ~torch.isfinite(g.detach()) & torch.isfinite(w.detach().to(torch.float64))
    if not bool(bad.any()):
        return None
    flat = int(bad.flatten().nonzero()[0])
    index = _index(flat, tuple(g.shape))
    value = g.detach().flatten()[flat].item()
    what = "NaN" if math.isnan(value) else "inf"
    if g.dim() == 0:
        where = ""
    elif g.dim() == 1:
        where = f" at position {index[0]}"
    else:
        where = f" in row {_fmt_index(index[:-1])}"
    fact = f"your {name} has {what}{where}"
    return _Problem("nan", f"{fact}: often a fully masked row or an exp overflow (subtract each row's maximum "
                           "before exp)", error=float("inf"), first=fact)


def _values_problem(name: str, g: torch.Tensor, w: torch.Tensor, atol: float, rtol: float) -> _Problem | None:
    close = _close(g, w, atol, rtol)
    if bool(close.all()):
        return None
    floating = w.is_floating_point() or w.is_complex()
    if floating:
        err = max_abs_error(g, w)
        text = _wrong_values(name)
        if g.dtype != w.dtype:
            low = g.dtype in (torch.float16, torch.bfloat16)
            text = (f"{name} has dtype {g.dtype}, expected {w.dtype}, and its values differ"
                    + (" (float16 and bfloat16 keep only 2-3 significant digits)" if low else ""))
        return _Problem("values", text, error=err)
    flat = int((~close).flatten().nonzero()[0])
    index = _index(flat, tuple(w.shape))
    have, expected = g.flatten()[flat].item(), w.flatten()[flat].item()
    count = int((~close).sum())
    at = (f"{count} of {w.numel()} entries, the first at {_fmt_index(index)}: " if count > 1
          else f"first difference at {_fmt_index(index)}: ") if index else ""
    return _Problem("values", _wrong_values(name),
                    first=f"{at}you have {_fmt_number(have)}, expected {_fmt_number(expected)}")


def _compare(got: Any, want: Any, names: Sequence[str], atol: float, rtol: float) -> _Problem | None:
    """The first problem with the learner's output(s), or None when everything matches."""
    want_t = _as_tuple(want)
    names = _expected_names(names, len(want_t))
    problem = _check_container(got, want, names)
    if problem:
        return problem
    got_t = _as_tuple(got) if isinstance(want, (tuple, list)) else (got,)
    if len(want_t) == 2 and all(isinstance(t, torch.Tensor) for t in got_t + want_t):
        shapes = [tuple(t.shape) for t in got_t]
        if shapes != [tuple(t.shape) for t in want_t] and shapes[::-1] == [tuple(t.shape) for t in want_t]:
            return _Problem("count", f"the two values are in the wrong order: return ({', '.join(names)})")
    for i, (name, g, w) in enumerate(zip(names, got_t, want_t)):
        problem = (_check_tensor(name, g, w) or _nonfinite_problem(name, g, w)
                   or _values_problem(name, g, w, atol, rtol))
        if problem:
            problem.output = i
            return problem
    return None


def compare_outputs(got: Any, want: Any, names: Sequence[str], atol: float,
                    rtol: float) -> tuple[str | None, float]:
    """Compare a function's output(s) with the expected ones (tensors; ``names`` names each output).

    Return (problem or None, largest error) for one case; problems are phrased for learners. The largest
    error is ``inf`` for a problem other than values (count, type, shape, dtype, NaN).
    """
    problem = _compare(got, want, names, atol, rtol)
    if problem is None:
        worst = 0.0
        for g, w in zip(_as_tuple(got) if isinstance(want, (tuple, list)) else (got,), _as_tuple(want)):
            if isinstance(w, torch.Tensor) and (w.is_floating_point() or w.is_complex()):
                worst = max(worst, max_abs_error(g, w))
        return None, worst
    return problem.text, problem.error if problem.error is not None else float("inf")


def _outputs_match(got: Any, want: Any, names: Sequence[str], atol: float, rtol: float) -> bool:
    try:
        return _compare(got, want, names, atol, rtol) is None
    except Exception:  # noqa: BLE001 - a comparison that cannot be made is not a match
        return False


# ----------------------------------------------------------------------------------------------
# Structural hints: what a wrong output looks like, when no known mistake matches
# ----------------------------------------------------------------------------------------------

def structural_hint(got: torch.Tensor, want: torch.Tensor, name: str = "output", atol: float = 1e-5,
                    rtol: float = 1e-4, batch_first: bool | None = None) -> str | None:
    """Describe how ``got`` (same shape as ``want``, wrong values) relates to ``want``, or None.

    Tried in order: inverted (booleans), transposed, normalised over the wrong axis or not at all,
    off by a constant factor or offset, shifted by one position, reversed, right only for the first
    item along axis 0 (batch > 1), wrong only on the diagonal or at the start or end of one axis
    (the boundary), the right numbers in the wrong places. ``batch_first``: axis 0 is a batch (None:
    taken to be one for outputs of 3 or more dimensions).
    """
    try:
        return _structure(got.detach(), want.detach(), name, atol, rtol, batch_first)
    except Exception:  # noqa: BLE001 - a hint is a bonus; never let it break the verdict
        return None


def _structure(g: torch.Tensor, w: torch.Tensor, name: str, atol: float, rtol: float,
               batch_first: bool | None = None) -> str | None:
    if g.shape != w.shape or g.numel() < 2:
        return None
    floating = w.is_floating_point()
    if floating:
        g, w = g.double(), w.double()
        if not bool(torch.isfinite(g).all()) or not bool(torch.isfinite(w).all()):
            return None

    def same(a, b):
        return a.shape == b.shape and bool(_close(a, b, atol, rtol).all())

    if w.dtype == torch.bool and g.dtype == torch.bool and bool((g == ~w).all()):
        return f"{name} is inverted: True where False belongs and False where True belongs"
    if (w.dim() >= 2 and w.shape[-1] == w.shape[-2] and not same(w, w.transpose(-2, -1))
            and same(g, w.transpose(-2, -1))):
        return f"{name} is transposed: the last two axes are swapped"
    wrong = ~_close(g, w, atol, rtol)
    if w.dim() >= 2 and w.shape[-1] == w.shape[-2] >= 2:
        eye = torch.eye(w.shape[-1], dtype=torch.bool).expand_as(wrong)
        if not bool((wrong & ~eye).any()):
            return (f"{name} is wrong only on the diagonal (i == j): a comparison with < where <= belongs, "
                    "or the reverse?")
    if floating:
        hint = _normalisation_hint(g, w, name, same)
        if hint:
            return hint
        hint = _affine_hint(g, w, name, same) or _not_a_distribution(g, w, name, same)
        if hint:
            return hint
    for axis in range(w.dim()):
        n = w.shape[axis]
        if n < 3:
            continue
        head, tail = w.narrow(axis, 0, n - 1), w.narrow(axis, 1, n - 1)
        if same(head, tail):  # constant along this axis: a shift would not show
            continue
        if same(g.narrow(axis, 1, n - 1), head):
            return (f"{name} is shifted by one position along axis {axis}: your entry i + 1 holds the expected "
                    "entry i (an index or a position that starts at 1, or a range that is off by one?)")
        if same(g.narrow(axis, 0, n - 1), tail):
            return (f"{name} is shifted by one position along axis {axis}: your entry i holds the expected "
                    "entry i + 1 (an index or a range that is off by one?)")
    for axis in range(w.dim()):
        if w.shape[axis] >= 2 and not same(w, w.flip(axis)) and same(g, w.flip(axis)):
            return f"{name} is reversed along axis {axis}"
    batched = w.dim() >= 3 if batch_first is None else (batch_first and w.dim() >= 2)
    if batched and w.shape[0] >= 2 and not bool(wrong[0].any()):
        return (f"{name} is right for the first item along axis 0 and wrong for the others: does your code "
                "work for a batch (more than one item in front), or mix items, or use a size counted from "
                "the front (x.shape[1]) that means something else when a batch is in front?")
    hint = _boundary_hint(wrong, name)
    if hint:
        return hint
    if floating and g.numel() >= 4 and w.unique().numel() >= 4:
        if same(g.flatten().sort().values, w.flatten().sort().values):
            return (f"{name} holds the right numbers in the wrong places: a reshape or view where a "
                    "transpose or permute belongs, or axes in the wrong order?")
    return None


def _is_distribution(w, same) -> bool:
    """The expected rows are weights: non-negative, each summing to 1 along the last axis (a softmax)."""
    return w.dim() > 0 and not bool((w < -1e-12).any()) and same(w.sum(-1), torch.ones_like(w.sum(-1)))


def _normalisation_hint(g, w, name, same) -> str | None:
    """Weights that should sum to 1 along the last axis: summed along another, over everything, or not at all."""
    if not _is_distribution(w, same):
        return None
    if bool((g < -1e-9).any()) or same(g.sum(-1), torch.ones_like(g.sum(-1))):
        return None  # not weights at all, or normalised along the right axis already
    for axis in range(w.dim() - 1):
        s = g.sum(axis)
        if same(s, torch.ones_like(s)):
            return (f"{name} is normalised over the wrong axis: it sums to 1 along axis {axis} "
                    f"(dim={axis - w.dim()}), and should along the last axis (dim=-1)")
    if w.dim() >= 2 and abs(float(g.sum()) - 1.0) < 1e-4:
        return f"{name} is normalised over the whole tensor: normalise each row separately (along dim=-1)"
    for first in range(1, w.dim() - 1):  # several trailing axes at once, e.g. each matrix of a batch
        s = g.sum(dim=tuple(range(first, w.dim())))
        if same(s, torch.ones_like(s)):
            return (f"{name} is normalised over several axes at once (axes {first}..{w.dim() - 1}): normalise "
                    "each row separately, along the last axis only (dim=-1)")
    row = g.sum(-1, keepdim=True)
    if bool((row > 0).all()) and same(g / row, w):
        return (f"{name} is right up to one factor per row, but its rows do not sum to 1: divide by the sum "
                "along the last axis (keepdim=True)")
    return None


def _not_a_distribution(g, w, name, same) -> str | None:
    """The expected rows are weights summing to 1 (a softmax), the learner's are not."""
    if not _is_distribution(w, same):
        return None
    sums = g.sum(-1)
    off = (sums - 1).abs() > 1e-3
    if bool((g < -1e-9).any()):
        flat = int((g < -1e-9).flatten().nonzero()[0])
        at = _fmt_index(_index(flat, tuple(g.shape)))
        return (f"{name} should be weights, non-negative and summing to 1 along the last axis (as a softmax "
                f"gives); yours has the negative value {g.flatten()[flat].item():.4g} at {at}")
    if not bool(off.any()):
        return None
    row = _index(int(off.flatten().nonzero()[0]), tuple(sums.shape))
    return (f"{name} should be weights summing to 1 along the last axis (as a softmax gives); your row "
            f"{_fmt_index(row)} sums to {float(sums[row]):.4g}")


def _affine_hint(g, w, name, same) -> str | None:
    ww = float((w * w).sum())
    if ww > 0:
        c = float((g * w).sum()) / ww
        if abs(c - 1) > 1e-3 and same(g, c * w):
            if abs(c + 1) < 1e-3:
                return f"{name} has the opposite sign: every value is negated"
            if abs(c) < 1e-6:
                return f"{name} is all zeros"
            return (f"{name} is off by a constant factor: yours = {c:.4g} × the expected (a scale such as "
                    "sqrt(d) too many, missing, or upside down? a mean where a sum belongs?)")
    offset = (g - w).flatten()
    if float(offset.std()) < 1e-6 + 1e-3 * float(w.abs().max()) and same(g, w + offset.mean()):
        return f"{name} is off by a constant: yours = expected {float(offset.mean()):+.4g} everywhere"
    return None


def _boundary_hint(wrong: torch.Tensor, name: str) -> str | None:
    """The wrong entries lie only at the start or at the end of one axis."""
    for axis in range(wrong.dim()):
        n = wrong.shape[axis]
        if n < 2:
            continue
        other = [d for d in range(wrong.dim()) if d != axis]
        along = wrong.any(dim=other) if other else wrong  # [n]: any wrong entry at this index of the axis
        bad = along.nonzero().flatten().tolist()
        if not bad or 2 * len(bad) >= n:  # a boundary is a small part of the axis
            continue
        if bad == list(range(bad[0], n)):
            which = f"index {n - 1}" if len(bad) == 1 else f"indices {bad[0]}..{n - 1}"
            return (f"{name} is right except at the end of axis {axis} ({which} of 0..{n - 1}): the boundary "
                    "(a last, partial block; a range that stops one short; a tie or a threshold)")
        if bad == list(range(0, bad[-1] + 1)):
            which = "index 0" if len(bad) == 1 else f"indices 0..{bad[-1]}"
            return (f"{name} is right except at the start of axis {axis} ({which} of 0..{n - 1}): the boundary "
                    "(a first position handled separately, or a range that starts one late?)")
    return None


# ----------------------------------------------------------------------------------------------
# The engine for tensors
# ----------------------------------------------------------------------------------------------

def check_function(exercise: str, fn: Any, reference: Callable[..., Any], cases: Sequence[tuple], *,
                   strict: bool | None = None, **options: Any) -> CheckResult:
    """Check ``fn`` against ``reference`` on every case (a tuple of positional arguments) and print one line.

    ``options`` are :func:`evaluate_function`'s (``mistakes``, ``output_names``, ``atol``, ``rtol``,
    ``time_limit``, ``context``, ``convert``, ``batch_first``); returns the :class:`CheckResult` (see
    :func:`report` for ``strict``).
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
    time_limit: float | None = None,
    context: Callable[[], Any] | None = None,
    convert: Callable[[Any], Any] | None = None,
    batch_first: bool | None = None,
    exception_hints: Sequence[tuple[str, str]] = (),
    nonfinite_hint: str | None = None,
    locate: Locate | None = None,
) -> CheckResult:
    """Run ``fn`` and ``reference`` on every case and compare (within ``atol``/``rtol``); on a wrong answer,
    name a mistake of ``mistakes`` whose output is the learner's on every case up to the failing one (a
    mistake that merely coincides on the failing case is not blamed; when several fit, the later cases
    choose), whatever the shape or dtype; else, for wrong values, the checker's ``locate``, else describe
    the error's structure. Silent: only returns the result.

    ``time_limit``: seconds per case (default :func:`time_limit_s`). ``context``: a context manager
    factory the learner's call runs in (e.g. ``torch.no_grad``). ``convert``: applied to the learner's
    output before comparing (a failure there is reported as the checker's, with what the learner returned).
    ``batch_first``: the outputs' axis 0 is a batch, also for 2-D outputs (default: for 3 or more dimensions).
    ``exception_hints``: ``(text in the exception message, hint)`` pairs for a learner function that raises
    (see :func:`with_exception_hints`). ``nonfinite_hint``: what NaN or inf where the answer is finite
    usually means in this exercise (an ``exp`` that overflowed, a row with nothing left), in place of the
    generic reading. ``locate(args, name, got, want)``: the checker's own "where is it wrong", in the
    exercise's terms (only the tokens tied at the k-th value, only at distance w, ...), tried on each wrong
    output before the generic structure; it gets float64 copies of floating outputs, and if it raises the
    line goes on without it.
    """
    result = _evaluate_function(exercise, fn, reference, cases, mistakes, output_names, atol, rtol, time_limit,
                                context, convert, batch_first, nonfinite_hint, locate)
    return with_exception_hints(result, exception_hints) if exception_hints else result


def _evaluate_function(exercise, fn, reference, cases, mistakes, output_names, atol, rtol, time_limit, context,
                       convert, batch_first, nonfinite_hint, locate) -> CheckResult:
    if not callable(fn):
        return CheckResult(exercise, FAILED, f"expected a function, got {type(fn).__name__}; pass the function itself, without calling it")
    worst, any_floating = 0.0, False
    seen: list[tuple[tuple, Any]] = []
    for i, args in enumerate(cases):
        where = f"case {i + 1} of {len(cases)}"
        try:
            want = reference(*_clone(args))
        except Exception as exc:  # noqa: BLE001 - the checker's own bug: say so, not the learner's
            return CheckResult(exercise, FAILED, f"the checker's reference failed ({describe_exception(exc)}; "
                                                 f"{where}); this is a bug in the checker, not in your code")
        given = _clone(args)
        call = _call_learner(fn, given, where, time_limit, context)
        if call.status is not None:
            return CheckResult(exercise, call.status, call.detail)
        got = call.value
        if not _same_inputs(given, args):
            return CheckResult(exercise, FAILED, "your function changed its input in place; work on new tensors instead")
        if convert is not None:
            try:
                got = convert(got)
            except Exception as exc:  # noqa: BLE001
                return CheckResult(exercise, FAILED, f"the checker could not read your function's output "
                                                     f"({describe_exception(exc)}; {where}): it returned "
                                                     f"{describe_value(got)}")
        try:
            problem = _compare(got, want, output_names, atol, rtol)
        except Exception as exc:  # noqa: BLE001
            return CheckResult(exercise, FAILED, f"the checker failed comparing your output "
                                                 f"({describe_exception(exc)}; {where}): your function returned "
                                                 f"{describe_value(got)}")
        if problem is None:
            floating = [(g, w) for g, w in zip(_as_tuple(got), _as_tuple(want))
                        if isinstance(w, torch.Tensor) and w.is_floating_point()]
            any_floating = any_floating or bool(floating)
            worst = max([worst] + [max_abs_error(g, w) for g, w in floating])
            seen.append((args, got))
            continue
        later = _LaterCases(fn, cases[i + 1:], time_limit, context, convert)
        hint = _diagnose(got, args, mistakes, output_names, atol, rtol, seen, later)
        return CheckResult(exercise, FAILED, _failure_detail(problem, got, want, args, hint, output_names, atol, rtol,
                                                             where, batch_first, nonfinite_hint, locate),
                           max_error=problem.error)
    # A largest error means something only for floating outputs (not for ids or boolean masks).
    error = f" (largest error {worst:.1e})" if any_floating else ""
    return CheckResult(exercise, PASSED, f"correct on {len(cases)} case(s){error}.", max_error=worst if any_floating else None)


def _failure_detail(problem: _Problem, got, want, args, hint, names, atol, rtol, where, batch_first=None,
                    nonfinite_hint=None, locate=None) -> str:
    """The learner's line for a failing case: a known mistake's hint (``hint``), else the checker's
    ``nonfinite_hint`` or ``locate``, else a structural hint, else the bare difference; then the largest
    error (floating outputs) or the first difference (others)."""
    if problem.kind not in ("values", "nan"):
        return f"{hint} ({problem.text}; {where})." if hint else f"{problem.text} ({where})."
    names = _expected_names(names, len(_as_tuple(want)))
    got_t = _as_tuple(got) if isinstance(want, (tuple, list)) else (got,)
    g, w = got_t[problem.output], _as_tuple(want)[problem.output]
    if problem.kind == "nan":
        if hint:
            return f"{hint}. Y{problem.first[1:]} ({where})."
        if nonfinite_hint:
            return f"{problem.first}: {nonfinite_hint} ({where})."
        return f"{problem.text} ({where})."
    if g.dtype != w.dtype and problem.error is not None:  # float16 for float32: the dtype is the likely cause
        text = hint or problem.text
    else:
        text = (hint or _located(locate, args, names, got_t, _as_tuple(want), atol, rtol)
                or structural_hint(g, w, names[problem.output], atol, rtol, batch_first) or problem.text)
    if problem.error is None:  # token ids, masks: no "largest error", the first difference instead
        if text == problem.text:
            return f"{text}, {problem.first} ({where})."
        return f"{text} ({problem.text}, {problem.first}; {where})."
    return f"{text}{'' if text.endswith('?') else '.'} Largest error {problem.error:.3g}{_at_largest(g, w)} ({where})."


def _at_largest(g: torch.Tensor, w: torch.Tensor) -> str:
    try:
        diff = (g.detach().double() - w.detach().double()).abs().nan_to_num(nan=float("inf"))
        if diff.dim() == 0:
            return ""
        return f" at {_fmt_index(_index(int(diff.flatten().argmax()), tuple(diff.shape)))}"
    except Exception:  # noqa: BLE001
        return ""


Locate = Callable[[tuple, str, torch.Tensor, torch.Tensor], "str | None"]
"""A checker's own "where is it wrong": ``locate(args, output name, got, want)`` gives words or None."""


def _located(locate, args, names, got_t, want_t, atol, rtol) -> str | None:
    """The checker's ``locate`` on each wrong output in turn (named when there are several), or None."""
    if locate is None:
        return None
    for name, g, w in zip(names, got_t, want_t):
        if not (isinstance(g, torch.Tensor) and isinstance(w, torch.Tensor)) or g.shape != w.shape:
            continue
        if bool(_close(g, w, atol, rtol).all()):
            continue
        g, w = g.detach(), w.detach()
        if w.is_floating_point():
            g, w = g.double(), w.double()
        try:
            text = locate(args, name, g, w)
        except Exception:  # noqa: BLE001 - a hint is a bonus; the line goes on without it
            text = None
        if text:
            return text if len(names) == 1 else f"in {name}, {text}"
    return None


@dataclass
class _LaterCases:
    """The learner's outputs on the cases after the failing one, computed only when asked for (to choose
    between mistakes), each call under the time limit; stops at the first call that fails."""

    fn: Any
    cases: Sequence[tuple]
    time_limit: float | None
    context: Any
    convert: Any

    def __iter__(self):
        for args in self.cases:
            given = _clone(args)
            call = _call_learner(self.fn, given, "", self.time_limit, self.context)
            if call.status is not None or not _same_inputs(given, args):
                return
            got = call.value
            if self.convert is not None:
                try:
                    got = self.convert(got)
                except Exception:  # noqa: BLE001
                    return
            yield args, got


def _diagnose(got: Any, args: tuple, mistakes: Sequence[Mistake], names, atol, rtol,
              seen: Sequence[tuple[tuple, Any]] = (), later: Any = ()) -> str | None:
    """The hint of a known mistake that gives the learner's output on the failing case and on every case
    before (``seen``: (args, learner's output) pairs), so that one merely coinciding on the failing case is
    not blamed; when several do, the later cases (``later``: (args, learner's output) pairs, taken one at a
    time) choose between them."""
    atol, rtol = max(atol, 1e-5), max(rtol, 1e-4)

    def fits(mistake: Mistake, a: tuple, out: Any) -> bool:
        try:
            return _outputs_match(out, mistake.fn(*_clone(a)), names, atol, rtol)
        except Exception:  # noqa: BLE001 - a mistake that cannot run here does not match
            return False

    candidates = [m for m in mistakes if fits(m, args, got) and all(fits(m, a, before) for a, before in seen)]
    if len(candidates) > 1:
        for a, out in later:
            narrower = [m for m in candidates if fits(m, a, out)]
            if not narrower:
                break
            candidates = narrower
            if len(candidates) == 1:
                break
    return candidates[0].hint if candidates else None


# ----------------------------------------------------------------------------------------------
# The engine for plain values (ints, lists, dicts)
# ----------------------------------------------------------------------------------------------

def _normalise(value: Any, like: Any) -> tuple[Any, str | None]:
    """Bring ``value`` into the reference's form; return (value, problem or None)."""
    if value is None and like is not None:
        return None, "your function returned None: did you forget `return`?"
    if isinstance(like, Mapping):
        if not isinstance(value, Mapping):
            return None, f"should return a dict, got {type(value).__name__}"
        if like and value:
            want_key, got_key = next(iter(like)), next(iter(value))
            if type(got_key) is not type(want_key):
                return None, (f"the keys should be {type(want_key).__name__}s like {want_key!r}; yours are "
                              f"{type(got_key).__name__}s like {got_key!r}")
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
                    mistakes: Sequence[Mistake] = (), *, time_limit: float | None = None) -> CheckResult:
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
        where = f"case {i + 1} of {len(cases)}: {_show_args(args)}"
        try:
            want = reference(*copy.deepcopy(args))
        except Exception as exc:  # noqa: BLE001
            return CheckResult(exercise, FAILED, f"the checker's reference failed ({describe_exception(exc)}; case "
                                                 f"{i + 1} of {len(cases)}); this is a bug in the checker, not in your code")
        given = copy.deepcopy(args)
        call = _call_learner(fn, given, where, time_limit, None)
        if call.status is not None:
            return CheckResult(exercise, call.status, call.detail)
        got = call.value
        if given != args:
            return CheckResult(exercise, FAILED, "your function changed its input in place; build a new list instead")
        got, problem = _normalise(got, want)
        if problem:
            return CheckResult(exercise, FAILED, f"{problem} (case {i + 1} of {len(cases)})")
        seen.append((args, got))
        if got == want:
            continue
        hint = _diagnose_values(seen, mistakes, want)
        if not hint and isinstance(want, Integral) and abs(got - want) == 1:
            hint = "off by one"
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
        except Exception:  # noqa: BLE001
            continue
    return None


def check_values(exercise: str, fn: Any, reference: Callable[..., Any], cases: Sequence[tuple], *,
                 mistakes: Sequence[Mistake] = (), strict: bool | None = None,
                 time_limit: float | None = None) -> CheckResult:
    """Check ``fn`` against ``reference`` on every case, for plain values; print one line."""
    return report(evaluate_values(exercise, fn, reference, cases, mistakes, time_limit=time_limit), strict=strict)


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
