"""Lesson 08's checkers: the correct versions pass, every known mistake gets its own hint,
and typical learner slips (in-place edits, unattempted cells) get one clear line."""
from __future__ import annotations

import math

import pytest
import torch

from course.attention import causal_mask, scaled_dot_product_attention
from course.checks.core import NOT_ATTEMPTED, PASSED
from course.checks.generate import (
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

CHECKERS = {
    "causal": (check_causal_self_attention, CAUSAL_ATTENTION_MISTAKES),
    "temperature": (check_temperature, TEMPERATURE_MISTAKES),
    "top_k": (check_top_k_filter, TOP_K_MISTAKES),
    "top_p": (check_top_p_filter, TOP_P_MISTAKES),
}
ALL_MISTAKES = [(name, i) for name, (_, mistakes) in CHECKERS.items() for i in range(len(mistakes))]


def learner_causal_attention(q, k, v):
    seq = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~torch.ones(seq, seq, dtype=torch.bool).tril(), float("-inf"))
    w = scores.softmax(dim=-1)
    return w @ v, w


def learner_top_k(logits, k):
    # Another correct way: scatter the top-k values into a row of -inf.
    values, index = torch.topk(logits, k, dim=-1)
    return torch.full_like(logits, float("-inf")).scatter(-1, index, values)


def learner_top_p(logits, p):
    # Correct, with a large negative number instead of -inf and a shift of every logit.
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    remove = probs.cumsum(dim=-1) - probs >= p
    remove = remove.scatter(-1, order, remove.clone())
    return (logits + 3.0).masked_fill(remove, -1e9)


@pytest.mark.parametrize("checker, fn", [
    (check_causal_self_attention, learner_causal_attention),
    (check_causal_self_attention, lambda q, k, v: scaled_dot_product_attention(q, k, v, causal_mask(q.shape[-2]))),
    (check_temperature, apply_temperature),
    (check_temperature, lambda x, t: x / t),
    (check_top_k_filter, top_k_filter),
    (check_top_k_filter, learner_top_k),
    (check_top_p_filter, top_p_filter),
    (check_top_p_filter, learner_top_p),
], ids=["causal-learner", "causal-course", "temp-course", "temp-learner", "topk-course", "topk-scatter",
        "topp-course", "topp-large-negative-and-shift"])
def test_correct_implementations_pass_with_one_line(checker, fn, capsys):
    result = checker(fn, strict=False)
    assert result.status == PASSED, result.line
    assert capsys.readouterr().out.count("\n") == 1


@pytest.mark.parametrize("name, index", ALL_MISTAKES, ids=[f"{n}-{i}" for n, i in ALL_MISTAKES])
def test_each_known_mistake_fails_with_its_own_hint(name, index):
    checker, mistakes = CHECKERS[name]
    mistake = mistakes[index]
    result = checker(mistake.fn, strict=False)
    assert not result.passed
    assert mistake.hint in result.line, result.line
    assert "\n" not in result.line


def test_hints_within_a_checker_are_all_different():
    for _, mistakes in CHECKERS.values():
        hints = [m.hint for m in mistakes]
        assert len(hints) == len(set(hints))


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
