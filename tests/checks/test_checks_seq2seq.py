"""Lesson 09's checkers: each wrong implementation, written as a learner would, is caught with its hint."""
from __future__ import annotations

import math

import pytest
import torch

from checker_assertions import assert_fails_with
from course.checks.core import NOT_ATTEMPTED
from course.checks.seq2seq import (
    BEAM_STEP_MISTAKES,
    CROSS_ATTENTION_MISTAKES,
    LENGTH_MISTAKES,
    SHIFT_MISTAKES,
    check_beam_step,
    check_cross_attention,
    check_length_normalise,
    check_shift_targets,
    reference_cross_attention,
)
from answer_library import Right, Wrong, library_tests


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


def shift_by_digits(target, bos_id, eos_id):
    """A string trick: one character per id (breaks on ids of two digits)."""
    text = str(bos_id) + "".join(str(t) for t in target.tolist())
    tgt_in = torch.tensor([int(c) for c in text])
    return tgt_in, torch.cat([tgt_in[1:], torch.tensor([eos_id])])


WRONG_SHIFTS = [
    Wrong("no shift, both start with bos", lambda t, b, e: (torch.cat([torch.tensor([b]), t]),) * 2, "no shift"),
    Wrong("no shift, both end with eos", lambda t, b, e: (torch.cat([t, torch.tensor([e])]),) * 2, "no shift"),
    Wrong("shifted the wrong way", lambda t, b, e: (torch.cat([t, torch.tensor([e])]), torch.cat([torch.tensor([b]), t])),
          "shifted the wrong way"),
    Wrong("bos and eos swapped", lambda t, b, e: (torch.cat([torch.tensor([e]), t]), torch.cat([t, torch.tensor([b])])),
          "swapped"),
    Wrong("hard-coded ids 1 and 2", lambda t, b, e: shift_learner(t, 1, 2), "hard-coded as 1 and 2"),
    Wrong("labels without eos (drops last input)", lambda t, b, e: (torch.cat([torch.tensor([b]), t[:-1]]), t),
          "lack <eos>"),
    Wrong("labels without eos", lambda t, b, e: (torch.cat([torch.tensor([b]), t]), t), "lack <eos>"),
    Wrong("the LM shift inside the target", lambda t, b, e: (torch.cat([torch.tensor([b]), t])[:-1],
                                                             torch.cat([t, torch.tensor([e])])[1:]),
          "shifted inside the target"),
    Wrong("labels skip the first token", lambda t, b, e: (torch.cat([torch.tensor([b]), t]),
                                                          torch.cat([t[1:], torch.tensor([e])])), "skip the first"),
    Wrong("tgt_in drops the last token", lambda t, b, e: (torch.cat([torch.tensor([b]), t[:-1]]),
                                                          torch.cat([t, torch.tensor([e])])), "drops the last"),
    Wrong("one character per id", shift_by_digits, "shape"),
    Wrong("float ids", lambda t, b, e: tuple(x.float() for x in shift_learner(t, b, e)), "dtype torch.float32"),
]

RIGHT_SHIFTS = [
    Right("torch.cat", shift_learner),
    Right("new_tensor", lambda t, b, e: (torch.cat([t.new_tensor([b]), t]), torch.cat([t, t.new_tensor([e])]))),
    Right("F.pad", lambda t, b, e: (torch.nn.functional.pad(t, (1, 0), value=b), torch.nn.functional.pad(t, (0, 1), value=e))),
    Right("lists", lambda t, b, e: (torch.tensor([b] + t.tolist()), torch.tensor(t.tolist() + [e]))),
    Right("one sequence, two slices", lambda t, b, e: (lambda full: (full[:-1], full[1:]))(
        torch.cat([torch.tensor([b]), t, torch.tensor([e])]))),
]


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


def cross_variant(**kwargs):
    return lambda *a: cross_learner(*a, **kwargs)


def cross_manual_softmax(shift):
    def attend(x, memory, w_q, w_k, w_v, mask):
        scores = (x @ w_q) @ (memory @ w_k).transpose(1, 2) / math.sqrt(x.shape[-1])
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        e = torch.exp(scores - shift(scores))
        w = e / e.sum(-1, keepdim=True)
        return w @ (memory @ w_v), w
    return attend


def cross_loop(x, memory, w_q, w_k, w_v, mask):
    outs, weights = [], []
    for i in range(x.shape[0]):
        k, v = memory[i][mask[i]] @ w_k, memory[i][mask[i]] @ w_v       # real source tokens only
        w_real = torch.softmax((x[i] @ w_q) @ k.T / math.sqrt(x.shape[-1]), dim=-1)
        w = torch.zeros(x.shape[1], memory.shape[1])
        w[:, mask[i]] = w_real
        outs.append(w_real @ v)
        weights.append(w)
    return torch.stack(outs), torch.stack(weights)


def cross_sdpa(x, memory, w_q, w_k, w_v, mask):
    q, k, v = x @ w_q, memory @ w_k, memory @ w_v
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, :])
    w = torch.softmax((q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~mask[:, None, :], -torch.inf), -1)
    return out, w


WRONG_CROSS = [
    Wrong("queries from the encoder", cross_variant(q_from_memory=True), "queries come from the encoder"),
    Wrong("causal mask on cross-attention", cross_variant(causal=True), "causal mask on cross-attention"),
    Wrong("padding not masked", cross_variant(use_mask=False), "padding is not masked"),
    Wrong("no scale", cross_variant(scale=False), "sqrt(d_k)"),
    Wrong("softmax over queries", cross_variant(dim=1), "wrong axis"),
    Wrong("mask after softmax", cross_variant(mask_after=True), "after the softmax"),
    Wrong("keys and values swapped", lambda x, m, wq, wk, wv, mask: cross_learner(x, m, wq, wv, wk, mask),
          "keys and values are swapped"),
    Wrong("values not projected", lambda x, m, wq, wk, wv, mask: cross_learner(x, m, wq, wk, torch.eye(x.shape[-1]), mask),
          "values are not projected"),
    Wrong("self-attention on x", lambda x, m, wq, wk, wv, mask: cross_learner(
        x, x, wq, wk, wv, torch.ones(x.shape[:2], dtype=torch.bool)), "keys and values come from x"),
    Wrong("divided by d", lambda x, m, wq, wk, wv, mask: cross_learner(x, m, wq / math.sqrt(x.shape[-1]), wk, wv, mask),
          "divided by d"),
    Wrong("mask inverted, -1e9 fill", lambda x, m, wq, wk, wv, mask: cross_learner(x, m, wq, wk, wv, ~mask), "inverted"),
    Wrong("mask inverted, -inf fill", lambda x, m, wq, wk, wv, mask: reference_cross_attention(x, m, wq, wk, wv, ~mask), "inverted"),
    Wrong("mask on the queries", lambda x, m, wq, wk, wv, mask: (lambda s: (torch.softmax(s, -1) @ (m @ wv),
                                                                            torch.softmax(s, -1)))(
        ((x @ wq) @ (m @ wk).transpose(1, 2) / math.sqrt(x.shape[-1])).masked_fill(~mask[:, :, None], -1e9)),
          "one entry per KEY"),
    Wrong("softmax without the max shift", cross_manual_softmax(lambda s: 0.0), "overflows above 88"),
    Wrong("shifted by the mean of the real scores", cross_manual_softmax(
        lambda s: torch.where(torch.isinf(s), 0.0, s).mean(-1, keepdim=True)), "overflows above 88"),
    Wrong("a small fill, -50", lambda x, m, wq, wk, wv, mask: (lambda s: (torch.softmax(s, -1) @ (m @ wv),
                                                                           torch.softmax(s, -1)))(
        ((x @ wq) @ (m @ wk).transpose(1, 2) / math.sqrt(x.shape[-1])).masked_fill(~mask[:, None, :], -50.0)),
          "padding keys get some weight"),
]

RIGHT_CROSS = [
    Right("einsum with a -1e9 fill", cross_learner),
    Right("the course's", lambda *a: reference_cross_attention(*a)),
    Right("softmax with the row max shift", cross_manual_softmax(lambda s: s.max(-1, keepdim=True).values)),
    Right("a loop over real source tokens", cross_loop),
    Right("F.scaled_dot_product_attention for the output", cross_sdpa),
    Right("float64 inside", lambda *a: tuple(t.float() for t in reference_cross_attention(
        *[t.double() if t.is_floating_point() else t for t in a]))),
]


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


def beam_variant(**kwargs):
    return lambda *a: beam_learner(*a, **kwargs)


def beam_unravel(scores, log_probs, finished, k, eos):
    lp = torch.where(finished[:, None], torch.full_like(log_probs, -torch.inf), log_probs)
    lp[finished, eos] = 0.0
    top, idx = (scores[:, None] + lp).view(-1).topk(k)
    parent, token = torch.unravel_index(idx, lp.shape)
    return top, parent, token


def beam_sorted_list(scores, log_probs, finished, k, eos):
    candidates = []
    for i in range(log_probs.shape[0]):
        if finished[i]:
            candidates.append((float(scores[i]), i, eos))
            continue
        for t in range(log_probs.shape[1]):
            candidates.append((float(scores[i] + log_probs[i, t]), i, t))
    best = sorted(candidates, key=lambda c: -c[0])[:k]
    return (torch.tensor([c[0] for c in best]), torch.tensor([c[1] for c in best]), torch.tensor([c[2] for c in best]))


def beam_divmod(scores, log_probs, finished, k, eos):
    cand = log_probs.masked_fill(finished[:, None], float("-inf"))
    cand[:, eos] = torch.where(finished, torch.zeros_like(scores), log_probs[:, eos])
    top, idx = (scores[:, None] + cand).reshape(-1).topk(k)
    return top, torch.div(idx, log_probs.shape[1], rounding_mode="floor"), torch.remainder(idx, log_probs.shape[1])


def _eos_cost(s, lp, f, k, e):
    cand = lp.clone()
    keep = cand[:, e].clone()
    cand[f] = float("-inf")
    cand[f, e] = keep[f]
    top, idx = (s[:, None] + cand).flatten().topk(k)
    return top, idx // lp.shape[1], idx % lp.shape[1]


def _true_div(s, lp, f, k, e):
    cand = lp.clone()
    cand[f] = float("-inf")
    cand[f, e] = 0.0
    _, idx = (s[:, None] + cand).flatten().topk(k)
    return idx / lp.shape[1]


def _worst(s, lp, f, k, e):
    cand = lp.clone()
    cand[f] = float("-inf")
    cand[f, e] = 0.0
    top, idx = (s[:, None] + cand).flatten().topk(k, largest=False)
    return top, idx // lp.shape[1], idx % lp.shape[1]


WRONG_BEAMS = [
    Wrong("adds probabilities", beam_variant(add_probs=True), "added probabilities"),
    Wrong("best token per beam (no flattening)", beam_variant(per_row=True), "each beam kept its own best token"),
    Wrong("extends finished beams", beam_variant(extend_finished=True), "finished beams were extended"),
    Wrong("parent = index % n", beam_variant(parent_mod_n=True), "unravelled wrongly"),
    Wrong("parent and token swapped", beam_variant(swap=True), "parent and token are swapped"),
    Wrong("scores not added", lambda s, lp, f, k, e: beam_learner(torch.zeros_like(s), lp, f, k, e), "not added"),
    Wrong("the worst candidates", _worst, "WORST candidates"),
    Wrong("finished beams keep their <eos> cost", _eos_cost, "paid for its <eos> again"),
    Wrong("true division for the parent", lambda s, lp, f, k, e: (lambda r: (r[0], _true_div(s, lp, f, k, e), r[2]))(
        beam_learner(s, lp, f, k, e)), "parent came out as a float"),
    Wrong("token = flat index", lambda s, lp, f, k, e: (lambda r: (r[0], r[1], r[1] * lp.shape[1] + r[2]))(
        beam_learner(s, lp, f, k, e)), "token is the flat index"),
]


RIGHT_BEAMS = [
    Right("a loop over beams", beam_learner),
    Right("torch.unravel_index", beam_unravel),
    Right("a sorted Python list", beam_sorted_list),
    Right("torch.div and remainder", beam_divmod),
]


# ------------------------------------------------------------------------------ length penalty

WRONG_LENGTHS = [
    Wrong("multiplied", lambda s, n, a: s * n.float() ** a, "multiplied by the length penalty"),
    Wrong("alpha ignored", lambda s, n, a: s / n.float(), "alpha is ignored"),
    Wrong("power on the ratio", lambda s, n, a: (s / n.float()) ** a, "the power is applied to the score"),
    Wrong("GNMT", lambda s, n, a: s / ((5.0 + n) / 6.0) ** a, "GNMT"),
    Wrong("number of beams", lambda s, n, a: s / s.shape[0] ** a, "len(scores)"),
    Wrong("floor division", lambda s, n, a: torch.floor(s / n ** a), "floor division"),
    Wrong("alpha as a factor", lambda s, n, a: s / (a * n), "values differ"),
]

RIGHT_LENGTHS = [
    Right("/ **", lambda s, n, a: s / n ** a),
    Right("torch.pow", lambda s, n, a: s / torch.pow(n.to(s.dtype), a)),
    Right("* n ** -alpha", lambda s, n, a: s * n.double() ** -a),
    Right("exp and log", lambda s, n, a: s / torch.exp(a * torch.log(n.float()))),
]


LIBRARY = {
    check_shift_targets: (WRONG_SHIFTS, RIGHT_SHIFTS),
    check_cross_attention: (WRONG_CROSS, RIGHT_CROSS),
    check_beam_step: (WRONG_BEAMS, RIGHT_BEAMS),
    check_length_normalise: (WRONG_LENGTHS, RIGHT_LENGTHS),
}


test_each_wrong_answer_fails_with_its_words, test_each_right_answer_passes = library_tests(LIBRARY)


@pytest.mark.parametrize("checker, mistakes", [
    (check_shift_targets, SHIFT_MISTAKES), (check_cross_attention, CROSS_ATTENTION_MISTAKES),
    (check_beam_step, BEAM_STEP_MISTAKES), (check_length_normalise, LENGTH_MISTAKES)],
    ids=["shift", "cross", "beam", "length"])
def test_every_listed_mistake_is_diagnosed_with_its_own_hint(checker, mistakes):
    for mistake in mistakes:
        result = checker(mistake.fn)
        assert not result.passed and mistake.hint in result.line, (mistake.hint, result.line)


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
