"""Checkers for lesson 08 (decoder-only GPT): the causal mask inside attention, temperature,
top-k and top-p filtering.

The filters return logits with removed tokens at ``-inf``. Their checkers compare the
*distributions* the learner's logits give (``softmax`` of the output), so any correct version
passes (removing with ``-inf`` or with a huge negative number, shifting all logits by a constant),
while every wrong choice of *which* tokens survive shows up as a different distribution. The
temperature checker compares the logits themselves (``logits / t``).

The cases are chosen so that each mistake below gives an output different from the correct one and
from every other mistake on the first case where it fails (an unsorted vocabulary, a row whose top
token alone exceeds ``p``), and so that they hold the boundaries the exercises define: for causal
attention, scores far above 88 with row maxima far apart (a softmax written without the max shift,
or shifted by the mean or the global max, overflows or underflows to NaN) and a single token; for
top-k, logits tied at the k-th largest (every tied logit stays, so a row keeps more than k) and
``k`` equal to the vocabulary size; for top-p, a row whose probabilities are exact in float32 and
whose mass before a token is exactly ``p`` (that token is removed: ``>= p``).
``tests/checks/test_checks_generate.py`` runs every mistake through its checker to prove it.
"""
from __future__ import annotations

import math

import torch

from ..attention import causal_mask, scaled_dot_product_attention
from ..generate import top_k_filter, top_p_filter
from .core import CheckResult, Mistake, check_function

__all__ = [
    "check_causal_self_attention",
    "check_temperature",
    "check_top_k_filter",
    "check_top_p_filter",
]

NEG_INF = float("-inf")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- causal self-attention

def _causal_cases() -> list[tuple]:
    g = _gen(8)
    # seq 5, d_k 8: the mask is never square with d_k, so a mask built from the wrong size fails loudly.
    big_q, big_k = torch.randn(2, 2, 7, 8, generator=g) * 12, torch.randn(2, 2, 7, 8, generator=g) * 12
    big_q[0, 0, 3] *= 0.02                                   # one row far below the others (global max shift underflows)
    return [
        tuple(torch.randn(2, 5, 8, generator=g) for _ in range(3)),          # [batch, seq, d_k]
        tuple(torch.randn(2, 3, 6, 8, generator=g) * 1.5 for _ in range(3)),  # [batch, heads, seq, d_k]
        tuple(torch.randn(1, 1, 1, 4, generator=g) for _ in range(3)),       # a single token
        # scores up to several hundred: exp() overflows above 88 in float32 without the max shift
        (big_q, big_k, torch.randn(2, 2, 7, 8, generator=g)),
    ]


def _causal_reference(q, k, v):
    return scaled_dot_product_attention(q, k, v, causal_mask(q.shape[-2]))


def _scores(q, k, scale=True):
    s = q @ k.transpose(-2, -1)
    return s / math.sqrt(q.shape[-1]) if scale else s


def _with_allowed(q, k, v, allowed, fill=NEG_INF, scale=True):
    w = torch.softmax(_scores(q, k, scale).masked_fill(~allowed, fill), dim=-1)
    return w @ v, w


def _ones(n):
    return torch.ones(n, n, dtype=torch.bool)


def _multiplied_by_mask(q, k, v):
    w = torch.softmax(_scores(q, k) * causal_mask(q.shape[-2]), dim=-1)
    return w @ v, w


def _masked_after_softmax(q, k, v):
    w = torch.softmax(_scores(q, k), dim=-1) * causal_mask(q.shape[-2])
    return w @ v, w


def _softmax_over_queries(q, k, v):
    w = torch.softmax(_scores(q, k).masked_fill(~causal_mask(q.shape[-2]), NEG_INF), dim=-2)
    return w @ v, w


CAUSAL_ATTENTION_MISTAKES = [
    Mistake("the mask is transposed: torch.triu lets each token see the FUTURE; a GPT may see itself and the "
            "past, so keep the lower triangle (torch.tril)",
            lambda q, k, v: _with_allowed(q, k, v, _ones(q.shape[-2]).triu())),
    Mistake("the mask is inverted: True must mean 'may attend'; fill the scores with -inf where the causal mask is False",
            lambda q, k, v: _with_allowed(q, k, v, ~causal_mask(q.shape[-2]))),
    Mistake("the future scores became 0 (multiplied by the mask, or filled with 0): exp(0) = 1 still gives "
            "them weight; fill them with float('-inf') (scores.masked_fill(~mask, float('-inf')))",
            _multiplied_by_mask),
    Mistake("the mask was applied after the softmax: the remaining weights no longer sum to 1; mask the scores "
            "with -inf BEFORE the softmax",
            _masked_after_softmax),
    Mistake("the diagonal is masked too: a token may attend to itself (torch.tril, diagonal=0)",
            lambda q, k, v: _with_allowed(q, k, v, _ones(q.shape[-2]).tril(-1))),
    Mistake("no causal mask: every token sees the whole sequence, the future included",
            lambda q, k, v: _with_allowed(q, k, v, _ones(q.shape[-2]))),
    Mistake("missing scale: divide the scores by sqrt(d_k) before masking and softmax",
            lambda q, k, v: _with_allowed(q, k, v, causal_mask(q.shape[-2]), scale=False)),
    Mistake("divided by d_k: the scale is 1 / sqrt(d_k)",
            lambda q, k, v: _with_allowed(q * q.shape[-1] ** -0.5, k, v, causal_mask(q.shape[-2]))),
    Mistake("softmax over the wrong axis: each query's weights over the keys sum to 1, softmax(dim=-1)",
            _softmax_over_queries),
]



def _causal_locate(args, name, got, want) -> str | None:
    if name != "weights":
        return None
    future = ~causal_mask(got.shape[-1])
    if bool((got[..., future] != 0).any()):
        return ("the future keys (above the diagonal) get some weight: fill their scores with float('-inf'), "
                "which no score can beat (a fill like -100 is not far enough below scores of several hundred)")
    return None


_OVERFLOW = ("the scores in this case reach several hundred, and exp() overflows above 88 in float32: "
             "subtract each row's own maximum before exp (torch.softmax does), or use torch.softmax")


def check_causal_self_attention(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(q, k, v) -> (output, weights)`` for causal self-attention.

    ``q, k, v: [..., seq, d_k]`` (the same ``seq``); ``weights [..., seq, seq]`` with query ``i``
    attending only to keys ``0..i``; ``output = weights @ v``.
    """
    return check_function("causal_self_attention", fn, _causal_reference, _causal_cases(),
                          mistakes=CAUSAL_ATTENTION_MISTAKES, output_names=("output", "weights"), nonfinite_hint=_OVERFLOW,
                          locate=_causal_locate,
                          exception_hints=[(text, "the shapes do not fit: build the mask for this call's seq, q.shape[-2], "
                                            "and transpose the last two axes of k, k.transpose(-2, -1)")
                                           for text in ("must match the size of tensor", "does not broadcast")],
                          strict=strict)


# ----------------------------------------------------------------------------- temperature

def _temperature_cases() -> list[tuple]:
    g = _gen(1)
    return [
        (torch.randn(2, 7, generator=g) * 2 + 0.5, 0.5),   # t < 1: dividing and multiplying differ
        (torch.randn(11, generator=g) * 3, 2.0),
        (torch.randn(2, 3, 5, generator=g), 0.7),
    ]


TEMPERATURE_MISTAKES = [
    Mistake("multiplied by the temperature: divide the logits by t, so a small t sharpens the distribution",
            lambda x, t: x * t),
    Mistake("returned probabilities: return the scaled logits (logits / t); the softmax comes later, when sampling",
            lambda x, t: torch.softmax(x / t, dim=-1)),
    Mistake("divided the probabilities by t: temperature divides the logits, before any softmax",
            lambda x, t: torch.softmax(x, dim=-1) / t),
    Mistake("exponentiated the scaled logits: return logits / t itself",
            lambda x, t: torch.exp(x / t)),
    Mistake("subtracted the temperature: a shift of every logit changes nothing after the softmax; divide by t",
            lambda x, t: x - t),
    Mistake("floor division: // rounds the scaled logits down; divide with /",
            lambda x, t: x // t),
    Mistake("returned log-probabilities: return logits / t itself (log_softmax shifts every row)",
            lambda x, t: torch.log_softmax(x / t, dim=-1)),
]


def check_temperature(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(logits, t) -> logits / t`` (``logits: [..., vocab]``, ``t > 0``)."""
    return check_function("apply_temperature", fn, lambda x, t: x / t, _temperature_cases(),
                          mistakes=TEMPERATURE_MISTAKES, output_names=("scaled logits",), atol=1e-6, strict=strict)


# ----------------------------------------------------------------------------- shared: compare distributions

def _as_distribution(fn):
    """Run ``fn`` and turn its logits into ``softmax`` probabilities (anything else passes through,
    so the engine can say what it got). Only ``fn`` itself may raise: an exception of the checker's
    own softmax would be blamed on the learner."""
    def wrapped(*args):
        out = fn(*args)
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            try:
                return torch.softmax(out, dim=-1)
            except Exception:
                return out
        return out
    wrapped.__name__ = getattr(fn, "__name__", "fn")
    return wrapped


def _distinct_logits(g, *shape, spread=2.0) -> torch.Tensor:
    """Random logits with no two values in a row closer than 1e-3 (no ties at any boundary)."""
    while True:
        x = torch.randn(*shape, generator=g) * spread
        gaps = x.sort(dim=-1).values.diff(dim=-1)
        if bool((gaps > 1e-3).all()):
            return x


# ----------------------------------------------------------------------------- top-k

def _top_k_cases() -> list[tuple]:
    g = _gen(2)
    tied = torch.tensor([[1.0, 3.0, 2.0, 2.0, 0.5, 2.0, -1.0],     # k = 3: 3.0 and the three 2.0s all stay
                         [0.3, -0.2, 1.7, 0.9, 1.7, -2.0, 0.0],    # a tie above the boundary: no effect
                         [2.5, 0.1, 2.5, 2.5, -0.4, 1.0, 0.6]])    # the top value itself tied three times
    return [
        (_distinct_logits(g, 3, 9), 2),        # batch of rows: k <= rows, so a top-k over dim 0 still runs
        (_distinct_logits(g, 12), 4),
        (_distinct_logits(g, 2, 3, 8), 5),
        (_distinct_logits(g, 6), 1),
        (tied, 3),                             # ties at the k-th largest
        (_distinct_logits(g, 2, 5), 5),        # k equal to the vocabulary size: every token stays
    ]


def _keep_k(x: torch.Tensor, k: int, *, fill=NEG_INF, strict=False, smallest=False) -> torch.Tensor:
    if smallest:
        kth = torch.topk(x, k, dim=-1, largest=False).values[..., -1:]
        return x.masked_fill(x > kth, fill)
    kth = torch.topk(x, k, dim=-1).values[..., -1:]
    return x.masked_fill(x <= kth if strict else x < kth, fill)


def _top_k_over_dim0(x, k):
    kth = torch.topk(x, k, dim=0).values[-1:]
    return x.masked_fill(x < kth, NEG_INF)


def _top_k_whole_tensor(x, k):
    kth = torch.topk(x.flatten(), k).values[-1]
    return x.masked_fill(x < kth, NEG_INF)


def _top_k_scatter(x, k):
    values, index = torch.topk(x, k, dim=-1)
    return torch.full_like(x, NEG_INF).scatter(-1, index, values)


TOP_K_MISTAKES = [
    Mistake("returned probabilities: return the filtered LOGITS (removed ones at -inf); the softmax comes when sampling",
            lambda x, k: torch.softmax(_keep_k(x, k), dim=-1)),
    Mistake("kept k + 1 tokens: the threshold is the k-th largest logit, topk(logits, k).values[..., -1:]",
            lambda x, k: _keep_k(x, min(k + 1, x.shape[-1]))),
    Mistake("kept only k - 1 tokens: a token EQUAL to the k-th largest stays; remove only logits < the k-th largest",
            lambda x, k: _keep_k(x, k, strict=True)),
    Mistake("removed tokens set to 0: a logit of 0 still has probability; set them to float('-inf')",
            lambda x, k: _keep_k(x, k, fill=0.0)),
    Mistake("kept the k SMALLEST logits: keep the largest (torch.topk's default, largest=True)",
            lambda x, k: _keep_k(x, k, smallest=True)),
    Mistake("took the top k along the wrong axis: filter each row over the vocabulary (dim=-1)",
            _top_k_over_dim0),
    Mistake("took the k largest of the whole batch: the threshold is per row (topk along dim=-1, keep [..., -1:])",
            _top_k_whole_tensor),
    Mistake("kept exactly k tokens where several tie at the k-th largest: keep EVERY logit >= the k-th largest "
            "(torch.topk's indices pick only k of the tied ones)",
            _top_k_scatter),
    Mistake("returned only the k largest values: keep the full [..., vocab] shape, with the removed logits at -inf",
            lambda x, k: torch.topk(x, k, dim=-1).values),
    Mistake("returned the logits in sorted order: keep each logit at its own vocabulary position",
            lambda x, k: _keep_k(torch.sort(x, dim=-1, descending=True).values, k)),
]


def _top_k_locate(args, name, got, want) -> str | None:
    """Compare the kept sets (probability > 0) and say where they differ, in the exercise's terms."""
    logits, k = args
    kept_got, kept_want = got > 0, want > 0
    wrong = kept_got != kept_want
    if not bool(wrong.any()):
        return ("the right tokens are kept, but their probabilities differ: return the kept logits unchanged "
                "(the softmax comes when sampling)")
    if k >= logits.shape[-1]:
        return f"k = {k} equals the vocabulary size here, so every token stays (topk(logits, k) is still defined)"
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    tied = (logits == kth) & ((logits == kth).sum(-1, keepdim=True) > 1)
    if bool(tied.any()) and not bool(wrong[~tied].any()):
        return ("wrong only at logits tied with the k-th largest: keep every logit >= the k-th largest, "
                "so a row with ties keeps more than k tokens")
    dropped, extra = int((kept_want & ~kept_got).sum()), int((kept_got & ~kept_want).sum())
    return f"{dropped} token(s) removed that should stay and {extra} kept that should go"


def check_top_k_filter(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(logits, k) -> logits`` with all but the ``k`` largest of each row set to ``-inf``.

    Compared as distributions: ``softmax(fn(logits, k))`` against the correct one.
    """
    return check_function("top_k_filter", _as_distribution(fn), _as_distribution(top_k_filter), _top_k_cases(),
                          mistakes=[Mistake(m.hint, _as_distribution(m.fn)) for m in TOP_K_MISTAKES],
                          output_names=("softmax of your filtered logits",), atol=1e-6, locate=_top_k_locate,
                          nonfinite_hint=_ALL_REMOVED,
                          exception_hints=[("out of bounds", "k can equal the vocabulary size: the k-th largest is at index "
                                            "k - 1 of the sorted row, torch.topk(logits, k).values[..., -1:]"),
                                           ("selected index k out of range", "k can equal the vocabulary size: take "
                                            "torch.topk(logits, k), not k + 1")],
                          strict=strict)


_ALL_REMOVED = ("a row whose logits are all -inf has no distribution (softmax gives NaN): "
                "at least the largest logit must stay")


# ----------------------------------------------------------------------------- top-p

def _logits_from_probs(*rows: list[float], shift: float = 1.5) -> torch.Tensor:
    """Logits whose softmax is exactly the given rows (plus a shift, so they are not log-probabilities)."""
    return torch.log(torch.tensor(rows, dtype=torch.float32)) + shift


def _top_p_cases() -> list[tuple]:
    g = _gen(3)
    first = _logits_from_probs(
        [0.05, 0.30, 0.15, 0.50],   # sorted 0.50, 0.30 | 0.15, 0.05: 0.30 carries the total across p = 0.55
        [0.10, 0.62, 0.18, 0.10],   # the top token alone (0.62) exceeds p: only it survives
        [0.20, 0.08, 0.40, 0.32],   # 0.40 + 0.32 = 0.72 crosses p
    )
    # Powers of two: the softmax and the cumulative sum are exact in float32 (float64 lands a hair above),
    # so the mass before the 0.25 token is exactly p = 0.5 and it is removed (>= p).
    exact = _logits_from_probs([0.125, 0.5, 0.125, 0.25], [0.30, 0.10, 0.35, 0.25])
    return [
        (first, 0.55),
        (_distinct_logits(g, 2, 10), 0.9),
        (_distinct_logits(g, 3, 2, 7, spread=3.0), 0.3),
        (_distinct_logits(g, 9), 1.0),                      # p = 1 keeps every token
        (exact, 0.5),                                       # the mass before a token is exactly p
    ]


def _nucleus(x, p, *, keep_crossing=True, keep_top=True, sort=True, descending=True, scatter_back=True,
             probs_of=None, strict=False, gather=False, cum_dim=-1):
    if sort:
        values, order = torch.sort(x, dim=-1, descending=descending)
    else:
        values, order = x, torch.arange(x.shape[-1]).expand_as(x)
    probs = torch.softmax(values, dim=-1) if probs_of is None else probs_of(values)
    cum = torch.cumsum(probs, dim=cum_dim)
    if strict:
        remove = cum - probs > p
    else:
        remove = (cum - probs >= p) if keep_crossing else (cum > p)
    if keep_top:
        remove[..., 0] = False
    if not scatter_back:
        return values.masked_fill(remove, NEG_INF)
    remove = remove.gather(-1, order) if gather else torch.zeros_like(remove).scatter(-1, order, remove)
    return x.masked_fill(remove, NEG_INF)


TOP_P_MISTAKES = [
    Mistake("returned probabilities: return the filtered LOGITS (removed ones at -inf); the softmax comes when sampling",
            lambda x, p: torch.softmax(_nucleus(x, p), dim=-1)),
    Mistake("dropped the token that carries the total across p: keep a token while the probability of the tokens "
            "BEFORE it is below p (cumsum - probs < p), so the kept set reaches p",
            lambda x, p: _nucleus(x, p, keep_crossing=False)),
    Mistake("removed every token when the top one alone exceeds p (and dropped the one crossing p): always keep "
            "the most likely token, and keep tokens while the mass before them is below p",
            lambda x, p: _nucleus(x, p, keep_crossing=False, keep_top=False)),
    Mistake("accumulated the probabilities in vocabulary order: sort them, largest first, before the cumulative sum",
            lambda x, p: _nucleus(x, p, sort=False)),
    Mistake("sorted in ascending order: the nucleus is made of the MOST likely tokens (descending=True)",
            lambda x, p: _nucleus(x, p, descending=False)),
    Mistake("returned the filtered logits in sorted order: scatter the removal mask back to the vocabulary "
            "order (remove.scatter(-1, order, ...)) before masking",
            lambda x, p: _nucleus(x, p, scatter_back=False)),
    Mistake("accumulated the logits, not probabilities: take the softmax of the sorted logits before the cumulative sum",
            lambda x, p: _nucleus(x, p, probs_of=lambda v: v)),
    Mistake("kept a token whose mass before it is exactly p: remove it when that mass REACHES p (>= p, not > p)",
            lambda x, p: _nucleus(x, p, strict=True)),
    Mistake("gathered the removal mask with the sort order: gather applies the permutation backwards; put the "
            "sorted mask back with remove.scatter(-1, order, sorted_remove)",
            lambda x, p: _nucleus(x, p, gather=True)),
    Mistake("the cumulative sum runs over the wrong axis: accumulate along the vocabulary, cumsum(dim=-1)",
            lambda x, p: _nucleus(x, p, cum_dim=0, keep_top=False)),
    Mistake("softmax over the wrong axis: the probabilities of one row sum to 1, softmax(dim=-1)",
            lambda x, p: _nucleus(x, p, probs_of=lambda v: torch.softmax(v, dim=0), keep_top=False)),
]


def _top_p_locate(args, name, got, want) -> str | None:
    """Compare the kept sets and say where they differ: at the boundary mass, the top token, ..."""
    logits, p = args
    kept_got, kept_want = got > 0, want > 0
    wrong = kept_got != kept_want
    if not bool(wrong.any()):
        return ("the right tokens are kept, but their probabilities differ: return the kept logits unchanged "
                "(the softmax comes when sampling)")
    values, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(values, dim=-1)
    before = torch.zeros_like(probs).scatter(-1, order, torch.cumsum(probs, dim=-1) - probs)
    if bool((~kept_got & kept_want & (before == 0)).any()):
        return "the most likely token was removed: it always stays (nothing comes before it)"
    edge = before == p
    if bool(edge.any()) and not bool(wrong[~edge].any()):
        return (f"wrong only at the token whose mass before it is exactly p = {p}: it is removed, "
                "because the mass before it already reaches p (>= p)")
    dropped, extra = int((kept_want & ~kept_got).sum()), int((kept_got & ~kept_want).sum())
    return f"{dropped} token(s) removed that should stay and {extra} kept that should go"


def check_top_p_filter(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(logits, p) -> logits`` keeping the smallest most-likely set whose probability reaches ``p``
    (the top token always kept), the rest set to ``-inf``. Compared as distributions (softmax)."""
    return check_function("top_p_filter", _as_distribution(fn), _as_distribution(top_p_filter), _top_p_cases(),
                          mistakes=[Mistake(m.hint, _as_distribution(m.fn)) for m in TOP_P_MISTAKES],
                          output_names=("softmax of your filtered logits",), atol=1e-6, locate=_top_p_locate,
                          nonfinite_hint=_ALL_REMOVED, strict=strict)
