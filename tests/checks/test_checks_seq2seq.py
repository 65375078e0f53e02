"""Lesson 09's checkers: each wrong implementation, written as a learner would, is caught with its hint."""
from __future__ import annotations

import math

import pytest
import torch

from checker_assertions import assert_fails_with
from course.checks.core import NOT_ATTEMPTED, PASSED
from course.checks.seq2seq import (
    check_beam_step,
    check_cross_attention,
    check_length_normalise,
    check_shift_targets,
)


pytestmark = pytest.mark.usefixtures("lenient_checks")




def _not_attempted(*args):
    raise NotImplementedError()


@pytest.mark.parametrize("checker", [check_shift_targets, check_cross_attention, check_beam_step,
                                     check_length_normalise])
def test_unsolved_exercise_says_not_attempted(checker):
    assert checker(_not_attempted).status == NOT_ATTEMPTED


# ------------------------------------------------------------------------------ teacher forcing


def shift_learner(target, bos_id, eos_id):
    bos, eos = torch.tensor([bos_id]), torch.tensor([eos_id])
    return torch.cat([bos, target]), torch.cat([target, eos])


WRONG_SHIFTS = {
    "no shift, both start with bos": (lambda t, b, e: (torch.cat([torch.tensor([b]), t]),) * 2, "no shift"),
    "no shift, both end with eos": (lambda t, b, e: (torch.cat([t, torch.tensor([e])]),) * 2, "no shift"),
    "shifted the wrong way": (lambda t, b, e: (torch.cat([t, torch.tensor([e])]), torch.cat([torch.tensor([b]), t])),
                              "shifted the wrong way"),
    "bos and eos swapped": (lambda t, b, e: (torch.cat([torch.tensor([e]), t]), torch.cat([t, torch.tensor([b])])),
                            "swapped"),
    "hard-coded ids 1 and 2": (lambda t, b, e: shift_learner(t, 1, 2), "values differ"),
    "labels without eos (drops last input)": (lambda t, b, e: (torch.cat([torch.tensor([b]), t[:-1]]), t),
                                             "lack <eos>"),
    "labels without eos": (lambda t, b, e: (torch.cat([torch.tensor([b]), t]), t), "lack <eos>"),
}


def test_correct_shift_passes():
    assert check_shift_targets(shift_learner).status == PASSED


@pytest.mark.parametrize("name", list(WRONG_SHIFTS))
def test_each_wrong_shift_fails_with_its_hint(name):
    fn, words = WRONG_SHIFTS[name]
    assert_fails_with(check_shift_targets(fn), words)


# ------------------------------------------------------------------------------ cross-attention


def cross_learner(x, memory, w_q, w_k, w_v, memory_mask, *, q_from_memory=False, causal=False, use_mask=True,
                  scale=True, dim=-1, mask_after=False):
    q = (memory if q_from_memory else x) @ w_q
    kv_source = x if q_from_memory else memory
    k, v = kv_source @ w_k, kv_source @ w_v
    scores = torch.einsum("bqd,bkd->bqk", q, k)
    if scale:
        scores = scores / math.sqrt(k.shape[-1])
    keep = torch.ones_like(scores, dtype=torch.bool) if q_from_memory else memory_mask.unsqueeze(1).expand_as(scores)
    if causal:
        keep = keep & torch.tril(torch.ones_like(keep))
    if use_mask and not mask_after:
        scores = scores.masked_fill(~keep, -1e9)
    weights = torch.softmax(scores, dim=dim)
    if mask_after:
        weights = weights * keep
    return weights @ v, weights


WRONG_CROSS = {
    "queries from the encoder": (dict(q_from_memory=True), "queries come from the encoder"),
    "causal mask on cross-attention": (dict(causal=True), "causal mask on cross-attention"),
    "padding not masked": (dict(use_mask=False), "padding is not masked"),
    "no scale": (dict(scale=False), "sqrt(d_k)"),
    "softmax over queries": (dict(dim=1), "wrong axis"),
    "mask after softmax": (dict(mask_after=True), "after the softmax"),
}


def test_correct_cross_attention_passes_including_a_large_negative_fill():
    assert check_cross_attention(cross_learner).status == PASSED


@pytest.mark.parametrize("name", list(WRONG_CROSS))
def test_each_wrong_cross_attention_fails_with_its_hint(name):
    kwargs, words = WRONG_CROSS[name]
    assert_fails_with(check_cross_attention(lambda *a: cross_learner(*a, **kwargs)), words)


def test_keys_and_values_swapped_is_named():
    def swapped(x, memory, w_q, w_k, w_v, mask):
        return cross_learner(x, memory, w_q, w_v, w_k, mask)

    assert_fails_with(check_cross_attention(swapped), "keys and values are swapped")


# ------------------------------------------------------------------------------ beam step


def beam_learner(scores, log_probs, finished, beam_size, eos_id, *, add_probs=False, per_row=False,
                 extend_finished=False, parent_mod_n=False, swap=False):
    n, vocab = log_probs.shape
    step = log_probs.exp() if add_probs else log_probs
    step = step.clone()
    if not extend_finished:
        for i in range(n):
            if finished[i]:
                step[i] = float("-inf")
                step[i, eos_id] = 1.0 if add_probs else 0.0
    total = scores.unsqueeze(1) + step
    if per_row:
        best, tok = total.max(dim=1)
        order = torch.argsort(best, descending=True)[:beam_size]
        return best[order], order, tok[order]
    top, idx = torch.topk(total.flatten(), beam_size)
    parent, token = (idx % n, idx // n) if parent_mod_n else (idx // vocab, idx % vocab)
    return (top, token, parent) if swap else (top, parent, token)


WRONG_BEAMS = {
    "adds probabilities": (dict(add_probs=True), "added probabilities"),
    "best token per beam (no flattening)": (dict(per_row=True), "each beam kept its own best token"),
    "extends finished beams": (dict(extend_finished=True), "finished beams were extended"),
    "parent = index % n": (dict(parent_mod_n=True), "unravelled wrongly"),
    "parent and token swapped": (dict(swap=True), "parent and token are swapped"),
}


def test_correct_beam_step_passes():
    assert check_beam_step(beam_learner).status == PASSED


@pytest.mark.parametrize("name", list(WRONG_BEAMS))
def test_each_wrong_beam_step_fails_with_its_hint(name):
    kwargs, words = WRONG_BEAMS[name]
    assert_fails_with(check_beam_step(lambda *a: beam_learner(*a, **kwargs)), words)


def test_dropping_finished_beams_is_named():
    def drop(scores, log_probs, finished, k, eos):
        total = scores[:, None] + log_probs.masked_fill(finished[:, None], float("-inf"))
        top, idx = total.view(-1).topk(k)
        return top, idx // log_probs.shape[1], idx % log_probs.shape[1]

    assert_fails_with(check_beam_step(drop), "finished beams were thrown away")


def test_topk_per_row_returns_the_wrong_shape_and_is_named():
    def per_row_topk(scores, log_probs, finished, k, eos):
        lp = log_probs.clone()
        lp[finished] = float("-inf")
        lp[finished, eos] = 0.0
        top, tok = (scores[:, None] + lp).topk(k, dim=-1)
        return top.flatten()[:k], torch.zeros(k, dtype=torch.long), tok.flatten()[:k]

    assert_fails_with(check_beam_step(per_row_topk), "flatten the [beams, vocab] candidate scores")


# ------------------------------------------------------------------------------ length penalty

WRONG_LENGTHS = {
    "multiplied": (lambda s, n, a: s * n.float() ** a, "multiplied by the length penalty"),
    "alpha ignored": (lambda s, n, a: s / n.float(), "alpha is ignored"),
    "power on the ratio": (lambda s, n, a: (s / n.float()) ** a, "the power is applied to the score"),
}


def test_correct_length_normalise_passes():
    assert check_length_normalise(lambda s, n, a: s / n ** a).status == PASSED


@pytest.mark.parametrize("name", list(WRONG_LENGTHS))
def test_each_wrong_length_normalise_fails_with_its_hint(name):
    fn, words = WRONG_LENGTHS[name]
    assert_fails_with(check_length_normalise(fn), words)
