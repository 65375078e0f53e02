"""The checker engines (tensors and plain values) and the softmax checker: passes, hints, and bad input,
one line each; the time limit; messages for NaN, dtypes, None, lists, arrays and tuples; structural hints;
which mistake is named; the options exception_hints, nonfinite_hint and locate; the checker's own failures
reported as such."""
from __future__ import annotations

import math
import signal
import threading
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from answer_library import Right, Wrong, library_tests
from checker_assertions import assert_fails_with
from course.checks import ExerciseFailed, check_softmax, evaluate_function
from course.checks.basics import SOFTMAX_MISTAKES, softmax_cases
from course.checks.core import (FAILED, NOT_ATTEMPTED, PASSED, CheckTimeout, Mistake, call_with_time_limit, check_values,
                                compare_outputs, evaluate_values, structural_hint)

pytestmark = pytest.mark.usefixtures("lenient_checks")


def _softmax_result(fn):
    return evaluate_function("softmax", fn, lambda x: torch.softmax(x, dim=-1), softmax_cases(),
                             mistakes=SOFTMAX_MISTAKES, atol=1e-6)


# --- the softmax checker: a library of right and wrong answers, written the way learners write them --------
def correct_softmax(x):
    z = x - x.max(dim=-1, keepdim=True).values
    return z.exp() / z.exp().sum(dim=-1, keepdim=True)


def softmax_float64_inside(x):
    z = x.double()
    z = (z - z.amax(dim=-1, keepdim=True)).exp()
    return (z / z.sum(dim=-1, keepdim=True)).to(x.dtype)


def softmax_returns_float64(x):
    z = x.double()
    return torch.softmax(z, dim=-1)


def softmax_loops(x):
    rows = x.reshape(-1, x.shape[-1])
    out = torch.empty_like(rows)
    for i, row in enumerate(rows):
        m = max(row.tolist())
        exps = [math.exp(v - m) for v in row.tolist()]
        total = sum(exps)
        out[i] = torch.tensor([e / total for e in exps])
    return out.reshape(x.shape)


def softmax_logsumexp(x):
    return (x - torch.logsumexp(x, dim=-1, keepdim=True)).exp()


def softmax_no_shift(x):
    e = torch.exp(x)
    return e / e.sum(dim=-1, keepdim=True)


def softmax_global_max(x):
    e = torch.exp(x - x.max())
    return e / e.sum(dim=-1, keepdim=True)


def softmax_mean_shift(x):
    e = torch.exp(x - x.mean(dim=-1, keepdim=True))
    return e / e.sum(dim=-1, keepdim=True)


def softmax_min_shift(x):
    e = torch.exp(x - x.min(dim=-1, keepdim=True)[0])
    return e / e.sum(dim=-1, keepdim=True)


def softmax_max_without_keepdim(x):
    e = torch.exp(x - x.max(dim=-1).values)
    return e / e.sum(dim=-1, keepdim=True)


def softmax_sum_without_keepdim(x):
    e = torch.exp(x - x.max(dim=-1, keepdim=True).values)
    return e / e.sum(-1)


def softmax_max_is_a_tuple(x):
    e = torch.exp(x - x.max(dim=-1, keepdim=True))
    return e / e.sum(dim=-1, keepdim=True)


def softmax_dim_1(x):
    e = (x - x.max(dim=1, keepdim=True).values).exp()
    return e / e.sum(dim=1, keepdim=True)


def softmax_max_dim_1(x):
    e = (x - x.max(dim=1, keepdim=True).values).exp()
    return e / e.sum(dim=-1, keepdim=True)


def softmax_rows_of_a_matrix(x):
    out = []
    for row in x:  # written for a matrix: on a batch, each "row" is a whole matrix
        e = (row - row.max()).exp()
        out.append(e / e.sum())
    return torch.stack(out)


def softmax_clamped(x):
    e = x.clamp(max=50).exp()
    return e / e.sum(dim=-1, keepdim=True)


def softmax_forgets_return(x):
    e = (x - x.max(dim=-1, keepdim=True).values).exp()
    e / e.sum(dim=-1, keepdim=True)


def softmax_in_place(x):
    x -= x.max(dim=-1, keepdim=True).values
    e = x.exp()
    return e / e.sum(dim=-1, keepdim=True)


def softmax_numpy(x):
    a = x.numpy()
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_sum_down_columns(x):
    e = (x - x.max(dim=-1, keepdim=True).values).exp()
    return e / e.sum(dim=0, keepdim=True)


def softmax_shift_in_the_numerator_only(x):
    return (x - x.max(-1, keepdim=True).values).exp() / x.exp().sum(-1, keepdim=True)


# The last block of each library below was written after the checker was finished, as a holdout: its
# answers got no mistake of their own, so ``None`` marks those whose line only says that the values differ.
WRONG_SOFTMAX = [
    Wrong("columns (dim=0)", lambda x: torch.softmax(x, dim=0), "wrong axis"),
    Wrong("dim=1 on a batch", softmax_dim_1, "dim=1 is the last axis only"),
    Wrong("max over dim=1", softmax_max_dim_1, "maximum along the wrong axis"),
    Wrong("rows of a matrix only", softmax_rows_of_a_matrix, "normalised over several axes"),
    Wrong("not normalised", lambda x: (x - x.max(-1, keepdim=True).values).exp(), "not normalised"),
    Wrong("whole-tensor sum", lambda x: (x - x.max()).exp() / (x - x.max()).exp().sum(), "whole tensor"),
    Wrong("log-softmax", lambda x: x - x.logsumexp(-1, keepdim=True), "log-softmax"),
    Wrong("no max shift", softmax_no_shift, "overflow on large inputs"),
    Wrong("shift by the overall max", softmax_global_max, "maximum of the whole tensor"),
    Wrong("shift by the mean", softmax_mean_shift, "shifted by the mean"),
    Wrong("shift by the min", softmax_min_shift, "shifted by the minimum"),
    Wrong("max without keepdim", softmax_max_without_keepdim, "x.max(dim=-1) without keepdim=True"),
    Wrong("sum without keepdim", softmax_sum_without_keepdim, ".sum(dim=-1) without keepdim=True"),
    Wrong("max returns a tuple", softmax_max_is_a_tuple, "take .values"),
    Wrong("clamped scores", softmax_clamped, "clamping the scores"),
    Wrong("float16", lambda x: torch.softmax(x.half(), dim=-1), "dtype torch.float16"),
    Wrong("a list", lambda x: torch.softmax(x, dim=-1).tolist(), "got a list"),
    Wrong("a NumPy array", softmax_numpy, "got a NumPy array"),
    Wrong("forgets return", softmax_forgets_return, "did you forget `return`"),
    Wrong("changes x in place", softmax_in_place, "changed its input in place"),
    # holdout
    Wrong("sums down the columns", softmax_sum_down_columns, "wrong axis"),
    Wrong("dim=ndim-2", lambda x: x.softmax(dim=x.dim() - 2), "wrong axis"),
    Wrong("sigmoid", torch.sigmoid, "should be weights summing to 1 along the last axis"),
    Wrong("shift in the numerator only", softmax_shift_in_the_numerator_only, "its rows do not sum to 1"),
    Wrong("no exp", lambda x: x / x.sum(-1, keepdim=True), None),
    Wrong("flattened to rows", lambda x: torch.softmax(x.reshape(-1, x.shape[-1]), 1),
          "has shape (6, 6), expected (2, 3, 6)"),
]

RIGHT_SOFTMAX = [
    Right("max shift", correct_softmax),
    Right("torch.softmax", lambda x: torch.softmax(x, dim=-1)),
    Right("F.softmax, method form", lambda x: F.softmax(x, -1)),
    Right("float64 inside", softmax_float64_inside),
    Right("returns float64", softmax_returns_float64),
    Right("loops over rows with math.exp", softmax_loops),
    Right("logsumexp", softmax_logsumexp),
    Right("exp of log_softmax", lambda x: torch.log_softmax(x, -1).exp()),  # holdout
]

LIBRARY = {check_softmax: (WRONG_SOFTMAX, RIGHT_SOFTMAX)}


test_each_wrong_answer_fails_with_its_words, test_each_right_answer_passes = library_tests(LIBRARY)


@pytest.mark.parametrize("mistake", SOFTMAX_MISTAKES, ids=[m.hint[:40] for m in SOFTMAX_MISTAKES])
def test_every_registered_softmax_mistake_gets_its_own_hint(mistake):
    assert_fails_with(check_softmax(mistake.fn, strict=False), mistake.hint)


def test_the_overflow_cases_really_overflow_float32():
    # The issue: a case said it would overflow without the shift while its largest score was 70.
    assert any(float(x.abs().max()) > 88.8 for (x,) in softmax_cases())
    assert any(not bool(torch.isfinite(softmax_no_shift(x)).all()) for (x,) in softmax_cases())


def test_a_softmax_without_the_shift_is_told_where_the_nan_is():
    line = _softmax_result(softmax_no_shift).line
    assert "Your output has NaN in row [0]" in line and "Largest error" not in line


def test_unattempted_exercise_says_not_attempted_yet():
    def softmax(x):
        raise NotImplementedError()

    result = _softmax_result(softmax)
    assert result.status == NOT_ATTEMPTED
    assert "not attempted yet" in result.line


def test_function_that_raises_gives_one_line_with_the_error():
    result = _softmax_result(lambda x: x.reshape(-1, 7))
    assert not result.passed and "raised RuntimeError" in result.line and "\n" not in result.line


def test_wrong_shape_names_both_shapes_and_a_swap():
    line = _softmax_result(lambda x: torch.softmax(x, dim=-1).transpose(-1, -2)).line
    assert "has shape (3, 1), expected (1, 3): the last two axes are swapped" in line


def test_wrong_type_and_wrong_dtype_are_named():
    assert "should be a torch.Tensor, got a list" in _softmax_result(lambda x: x.tolist()).line
    assert "dtype torch.int64" in _softmax_result(lambda x: torch.zeros_like(x, dtype=torch.long)).line


def test_passing_a_value_instead_of_a_function_is_explained():
    result = _softmax_result(torch.zeros(3))
    assert "expected a function, got Tensor" in result.line


def test_strict_mode_raises_on_failure_and_quiet_mode_prints(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_STRICT_CHECKS", "1")
    with pytest.raises(ExerciseFailed, match="wrong axis"):
        check_softmax(lambda x: torch.softmax(x, dim=0))
    capsys.readouterr()
    monkeypatch.setenv("COURSE_STRICT_CHECKS", "0")
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    result = check_softmax(lambda x: torch.softmax(x, dim=0))
    assert not result.passed
    assert capsys.readouterr().out.strip() == result.line


def test_nbgrader_autograding_is_strict(monkeypatch):
    monkeypatch.setenv("COURSE_STRICT_CHECKS", "0")
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    with pytest.raises(ExerciseFailed, match="not attempted"):
        check_softmax(lambda x: (_ for _ in ()).throw(NotImplementedError()))


def test_a_mistake_that_itself_crashes_is_skipped_not_reported():
    def boom(x):
        raise ValueError("bad mistake")

    result = evaluate_function("id", lambda x: x * 3 + 1, lambda x: x, [(torch.arange(4.0),)],
                               mistakes=[Mistake("never", boom)])
    assert not result.passed and "never" not in result.line and "values differ" in result.line


# --- the time limit ------------------------------------------------------------------------------------------
def loops_forever(x):
    while True:
        pass


def loops_forever_swallowing_exceptions(x):
    while True:
        try:
            time.sleep(0.01)
        except Exception:
            pass


@pytest.mark.parametrize("fn", [loops_forever, loops_forever_swallowing_exceptions])
def test_a_function_that_never_returns_is_stopped_after_the_time_limit(fn):
    start = time.monotonic()
    result = evaluate_function("id", fn, lambda x: x, [(torch.zeros(2),)], time_limit=0.5)
    assert time.monotonic() - start < 0.5 + 1.0
    assert_fails_with(result, "your function did not return within 0.5 s (case 1 of 1)")


def test_the_time_limit_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("COURSE_CHECK_TIME_LIMIT", "0.3")
    start = time.monotonic()
    assert_fails_with(check_softmax(loops_forever, strict=False), "did not return within 0.3 s")
    assert time.monotonic() - start < 1.3


def test_the_value_engine_has_the_time_limit_too():
    start = time.monotonic()
    result = evaluate_values("count", lambda n: loops_forever(n), lambda n: n, [(3,)], time_limit=0.5)
    assert time.monotonic() - start < 1.5
    assert_fails_with(result, "did not return within 0.5 s")


def test_off_the_main_thread_the_time_limit_uses_a_thread_and_stops_the_loop():
    box = {}

    def run():
        start = time.monotonic()
        box["result"] = evaluate_function("id", loops_forever, lambda x: x, [(torch.zeros(2),)], time_limit=0.5)
        box["seconds"] = time.monotonic() - start

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(5)
    assert box["seconds"] < 1.5
    assert_fails_with(box["result"], "did not return within 0.5 s")
    time.sleep(0.2)  # the looping thread was asked to stop, and does
    assert not [t for t in threading.enumerate() if t.name == "course-check"]


def test_in_a_thread_grad_mode_and_exceptions_are_those_of_the_caller():
    def run(box):
        with torch.no_grad():
            box["grad"] = call_with_time_limit(lambda: torch.is_grad_enabled(), (), 2)
        try:
            call_with_time_limit(lambda: 1 / 0, (), 2)
        except ZeroDivisionError:
            box["raised"] = True

    box = {}
    worker = threading.Thread(target=run, args=(box,))
    worker.start()
    worker.join(5)
    assert box == {"grad": False, "raised": True}


def test_the_time_limit_restores_a_timer_set_before():
    fired = []
    old = signal.signal(signal.SIGALRM, lambda *a: fired.append(True))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.8)
        assert call_with_time_limit(lambda x: x + 1, (1,), 0.3) == 2
        with pytest.raises(CheckTimeout):
            call_with_time_limit(loops_forever, (None,), 0.2)
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0 < remaining < 0.8
        time.sleep(remaining + 0.2)
        assert fired == [True]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_a_right_answer_is_not_slowed_down_noticeably():
    start = time.monotonic()
    for _ in range(200):
        call_with_time_limit(lambda: None, (), 5)
    assert time.monotonic() - start < 1.0


# --- messages: None, containers, dtypes, NaN, integers ---------------------------------------------------------
def _pair(q):
    return q * 2, q + 1


def _check_pair(fn):
    return evaluate_function("pair", fn, _pair, [(torch.arange(6.0).reshape(2, 3),)], output_names=("doubled", "shifted"))


def test_a_tuple_exercise_that_forgets_return_is_told_so():
    assert_fails_with(_check_pair(lambda q: None), "your function returned None; expected 2 values (doubled, shifted): "
                                                  "did you forget `return`?")


def test_a_tuple_exercise_with_one_tensor_or_the_wrong_count_is_told_so():
    assert_fails_with(_check_pair(lambda q: q * 2), "returned one tensor (shape (2, 3)), expected 2 values (doubled, "
                                                    "shifted): return them together, `return doubled, shifted`")
    assert_fails_with(_check_pair(lambda q: (q * 2, q + 1, q)), "returned 3 values, expected 2 (doubled, shifted)")
    assert _check_pair(lambda q: [q * 2, q + 1]).passed  # a list of the two is as good as a tuple
    result = evaluate_function("pair", lambda q: (q.sum(), q), lambda q: (q, q.sum()), [(torch.ones(2),)],
                               output_names=("x", "total"))
    assert_fails_with(result, "the two values are in the wrong order: return (x, total)")


def test_one_output_of_a_tuple_is_named_when_it_is_none_or_wrong():
    assert_fails_with(_check_pair(lambda q: (q * 2, None)), "shifted is None")
    assert_fails_with(_check_pair(lambda q: (q * 2, q - 1)), "shifted is off by a constant")


def test_a_tuple_where_one_tensor_belongs_is_told_so():
    result = evaluate_function("id", lambda x: (x, x), lambda x: x, [(torch.ones(2),)])
    assert_fails_with(result, "returned a tuple of 2 values, expected one tensor (output)")


def test_a_python_number_where_a_0d_tensor_belongs_gets_the_item_hint():
    result = evaluate_function("total", lambda x: float(x.sum()), lambda x: x.sum(), [(torch.ones(3),)],
                               output_names=("total",))
    assert_fails_with(result, "total should be a torch.Tensor, got float (return the 0-d tensor itself, without .item())")


def test_a_vector_where_a_single_number_belongs_is_told_to_reduce():
    result = evaluate_function("total", lambda x: x.sum(0), lambda x: x.sum(), [(torch.ones(2, 3),)],
                               output_names=("total",))
    assert_fails_with(result, "total has shape (3,), expected a single number (a 0-d tensor, shape ())")


def test_a_missing_batch_axis_is_named():
    result = evaluate_function("id", lambda x: x[0], lambda x: x, [(torch.ones(2, 3),)])
    assert_fails_with(result, "the first (batch) axis is missing")


def test_nan_and_inf_are_named_with_their_row_and_not_as_a_largest_error():
    x = torch.zeros(2, 3, 4)

    def nan_in_second_row(x):
        out = x.clone()
        out[1, 2, 0] = float("nan")
        return out

    def inf_at_the_end(x):
        out = x.clone()
        out[-1] = float("inf")
        return out

    result = evaluate_function("id", nan_in_second_row, lambda x: x, [(x,)])
    assert_fails_with(result, "your output has NaN in row [1, 2]: often a fully masked row or an exp overflow")
    assert "Largest error" not in result.line
    result = evaluate_function("id", inf_at_the_end, lambda x: x, [(torch.zeros(5),)])
    assert_fails_with(result, "your output has inf at position 4")
    result = evaluate_function("id", lambda x: torch.full_like(x, float("nan")), lambda x: x, [(x,)])
    assert_fails_with(result, "your output has NaN in row [0, 0]")
    assert "inf" not in result.line


def test_nan_where_the_reference_has_nan_too_is_fine():
    def ref(x):
        return x.log()
    assert evaluate_function("log", lambda x: torch.log(x), ref, [(torch.tensor([-1.0, 1.0]),)]).passed


def test_a_float16_result_is_named_by_its_dtype():
    result = evaluate_function("id", lambda x: (x / 3).half(), lambda x: x / 3, [(torch.randn(4, 4),)])
    assert_fails_with(result, "output has dtype torch.float16, expected torch.float32, and its values differ")
    assert "Largest error" in result.line


def test_integer_and_boolean_outputs_get_the_first_difference_not_a_largest_error():
    result = evaluate_function("ids", lambda x: x.argmax(-1) + 1, lambda x: x.argmax(-1),
                               [(torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0], [0.0, 0.0, 5.0]]),)],
                               output_names=("ids",))
    assert_fails_with(result, "ids: values differ, 3 of 3 entries, the first at [0]: you have 2, expected 1")
    assert "Largest error" not in result.line
    result = evaluate_function("mask", lambda n: torch.ones(n, n, dtype=torch.bool).triu(1),
                               lambda n: torch.ones(n, n, dtype=torch.bool).tril(), [(4,)], output_names=("mask",))
    assert_fails_with(result, "mask is inverted")
    assert "16 of 16 entries, the first at [0, 0]: you have False, expected True" in result.line
    assert "Largest error" not in result.line


def test_an_output_named_values_does_not_read_values_values():
    result = evaluate_function("kv", lambda k, v: (k, v + 1), lambda k, v: (k, v),
                               [(torch.zeros(3), torch.tensor([1.0, 5.0, 2.0]))], output_names=("keys", "values"))
    assert "values values" not in result.line


def test_compare_outputs_keeps_its_shape_for_other_checkers():
    problem, err = compare_outputs(torch.ones(2), torch.zeros(2), ("out",), 1e-5, 1e-4)
    assert "values differ" in problem and err == 1.0
    problem, err = compare_outputs(torch.ones(3), torch.zeros(2), ("out",), 1e-5, 1e-4)
    assert "has shape (3,), expected (2,)" in problem and err == float("inf")
    assert compare_outputs(torch.ones(2), torch.ones(2), ("out",), 1e-5, 1e-4) == (None, 0.0)


# --- structural hints -----------------------------------------------------------------------------------------
g = torch.Generator().manual_seed(0)
W = torch.randn(2, 4, 4, generator=g)
P = torch.softmax(torch.randn(2, 3, 5, generator=g), dim=-1)


@pytest.mark.parametrize("got,want,words", [
    (W.transpose(-2, -1), W, "is transposed: the last two axes are swapped"),
    (torch.softmax(torch.log(P), dim=-2), P, "normalised over the wrong axis: it sums to 1 along axis 1 (dim=-2)"),
    (P / P.sum(), P, "normalised over the whole tensor"),
    (P * torch.arange(1.0, 4.0)[:, None], P, "its rows do not sum to 1"),
    (P ** 2, P, "should be weights summing to 1 along the last axis (as a softmax gives); your row [0, 0] sums to"),
    (torch.log(P), P, "should be weights, non-negative and summing to 1"),
    (W * 2.0, W, "off by a constant factor: yours = 2 × the expected"),
    (-W, W, "has the opposite sign"),
    (W + 0.5, W, "off by a constant: yours = expected +0.5 everywhere"),
    (torch.zeros_like(W), W, "is all zeros"),
    (torch.cat([W[:, :1] * 0, W[:, :-1]], dim=1), W, "shifted by one position along axis 1: your entry i + 1 holds"),
    (W.flip(-1), W, "reversed along axis 2"),
    (torch.cat([W[:1], W[1:] * 3 + 1]), W, "right for the first item along axis 0 and wrong for the others"),
    (torch.cat([W[..., :3], W[..., 3:] + 1], dim=-1), W, "right except at the end of axis 2 (index 3 of 0..3)"),
    (torch.cat([W[..., :1] - 1, W[..., 1:]], dim=-1), W, "right except at the start of axis 2"),
    (W.reshape(2, 4, 2, 2).transpose(-2, -1).reshape(2, 4, 4), W, "right numbers in the wrong places"),
    (torch.ones(4, 4, dtype=torch.bool).tril(-1), torch.ones(4, 4, dtype=torch.bool).tril(), "wrong only on the diagonal"),
    (torch.ones(4, 4, dtype=torch.bool).tril().T, torch.ones(4, 4, dtype=torch.bool).tril(), "is transposed"),
])
def test_structural_hints_describe_the_error(got, want, words):
    hint = structural_hint(got, want, "output")
    assert hint is not None and words in hint, hint


def test_a_2d_output_is_treated_as_a_batch_only_when_the_checker_says_so():
    got = torch.cat([W[0, :1], W[0, 1:] + 1])  # row 0 right, the rest wrong: a batch bug, or rows 1.. of a table
    assert "first item along axis 0" not in (structural_hint(got, W[0]) or "")
    assert "first item along axis 0" in structural_hint(got, W[0], batch_first=True)


def test_no_structural_hint_for_unrelated_values():
    assert structural_hint(torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)) is None


def test_a_structural_hint_reaches_the_learners_line():
    result = evaluate_function("scores", lambda q: q @ q.T * 2, lambda q: q @ q.T,
                               [(torch.randn(3, 3, generator=g),)], output_names=("scores",))
    assert_fails_with(result, "scores is off by a constant factor: yours = 2 × the expected")
    assert "Largest error" in result.line


# --- which mistake is named -----------------------------------------------------------------------------------
def test_a_mistake_that_agrees_with_the_learner_on_the_earlier_cases_is_preferred():
    cases = [(torch.tensor([1.0, 2.0]),), (torch.tensor([-1.0, 3.0]),)]
    learner = lambda x: x * 2 if bool((x < 0).any()) else x  # noqa: E731 - right on case 1, wrong on case 2
    mistakes = [Mistake("doubled", lambda x: x * 2),  # matches case 2 but not case 1, where the learner was right
                Mistake("doubled when negative", lambda x: x * 2 if bool((x < 0).any()) else x)]
    result = evaluate_function("f", learner, lambda x: x, cases, mistakes=mistakes)
    assert_fails_with(result, "doubled when negative")


# --- the options lessons 06-11's checkers use, and the structure of a difference on the learner's line -----------
X = torch.tensor([[1.0, -2.0, 3.0, 0.5], [0.2, 4.0, -1.0, 2.5], [3.0, 1.0, 1.5, -0.7]])
CUMSUM_CASES = [(X,), (X[:2, :3] * 2,)]


def _cumsum_verdict(fn, **options):
    return evaluate_function("demo", fn, lambda x: x.cumsum(-1), CUMSUM_CASES, **options)


@pytest.mark.parametrize("fn, options, words", [
    (lambda x: 2.5 * x.cumsum(-1), {}, "output is off by a constant factor: yours = 2.5 × the expected"),
    (lambda x: -x.cumsum(-1), {}, "output has the opposite sign"),
    (lambda x: x.cumsum(-1) + 0.75, {}, "off by a constant: yours = expected +0.75 everywhere"),
    (lambda x: torch.zeros_like(x), {}, "output is all zeros"),
    (lambda x: F.pad(x.cumsum(-1), (1, 0))[..., :-1], {}, "shifted by one position along axis 1: your entry i + 1"),
    (lambda x: x.cumsum(-1) / torch.where(x.cumsum(-1) > 3, 0.0, 1.0), {}, "your output has inf in row [1]"),
    (lambda x: torch.cat([x[:1].cumsum(-1), x[1:].cumsum(0)]), {"batch_first": True},
     "right for the first item along axis 0 and wrong for the others"),
    (lambda x: torch.cat([x.cumsum(-1)[:, :-1], x.cumsum(-1)[:, -1:] + 1], -1), {},
     "right except at the end of axis 1 (index 3 of 0..3)"),
])
def test_a_failure_no_mistake_explains_gets_its_structure_on_the_line(fn, options, words):
    assert_fails_with(_cumsum_verdict(fn, **options), words)


def test_nan_gets_the_checkers_own_words():
    result = _cumsum_verdict(lambda x: x.cumsum(-1) * torch.nan, nonfinite_hint="exp() overflowed")
    assert_fails_with(result, "your output has NaN in row [0]: exp() overflowed (case 1 of 2)")


def test_a_mistake_is_named_even_when_its_shape_is_wrong():
    mistakes = [Mistake("summed the whole row: keep a running total", lambda x: x.sum(-1))]
    result = _cumsum_verdict(lambda x: x.sum(-1), mistakes=mistakes)
    assert result.line.startswith("✗ demo: summed the whole row: keep a running total (output has shape (3,), "
                                  "expected (3, 4); case 1 of 2)"), result.line


def test_a_mistake_is_named_only_if_it_fits_every_case_up_to_the_failing_one():
    # The learner is right on case 1 and wrong on case 2; both mistakes give its answer on case 2, but
    # only the second also gives the right answer on case 1.
    learner = lambda x: x.cumsum(-1) if x.shape[1] == 4 else x.cumsum(-1) * 3   # noqa: E731
    wrong_earlier = Mistake("wrong earlier too", lambda x: x.cumsum(-1) * 3)
    fits = Mistake("fits both cases", lambda x: x.cumsum(-1) * (3 if x.shape[1] == 3 else 1))
    assert "wrong earlier too" not in _cumsum_verdict(learner, mistakes=[wrong_earlier]).line
    assert "fits both cases" in _cumsum_verdict(learner, mistakes=[wrong_earlier, fits]).line


def test_when_two_mistakes_fit_the_later_cases_choose():
    first = Mistake("first", lambda x: x.cumsum(-1) * 2 if x.shape[1] == 4 else x)
    second = Mistake("second", lambda x: x.cumsum(-1) * 2)
    result = _cumsum_verdict(lambda x: x.cumsum(-1) * 2, mistakes=[first, second])
    assert "second" in result.line and "first" not in result.line, result.line


def test_the_later_cases_run_under_the_time_limit_too():
    first = Mistake("first", lambda x: x.cumsum(-1) * 2 if x.shape[1] == 4 else x)
    second = Mistake("second", lambda x: x.cumsum(-1) * 2)

    def learner(x):
        if x.shape[1] == 3:  # the later case: never returns
            while True:
                pass
        return x.cumsum(-1) * 2
    start = time.monotonic()
    result = _cumsum_verdict(learner, mistakes=[first, second], time_limit=0.3)
    assert time.monotonic() - start < 5
    assert_fails_with(result, "first")  # the later case could not choose: the first that fits stands


@pytest.mark.parametrize("got, want, words", [
    ((4, 3), (3, 4), "the last two axes are swapped"),
    ((3,), (3, 1), "a size-1 axis is missing (a reduction without keepdim=True?)"),
    ((3, 1, 4), (3, 4), "an extra size-1 axis"),
    ((3, 3), (3, 1), "axis 1 should have size 1 but grew to 3 by broadcasting"),
    ((5, 2), (3, 4), "output has shape (5, 2), expected (3, 4) "),
])
def test_shape_hints(got, want, words):
    problem, _ = compare_outputs(torch.zeros(got), torch.zeros(want), ("output",), 1e-5, 1e-4)
    assert words in problem + " ", problem


def test_ids_and_masks_say_where_the_first_difference_is():
    got, want = torch.tensor([[1, 2, 3], [4, 9, 6]]), torch.tensor([[1, 2, 3], [4, 5, 6]])
    result = evaluate_function("ids", lambda x: got, lambda x: want, [(0,)], output_names=("ids",))
    assert_fails_with(result, "ids: values differ, first difference at [1, 1]: you have 9, expected 5")
    result = evaluate_function("flag", lambda x: torch.tensor(True), lambda x: torch.tensor(False), [(0,)])
    assert_fails_with(result, "output: values differ, you have True, expected False")


def test_the_checkers_locator_speaks_before_the_generic_structure():
    def locate(args, name, got, want):
        return "wrong only where the checker says"
    result = _cumsum_verdict(lambda x: 2 * x.cumsum(-1), locate=locate)
    assert_fails_with(result, "✗ demo: wrong only where the checker says. Largest error")


def test_a_later_output_is_named_when_it_says_more():
    def locate(args, name, got, want):
        return "the weights leak" if name == "weights" else None
    result = evaluate_function("demo", lambda x: (x + torch.rand(3, 4), x * 0), lambda x: (x, x), [(X,)],
                               output_names=("out", "weights"), locate=locate)
    assert_fails_with(result, "in weights, the weights leak")


def test_a_locator_that_breaks_leaves_the_engines_line():
    def locate(args, name, got, want):
        raise RuntimeError("a bug in the checker")
    result = _cumsum_verdict(lambda x: x.cumsum(-1) ** 3, locate=locate)
    assert_fails_with(result, "output: values differ")
    assert "a bug in the checker" not in result.line


def test_the_options_leave_passes_raises_in_place_and_unattempted_to_the_engine():
    assert _cumsum_verdict(lambda x: torch.cumsum(x, dim=1), locate=lambda *a: "never").status == PASSED

    def todo(x):
        raise NotImplementedError()
    assert _cumsum_verdict(todo, nonfinite_hint="never").status == NOT_ATTEMPTED
    line = _cumsum_verdict(lambda x: x @ x, exception_hints=[("cannot be multiplied", "multiply elementwise")]).line
    assert line.startswith("✗ demo: multiply elementwise. Your function raised RuntimeError")

    def in_place(x):
        return x.cumsum_(-1)
    line = _cumsum_verdict(in_place, locate=lambda *a: "never").line
    assert "in place" in line and "values differ" not in line and "never" not in line

# --- the checker's own code -------------------------------------------------------------------------------------
def test_a_failing_reference_is_reported_as_the_checkers_bug():
    result = evaluate_function("id", lambda x: x, lambda x: x.nonexistent(), [(torch.zeros(2),)])
    assert_fails_with(result, "the checker's reference failed (AttributeError")
    assert "not in your code" in result.line


def test_a_failing_convert_is_reported_as_the_checkers_with_what_the_learner_returned():
    result = evaluate_function("index", lambda x: x.argmax(-1), lambda x: x.flatten().argmax(), [(torch.ones(2, 3),)],
                               convert=lambda v: torch.tensor(int(v)))
    assert_fails_with(result, "the checker could not read your function's output (ValueError")
    assert "it returned a tensor of shape (2,), dtype torch.int64" in result.line


def test_a_checkers_wrapper_that_fails_is_not_blamed_on_the_learner():
    from course.checks import basics  # compiled as if in a module of course/checks, where checkers' wrappers live

    namespace = {}
    exec(compile("def make(learner):\n    def wrapped(x):\n        return int(learner(x, dim=-1))\n    return wrapped\n",
                 basics.__file__, "exec"), namespace)
    result = evaluate_function("argmax", namespace["make"](torch.argmax), lambda x: 0, [(torch.ones(2, 3),)])
    assert_fails_with(result, "the checker's own code failed while running your function (ValueError")
    # An exception inside the learner's own code, called through the same wrapper, is the learner's:
    result = evaluate_function("argmax", namespace["make"](lambda x, dim: x.nonexistent()), lambda x: 0,
                               [(torch.ones(2, 3),)])
    assert_fails_with(result, "your function raised AttributeError")


def test_a_learner_function_with_the_wrong_signature_is_the_learners():
    result = evaluate_function("id", lambda x, y: x, lambda x: x, [(torch.zeros(2),)])
    assert_fails_with(result, "your function raised TypeError")


def test_a_context_wraps_the_learners_call():
    def needs_no_grad(x):
        assert not torch.is_grad_enabled()
        return x

    assert evaluate_function("id", needs_no_grad, lambda x: x, [(torch.zeros(2),)], context=torch.no_grad).passed


# --- the engine for plain values ------------------------------------------------------------------
def test_value_checker_compares_ints_and_rejects_other_types():
    result = evaluate_values("double", lambda n: 2.0 * n, lambda n: 2 * n, [(3,)])
    assert result.status == FAILED and "should return an int, got float" in result.line
    assert evaluate_values("double", lambda n: torch.tensor(2 * n), lambda n: 2 * n, [(3,)]).passed
    assert "should return an int, got float" in evaluate_values("double", lambda n: torch.tensor(2.0 * n),
                                                                lambda n: 2 * n, [(3,)]).line


def test_value_checker_says_off_by_one_when_no_mistake_matches():
    assert_fails_with(evaluate_values("steps", lambda n: n, lambda n: n - 1, [(3,)]), "off by one. You returned 3, expected 2")
    assert "off by one" not in evaluate_values("steps", lambda n: n, lambda n: n - 2, [(3,)]).line


def test_value_checker_says_none_means_a_missing_return():
    assert_fails_with(evaluate_values("count", lambda ids: None, lambda ids: {}, [([1, 2],)]),
                      "your function returned None: did you forget `return`?")


def test_value_checker_raises_in_strict_mode_and_prints_one_line(capsys):
    with pytest.raises(ExerciseFailed):
        check_values("double", lambda n: n, lambda n: 2 * n, [(3,)], strict=True)
    assert capsys.readouterr().out.count("\n") == 1


def test_status_constants_are_stable():
    assert (PASSED, FAILED, NOT_ATTEMPTED) == ("passed", "failed", "not attempted")


def test_a_pass_gives_a_largest_error_only_for_floating_outputs(lenient_checks):
    from course.checks.core import evaluate_function

    mask = evaluate_function("mask", lambda n: torch.ones(n, n, dtype=torch.bool).tril(),
                             lambda n: torch.ones(n, n, dtype=torch.bool).tril(), [(3,), (5,)])
    floats = evaluate_function("double", lambda x: 2 * x, lambda x: x + x, [(torch.randn(3),)])
    assert mask.passed and "largest error" not in mask.line and mask.max_error is None
    assert floats.passed and "largest error" in floats.line
