"""Lesson 16's checkers: right answers pass; learner-style wrong answers get the hint for their mistake."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from answer_library import Right, Wrong, library_tests, unattempted_test

from course.checks.finetune import (check_lora_forward, check_merge_lora, check_prefix_attention,
                                    check_response_labels)

pytestmark = pytest.mark.usefixtures("lenient_checks")


# --- LoRA forward: learner-style answers, written independently of the checker's mistake library ---

def lora_einsum(x, weight, bias, A, B, scaling):
    down = torch.einsum("...i,ri->...r", x, A)
    up = torch.einsum("...r,or->...o", down, B)
    out = torch.einsum("...i,oi->...o", x, weight) + scaling * up
    return out if bias is None else out + bias


def lora_merged_first(x, weight, bias, A, B, scaling):
    return F.linear(x, weight + scaling * B @ A, bias)


def lora_float64(x, weight, bias, A, B, scaling):
    y = x.double() @ weight.double().T + scaling * (x.double() @ A.double().T) @ B.double().T
    return (y if bias is None else y + bias.double()).float()


WRONG_LORA = [
    Wrong("no alpha / r", lambda x, w, b, A, B, s: F.linear(x, w, b) + x @ A.T @ B.T, "scaling"),
    Wrong("adapter only", lambda x, w, b, A, B, s: s * (x @ A.T @ B.T), "frozen layer"),
    Wrong("bias forgotten", lambda x, w, b, A, B, s: x @ w.T + s * (x @ A.T @ B.T), "bias"),
    Wrong("alpha / r taken again", lambda x, w, b, A, B, s: F.linear(x, w, b) + s / A.shape[0] * (x @ A.T @ B.T),
          "divided by r again"),
    Wrong("bias inside the scaled part", lambda x, w, b, A, B, s: x @ w.T + s * (x @ A.T @ B.T + (0 if b is None else b)),
          "bias was scaled"),
    Wrong("if bias:", lambda x, w, b, A, B, s: x @ w.T + s * (x @ A.T @ B.T) + (b if b else 0), "is not None"),
    Wrong("weight not transposed", lambda x, w, b, A, B, s: x @ w + b + s * (x @ A.T @ B.T), "x @ weight.T"),
    Wrong("A and B not transposed", lambda x, w, b, A, B, s: F.linear(x, w, b) + s * (x @ A @ B), "x @ A.T"),
    Wrong("bias added unconditionally", lambda x, w, b, A, B, s: x @ w.T + b + s * (x @ A.T @ B.T), "None"),
    Wrong("divides by the scaling", lambda x, w, b, A, B, s: F.linear(x, w, b) + (x @ A.T @ B.T) / s, "divided"),
]
RIGHT_LORA = [Right("einsum", lora_einsum), Right("merge then apply", lora_merged_first),
              Right("float64 inside", lora_float64)]


# --- merge ---

WRONG_MERGE = [
    Wrong("no scaling", lambda w, A, B, s: w + B @ A, "scaling"),
    Wrong("update only", lambda w, A, B, s: s * B @ A, "only the update"),
    Wrong("A B instead of B A", lambda w, A, B, s: w + s * (A @ B), "B @ A"),
    Wrong("B A transposed", lambda w, A, B, s: w + s * (B @ A).T, "B @ A"),
    Wrong("elementwise B * A", lambda w, A, B, s: w + s * B * A, "matrix product"),
    Wrong("W scaled too", lambda w, A, B, s: s * (w + B @ A), "scaled W too"),
    Wrong("r divided again", lambda w, A, B, s: w + (s / A.shape[0]) * B @ A, "divided by r again"),
    Wrong("changed the weight in place", lambda w, A, B, s: w.add_(s * B @ A), "in place"),
]
RIGHT_MERGE = [Right("plain", lambda w, A, B, s: w + s * (B @ A)),
               Right("einsum", lambda w, A, B, s: w + s * torch.einsum("or,ri->oi", B, A)),
               Right("addmm", lambda w, A, B, s: torch.addmm(w, B, A, alpha=s))]


# --- attention over a prefix ---

def prefix_loop(q, k, v, pk, pv):
    """One query at a time: the prefix and the keys up to it."""
    d = q.shape[-1]
    out = torch.empty_like(q)
    for i in range(q.shape[-2]):
        keys = torch.cat([pk.expand(q.shape[0], -1, -1, -1), k[..., : i + 1, :]], dim=-2)
        values = torch.cat([pv.expand(q.shape[0], -1, -1, -1), v[..., : i + 1, :]], dim=-2)
        w = (q[..., i : i + 1, :] @ keys.transpose(-2, -1) / math.sqrt(d)).softmax(-1)
        out[..., i : i + 1, :] = w @ values
    return out


def prefix_sdpa(q, k, v, pk, pv):
    P, seq = pk.shape[-2], q.shape[-2]
    keys = torch.cat([pk.unsqueeze(0).repeat(q.shape[0], 1, 1, 1), k], dim=2)
    values = torch.cat([pv.unsqueeze(0).repeat(q.shape[0], 1, 1, 1), v], dim=2)
    mask = torch.ones(seq, P + seq, dtype=torch.bool).tril(diagonal=P)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)


def prefix_big_negative(q, k, v, pk, pv):
    P, seq = pk.shape[-2], q.shape[-2]
    keys = torch.cat([pk.expand(q.shape[0], -1, -1, -1), k], dim=-2)
    values = torch.cat([pv.expand(q.shape[0], -1, -1, -1), v], dim=-2)
    blocked = torch.ones(seq, P + seq, dtype=torch.bool).triu(diagonal=P + 1)
    scores = (q @ keys.transpose(-2, -1)) / q.shape[-1] ** 0.5
    return scores.masked_fill(blocked, -1e9).softmax(-1) @ values


def wrong_prefix_ignored(q, k, v, pk, pv):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def wrong_prefix_plain_tril(q, k, v, pk, pv):
    P, seq = pk.shape[-2], q.shape[-2]
    keys = torch.cat([pk.expand(q.shape[0], -1, -1, -1), k], dim=-2)
    values = torch.cat([pv.expand(q.shape[0], -1, -1, -1), v], dim=-2)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=torch.ones(seq, P + seq, dtype=torch.bool).tril())


def wrong_prefix_no_mask(q, k, v, pk, pv):
    keys = torch.cat([pk.expand(q.shape[0], -1, -1, -1), k], dim=-2)
    values = torch.cat([pv.expand(q.shape[0], -1, -1, -1), v], dim=-2)
    return F.scaled_dot_product_attention(q, keys, values)


def wrong_prefix_no_expand(q, k, v, pk, pv):
    keys = torch.cat([pk, k], dim=-2)
    values = torch.cat([pv, v], dim=-2)
    return F.scaled_dot_product_attention(q, keys, values)


def wrong_prefix_no_scale(q, k, v, pk, pv):
    return prefix_sdpa(q * q.shape[-1] ** 0.5, k, v, pk, pv)


def prefix_slip(q, k, v, pk, pv, diagonal: int = 0, fill: float = float("-inf"), divide_by_d: bool = False):
    """A learner's prefix attention with one slip: the tril diagonal moved, 0 as the fill, or / d for / sqrt(d)."""
    P, seq, d = pk.shape[-2], q.shape[-2], q.shape[-1]
    keys = torch.cat([pk.expand(q.shape[0], -1, -1, -1), k], dim=-2)
    values = torch.cat([pv.expand(q.shape[0], -1, -1, -1), v], dim=-2)
    allowed = torch.ones(seq, P + seq, dtype=torch.bool).tril(diagonal=P + diagonal)
    scores = q @ keys.transpose(-2, -1) / (d if divide_by_d else math.sqrt(d))
    return torch.softmax(torch.where(allowed, scores, torch.tensor(fill)), dim=-1) @ values


WRONG_PREFIX = [
    Wrong("prefix never used", wrong_prefix_ignored, "prefix keys and values before"),
    Wrong("plain tril over P + seq", wrong_prefix_plain_tril, "hides part of the prefix"),
    Wrong("no causal mask", wrong_prefix_no_mask, "no causal mask"),
    Wrong("prefix not expanded to the batch", wrong_prefix_no_expand, "expand"),
    Wrong("no sqrt(d) scale", wrong_prefix_no_scale, "sqrt(d_head)"),
    Wrong("keys and values swapped", lambda q, k, v, pk, pv: prefix_sdpa(q, k, v, pv, pk), "swapped"),
    Wrong("softmax down the queries", lambda q, k, v, pk, pv: torch.softmax(torch.where(
        torch.ones(q.shape[-2], pk.shape[-2] + q.shape[-2], dtype=torch.bool).tril(diagonal=pk.shape[-2]),
        q @ torch.cat([pk.expand(q.shape[0], -1, -1, -1), k], -2).transpose(-2, -1) / math.sqrt(q.shape[-1]),
        torch.tensor(float("-inf"))), dim=2) @ torch.cat([pv.expand(q.shape[0], -1, -1, -1), v], -2), "wrong axis"),
    Wrong("tril(diagonal=P - 1)", lambda *a: prefix_slip(*a, diagonal=-1), "one too low"),
    Wrong("tril(diagonal=P + 1)", lambda *a: prefix_slip(*a, diagonal=1), "one too high"),
    Wrong("0 where the mask hides", lambda *a: prefix_slip(*a, fill=0.0), "not -inf"),
    Wrong("divided by d", lambda *a: prefix_slip(*a, divide_by_d=True), "square root"),
]
RIGHT_PREFIX = [Right("loop over queries", prefix_loop), Right("sdpa with an offset tril", prefix_sdpa),
                Right("-1e9 fill", prefix_big_negative)]


# --- response-only labels ---

def labels_loop(ids, prompt_lengths, lengths):
    labels = torch.full_like(ids, -100)
    for b in range(ids.shape[0]):
        p, n = int(prompt_lengths[b]), int(lengths[b])
        labels[b, p:n] = ids[b, p:n]
    return labels


def labels_where(ids, prompt_lengths, lengths):
    t = torch.arange(ids.shape[1]).expand_as(ids)
    keep = (t >= prompt_lengths.unsqueeze(1)) & (t < lengths.unsqueeze(1))
    return torch.where(keep, ids, torch.full_like(ids, -100))


def wrong_labels_prompt_kept(ids, p, n):
    labels = ids.clone()
    for b in range(ids.shape[0]):
        labels[b, int(n[b]):] = -100
    return labels


def wrong_labels_padding_kept(ids, p, n):
    labels = ids.clone()
    for b in range(ids.shape[0]):
        labels[b, : int(p[b])] = -100
    return labels


def wrong_labels_off_by_one(ids, p, n):
    labels = torch.full_like(ids, -100)
    for b in range(ids.shape[0]):
        labels[b, int(p[b]) - 1 : int(n[b])] = ids[b, int(p[b]) - 1 : int(n[b])]
    return labels


def wrong_labels_zero(ids, p, n):
    labels = torch.zeros_like(ids)
    for b in range(ids.shape[0]):
        labels[b, int(p[b]) : int(n[b])] = ids[b, int(p[b]) : int(n[b])]
    return labels


def wrong_labels_shift(ids, p, n):
    labels = torch.full_like(ids, -100)
    for b in range(ids.shape[0]):
        labels[b, int(p[b]) - 1 : int(n[b]) - 1] = ids[b, int(p[b]) : int(n[b])]
    return labels


def wrong_labels_list(ids, p, n):
    return labels_loop(ids, p, n).tolist()


WRONG_LABELS = [
    Wrong("prompt left in", wrong_labels_prompt_kept, "prompt is still in the loss"),
    Wrong("padding left in", wrong_labels_padding_kept, "padding"),
    Wrong("starts one early", wrong_labels_off_by_one, "too early"),
    Wrong("id 0 taken for padding", lambda ids, p, n: torch.where((torch.arange(ids.shape[1]) >= p[:, None]) & (ids != 0),
                                                                 ids, -100), None),
    Wrong("t < length - 1", lambda ids, p, n: torch.where((torch.arange(ids.shape[1]) >= p[:, None])
                                                         & (torch.arange(ids.shape[1]) < n[:, None] - 1), ids, -100),
          "dropped the last response token"),
    Wrong("t <= length", lambda ids, p, n: torch.where((torch.arange(ids.shape[1]) >= p[:, None])
                                                     & (torch.arange(ids.shape[1]) <= n[:, None]), ids, -100),
          "t <= length"),
    Wrong("zeros for the mask", wrong_labels_zero, "-100"),
    Wrong("shifted by hand", wrong_labels_shift, "shifted the labels yourself"),
    Wrong("returns a list", wrong_labels_list, "list"),
]
RIGHT_LABELS = [Right("loop", labels_loop), Right("torch.where", labels_where)]

LIBRARY = {
    check_lora_forward: (WRONG_LORA, RIGHT_LORA),
    check_merge_lora: (WRONG_MERGE, RIGHT_MERGE),
    check_prefix_attention: (WRONG_PREFIX, RIGHT_PREFIX),
    check_response_labels: (WRONG_LABELS, RIGHT_LABELS),
}

# Each wrong answer fails, in one line holding its words; each right answer passes.
test_each_wrong_answer_fails_with_its_words, test_each_right_answer_passes = library_tests(LIBRARY)
test_an_unattempted_exercise_says_so = unattempted_test(LIBRARY)
