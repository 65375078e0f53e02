"""Checkers for lesson 09 (encoder-decoder): teacher forcing, cross-attention, a beam-search step,
the length penalty.

Some typical mistakes change the shape of the answer (queries taken from the encoder give one
row per *source* token); :func:`course.checks.core.check_function` also names a mistake whose output has
the learner's (wrong) shape or dtype.

The boundaries: token ids that share digits with <bos> and <eos> (11, 21, 12 next to 1 and 2) and
other special ids; for cross-attention a source padded on the LEFT and a source with one real token
(the mask may hold padding anywhere), a single decoder position (t = 1), t equal to s (a mask on the
wrong axis broadcasts there) and scores of several hundred (a softmax without the max shift
overflows); for the beam step a first step with k equal to the vocabulary size and two finished
beams; for the length penalty a 2-D batch of scores.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from course.seq2seq import beam_step, cross_attention, length_normalise

from .core import CheckResult, Mistake, check_function

__all__ = ["check_shift_targets", "check_cross_attention", "check_beam_step", "check_length_normalise",
           "reference_shift_targets", "reference_cross_attention", "SHIFT_MISTAKES", "CROSS_ATTENTION_MISTAKES",
           "BEAM_STEP_MISTAKES", "LENGTH_MISTAKES"]


# ------------------------------------------------------------------------------ teacher forcing


def reference_shift_targets(target: Tensor, bos_id: int, eos_id: int) -> tuple[Tensor, Tensor]:
    """``target [t] -> (tgt_in = <bos> + target, labels = target + <eos>)``, both ``[t + 1]``."""
    return (torch.cat([target.new_tensor([bos_id]), target]), torch.cat([target, target.new_tensor([eos_id])]))


def _bos(t, b):
    return torch.cat([t.new_tensor([b]), t])


def _eos(t, e):
    return torch.cat([t, t.new_tensor([e])])


SHIFT_MISTAKES = [
    Mistake("no shift: the decoder input and the labels are the same sequence, so each position only has to "
            "copy its own input; the input starts with <bos>, the labels are the same tokens one step later",
            lambda t, b, e: (_bos(t, b), _bos(t, b))),
    Mistake("no shift: the decoder input and the labels are the same sequence, so each position only has to "
            "copy its own input; the input starts with <bos>, the labels are the same tokens one step later",
            lambda t, b, e: (_eos(t, e), _eos(t, e))),
    Mistake("shifted the wrong way: the decoder input starts with <bos> (tgt_in = <bos> + target) and the "
            "labels end with <eos> (labels = target + <eos>)",
            lambda t, b, e: (_eos(t, e), _bos(t, b))),
    Mistake("<bos> and <eos> are swapped: the decoder input starts with <bos>, the labels end with <eos>",
            lambda t, b, e: (_bos(t, e), _eos(t, b))),
    Mistake("the labels lack <eos>: without it the model never learns when to stop "
            "(labels = target + <eos>, the same length as tgt_in)",
            lambda t, b, e: (_bos(t, b)[:-1], t.clone())),
    Mistake("the labels lack <eos>: without it the model never learns when to stop "
            "(labels = target + <eos>, the same length as tgt_in)",
            lambda t, b, e: (_bos(t, b), t.clone())),
    Mistake("<bos> and <eos> are hard-coded as 1 and 2: use the bos_id and eos_id you are given",
            lambda t, b, e: reference_shift_targets(t, 1, 2)),
    Mistake("shifted inside the target: tgt_in and labels each hold the WHOLE target plus one special token "
            "(tgt_in = <bos> + target, labels = target + <eos>), so both are one longer than target",
            lambda t, b, e: (_bos(t, b)[:-1], _eos(t, e)[1:])),
    Mistake("the labels skip the first target token: labels = target + <eos>, one longer than target",
            lambda t, b, e: (_bos(t, b), _eos(t, e)[1:])),
    Mistake("tgt_in drops the last target token: tgt_in = <bos> + the whole target, one longer than target",
            lambda t, b, e: (_bos(t, b)[:-1], _eos(t, e))),
]


def _shift_cases() -> list[tuple]:
    return [
        (torch.tensor([5, 6, 7]), 1, 2),
        (torch.tensor([9, 4, 4, 11, 3, 8]), 1, 2),
        (torch.tensor([13]), 1, 2),
        (torch.tensor([7, 8, 9, 10]), 3, 4),      # other special ids: don't hard-code 1 and 2
        (torch.tensor([12, 21, 11, 22, 112]), 1, 2),   # ids that share digits with <bos> and <eos>
    ]


def check_shift_targets(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(target [t], bos_id, eos_id) -> (tgt_in [t + 1], labels [t + 1])`` (teacher forcing)."""
    return check_function("shift_targets", fn, reference_shift_targets, _shift_cases(), mistakes=SHIFT_MISTAKES,
                          output_names=("tgt_in", "labels"), atol=0, rtol=0, strict=strict)


# ------------------------------------------------------------------------------ cross-attention


def reference_cross_attention(x: Tensor, memory: Tensor, w_q: Tensor, w_k: Tensor, w_v: Tensor,
                              memory_mask: Tensor) -> tuple[Tensor, Tensor]:
    """The reference: :func:`course.seq2seq.cross_attention` (queries from ``x``, keys/values from ``memory``)."""
    return cross_attention(x, memory, w_q, w_k, w_v, memory_mask)


def _cross(x, memory, w_q, w_k, w_v, mask, *, from_encoder=False, causal=False, no_mask=False, no_scale=False,
           axis=-1, mask_after=False, swap_kv=False, raw_values=False, self_attention=False, scale_d=False,
           inverted=False):
    if from_encoder:
        x, memory = memory, x
        mask = torch.ones(memory.shape[:2], dtype=torch.bool)
    if self_attention:
        memory = x
        mask = torch.ones(x.shape[:2], dtype=torch.bool)
    if inverted:
        mask = ~mask
    q, k, v = x @ w_q, memory @ w_k, memory @ w_v
    if raw_values:
        v = memory
    if swap_kv:
        k, v = v, k
    scores = q @ k.transpose(-2, -1)
    if scale_d:
        scores = scores / q.shape[-1]
    elif not no_scale:
        scores = scores / math.sqrt(q.shape[-1])
    allowed = mask[:, None, :].expand_as(scores)
    if causal:
        allowed = allowed & torch.ones(scores.shape[-2:], dtype=torch.bool).tril()
    if not no_mask and not mask_after:
        scores = scores.masked_fill(~allowed, float("-inf"))
    weights = scores.softmax(axis)
    if mask_after:
        weights = weights.masked_fill(~allowed, 0.0)
    return weights @ v, weights


CROSS_ATTENTION_MISTAKES = [
    Mistake("the queries come from the encoder: in cross-attention the decoder asks (q = x @ w_q, one row per "
            "output position) and the encoder's memory answers (k = memory @ w_k, v = memory @ w_v)",
            lambda *a: _cross(*a, from_encoder=True)),
    Mistake("a causal mask on cross-attention: the decoder may look at the whole source at every step; only "
            "the source padding is masked",
            lambda *a: _cross(*a, causal=True)),
    Mistake("the source padding is not masked: fill the scores of padding keys with -inf before the softmax "
            "(memory_mask is True at real tokens)",
            lambda *a: _cross(*a, no_mask=True)),
    Mistake("the scores are not divided by sqrt(d_k)",
            lambda *a: _cross(*a, no_scale=True)),
    Mistake("softmax over the wrong axis: each output position's weights over the source keys must sum to 1 "
            "(softmax(dim=-1))",
            lambda *a: _cross(*a, axis=-2)),
    Mistake("the mask is applied after the softmax: mask the scores with -inf before it, so the weights still "
            "sum to 1",
            lambda *a: _cross(*a, mask_after=True)),
    Mistake("keys and values are swapped: weights come from q @ k^T, and they average the values v",
            lambda *a: _cross(*a, swap_kv=True)),
    Mistake("the values are not projected: v = memory @ w_v, then weights @ v",
            lambda *a: _cross(*a, raw_values=True)),
    Mistake("keys and values come from x: in cross-attention they come from the encoder's memory "
            "(k = memory @ w_k, v = memory @ w_v), so weights are [b, t, s]",
            lambda *a: _cross(*a, self_attention=True)),
    Mistake("divided by d: the scale is 1 / sqrt(d_k)",
            lambda *a: _cross(*a, scale_d=True)),
    Mistake("the mask is inverted: memory_mask is True at REAL source tokens; fill the scores with -inf where it "
            "is False",
            lambda *a: _cross(*a, inverted=True)),
]

_CROSS_NAN = ("the scores in one case reach several hundred, and exp() overflows above 88 in float32: subtract each "
              "row's maximum before exp (torch.softmax does); a NaN row can also mean a query whose keys are all "
              "masked")
_CROSS_SHAPES = ("must match the size of tensor",
                 "the shapes do not fit: memory_mask [b, s] has one entry per KEY (source token); broadcast it over "
                 "the queries, memory_mask[:, None, :] against scores [b, t, s]")


def _cross_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(9)
    cases = []
    for b, t, s, d in [(1, 3, 5, 4), (2, 4, 6, 8), (2, 5, 3, 8)]:
        x, memory = torch.randn(b, t, d, generator=g), torch.randn(b, s, d, generator=g)
        w_q, w_k, w_v = (torch.randn(d, d, generator=g) / math.sqrt(d) for _ in range(3))
        mask = torch.ones(b, s, dtype=torch.bool)
        if b > 1:
            mask[1, s - 2:] = False                    # the second example's source is padded
        cases.append((x, memory, w_q, w_k, w_v, mask))
    # t == s (a mask on the wrong axis broadcasts here), a source padded on the LEFT, one with one real token
    b, t, s, d = 3, 4, 4, 6
    w_q, w_k, w_v = (torch.randn(d, d, generator=g) / math.sqrt(d) for _ in range(3))
    mask = torch.tensor([[False, False, True, True], [True, True, True, True], [True, False, False, False]])
    cases.append((torch.randn(b, t, d, generator=g), torch.randn(b, s, d, generator=g), w_q, w_k, w_v, mask))
    # one decoder position (t = 1) and scores of several hundred: exp() overflows without the max shift
    b, t, s, d = 2, 1, 5, 8
    w_q, w_k, w_v = (torch.randn(d, d, generator=g) / math.sqrt(d) for _ in range(3))
    mask = torch.tensor([[True] * 5, [False, True, True, True, False]])
    x, memory = torch.randn(b, t, d, generator=g) * 10, torch.randn(b, s, d, generator=g) * 10
    # Keys chosen for their scores: in example 0 they spread from -300 to 300 (a shift by the mean, or none,
    # overflows), in example 1 every real key scores far below zero (a small fill such as -50 beats them all).
    for i, scores, keys in ((0, (300.0, -300.0, 30.0, 150.0, -60.0), slice(0, 5)),
                            (1, (-450.0, -600.0, -750.0), slice(1, 4))):
        q = x[i, 0] @ w_q
        wanted = torch.tensor(scores)[:, None] * q / (q @ q) * math.sqrt(d)      # k . q / sqrt(d) = score
        memory[i, keys] = wanted @ torch.linalg.inv(w_k)
    cases.append((x, memory, w_q, w_k, w_v, mask))
    return cases


def check_cross_attention(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(x [b,t,d], memory [b,s,d], w_q, w_k, w_v [d,d], memory_mask [b,s]) -> (out [b,t,d], weights [b,t,s])``."""
    return check_function("cross_attention", fn, reference_cross_attention, _cross_cases(), mistakes=CROSS_ATTENTION_MISTAKES,
                          output_names=("out", "weights"), nonfinite_hint=_CROSS_NAN, exception_hints=[_CROSS_SHAPES],
                          locate=_cross_locate, strict=strict)


def _cross_locate(args, name, got, want) -> str | None:
    if name != "weights":
        return None
    mask = args[-1]
    padding = ~mask[:, None, :].expand_as(got)
    if bool((got[padding] != 0).any()):
        return ("the padding keys get some weight: fill their scores with float('-inf') (a small fill is not far "
                "enough below scores of several hundred)")
    uniform = (got - got[..., :1]).abs().amax(-1) < 1e-6
    if bool((uniform & ~((want - want[..., :1]).abs().amax(-1) < 1e-6)).any()):
        return ("some rows give every key the same weight, as if all their scores were masked: memory_mask is "
                "True at the REAL source tokens (is it inverted?)")
    return None


# ------------------------------------------------------------------------------ beam step


def _beam_learner(scores, log_probs, finished, k, eos, *, probs=False, per_beam=False, keep_finished=True,
                  drop_finished=False, unravel="ok", multiply=False, first_beam_only=False, no_scores=False,
                  smallest=False, eos_cost=False):
    vocab = log_probs.shape[1]
    cand = log_probs.exp() if probs else log_probs.clone()
    if keep_finished:
        cand[finished] = float("-inf")
        cand[finished, eos] = log_probs[finished, eos] if eos_cost else (0.0 if not probs else 1.0)
    elif drop_finished:
        cand[finished] = float("-inf")
    if no_scores:
        total = cand
    else:
        total = scores[:, None] * cand if multiply else scores[:, None] + cand
    if smallest:
        values, flat = total.reshape(-1).topk(k, largest=False)
        return values, flat // vocab, flat % vocab
    if per_beam:  # each beam keeps its own best continuation: top-k never compares beams with each other
        best, token = total.max(-1)
        order = best.argsort(descending=True)[:k]
        return best[order], order, token[order]
    if first_beam_only:  # topk per row, then the first k entries of the flattened [n, k] result
        values, token = total.topk(k, dim=-1)
        return values.reshape(-1)[:k], torch.zeros(k, dtype=torch.long), token.reshape(-1)[:k]
    values, flat = total.reshape(-1).topk(k)
    if unravel == "mod_beams":
        return values, flat % scores.shape[0], flat // scores.shape[0]
    if unravel == "swapped":
        return values, flat % vocab, flat // vocab
    if unravel == "divide":
        return values, flat / vocab, flat % vocab
    if unravel == "flat":
        return values, flat // vocab, flat
    return values, flat // vocab, flat % vocab


BEAM_STEP_MISTAKES = [
    Mistake("added probabilities: beam scores are sums of log-probabilities (log p1 + log p2 = log(p1 * p2)); "
            "add log_probs, not log_probs.exp()",
            lambda *a: _beam_learner(*a, probs=True)),
    Mistake("multiplied the score by the log-probabilities: a sequence's log-probability is the sum "
            "scores[:, None] + log_probs",
            lambda *a: _beam_learner(*a, multiply=True)),
    Mistake("each beam kept its own best token: flatten the [beams, vocab] candidate scores into one row and "
            "take the top-k over all of them (two children of one strong beam may both win)",
            lambda *a: _beam_learner(*a, per_beam=True)),
    Mistake("only the first beam was expanded: topk(dim=-1) ranks each beam's tokens separately; flatten the "
            "[beams, vocab] candidate scores into one row and take one top-k over all of them",
            lambda *a: _beam_learner(*a, first_beam_only=True)),
    Mistake("finished beams were extended: a beam that ended with <eos> must stay as it is: give it only one "
            "continuation, <eos> at log-probability 0",
            lambda *a: _beam_learner(*a, keep_finished=False)),
    Mistake("finished beams were thrown away: keep them in the running with their score unchanged "
            "(their only continuation is <eos> at log-probability 0)",
            lambda *a: _beam_learner(*a, keep_finished=False, drop_finished=True)),
    Mistake("the flat index is unravelled wrongly: with candidates [beams, vocab] flattened, "
            "parent = index // vocab and token = index % vocab",
            lambda *a: _beam_learner(*a, unravel="mod_beams")),
    Mistake("parent and token are swapped: parent = index // vocab, token = index % vocab",
            lambda *a: _beam_learner(*a, unravel="swapped")),
    Mistake("the beams' own scores are not added: a candidate's score is its beam's score plus the token's "
            "log-probability, scores[:, None] + log_probs",
            lambda *a: _beam_learner(*a, no_scores=True)),
    Mistake("took the WORST candidates: topk keeps the largest scores (largest=True, its default)",
            lambda *a: _beam_learner(*a, smallest=True)),
    Mistake("a finished beam paid for its <eos> again: its only continuation is <eos> at log-probability 0, so "
            "its score stays unchanged",
            lambda *a: _beam_learner(*a, eos_cost=True)),
    Mistake("parent came out as a float: divide the flat index with // (floor division) so parent is an int64 "
            "index (index / vocab is a float)",
            lambda *a: _beam_learner(*a, unravel="divide")),
    Mistake("token is the flat index itself: token = index % vocab (the position inside the parent's row)",
            lambda *a: _beam_learner(*a, unravel="flat")),
]


def _beam_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(3)

    def lp(n, v, sharp=2.0):
        return torch.log_softmax(torch.randn(n, v, generator=g) * sharp, -1)

    # Case 1: the first step, one beam. Case 2: one beam is much better than the others, so its
    # children should take several places. Case 3: a finished beam with the best score must survive.
    strong = lp(3, 7)
    strong[0] = torch.log_softmax(torch.tensor([3.0, 2.9, 2.8, -1, -2, -3, -4]), -1)
    finished_lp = lp(4, 6)
    return [
        (torch.zeros(1), lp(1, 9), torch.zeros(1, dtype=torch.bool), 3, 2),
        (torch.tensor([-0.5, -3.0, -3.2]), strong, torch.zeros(3, dtype=torch.bool), 3, 2),
        (torch.tensor([-0.4, -1.1, -1.3, -2.0]), finished_lp, torch.tensor([True, False, False, False]), 4, 2),
        (torch.tensor([-0.2, -0.9, -1.5]), lp(3, 5), torch.tensor([False, True, False]), 3, 4),
        (torch.zeros(1), lp(1, 5), torch.zeros(1, dtype=torch.bool), 5, 1),        # k equal to the vocabulary size
        (torch.tensor([-0.3, -0.6, -2.5]), lp(3, 6), torch.tensor([True, True, False]), 3, 5),   # two finished
    ]


def check_beam_step(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(scores [n], log_probs [n, vocab], finished [n], beam_size, eos_id) -> (new_scores, parent, token)``."""
    return check_function("beam_step", fn, beam_step, _beam_cases(), mistakes=BEAM_STEP_MISTAKES,
                          output_names=("new_scores", "parent", "token"), strict=strict)


# ------------------------------------------------------------------------------ length penalty

LENGTH_MISTAKES = [
    Mistake("multiplied by the length penalty: divide, score / length ** alpha (scores are negative, so "
            "multiplying by a larger number favours short outputs even more)",
            lambda s, n, a: s * n.to(s.dtype) ** a),
    Mistake("alpha is ignored: the score is divided by length ** alpha, so alpha = 0 leaves it unchanged",
            lambda s, n, a: s / n.to(s.dtype)),
    Mistake("the power is applied to the score: score / length ** alpha, not (score / length) ** alpha",
            lambda s, n, a: (s / n.to(s.dtype)) ** a),
    Mistake("the power is applied to the score: score / length ** alpha, not score ** alpha / length",
            lambda s, n, a: s ** a / n.to(s.dtype)),
    Mistake("this is GNMT's penalty, ((5 + length) / 6) ** alpha: the exercise divides by length ** alpha",
            lambda s, n, a: s / ((5 + n.to(s.dtype)) / 6) ** a),
    Mistake("divided by the number of beams, len(scores): each score is divided by its OWN length, lengths ** alpha",
            lambda s, n, a: s / len(s) ** a),
    Mistake("floor division: // rounds the normalised scores down; divide with /",
            lambda s, n, a: s // n.to(s.dtype) ** a),
]


def _length_cases() -> list[tuple]:
    return [
        (torch.tensor([-2.0, -3.5, -6.0]), torch.tensor([2, 5, 9]), 1.0),
        (torch.tensor([-2.0, -3.5, -6.0]), torch.tensor([2, 5, 9]), 0.6),
        (torch.tensor([-1.0, -4.0]), torch.tensor([3, 8]), 0.0),
        (torch.tensor([[-1.5, -7.25, -0.5], [-3.0, -2.0, -9.5]]), torch.tensor([[1, 6, 2], [4, 3, 11]]), 0.75),
    ]


def check_length_normalise(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(scores [n], lengths [n], alpha) -> scores / lengths ** alpha``."""
    return check_function("length_normalise", fn, length_normalise, _length_cases(), mistakes=LENGTH_MISTAKES,
                          output_names=("normalised",), strict=strict)
