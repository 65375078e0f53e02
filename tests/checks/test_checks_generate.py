"""Lesson 08's checkers: the correct versions pass, every known mistake gets its own hint,
and typical learner slips (in-place edits, unattempted cells) get one clear line."""
from __future__ import annotations

import math

import pytest
import torch

from course.attention import causal_mask, scaled_dot_product_attention
from course.checks.core import NOT_ATTEMPTED
from course.checks.generate import (
    _causal_cases,
    _top_p_cases,
    CAUSAL_ATTENTION_MISTAKES,
    TEMPERATURE_MISTAKES,
    TOP_K_MISTAKES,
    TOP_P_MISTAKES,
    check_causal_self_attention,
    check_temperature,
    check_top_k_filter,
    check_top_p_filter,
)
from course.generate import apply_temperature, top_k_filter, top_p_filter
from answer_library import Right, Wrong, library_tests, mistake_tests

CHECKERS = {
    "causal": (check_causal_self_attention, CAUSAL_ATTENTION_MISTAKES),
    "temperature": (check_temperature, TEMPERATURE_MISTAKES),
    "top_k": (check_top_k_filter, TOP_K_MISTAKES),
    "top_p": (check_top_p_filter, TOP_P_MISTAKES),
}


def learner_causal_attention(q, k, v):
    seq = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~torch.ones(seq, seq, dtype=torch.bool).tril(), float("-inf"))
    w = scores.softmax(dim=-1)
    return w @ v, w


def causal_variant(*, fill=float("-inf"), allowed=lambda n: torch.ones(n, n, dtype=torch.bool).tril(),
                   scale=lambda d: d ** -0.5, softmax=lambda s: s.softmax(dim=-1), after=None):
    """A learner's causal attention with one piece changed."""
    def attend(q, k, v):
        n = q.shape[-2]
        scores = (q @ k.transpose(-2, -1)) * scale(q.shape[-1])
        scores = scores.masked_fill(~allowed(n), fill)
        w = softmax(scores)
        if after is not None:
            w = after(w, n)
        return w @ v, w
    return attend


def manual_softmax(shift):
    def softmax(s):
        e = torch.exp(s - shift(s))
        return e / e.sum(dim=-1, keepdim=True)
    return softmax


def causal_einsum_float64(q, k, v):
    q64, k64, v64 = q.double(), k.double(), v.double()
    s = torch.einsum("...id,...jd->...ij", q64, k64) / math.sqrt(q.shape[-1])
    s = s.masked_fill(torch.triu(torch.ones(s.shape[-2:], dtype=torch.bool), 1), -1e9)
    w = torch.softmax(s, -1)
    return (w @ v64).float(), w.float()


def causal_loop(q, k, v):
    out, weights = torch.zeros_like(q[..., :v.shape[-1]]), torch.zeros(*q.shape[:-1], k.shape[-2])
    for i in range(q.shape[-2]):
        s = q[..., i:i + 1, :] @ k[..., :i + 1, :].transpose(-2, -1) / math.sqrt(q.shape[-1])
        w = torch.softmax(s, dim=-1)
        weights[..., i:i + 1, :i + 1] = w
        out[..., i:i + 1, :] = w @ v[..., :i + 1, :]
    return out, weights


WRONG_CAUSAL = [
    Wrong("triu mask", causal_variant(allowed=lambda n: torch.ones(n, n, dtype=torch.bool).triu()), "transposed"),
    Wrong("mask inverted", causal_variant(allowed=lambda n: torch.ones(n, n, dtype=torch.bool).triu(1)), "inverted"),
    Wrong("filled with 0", causal_variant(fill=0.0), "became 0"),
    Wrong("multiplied by the mask", lambda q, k, v: _multiplied(q, k, v), "became 0"),
    Wrong("masked after the softmax", causal_variant(allowed=lambda n: torch.ones(n, n, dtype=torch.bool),
                                                     after=lambda w, n: w * torch.ones(n, n).tril()), "after the softmax"),
    Wrong("diagonal masked", causal_variant(allowed=lambda n: torch.ones(n, n, dtype=torch.bool).tril(-1)),
          "diagonal is masked"),
    Wrong("no mask", causal_variant(allowed=lambda n: torch.ones(n, n, dtype=torch.bool)), "no causal mask"),
    Wrong("no scale", causal_variant(scale=lambda d: 1.0), "missing scale"),
    Wrong("divided by d_k", causal_variant(scale=lambda d: 1.0 / d), "divided by d_k"),
    Wrong("softmax over queries", causal_variant(softmax=lambda s: s.softmax(dim=-2)), "wrong axis"),
    Wrong("softmax without the max shift", causal_variant(softmax=manual_softmax(lambda s: 0.0)), "overflows above 88"),
    Wrong("shifted by the row mean of finite scores", causal_variant(
        fill=-1e9, softmax=manual_softmax(lambda s: s.clamp_min(-1e4).mean(-1, keepdim=True))), "overflows above 88"),
    Wrong("shifted by the global max", causal_variant(softmax=manual_softmax(lambda s: s.max())), "overflows above 88"),
    Wrong("a small fill, -100", causal_variant(fill=-100.0), "future keys (above the diagonal) get some weight"),
    Wrong("mask for a fixed length", lambda q, k, v: scaled_dot_product_attention(q, k, v, causal_mask(5)),
          "build the mask for this call's seq"),
]

RIGHT_CAUSAL = [
    Right("by hand", learner_causal_attention),
    Right("the course's", lambda q, k, v: scaled_dot_product_attention(q, k, v, causal_mask(q.shape[-2]))),
    Right("-1e9 fill", causal_variant(fill=-1e9)),
    Right("softmax with the row max shift", causal_variant(softmax=manual_softmax(
        lambda s: s.max(dim=-1, keepdim=True).values))),
    Right("einsum, triu(1) masked, float64 inside", causal_einsum_float64),
    Right("a loop over queries", causal_loop),
    Right("finfo.min fill", causal_variant(fill=torch.finfo(torch.float32).min)),
]


def _multiplied(q, k, v):
    n = q.shape[-2]
    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) * torch.ones(n, n).tril(), dim=-1)
    return w @ v, w


WRONG_TEMPERATURES = [
    Wrong("multiplied", lambda x, t: x * t, "multiplied by the temperature"),
    Wrong("probabilities", lambda x, t: torch.softmax(x / t, -1), "returned probabilities"),
    Wrong("probabilities divided", lambda x, t: x.softmax(-1) / t, "divided the probabilities"),
    Wrong("exponentiated", lambda x, t: (x / t).exp(), "exponentiated"),
    Wrong("subtracted", lambda x, t: x - t, "subtracted the temperature"),
    Wrong("floor division", lambda x, t: x // t, "floor division"),
    Wrong("log-probabilities", lambda x, t: torch.log_softmax(x / t, -1), "log-probabilities"),
    Wrong("divided by t squared", lambda x, t: x / t ** 2, "off by a constant factor"),
    Wrong("divided by t + 1", lambda x, t: x / (t + 1), "off by a constant factor"),
    Wrong("in place", lambda x, t: x.div_(t), "in place"),
    Wrong("shifted by the max first", lambda x, t: (x - x.max()) / t, "off by a constant"),
]

RIGHT_TEMPERATURES = [
    Right("the course's", apply_temperature),
    Right("/", lambda x, t: x / t),
    Right("* (1 / t)", lambda x, t: x * (1.0 / t)),
    Right("torch.div", lambda x, t: torch.div(x, t)),
    Right("float64 inside", lambda x, t: (x.double() / t).float()),
]


def learner_top_k(logits, k):
    kth = logits.sort(dim=-1, descending=True).values[..., k - 1:k]
    return torch.where(logits >= kth, logits, torch.full_like(logits, float("-inf")))


def top_k_loop(logits, k):
    out = logits.clone()
    rows = out.reshape(-1, out.shape[-1])
    for row in rows:
        kth = sorted(row.tolist(), reverse=True)[k - 1]
        row[row < kth] = -1e9
    return out


def top_k_scatter(logits, k):
    values, index = torch.topk(logits, k, dim=-1)
    return torch.full_like(logits, float("-inf")).scatter(-1, index, values)


def top_k_threshold_k(logits, k):
    thresh = logits.sort(dim=-1, descending=True).values[..., k:k + 1]   # the (k+1)-th largest
    return logits.masked_fill(logits <= thresh, float("-inf"))


WRONG_TOP_KS = [
    Wrong("scatter of topk (exactly k)", top_k_scatter, "tie at the k-th largest"),
    Wrong("<= the k-th", lambda x, k: x.masked_fill(x <= torch.topk(x, k).values[..., -1:], float("-inf")),
          "only k - 1"),
    Wrong("k + 1", lambda x, k: x.masked_fill(x < torch.topk(x, k + 1).values[..., -1:], float("-inf")),
          "kept k + 1 tokens"),
    Wrong("index k as the threshold", top_k_threshold_k, "tied with the k-th largest"),
    Wrong("zeros", lambda x, k: torch.where(x >= torch.topk(x, k).values[..., -1:], x, torch.zeros_like(x)),
          "set to 0"),
    Wrong("smallest", lambda x, k: x.masked_fill(x > torch.topk(x, k, largest=False).values[..., -1:], float("-inf")),
          "SMALLEST"),
    Wrong("dim 0", lambda x, k: x.masked_fill(x < torch.topk(x, k, dim=0).values[-1:], float("-inf")), "wrong axis"),
    Wrong("whole batch", lambda x, k: x.masked_fill(x < x.flatten().topk(k).values[-1], float("-inf")),
          "whole batch"),
    Wrong("probabilities", lambda x, k: learner_top_k(x, k).softmax(-1), "returned probabilities"),
    Wrong("only the values", lambda x, k: x.topk(k).values, "only the k largest values"),
    Wrong("sorted output", lambda x, k: learner_top_k(x.sort(-1, descending=True).values, k), "sorted order"),
    Wrong("in place", lambda x, k: x.masked_fill_(x < torch.topk(x, k).values[..., -1:], float("-inf")), "in place"),
    Wrong("everything removed", lambda x, k: torch.full_like(x, float("-inf")), "softmax gives NaN"),
    Wrong("kept logits halved", lambda x, k: learner_top_k(x, k) / 2, "the right tokens are kept"),
]

RIGHT_TOP_KS = [
    Right("the course's", top_k_filter),
    Right("sort and >=", learner_top_k),
    Right("a loop with -1e9", top_k_loop),
    Right("kthvalue of the negated logits", lambda x, k: x.masked_fill(
        x < -torch.kthvalue(-x, k, dim=-1, keepdim=True).values, float("-inf"))),
    Right("shifted by the row max", lambda x, k: (x - x.max(-1, keepdim=True).values).masked_fill(
        x < torch.topk(x, k).values[..., -1:], float("-inf"))),
]


def learner_top_p(logits, p):
    # Correct, with a large negative number instead of -inf and a shift of every logit.
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    remove = probs.cumsum(dim=-1) - probs >= p
    remove = remove.scatter(-1, order, remove.clone())
    return (logits + 3.0).masked_fill(remove, -1e9)


def top_p_variant(*, descending=True, before=lambda cum, probs, p: cum - probs >= p, keep_top=False, back="scatter",
                  probs_of=lambda v: v.softmax(-1), cum_dim=-1):
    def filt(logits, p):
        values, order = torch.sort(logits, dim=-1, descending=descending)
        probs = probs_of(values)
        remove = before(probs.cumsum(dim=cum_dim), probs, p)
        if keep_top:
            remove[..., 0] = False
        if back == "none":
            return values.masked_fill(remove, float("-inf"))
        if back == "gather":
            remove = remove.gather(-1, order)
        else:
            remove = torch.zeros_like(remove).scatter(-1, order, remove)
        return logits.masked_fill(remove, float("-inf"))
    return filt


def top_p_hf(logits, p):
    """Hugging Face's way: ascending sort, remove while the cumulative mass stays <= 1 - p."""
    sorted_logits, sorted_indices = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1 - p)
    remove_sorted[..., -1:] = False
    remove = remove_sorted.scatter(-1, sorted_indices, remove_sorted)
    return logits.masked_fill(remove, -float("inf"))


def top_p_loop(logits, p):
    out = logits.clone()
    for row in out.reshape(-1, out.shape[-1]):
        probs = torch.softmax(row.double(), -1)
        mass = 0.0
        for index in torch.argsort(row, descending=True).tolist():
            if mass >= p:
                row[index] = float("-inf")
            mass += float(probs[index])
    return out


def top_p_unsorted(logits, p):
    probs = logits.softmax(-1)
    cum = probs.cumsum(-1)
    return logits.masked_fill(cum - probs >= p, float("-inf"))


WRONG_TOP_PS = [
    Wrong("> p at the boundary", top_p_variant(before=lambda cum, probs, p: cum - probs > p),
          "mass before it is exactly p"),
    Wrong("cum > p", top_p_variant(before=lambda cum, probs, p: cum > p, keep_top=True), "carries the total across p"),
    Wrong("cum >= p", top_p_variant(before=lambda cum, probs, p: cum >= p, keep_top=True), "carries the total across p"),
    Wrong("cum > p, top not kept", top_p_variant(before=lambda cum, probs, p: cum > p), "removed every token"),
    Wrong("no sort", top_p_unsorted, "vocabulary order"),
    Wrong("ascending", top_p_variant(descending=False), "ascending order"),
    Wrong("sorted output", top_p_variant(back="none"), "sorted order"),
    Wrong("gather", top_p_variant(back="gather"), "gathered the removal mask"),
    Wrong("cumsum of logits", top_p_variant(probs_of=lambda v: v), "accumulated the logits"),
    Wrong("cumsum over the batch", top_p_variant(cum_dim=0), "wrong axis"),
    Wrong("softmax over the batch", top_p_variant(probs_of=lambda v: v.softmax(0)), "wrong axis"),
    Wrong("probabilities", lambda x, p: learner_top_p(x, p).softmax(-1), "returned probabilities"),
    Wrong("everything below p removed, by probability",
          lambda x, p: x.masked_fill(x.softmax(-1) < p * x.softmax(-1).max(-1, keepdim=True).values, float("-inf")),
          "token(s) removed that should stay"),
    Wrong("removed the top token", lambda x, p: top_p_filter(x, p).masked_fill(
        x == x.max(-1, keepdim=True).values, float("-inf")), "the largest logit must stay"),
]

RIGHT_TOP_PS = [
    Right("the course's", top_p_filter),
    Right("-1e9 and a shift", learner_top_p),
    Right("Hugging Face's ascending sort", top_p_hf),
    Right("a loop in float64", top_p_loop),
    Right("float64 inside", lambda x, p: top_p_variant(probs_of=lambda v: v.double().softmax(-1))(x, p)),
]


LIBRARY = {
    check_causal_self_attention: (WRONG_CAUSAL, RIGHT_CAUSAL),
    check_temperature: (WRONG_TEMPERATURES, RIGHT_TEMPERATURES),
    check_top_k_filter: (WRONG_TOP_KS, RIGHT_TOP_KS),
    check_top_p_filter: (WRONG_TOP_PS, RIGHT_TOP_PS),
}


test_each_wrong_answer_fails_with_its_words, test_each_right_answer_passes = library_tests(LIBRARY)


def test_the_top_p_boundary_case_is_exact_in_float32():
    """The mass before the 0.25 token is exactly p in float32 (float64 lands a hair above, so it agrees)."""
    logits, p = _top_p_cases()[-1]
    values = logits[0].sort(descending=True).values
    probs = values.softmax(-1)
    assert (probs.cumsum(-1) - probs)[1].item() == p
    probs64 = values.double().softmax(-1)
    assert (probs64.cumsum(-1) - probs64)[1].item() >= p


def test_the_causal_cases_overflow_exp_without_the_max_shift():
    q, k, _ = _causal_cases()[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    assert scores.tril().max() > 88 and torch.isinf(scores.exp()).any()


test_each_known_mistake_fails_with_its_own_hint, test_hints_within_a_checker_are_all_different = mistake_tests(CHECKERS)


def test_top_k_filter_that_edits_the_logits_in_place_is_told_so():
    def in_place(logits, k):
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits[logits < kth] = float("-inf")
        return logits

    result = check_top_k_filter(in_place, strict=False)
    assert not result.passed and "in place" in result.line


def test_top_p_filter_returning_the_kept_indices_is_told_the_shape():
    result = check_top_p_filter(lambda x, p: x[..., :2], strict=False)
    assert not result.passed and "shape" in result.line


@pytest.mark.parametrize("checker", [c for c, _ in CHECKERS.values()])
def test_unattempted_exercise_says_not_attempted(checker):
    def stub(*args):
        raise NotImplementedError()

    assert checker(stub, strict=False).status == NOT_ATTEMPTED


def test_a_learner_causal_mask_built_for_a_fixed_length_fails_with_one_line():
    def fixed(q, k, v):
        mask = causal_mask(5)  # right for the first case only
        return scaled_dot_product_attention(q, k, v, mask)

    result = check_causal_self_attention(fixed, strict=False)
    assert not result.passed and "raised" in result.line and "\n" not in result.line
