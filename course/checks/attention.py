"""Checkers for lessons 03 (self-attention) and 05 (multi-head attention).

Each checker runs the learner's function on a few cases, compares with ``course.attention`` and,
on a mismatch, names the likely mistake. The cases are chosen so that every mistake listed here
gives an output different from the correct one AND from every other mistake (d_k is never 1 or
a square that equals another size, masks mix True and False in every row, the first
split-heads case has seq == heads so a missing transpose keeps the shape but not the values).

The boundaries: seq_q != seq_k, batch > 1 and extra head axes; masks of every shape the instructions
allow (a mixed [seq_q, seq_k] mask, a causal mask, right and left padding [batch, 1, 1, seq_k]), and
scores far above 88, where a softmax written by hand overflows in float32 without the max shift or with
the maximum taken over the wrong keys (the whole batch, or before the blocked keys were masked: one
blocked key has a huge score), and a query whose allowed scores are all below -300 (a fill of -100 is
not "minus infinity" there). No query row is fully masked, so a -1e9 fill is as right as -inf.
``tests/checks/test_checks_attention.py`` runs each mistake through its checker to prove it.
"""
from __future__ import annotations

import math

import torch

from ..attention import MultiHeadAttention, causal_mask, padding_mask, scaled_dot_product_attention
from .core import CheckResult, Mistake, check_function, evaluate_function, report

__all__ = [
    "check_attention_scores",
    "check_attention",
    "check_masked_attention",
    "check_causal_mask",
    "check_split_heads",
    "check_merge_heads",
    "check_multi_head_attention",
]

NEG_INF = float("-inf")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _qk(g, *shape_q_k):
    sq, sk = shape_q_k
    return torch.randn(*sq, generator=g), torch.randn(*sk, generator=g)


def _t(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-2, -1)


# ----------------------------------------------------------------------------- scores

# Sizes: d_k = 16 (sqrt 4), seq lengths 5, 6, 7: dividing by d_k, by sqrt(seq) or by nothing all differ.
def _score_cases() -> list[tuple]:
    g = _gen(0)
    return [
        _qk(g, (6, 16), (6, 16)),                # square first, so k @ q^T keeps the shape
        _qk(g, (2, 5, 16), (2, 7, 16)),
        _qk(g, (2, 3, 4, 8), (2, 3, 6, 8)),
    ]


SCORE_MISTAKES = [
    Mistake("missing scale: divide q @ k^T by sqrt(d_k), where d_k = q.shape[-1]",
            lambda q, k: q @ _t(k)),
    Mistake("wrong scale: divided by d_k; divide by its square root, math.sqrt(d_k)",
            lambda q, k: q @ _t(k) / q.shape[-1]),
    Mistake("scale upside down: multiplied by sqrt(d_k); divide by it instead",
            lambda q, k: q @ _t(k) * math.sqrt(q.shape[-1])),
    Mistake("scaled by the wrong size: d_k is the feature size q.shape[-1], not the number of tokens",
            lambda q, k: q @ _t(k) / math.sqrt(q.shape[-2])),
    Mistake("scaled by the wrong size: d_k is the feature size q.shape[-1], not the number of tokens",
            lambda q, k: q @ _t(k) / math.sqrt(k.shape[-2])),
    Mistake("transposed: that is k @ q^T; compute q @ k.transpose(-2, -1) so row i belongs to query i",
            lambda q, k: k @ _t(q) / math.sqrt(q.shape[-1])),
    Mistake("softmax applied too early: this function returns the raw scaled scores, before softmax",
            lambda q, k: torch.softmax(q @ _t(k) / math.sqrt(q.shape[-1]), dim=-1)),
]


_LAST_TWO = ("transpose only the last two axes, k.transpose(-2, -1): it works for any number of leading (batch, "
             "head) axes, where k.T reverses all of them and transpose(1, 2) counts from the front")
_AXES_HINTS = [("must match the size", _LAST_TWO), ("out of range", _LAST_TWO), ("cannot be multiplied", _LAST_TWO)]


def check_attention_scores(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(q [..., seq_q, d_k], k [..., seq_k, d_k]) -> scores [..., seq_q, seq_k]`` = q k^T / sqrt(d_k)."""
    return check_function("attention_scores", fn, lambda q, k: q @ _t(k) / math.sqrt(q.shape[-1]),
                          _score_cases(), mistakes=SCORE_MISTAKES, output_names=("scores",),
                          exception_hints=_AXES_HINTS, strict=strict)


# ----------------------------------------------------------------------------- attention (no mask)

def _attention_cases() -> list[tuple]:
    g = _gen(1)
    cases = []
    for sq, sk, dv in (((6, 16), (6, 16), (6, 3)), ((2, 5, 16), (2, 7, 16), (2, 7, 3)),
                       ((2, 2, 4, 8), (2, 2, 6, 8), (2, 2, 6, 5))):
        q, k = _qk(g, sq, sk)
        cases.append((q * 1.5, k, torch.randn(*dv, generator=g)))
    cases.append(_large_scores_case(g))
    return cases


def _large_scores_case(g, mask: bool = False) -> tuple:
    """Scores far above 88 (exp overflows in float32 without the max shift), much larger in the first batch
    item than in the second (shifting by the maximum of the whole tensor underflows the second to 0/0)."""
    q, k = _qk(g, (2, 3, 8), (2, 5, 8))
    q[0] *= 80.0
    k *= 2.0
    v = torch.randn(2, 5, 3, generator=g)
    if not mask:
        return q, k, v
    # Query 2 of the first item scores every allowed key below -300: a finite fill such as -100 outweighs them.
    q[0, 2] *= 5.0
    # Key 4 is blocked for every query and gets a huge score: a maximum taken before masking picks it.
    k[:, 4] = q.sum(dim=1) * 3.0
    allowed = torch.tensor([[True, True, False, True, False], [False, True, True, True, False]])[:, None, :]
    return q, k, v, allowed


def _softmax_by_hand(scores: torch.Tensor, shift: str | None) -> torch.Tensor:
    """exp / sum along the last axis, shifted by nothing, by the whole tensor's maximum, or by each row's."""
    if shift == "all":
        scores = scores - scores.max()
    elif shift == "row":
        scores = scores - scores.max(dim=-1, keepdim=True).values
    e = scores.exp()
    return e / e.sum(dim=-1, keepdim=True)


def _attend(q, k, v, *, scale=None, dim=-1, softmax=True, by_hand=False, shift=None):
    scores = q @ _t(k) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if by_hand:
        w = _softmax_by_hand(scores, shift)
    else:
        w = torch.softmax(scores, dim=dim) if softmax else scores
    return w @ v, w


def _whole_matrix_softmax(q, k, v):
    scores = q @ _t(k) / math.sqrt(q.shape[-1])
    w = torch.softmax(scores.flatten(-2), dim=-1).view(scores.shape)
    return w @ v, w


ATTENTION_MISTAKES = [
    Mistake("missing scale: divide the scores q @ k^T by sqrt(d_k) before the softmax",
            lambda q, k, v: _attend(q, k, v, scale=1.0)),
    Mistake("wrong scale: divided by d_k; divide by math.sqrt(d_k)",
            lambda q, k, v: _attend(q, k, v, scale=1 / q.shape[-1])),
    Mistake("scaled by the wrong size: d_k is the feature size q.shape[-1], not the number of tokens",
            lambda q, k, v: _attend(q, k, v, scale=1 / math.sqrt(q.shape[-2]))),
    Mistake("softmax over the wrong axis: normalise over the keys (dim=-1) so each query's weights sum to 1",
            lambda q, k, v: _attend(q, k, v, dim=-2)),
    Mistake("softmax over the whole score matrix: normalise each row (dim=-1) separately",
            _whole_matrix_softmax),
    Mistake("no softmax: the weights must be softmax(scores), not the raw scores",
            lambda q, k, v: _attend(q, k, v, softmax=False)),
    Mistake("exp overflows for scores above about 88: use torch.softmax, or subtract each row's maximum before exp",
            lambda q, k, v: _attend(q, k, v, by_hand=True)),
    Mistake("shifted by the maximum of the whole tensor: each row needs its own maximum (dim=-1, keepdim=True), "
            "or rows far below the overall maximum underflow to 0/0",
            lambda q, k, v: _attend(q, k, v, by_hand=True, shift="all")),
]


def check_attention(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(q, k, v) -> (output [..., seq_q, d_v], weights [..., seq_q, seq_k])``, no mask."""
    return check_function("attention", fn, lambda q, k, v: scaled_dot_product_attention(q, k, v),
                          _attention_cases(), mistakes=ATTENTION_MISTAKES, output_names=("output", "weights"),
                          exception_hints=_AXES_HINTS, strict=strict)


# ----------------------------------------------------------------------------- masked attention

def _mixed_mask(g, rows: int, cols: int) -> torch.Tensor:
    """A random boolean mask in which every row and every column has at least one True and one False."""
    while True:
        m = torch.rand(rows, cols, generator=g) > 0.5
        if m.any(-1).all() and (~m).any(-1).all() and m.any(-2).all() and (~m).any(-2).all():
            return m


def _masked_cases() -> list[tuple]:
    g = _gen(2)
    q, k = _qk(g, (5, 16), (6, 16))
    first = (q * 1.5, k, torch.randn(6, 3, generator=g), _mixed_mask(g, 5, 6))
    q, k = _qk(g, (2, 6, 8), (2, 6, 8))
    causal = (q, k, torch.randn(2, 6, 4, generator=g), causal_mask(6))
    q, k = _qk(g, (2, 2, 5, 8), (2, 2, 7, 8))
    padded = (q, k, torch.randn(2, 2, 7, 3, generator=g), padding_mask([7, 4]))
    q, k = _qk(g, (2, 2, 4, 8), (2, 2, 6, 8))
    left_padded = (q, k, torch.randn(2, 2, 6, 3, generator=g), padding_mask([3, 6]).flip(-1))  # pads in front
    return [first, causal, padded, left_padded, _large_scores_case(g, mask=True)]


def _masked(q, k, v, mask, *, fill=NEG_INF, invert=False, scale=None, dim=-1, by_hand=False, shift=None):
    scores = q @ _t(k) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    blocked = mask if invert else ~mask
    if shift == "before masking":  # each row's maximum over every key, blocked ones included
        scores = scores - scores.max(dim=-1, keepdim=True).values
        shift = None
    scores = scores.masked_fill(blocked, fill)
    w = _softmax_by_hand(scores, shift) if by_hand else torch.softmax(scores, dim=dim)
    return w @ v, w


def _mask_times_minus_inf(q, k, v, mask):
    w = torch.softmax(q @ _t(k) / math.sqrt(q.shape[-1]) + (~mask) * NEG_INF, dim=-1)
    return w @ v, w


_MASKED_SHAPES = ("the shapes do not line up: the scores are [..., seq_q, seq_k] (transpose only k's last two axes, "
                  "k.transpose(-2, -1)), and the mask must broadcast against them as it is")
_MASKED_AXES_HINTS = [("must match the size", _MASKED_SHAPES), ("out of range", _LAST_TWO),
                      ("cannot be multiplied", _LAST_TWO)]
_MASK_HINTS = [("Subtraction, the `-` operator, with a bool tensor",
                "the mask is boolean: invert it with ~mask (not 1 - mask)"),
               ("expected a value of type", "fill with a Python float: scores.masked_fill(~mask, float('-inf'))")]


def _mask_after_softmax(q, k, v, mask, fill=0.0):
    w = torch.softmax(q @ _t(k) / math.sqrt(q.shape[-1]), dim=-1).masked_fill(~mask, fill)
    return w @ v, w


MASKED_MISTAKES = [
    Mistake("mask inverted: True means 'may attend', so fill the scores where the mask is False (~mask) with -inf",
            lambda q, k, v, m: _masked(q, k, v, m, invert=True)),
    Mistake("mask applied after softmax: fill the scores with -inf BEFORE the softmax, so the allowed weights still sum to 1",
            _mask_after_softmax),
    Mistake("mask applied after softmax: fill the scores with -inf BEFORE the softmax, not the weights after it",
            lambda q, k, v, m: _mask_after_softmax(q, k, v, m, NEG_INF)),
    Mistake("masked scores set to 0: exp(0) = 1 still gives them weight; fill them with float('-inf')",
            lambda q, k, v, m: _masked(q, k, v, m, fill=0.0)),
    Mistake("a finite fill such as -100 is not far enough below the real scores (here they go below -300): fill "
            "with float('-inf')", lambda q, k, v, m: _masked(q, k, v, m, fill=-100.0)),
    Mistake("the mask is ignored: apply it with scores.masked_fill(~mask, float('-inf')) before the softmax",
            lambda q, k, v, m: _attend(q, k, v)),
    Mistake("missing scale: divide the scores by sqrt(d_k) before masking and softmax",
            lambda q, k, v, m: _masked(q, k, v, m, scale=1.0)),
    Mistake("wrong scale: divided by d_k; divide by math.sqrt(d_k)",
            lambda q, k, v, m: _masked(q, k, v, m, scale=1 / q.shape[-1])),
    Mistake("softmax over the wrong axis: normalise over the keys (dim=-1)",
            lambda q, k, v, m: _masked(q, k, v, m, dim=-2)),
    Mistake("exp overflows for scores above about 88: use torch.softmax, or subtract each row's maximum before exp",
            lambda q, k, v, m: _masked(q, k, v, m, by_hand=True)),
    Mistake("the row maximum was taken before masking: a blocked key with a huge score sets it, and every allowed "
            "weight underflows to 0; mask first, then shift by the maximum (or use torch.softmax)",
            lambda q, k, v, m: _masked(q, k, v, m, by_hand=True, shift="before masking")),
    Mistake("shifted by the maximum of the whole tensor: each row needs its own maximum (dim=-1, keepdim=True), "
            "or rows far below the overall maximum underflow to 0/0",
            lambda q, k, v, m: _masked(q, k, v, m, by_hand=True, shift="all")),
    Mistake("the mask was multiplied by -inf: 0 * -inf is NaN, so every allowed score becomes NaN; use "
            "scores.masked_fill(~mask, float('-inf'))", _mask_times_minus_inf),
]


def check_masked_attention(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(q, k, v, mask) -> (output, weights)``; mask is bool, True = allowed, broadcastable to the scores."""
    return check_function("masked_attention", fn, lambda q, k, v, m: scaled_dot_product_attention(q, k, v, m),
                          _masked_cases(), mistakes=MASKED_MISTAKES, output_names=("output", "weights"),
                          exception_hints=_MASK_HINTS + _MASKED_AXES_HINTS, strict=strict)


# ----------------------------------------------------------------------------- causal mask

def _ones(n: int) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool)


CAUSAL_MISTAKES = [
    Mistake("mask inverted: True must mean 'allowed', so the past and the token itself (on and below the diagonal) are True",
            lambda n: _ones(n).triu(1)),
    Mistake("upper triangle: that lets each token see the future and not the past; use torch.tril",
            lambda n: _ones(n).triu()),
    Mistake("the diagonal is missing: a token may attend to itself (torch.tril with diagonal=0)",
            lambda n: _ones(n).tril(-1)),
    Mistake("everything allowed: block the future (keys after the query) with a lower-triangular mask",
            lambda n: _ones(n)),
    Mistake("one step into the future is allowed: torch.tril(..., diagonal=1) lets token i see token i + 1; "
            "use diagonal=0", lambda n: _ones(n).tril(1)),
]


def check_causal_mask(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(seq_len) -> bool [seq_len, seq_len]``, True where query i may see key j (j <= i)."""
    result = evaluate_function("causal_mask", fn, causal_mask, [(4,), (1,), (7,), (2,)], mistakes=CAUSAL_MISTAKES,
                               output_names=("mask",), atol=0, rtol=0)
    return report(result, strict=strict)


# ----------------------------------------------------------------------------- heads

def _split_ref(x: torch.Tensor, h: int) -> torch.Tensor:
    b, s, d = x.shape
    return x.view(b, s, h, d // h).transpose(1, 2)


def _split_cases() -> list[tuple]:
    g = _gen(3)
    # First case: seq == heads == 3, so forgetting the transpose keeps the shape (and gets a hint).
    return [(torch.randn(2, 3, 12, generator=g), 3), (torch.randn(1, 5, 8, generator=g), 2),
            (torch.randn(2, 4, 24, generator=g), 6)]


SPLIT_MISTAKES = [
    Mistake("heads split by reshape without transpose: reshape(batch, heads, seq, d_head) mixes tokens into heads; "
            "view as (batch, seq, heads, d_head), then .transpose(1, 2)",
            lambda x, h: x.reshape(x.shape[0], h, x.shape[1], x.shape[2] // h)),
    Mistake("features split in the wrong order: each head owns a contiguous block of d_head features, so view the "
            "last axis as (heads, d_head), not (d_head, heads)",
            lambda x, h: x.view(x.shape[0], x.shape[1], x.shape[2] // h, h).permute(0, 3, 1, 2)),
    Mistake("transposed before splitting: view the last axis as (heads, d_head) first, then .transpose(1, 2)",
            lambda x, h: x.transpose(1, 2).reshape(x.shape[0], h, x.shape[1], x.shape[2] // h)),
]


def check_split_heads(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(x [batch, seq, d_model], num_heads) -> [batch, heads, seq, d_head]``."""
    return report(evaluate_function("split_heads", fn, _split_ref, _split_cases(), mistakes=SPLIT_MISTAKES,
                                    atol=0, rtol=0), strict=strict)


def _merge_ref(x: torch.Tensor) -> torch.Tensor:
    b, h, s, d = x.shape
    return x.transpose(1, 2).reshape(b, s, h * d)


def _merge_cases() -> list[tuple]:
    g = _gen(4)
    return [(torch.randn(2, 3, 3, 4, generator=g),), (torch.randn(1, 2, 5, 4, generator=g),),
            (torch.randn(2, 6, 4, 4, generator=g),)]


MERGE_MISTAKES = [
    Mistake("heads merged by reshape without transpose: move the heads axis next to d_head first, "
            "x.transpose(1, 2), then .contiguous().view(...) or .reshape(...)",
            lambda x: x.reshape(x.shape[0], x.shape[2], x.shape[1] * x.shape[3])),
    Mistake("features merged in the wrong order: after transpose(1, 2) the last two axes are (heads, d_head); "
            "flatten them in that order so head h fills features h*d_head ... (h+1)*d_head - 1",
            lambda x: x.permute(0, 2, 3, 1).reshape(x.shape[0], x.shape[2], x.shape[1] * x.shape[3])),
]


def check_merge_heads(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(x [batch, heads, seq, d_head]) -> [batch, seq, heads * d_head]``."""
    hints = [("view size is not compatible", "after transpose the tensor is not contiguous: .contiguous().view(...) "
                                             "or .reshape(...)")]
    return check_function("merge_heads", fn, _merge_ref, _merge_cases(), mistakes=MERGE_MISTAKES, atol=0, rtol=0,
                          exception_hints=hints, strict=strict)


# ----------------------------------------------------------------------------- the whole forward

def _mha_variant(mha: MultiHeadAttention, query, key, value, mask=None, *, reshape_split=False, scale=None,
                 out_proj=True, invert=False, dim=-1, kv_from_query=False, split_order=False, reshape_merge=False,
                 by_hand=False):
    """Multi-head attention with one knob per known mistake (all knobs off = correct)."""
    b, h = query.shape[0], mha.num_heads

    def split(x):
        if reshape_split:
            return x.reshape(b, h, x.shape[1], x.shape[2] // h)
        if split_order:
            return x.view(b, x.shape[1], x.shape[2] // h, h).permute(0, 3, 1, 2)
        return _split_ref(x, h)

    src_k, src_v = (query, query) if kv_from_query else (key, value)
    q, k, v = split(mha.q_proj(query)), split(mha.k_proj(src_k)), split(mha.v_proj(src_v))
    scores = q @ _t(k) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if mask is not None:
        m = mask[:, None] if mask.ndim == 3 else mask
        scores = scores.masked_fill(m if invert else ~m, NEG_INF)
    weights = _softmax_by_hand(scores, None) if by_hand else torch.softmax(scores, dim=dim)
    heads = weights @ v
    out = heads.reshape(b, heads.shape[2], -1) if reshape_merge else _merge_ref(heads)
    return mha.out_proj(out) if out_proj else out


def _mha_cases() -> list[tuple]:
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(5)
    mha = MultiHeadAttention(12, 3).eval()
    with torch.no_grad():
        for p in mha.parameters():
            p.normal_(0, 0.4)
    torch.random.set_rng_state(torch_state)  # leave the learner's random stream untouched
    g = _gen(5)
    x = torch.randn(2, 4, 12, generator=g)
    mem_k, mem_v = torch.randn(2, 6, 12, generator=g), torch.randn(2, 6, 12, generator=g)
    y = torch.randn(2, 5, 12, generator=g)
    mixed = _mixed_mask(g, 4, 4)
    big = torch.randn(3, 5, 12, generator=g) * 12.0
    return [
        (mha, x, x, x, mixed),                                            # self-attention, mask mixed in every row
        (mha, x, mem_k, mem_v, None),                                     # cross-attention, no mask
        (mha, y, y, y, causal_mask(5)),                                   # causal
        (mha, x, mem_k, mem_v, padding_mask([6, 3])),                     # cross-attention with padding
        (mha, x, mem_k, mem_v, padding_mask([2, 6]).flip(-1)),            # left padding
        (mha, big, big, big, causal_mask(5)),                             # batch 3, scores above 88
    ]


MHA_MISTAKES = [
    Mistake("heads split by reshape without transpose: view as (batch, seq, heads, d_head), then .transpose(1, 2)",
            lambda mha, q, k, v, m: _mha_variant(mha, q, k, v, m, reshape_split=True)),
    Mistake("missing scale: divide the scores by sqrt(d_head), the size of one head",
            lambda mha, q, k, v, m: _mha_variant(mha, q, k, v, m, scale=1.0)),
    Mistake("scaled by sqrt(d_model): in multi-head attention d_k is the size of one head, d_model // num_heads",
            lambda mha, q, k, v, m: _mha_variant(mha, q, k, v, m, scale=1 / math.sqrt(mha.d_model))),
    Mistake("wrong scale: divided by d_head; divide by math.sqrt(d_head)",
            lambda mha, q, k, v, m: _mha_variant(mha, q, k, v, m, scale=1 / mha.d_head)),
    Mistake("mask inverted: True means 'may attend'; fill the scores where the mask is False with -inf",
            lambda mha, q, k, v, m: _mha_variant(mha, q, k, v, m, invert=True)),
    Mistake("softmax over the wrong axis: normalise over the keys (dim=-1)",
            lambda mha, q, k, v, m: _mha_variant(mha, q, k, v, m, dim=-2)),
    Mistake("the output projection is missing: finish with mha.out_proj(merged heads)",
            lambda mha, q, k, v, m: _mha_variant(mha, q, k, v, m, out_proj=False)),
    Mistake("keys and values were projected from the query: use mha.k_proj(key) and mha.v_proj(value) "
            "(they differ from the query in cross-attention)",
            lambda mha, q, k, v, m: _mha_variant(mha, q, k, v, m, kv_from_query=True)),
    Mistake("features split in the wrong order: each head owns a contiguous block of d_head features, so view the "
            "last axis as (heads, d_head), not (d_head, heads)",
            lambda mha, q, k, v, m: _mha_variant(mha, q, k, v, m, split_order=True)),
    Mistake("heads merged by reshape without transpose: move the heads axis next to d_head first, "
            "transpose(1, 2), then reshape to [batch, seq, d_model]",
            lambda mha, q, k, v, m: _mha_variant(mha, q, k, v, m, reshape_merge=True)),
    Mistake("exp overflows for scores above about 88: use torch.softmax, or subtract each row's maximum before exp",
            lambda mha, q, k, v, m: _mha_variant(mha, q, k, v, m, by_hand=True)),
    Mistake("the mask is ignored: fill the scores where the mask is False with -inf before the softmax",
            lambda mha, q, k, v, m: _mha_variant(mha, q, k, v, None)),
]


def _mha_reference(mha, query, key, value, mask):
    with torch.no_grad():
        return mha(query, key, value, mask=mask)


def check_multi_head_attention(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(mha, query, key, value, mask) -> output [batch, seq_q, d_model]``.

    ``mha`` is a course MultiHeadAttention (use its q_proj, k_proj, v_proj, out_proj and num_heads);
    ``mask`` is None or bool (True = allowed) broadcastable to [batch, heads, seq_q, seq_k]
    (here [seq_q, seq_k] or [batch, 1, 1, seq_k]).
    """
    return check_function("multi_head_attention", fn, _mha_reference, _mha_cases(), mistakes=MHA_MISTAKES,
                          context=torch.no_grad, exception_hints=_AXES_HINTS, strict=strict)
