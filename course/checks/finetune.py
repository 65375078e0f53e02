"""Checkers for lesson 16 (fine-tuning): the LoRA forward pass, merging LoRA into the weight, attention over
prefix keys and values, and the labels of a response-only loss.

Each checker compares the learner's function with the package version (:mod:`course.finetune`) on cases that
include the boundaries the exercise defines and, when the values are wrong, names the likely mistake from a
library of known wrong implementations. tests/checks/test_checks_finetune.py proves each mistake gets its hint.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from course.finetune import lora_forward, merge_lora, prefix_attention, response_labels
from course.lm import IGNORE_INDEX

from .core import CheckResult, Mistake, check_function

__all__ = ["check_lora_forward", "check_merge_lora", "check_prefix_attention", "check_response_labels"]


# ---------------------------------------------------------------------------------------------
# LoRA forward
# ---------------------------------------------------------------------------------------------

def _lora_case(g: torch.Generator, lead: tuple[int, ...], d_in: int, d_out: int, r: int, bias: bool,
               scaling: float) -> tuple:
    x = torch.randn(*lead, d_in, generator=g)
    w = torch.randn(d_out, d_in, generator=g) / math.sqrt(d_in)
    b = torch.randn(d_out, generator=g) if bias else None
    A = torch.randn(r, d_in, generator=g) / math.sqrt(d_in)
    B = torch.randn(d_out, r, generator=g)                     # non-zero: a trained adapter
    return x, w, b, A, B, scaling


def lora_forward_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(0)
    return [
        _lora_case(g, (2, 3), 6, 5, 2, True, 3.0),           # d_in != d_out, scaling 3 (alpha 6, r 2): not r
        _lora_case(g, (4,), 8, 8, 3, False, 0.5),             # no bias, scaling below 1
        _lora_case(g, (2, 2, 3), 5, 7, 1, True, 3.0),          # rank 1, any leading shape
        _lora_case(g, (3,), 4, 4, 4, True, 1.0),               # rank = d (square), scaling 1
    ]


LORA_FORWARD_MISTAKES = [
    Mistake("forgot the scaling: the adapter's output is multiplied by scaling = alpha / r",
            lambda x, w, b, A, B, s: F.linear(x, w, b) + F.linear(F.linear(x, A), B)),
    Mistake("divided by the scaling instead of multiplying: scaling = alpha / r multiplies B A x",
            lambda x, w, b, A, B, s: F.linear(x, w, b) + F.linear(F.linear(x, A), B) / s),
    Mistake("dropped the frozen layer: LoRA adds B A x to W x + b, it does not replace it",
            lambda x, w, b, A, B, s: s * F.linear(F.linear(x, A), B)),
    Mistake("left out the bias b of the frozen layer",
            lambda x, w, b, A, B, s: F.linear(x, w) + s * F.linear(F.linear(x, A), B)),
    Mistake("scaled the frozen layer too: only the adapter's part is multiplied by alpha / r",
            lambda x, w, b, A, B, s: s * (F.linear(x, w, b) + F.linear(F.linear(x, A), B))),
    Mistake("divided by r again: scaling is alpha / r already, multiply the adapter's output by it as it is",
            lambda x, w, b, A, B, s: F.linear(x, w, b) + s / A.shape[0] * F.linear(F.linear(x, A), B)),
    Mistake("the bias was scaled too: scaling multiplies only B A x; the frozen layer's x W^T + b is added as it is",
            lambda x, w, b, A, B, s: F.linear(x, w) + s * (F.linear(F.linear(x, A), B) + (0 if b is None else b))),
]


def check_lora_forward(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(x [..., d_in], weight [d_out, d_in], bias [d_out] or None, A [r, d_in], B [d_out, r], scaling)
    -> [..., d_out]`` = ``x W^T + b + scaling * (x A^T) B^T``."""
    return check_function("lora_forward", fn, lora_forward, lora_forward_cases(), mistakes=LORA_FORWARD_MISTAKES,
                          atol=1e-4, exception_hints=[
                              ("shapes cannot be multiplied",
                               "weight is [d_out, d_in], A [r, d_in] and B [d_out, r], all as nn.Linear stores "
                               "weights: x @ weight.T for the frozen part, x @ A.T then @ B.T for the adapter"),
                              ("unsupported operand type(s) for +: 'Tensor' and 'NoneType'",
                               "bias may be None (a layer without bias): add it only when it is given"),
                              ("Boolean value of Tensor",
                               "`if bias:` asks a tensor for one truth value: test `if bias is not None:`")])


# ---------------------------------------------------------------------------------------------
# Merge
# ---------------------------------------------------------------------------------------------

def merge_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(1)
    out = []
    for d_out, d_in, r, s in [(5, 3, 2, 2.0), (4, 4, 1, 0.5), (3, 6, 3, 4.0)]:
        out.append((torch.randn(d_out, d_in, generator=g), torch.randn(r, d_in, generator=g),
                    torch.randn(d_out, r, generator=g), s))
    return out


MERGE_MISTAKES = [
    Mistake("forgot the scaling: the merged weight is W + (alpha / r) B A",
            lambda w, A, B, s: w + B @ A),
    Mistake("returned only the update: the merged weight is W plus (alpha / r) B A",
            lambda w, A, B, s: s * (B @ A)),
    Mistake("divided by the scaling: the update is multiplied by alpha / r",
            lambda w, A, B, s: w + (B @ A) / s),
    Mistake("scaled W too: only the update is multiplied by alpha / r, W' = W + (alpha / r) B A",
            lambda w, A, B, s: s * (w + B @ A)),
    Mistake("divided by r again: scaling is alpha / r already, W' = W + scaling * B A",
            lambda w, A, B, s: w + s / A.shape[0] * (B @ A)),
]


_MERGE_SHAPES = "A is [r, d_in] and B is [d_out, r]: B @ A (a matrix product) is [d_out, d_in], the weight's shape"


def check_merge_lora(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(weight [d_out, d_in], A [r, d_in], B [d_out, r], scaling) -> [d_out, d_in]`` = W + s B A."""
    return check_function("merge_lora", fn, merge_lora, merge_cases(), mistakes=MERGE_MISTAKES, atol=1e-4,
                          batch_first=False, exception_hints=[
                              ("shapes cannot be multiplied", _MERGE_SHAPES),
                              ("must match the size of tensor", _MERGE_SHAPES)])


# ---------------------------------------------------------------------------------------------
# Attention over a prefix
# ---------------------------------------------------------------------------------------------

def _prefix_case(g: torch.Generator, batch: int, heads: int, seq: int, P: int, d: int, big: float = 1.0) -> tuple:
    q, k, v = (torch.randn(batch, heads, seq, d, generator=g) * big for _ in range(3))
    return q, k, v, torch.randn(heads, P, d, generator=g), torch.randn(heads, P, d, generator=g)


def prefix_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(2)
    return [
        _prefix_case(g, 2, 2, 4, 3, 8),        # batch 2, prefix 3
        _prefix_case(g, 1, 3, 5, 1, 4),        # a single prefix slot, batch 1
        _prefix_case(g, 3, 1, 1, 2, 6),        # one real token: it sees the prefix and itself
        _prefix_case(g, 2, 2, 6, 4, 16, 4.0),  # large scores: a softmax without the max shift still works in torch
    ]


def _prefix_no_scale(q, k, v, pk, pv):
    return prefix_attention(q * math.sqrt(q.shape[-1]), k, v, pk, pv)


def _prefix_hidden_by_mask(q, k, v, pk, pv):
    """The causal mask laid over all P + seq keys from the left: early queries cannot see the whole prefix."""
    return _prefix_masked(q, k, v, pk, pv, diagonal_shift=-pk.shape[-2])


def _prefix_no_causal(q, k, v, pk, pv):
    b = q.shape[0]
    keys = torch.cat([pk.expand(b, -1, -1, -1), k], dim=-2)
    values = torch.cat([pv.expand(b, -1, -1, -1), v], dim=-2)
    return (q @ keys.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1) @ values


def _prefix_ignored(q, k, v, pk, pv):
    seq = q.shape[-2]
    allowed = torch.ones(seq, seq, dtype=torch.bool).tril()
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v


def _prefix_swapped_values(q, k, v, pk, pv):
    return prefix_attention(q, k, v, pv, pk)


def _prefix_masked(q, k, v, pk, pv, diagonal_shift: int = 0, scale_power: float = 0.5,
                   fill: float = float("-inf"), softmax_dim: int = -1):
    """The reference with one slip: the mask's diagonal moved, the scores divided by d ** scale_power, or
    the hidden scores filled with ``fill``."""
    b, P, seq = q.shape[0], pk.shape[-2], q.shape[-2]
    keys = torch.cat([pk.expand(b, -1, -1, -1), k], dim=-2)
    values = torch.cat([pv.expand(b, -1, -1, -1), v], dim=-2)
    allowed = torch.ones(seq, P + seq, dtype=torch.bool).tril(diagonal=P + diagonal_shift)
    scores = q @ keys.transpose(-2, -1) / q.shape[-1] ** scale_power
    return scores.masked_fill(~allowed, fill).softmax(softmax_dim) @ values


def _prefix_after(q, k, v, pk, pv):
    """Prefix appended after the real keys, with the causal mask on the first seq keys."""
    b, P, seq = q.shape[0], pk.shape[-2], q.shape[-2]
    keys = torch.cat([k, pk.expand(b, -1, -1, -1)], dim=-2)
    values = torch.cat([v, pv.expand(b, -1, -1, -1)], dim=-2)
    allowed = torch.ones(seq, P + seq, dtype=torch.bool).tril()
    scores = q @ keys.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ values


PREFIX_MISTAKES = [
    Mistake("the real tokens attend only to each other: put the prefix keys and values before them "
            "(torch.cat along the sequence axis)", _prefix_ignored),
    Mistake("the causal mask hides part of the prefix: every query sees all P prefix slots, and real keys "
            "0..i (the mask is [seq, P + seq], all True over the first P columns)", _prefix_hidden_by_mask),
    Mistake("no causal mask: query i must not see real keys after i", _prefix_no_causal),
    Mistake("prefix keys and values swapped: keys are compared with the queries, values are mixed",
            _prefix_swapped_values),
    Mistake("forgot to divide the scores by sqrt(d_head)", _prefix_no_scale),
    Mistake("divided the scores by d, not by its square root: scores / math.sqrt(d)",
            lambda q, k, v, pk, pv: _prefix_masked(q, k, v, pk, pv, scale_power=1.0)),
    Mistake("the diagonal is one too low: query i must see its own key (the mask is tril(diagonal=P), not P - 1)",
            lambda q, k, v, pk, pv: _prefix_masked(q, k, v, pk, pv, diagonal_shift=-1)),
    Mistake("the diagonal is one too high: query i sees key i + 1, the next token (use tril(diagonal=P))",
            lambda q, k, v, pk, pv: _prefix_masked(q, k, v, pk, pv, diagonal_shift=1)),
    Mistake("softmax over the wrong axis: each query's weights over the P + seq keys must add up to 1 (dim=-1)",
            lambda q, k, v, pk, pv: _prefix_masked(q, k, v, pk, pv, softmax_dim=-2)),
    Mistake("hidden scores set to 0, not -inf: exp(0) = 1, so a future key still gets weight; fill with "
            "float('-inf')",
            lambda q, k, v, pk, pv: _prefix_masked(q, k, v, pk, pv, fill=0.0)),
    Mistake("the prefix went after the real keys with the mask of the front: prefix first, then the tokens",
            _prefix_after),
]


_EXPAND = "the prefix is [heads, P, d] for every example: expand it to [batch, heads, P, d] before concatenating"


def check_prefix_attention(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(q, k, v [batch, heads, seq, d], prefix_k, prefix_v [heads, P, d]) -> [batch, heads, seq, d]``."""
    return check_function("prefix_attention", fn, prefix_attention, prefix_cases(), mistakes=PREFIX_MISTAKES,
                          atol=1e-4, exception_hints=[
                              ("Sizes of tensors must match", _EXPAND),
                              ("must have same number of dimensions", _EXPAND)])


# ---------------------------------------------------------------------------------------------
# Response-only labels
# ---------------------------------------------------------------------------------------------

def labels_cases() -> list[tuple]:
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 0, 0],      # prompt 3, response 3, padding 2
                        [11, 12, 13, 14, 15, 16, 17, 18],  # no padding
                        [21, 22, 23, 24, 0, 0, 0, 0]])    # prompt 2, response 2
    ids2 = torch.tensor([[3, 4, 5, 6], [7, 8, 0, 0]])        # prompt 1 (first token only); prompt 1, response 1
    ids3 = torch.tensor([[31, 32, 33, 34, 35]])              # a response of one token at the end
    ids4 = torch.tensor([[7, 8, 0, 9, 0, 3, 3],                # id 0 is a real token here (a newline, say) ...
                         [5, 0, 6, 3, 3, 3, 3]])              # ... and 3 the padding: mask by position, not by id
    return [
        (ids, torch.tensor([3, 4, 2]), torch.tensor([6, 8, 4])),
        (ids4, torch.tensor([2, 1]), torch.tensor([5, 3])),
        (ids2, torch.tensor([1, 1]), torch.tensor([4, 2])),
        (ids3, torch.tensor([4]), torch.tensor([5])),
    ]


def _labels_keep_prompt(ids, p, n):
    pos = torch.arange(ids.shape[1])[None]
    return ids.masked_fill(pos >= n[:, None], IGNORE_INDEX)


def _labels_keep_padding(ids, p, n):
    pos = torch.arange(ids.shape[1])[None]
    return ids.masked_fill(pos < p[:, None], IGNORE_INDEX)


def _labels_one_early(ids, p, n):
    return response_labels(ids, p - 1, n)


def _labels_one_late(ids, p, n):
    return response_labels(ids, p + 1, n)


def _labels_one_long(ids, p, n):
    return response_labels(ids, p, n + 1)


def _labels_one_short(ids, p, n):
    return response_labels(ids, p, n - 1)


def _labels_zero(ids, p, n):
    pos = torch.arange(ids.shape[1])[None]
    keep = (pos >= p[:, None]) & (pos < n[:, None])
    return ids.masked_fill(~keep, 0)


def _labels_inverted(ids, p, n):
    pos = torch.arange(ids.shape[1])[None]
    keep = (pos >= p[:, None]) & (pos < n[:, None])
    return ids.masked_fill(keep, IGNORE_INDEX)


def _labels_shifted(ids, p, n):
    """Targets shifted by hand (ids[t + 1] at t): the loss function shifts already."""
    shifted = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], IGNORE_INDEX)], dim=1)
    return response_labels(shifted, p - 1, n - 1)


LABELS_MISTAKES = [
    Mistake("masked the response instead of the prompt: the loss is kept on positions prompt_length <= t < length",
            _labels_inverted),
    Mistake("the prompt is still in the loss: set positions t < prompt_length to -100", _labels_keep_prompt),
    Mistake("the padding is still in the loss: positions t >= length are padding, set them to -100",
            _labels_keep_padding),
    Mistake("masked with 0, a real token id: use -100 (IGNORE_INDEX), the value cross_entropy skips", _labels_zero),
    Mistake("shifted the labels yourself: keep label t = ids[t] (the loss compares logits at t with labels at t + 1)",
            _labels_shifted),
    Mistake("one position too early: the last prompt token is kept; the response starts at t = prompt_length",
            _labels_one_early),
    Mistake("one position too late: the first response token is masked; keep t = prompt_length", _labels_one_late),
    Mistake("dropped the last response token: the real tokens end at lengths[b] - 1, so keep t < length (the last "
            "one is the newline that ends the answer)", _labels_one_short),
    Mistake("kept one padding token: the real tokens end before lengths[b], so keep t < length, not t <= length",
            _labels_one_long),
]


def check_response_labels(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(ids [batch, seq], prompt_lengths [batch], lengths [batch]) -> labels [batch, seq]``: ``ids`` on
    the response (``prompt_lengths[b] <= t < lengths[b]``), -100 elsewhere."""
    return check_function("response_labels", fn, response_labels, labels_cases(), mistakes=LABELS_MISTAKES,
                          batch_first=True)
