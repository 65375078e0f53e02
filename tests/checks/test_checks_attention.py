"""The attention checkers catch what they claim to, each with the right hint.

Two libraries of wrong implementations:
1. every Mistake registered in course.checks.attention, run through its own checker, must get its own
   hint (this proves the test cases tell the mistakes apart);
2. hand-written wrong solutions in the style a learner writes them (F.softmax, -1e9 instead of -inf,
   float masks, ...), each with the hint substring it must get.
Plus: correct solutions pass, wrong shapes and exceptions give one line, not attempting gives "not attempted".
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from course.attention import MultiHeadAttention, merge_heads, split_heads
from course.checks import ExerciseFailed
from course.checks import attention as ca


pytestmark = pytest.mark.usefixtures("lenient_checks")


def one_line(result) -> str:
    line = result.line
    assert "\n" not in line
    return line


# ----------------------------------------------------------------------------- correct solutions

def scores_ok(q, k):
    return q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])


def attention_ok(q, k, v):
    w = F.softmax(scores_ok(q, k), dim=-1)
    return w @ v, w


def masked_ok(q, k, v, mask):
    w = F.softmax(scores_ok(q, k).masked_fill(~mask, float("-inf")), dim=-1)
    return w @ v, w


def causal_ok(n):
    return torch.tril(torch.ones(n, n)).bool()


def split_ok(x, num_heads):
    b, s, d = x.shape
    return x.view(b, s, num_heads, d // num_heads).transpose(1, 2)


def merge_ok(x):
    b, h, s, d = x.shape
    return x.transpose(1, 2).contiguous().view(b, s, h * d)


def mha_ok(mha, query, key, value, mask=None):
    q = split_ok(mha.q_proj(query), mha.num_heads)
    k = split_ok(mha.k_proj(key), mha.num_heads)
    v = split_ok(mha.v_proj(value), mha.num_heads)
    out, _ = masked_ok(q, k, v, mask) if mask is not None else attention_ok(q, k, v)
    return mha.out_proj(merge_ok(out))


CORRECT = [
    (ca.check_attention_scores, scores_ok),
    (ca.check_attention, attention_ok),
    (ca.check_masked_attention, masked_ok),
    (ca.check_causal_mask, causal_ok),
    (ca.check_split_heads, split_ok),
    (ca.check_merge_heads, merge_ok),
    (ca.check_multi_head_attention, mha_ok),
    # The course's own versions pass too (the lessons show they are the same code path).
    (ca.check_split_heads, split_heads),
    (ca.check_merge_heads, merge_heads),
]


@pytest.mark.parametrize("checker,fn", CORRECT, ids=lambda x: getattr(x, "__name__", str(x)))
def test_correct_solution_passes(checker, fn):
    result = checker(fn)
    assert result.passed, result.line
    assert one_line(result).startswith("✓")


def test_masked_attention_accepts_minus_1e9_instead_of_minus_inf():
    def masked_1e9(q, k, v, mask):
        w = torch.softmax(scores_ok(q, k).masked_fill(mask == 0, -1e9), dim=-1)
        return w @ v, w

    assert ca.check_masked_attention(masked_1e9).passed


def test_mha_checker_accepts_a_solution_using_the_course_sdpa():
    from course.attention import scaled_dot_product_attention

    def mha_course(mha, query, key, value, mask=None):
        q, k, v = (split_heads(p(x), mha.num_heads) for p, x in
                   ((mha.q_proj, query), (mha.k_proj, key), (mha.v_proj, value)))
        return mha.out_proj(merge_heads(scaled_dot_product_attention(q, k, v, mask)[0]))

    assert ca.check_multi_head_attention(mha_course).passed


# ----------------------------------------------------------------------------- 1. every registered mistake

REGISTERED = (
    [(ca.check_attention_scores, m) for m in ca.SCORE_MISTAKES]
    + [(ca.check_attention, m) for m in ca.ATTENTION_MISTAKES]
    + [(ca.check_masked_attention, m) for m in ca.MASKED_MISTAKES]
    + [(ca.check_causal_mask, m) for m in ca.CAUSAL_MISTAKES]
    + [(ca.check_split_heads, m) for m in ca.SPLIT_MISTAKES]
    + [(ca.check_merge_heads, m) for m in ca.MERGE_MISTAKES]
    + [(ca.check_multi_head_attention, m) for m in ca.MHA_MISTAKES]
)


@pytest.mark.parametrize("checker,mistake", REGISTERED,
                         ids=[f"{c.__name__}:{m.hint[:40]}" for c, m in REGISTERED])
def test_each_registered_mistake_gets_its_own_hint(checker, mistake):
    result = checker(mistake.fn)
    assert not result.passed
    assert mistake.hint in one_line(result), result.line


# ----------------------------------------------------------------------------- 2. learner-style wrong code

def scores_no_scale(q, k):
    return torch.matmul(q, k.transpose(-1, -2))


def scores_over_dk(q, k):
    return torch.matmul(q, k.transpose(-1, -2)) / k.size(-1)


def scores_kq(q, k):
    return torch.einsum("...kd,...qd->...kq", k, q) / math.sqrt(q.size(-1))


def attention_no_scale(q, k, v):
    w = F.softmax(q @ k.mT, dim=-1)
    return w @ v, w


def attention_over_dk(q, k, v):
    d_k = q.shape[-1]
    w = F.softmax(q @ k.mT / d_k, dim=-1)
    return w @ v, w


def attention_wrong_axis(q, k, v):
    w = F.softmax(q @ k.mT / q.shape[-1] ** 0.5, dim=-2)
    return w @ v, w


def attention_wrong_axis_positive_index(q, k, v):
    s = q @ k.mT / q.shape[-1] ** 0.5
    w = s.softmax(dim=s.ndim - 2)
    return w @ v, w


def masked_inverted(q, k, v, mask):
    s = scores_ok(q, k)
    s[mask] = -1e9                                   # learners often index-assign; on a fresh tensor that's fine
    w = s.softmax(-1)
    return w @ v, w


def masked_after_softmax(q, k, v, mask):
    w = F.softmax(scores_ok(q, k), dim=-1) * mask    # multiply by the mask after the softmax
    return w @ v, w


def masked_with_zero(q, k, v, mask):
    w = F.softmax(scores_ok(q, k) * mask, dim=-1)    # zeroes the scores instead of -inf
    return w @ v, w


def masked_no_scale(q, k, v, mask):
    w = F.softmax((q @ k.mT).masked_fill(~mask, -1e9), dim=-1)
    return w @ v, w


def causal_triu(n):
    return torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)


def causal_no_diagonal(n):
    return torch.ones(n, n).tril(diagonal=-1) > 0


def split_reshape_no_transpose(x, num_heads):
    b, s, d = x.shape
    return x.reshape(b, num_heads, s, d // num_heads)


def split_view_no_transpose(x, num_heads):
    b, s, d = x.shape
    return x.view(b, s, num_heads, d // num_heads)


def merge_reshape_no_transpose(x):
    b, h, s, d = x.shape
    return x.reshape(b, s, h * d)


def mha_reshape_no_transpose(mha, query, key, value, mask=None):
    def split(t):
        return t.reshape(t.shape[0], mha.num_heads, t.shape[1], -1)

    q, k, v = split(mha.q_proj(query)), split(mha.k_proj(key)), split(mha.v_proj(value))
    out, _ = masked_ok(q, k, v, mask) if mask is not None else attention_ok(q, k, v)
    return mha.out_proj(merge_ok(out))


def mha_scale_d_model(mha, query, key, value, mask=None):
    q, k, v = (split_ok(p(x), mha.num_heads) for p, x in ((mha.q_proj, query), (mha.k_proj, key), (mha.v_proj, value)))
    s = q @ k.mT / math.sqrt(query.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, -1e9)
    return mha.out_proj(merge_ok(s.softmax(-1) @ v))


def mha_no_out_proj(mha, query, key, value, mask=None):
    q, k, v = (split_ok(p(x), mha.num_heads) for p, x in ((mha.q_proj, query), (mha.k_proj, key), (mha.v_proj, value)))
    out, _ = masked_ok(q, k, v, mask) if mask is not None else attention_ok(q, k, v)
    return merge_ok(out)


def mha_self_only(mha, query, key, value, mask=None):
    return mha_ok(mha, query, query, query, mask)


def mha_inverted_mask(mha, query, key, value, mask=None):
    return mha_ok(mha, query, key, value, None if mask is None else ~mask)


LEARNER_MISTAKES = [
    (ca.check_attention_scores, scores_no_scale, "missing scale"),
    (ca.check_attention_scores, scores_over_dk, "wrong scale: divided by d_k"),
    (ca.check_attention_scores, scores_kq, "transposed"),
    (ca.check_attention, attention_no_scale, "missing scale"),
    (ca.check_attention, attention_over_dk, "wrong scale: divided by d_k"),
    (ca.check_attention, attention_wrong_axis, "softmax over the wrong axis"),
    (ca.check_attention, attention_wrong_axis_positive_index, "softmax over the wrong axis"),
    (ca.check_masked_attention, masked_inverted, "mask inverted"),
    (ca.check_masked_attention, masked_after_softmax, "mask applied after softmax"),
    (ca.check_masked_attention, masked_with_zero, "masked scores set to 0"),
    (ca.check_masked_attention, masked_no_scale, "missing scale"),
    (ca.check_causal_mask, causal_triu, "mask inverted"),
    (ca.check_causal_mask, causal_no_diagonal, "diagonal is missing"),
    (ca.check_split_heads, split_reshape_no_transpose, "reshape without transpose"),
    (ca.check_split_heads, split_view_no_transpose, "reshape without transpose"),
    (ca.check_merge_heads, merge_reshape_no_transpose, "reshape without transpose"),
    (ca.check_multi_head_attention, mha_reshape_no_transpose, "reshape without transpose"),
    (ca.check_multi_head_attention, mha_scale_d_model, "scaled by sqrt(d_model)"),
    (ca.check_multi_head_attention, mha_no_out_proj, "output projection is missing"),
    (ca.check_multi_head_attention, mha_self_only, "projected from the query"),
    (ca.check_multi_head_attention, mha_inverted_mask, "mask inverted"),
]


@pytest.mark.parametrize("checker,fn,hint", LEARNER_MISTAKES, ids=[f.__name__ for _, f, _ in LEARNER_MISTAKES])
def test_learner_style_mistake_gets_the_expected_hint(checker, fn, hint):
    result = checker(fn)
    assert not result.passed
    assert hint in one_line(result), result.line
    # a largest error means something for floating outputs only (not for a boolean mask)
    assert ("Largest error" in result.line) == (checker is not ca.check_causal_mask)


# ----------------------------------------------------------------------------- shapes, exceptions, not attempted

def test_wrong_shape_output_is_named():
    result = ca.check_attention_scores(lambda q, k: scores_ok(q, k).sum(-1))
    assert not result.passed and "scores has shape (6,), expected (6, 6)" in one_line(result)


def test_returning_only_the_output_says_two_values_were_expected():
    result = ca.check_attention(lambda q, k, v: attention_ok(q, k, v)[0])
    assert "expected 2 values (output, weights)" in one_line(result)


def test_float_causal_mask_is_rejected_naming_the_dtype():
    result = ca.check_causal_mask(lambda n: torch.ones(n, n).tril())
    assert "dtype torch.float32, expected torch.bool" in one_line(result)


def test_function_that_raises_gives_a_one_line_message():
    def broken(q, k, v, mask):
        raise RuntimeError("The size of tensor a (5) must match the size of tensor b (6)\nat dimension 1")

    result = ca.check_masked_attention(broken)
    assert not result.passed
    assert "your function raised RuntimeError: The size of tensor a (5)" in one_line(result)
    assert "at dimension 1" not in result.line


def test_view_on_non_contiguous_tensor_error_is_reported_in_one_line():
    def merge_view(x):
        b, h, s, d = x.shape
        return x.transpose(1, 2).view(b, s, h * d)

    assert "your function raised RuntimeError" in one_line(ca.check_merge_heads(merge_view))


def test_not_attempted_is_reported():
    def todo(q, k):
        raise NotImplementedError()

    result = ca.check_attention_scores(todo)
    assert result.status == "not attempted"


def test_strict_mode_raises(monkeypatch):
    monkeypatch.setenv("COURSE_STRICT_CHECKS", "1")
    with pytest.raises(ExerciseFailed, match="missing scale"):
        ca.check_attention_scores(scores_no_scale)


def test_strict_false_reports_without_raising_even_in_strict_mode(monkeypatch):
    monkeypatch.setenv("COURSE_STRICT_CHECKS", "1")
    result = ca.check_attention(attention_wrong_axis, strict=False)
    assert not result.passed and "softmax over the wrong axis" in result.line


def test_mha_checker_does_not_change_the_global_random_stream():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ca.check_multi_head_attention(mha_ok)
    torch.testing.assert_close(torch.rand(3), expected)


def test_mha_checker_module_is_the_course_module():
    mha = ca._mha_cases()[0][0]
    assert isinstance(mha, MultiHeadAttention) and mha.num_heads == 3 and mha.d_model == 12
