"""Checkers for lesson 11 (efficient attention): the online-softmax step, the tiled loop, a
sliding-window mask and the KV-cache append.

The cases are chosen so that each listed mistake gives an output different from the correct one and
from the other mistakes: the online-softmax cases have a running state where the new block raises
the maximum in some rows and not in others; the tiled-loop cases have a key count that is not a
multiple of the block size; the window cases have n > 2w + 2; the first KV-cache case appends as
many positions as the cache holds, so concatenating on the wrong axis gives a shape instead of an
error. ``tests/checks/test_checks_efficient.py`` runs every mistake through its checker.

The boundaries: scores far above 88 (up to about 250), where exp() overflows in float32 unless every
exponent is a score minus the running maximum; the first block (m = -inf); a block of one key; a
block that raises the maximum by more than 88 (the old state underflows to 0, as it should); for
the tiled loop a partial last tile, a block larger than all the keys, blocks of one key, a query
whose scores are all far below 0 (a running maximum started at 0 underflows to 0 / 0) and one whose
scores are far above 88; for the window w = 0, w >= n - 1 and a single position.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..efficient import kv_append, online_softmax_update, sliding_window_mask
from .core import CheckResult, Mistake, check_function

__all__ = ["check_online_softmax_update", "check_tiled_attention", "check_sliding_window_mask", "check_kv_append"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- online softmax update

def _state_after(scores: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The exact (m, l, acc) after seeing ``scores`` [..., n_q, t] and ``values`` [..., t, d_v]."""
    m = scores.amax(dim=-1, keepdim=True)
    p = torch.exp(scores - m)
    return m, p.sum(dim=-1, keepdim=True), p @ values


def _update_cases() -> list[tuple]:
    g = _gen(11)
    cases = []
    # Mid-stream: 3 rows seen 5 keys; the new block of 4 raises the max in rows 0 and 2 only.
    seen = torch.randn(3, 5, generator=g)
    seen_v = torch.randn(5, 2, generator=g)
    m, l, acc = _state_after(seen, seen_v)
    block = torch.randn(3, 4, generator=g)
    block[0] += 3.0
    block[1] -= 3.0
    block[2, 1] = float(m[2]) + 1.5
    cases.append((m, l, acc, block, torch.randn(4, 2, generator=g)))
    # The first block: m = -inf, l = 0, acc = 0 (a batch and a head axis in front).
    empty_m = torch.full((2, 1, 3, 1), float("-inf"))
    cases.append((empty_m, torch.zeros(2, 1, 3, 1), torch.zeros(2, 1, 3, 4),
                  torch.randn(2, 1, 3, 6, generator=g), torch.randn(2, 1, 6, 4, generator=g)))
    # Mid-stream with heads and scores up to about 250: exp() overflows above 88 in float32 without the shift.
    seen = torch.randn(1, 2, 4, 6, generator=g) * 30 + 150
    m, l, acc = _state_after(seen, torch.randn(1, 2, 6, 3, generator=g))
    block = torch.randn(1, 2, 4, 5, generator=g) * 30 + 150
    block[0, 0, 1] += 120                      # this row's maximum jumps by more than 88: the old state underflows
    cases.append((m, l, acc, block, torch.randn(1, 2, 5, 3, generator=g)))
    # One query per example and a block of one key.
    seen = torch.randn(3, 1, 4, generator=g) * 2
    m, l, acc = _state_after(seen, torch.randn(3, 4, 5, generator=g))
    cases.append((m, l, acc, torch.randn(3, 1, 1, generator=g) * 2, torch.randn(3, 1, 5, generator=g)))
    # The first block again, every score far below 0: a state whose m starts at 0 instead of -inf keeps
    # m = 0 and underflows exp() to 0 (the -inf start is what lets the first block set the maximum).
    g = _gen(12)
    cases.append((torch.full((2, 1), float("-inf")), torch.zeros(2, 1), torch.zeros(2, 3),
                  torch.randn(2, 5, generator=g) - 150, torch.randn(5, 3, generator=g)))
    return cases


def _no_rescale(m, l, acc, s, v):
    m_new = torch.maximum(m, s.amax(-1, keepdim=True))
    p = torch.exp(s - m_new)
    return m_new, l + p.sum(-1, keepdim=True), acc + p @ v


def _rescale_l_only(m, l, acc, s, v):
    m_new = torch.maximum(m, s.amax(-1, keepdim=True))
    p = torch.exp(s - m_new)
    return m_new, torch.exp(m - m_new) * l + p.sum(-1, keepdim=True), acc + p @ v


def _rescale_acc_only(m, l, acc, s, v):
    m_new = torch.maximum(m, s.amax(-1, keepdim=True))
    p = torch.exp(s - m_new)
    return m_new, l + p.sum(-1, keepdim=True), torch.exp(m - m_new) * acc + p @ v


def _block_max_in_exp(m, l, acc, s, v):
    block_max = s.amax(-1, keepdim=True)
    m_new = torch.maximum(m, block_max)
    alpha = torch.exp(m - m_new)
    p = torch.exp(s - block_max)
    return m_new, alpha * l + p.sum(-1, keepdim=True), alpha * acc + p @ v


def _block_max_as_m(m, l, acc, s, v):
    block_max = s.amax(-1, keepdim=True)
    alpha = torch.exp(m - block_max)
    p = torch.exp(s - block_max)
    return block_max, alpha * l + p.sum(-1, keepdim=True), alpha * acc + p @ v


def _inverted_alpha(m, l, acc, s, v):
    m_new = torch.maximum(m, s.amax(-1, keepdim=True))
    alpha = torch.exp(m_new - m)
    p = torch.exp(s - m_new)
    return m_new, alpha * l + p.sum(-1, keepdim=True), alpha * acc + p @ v


def _old_max_in_exp(m, l, acc, s, v):
    m_new = torch.maximum(m, s.amax(-1, keepdim=True))
    alpha = torch.exp(m - m_new)
    p = torch.exp(s - m)
    return m_new, alpha * l + p.sum(-1, keepdim=True), alpha * acc + p @ v


def _unshifted(m, l, acc, s, v):
    m_new = torch.maximum(m, s.amax(-1, keepdim=True))
    alpha = torch.exp(m - m_new)
    p = torch.exp(s)
    return m_new, alpha * l + p.sum(-1, keepdim=True), alpha * acc + p @ v


def _block_wide_max(m, l, acc, s, v):
    m_new = torch.maximum(m, s.amax(dim=(-2, -1), keepdim=True))
    alpha = torch.exp(m - m_new)
    p = torch.exp(s - m_new)
    return m_new, alpha * l + p.sum(-1, keepdim=True), alpha * acc + p @ v


def _sum_without_keepdim(m, l, acc, s, v):
    m_new = torch.maximum(m, s.amax(-1, keepdim=True))
    alpha = torch.exp(m - m_new)
    p = torch.exp(s - m_new)
    return m_new, alpha * l + p.sum(-1), alpha * acc + p @ v


UPDATE_MISTAKES = [
    Mistake("the first block's running maximum started at 0 instead of -inf: with every score below 0, m stays 0 "
            "and exp() underflows; keep m = -inf until a block sets it (torch.maximum(-inf, x) = x)",
            lambda m, l, acc, s, v: online_softmax_update(torch.where(torch.isinf(m), torch.zeros_like(m), m),
                                                          l, acc, s, v)),
    Mistake("l and acc are not rescaled: when the maximum rises from m to m_new, multiply both the old sum l and "
            "the old accumulator acc by exp(m - m_new) before adding the new block", _no_rescale),
    Mistake("l is rescaled but acc is not: the accumulator holds exp(score - m) * v terms too, so multiply it by "
            "exp(m - m_new) as well", _rescale_l_only),
    Mistake("acc is rescaled but l is not: the running sum l also needs the factor exp(m - m_new)", _rescale_acc_only),
    Mistake("the new block's exponentials use the block's own maximum: shift them by the running maximum "
            "m_new = max(m, block max), the same shift as the rescaled old state", _block_max_in_exp),
    Mistake("the returned m is the block's maximum, not the running maximum: m_new = torch.maximum(m, block max)",
            _block_max_as_m),
    Mistake("the returned m is the block's maximum, not the running maximum: m_new = torch.maximum(m, block max)",
            lambda m, l, acc, s, v: (s.amax(-1, keepdim=True), *online_softmax_update(m, l, acc, s, v)[1:])),
    Mistake("the rescaling factor is upside down: it is exp(m - m_new), which is at most 1", _inverted_alpha),
    Mistake("the new block's exponentials use the OLD maximum m: shift them by m_new, p = exp(scores_block - m_new) "
            "(before the first block m is -inf, and exp(score + inf) overflows)", _old_max_in_exp),
    Mistake("the new block's exponentials are not shifted: p = exp(scores_block - m_new), measured against the same "
            "maximum as the rescaled old state (and exp() of a raw score above 88 overflows)",
            lambda m, l, acc, s, v: _unshifted(m, l, acc, s, v)),
    Mistake("m_new took the maximum of the whole block: each query row keeps its own maximum, "
            "scores_block.amax(dim=-1, keepdim=True)", _block_wide_max),
    Mistake("p.sum(-1) lost its last axis and broadcast: l is [..., n_q, 1], so sum with keepdim=True",
            _sum_without_keepdim),
]

_UPDATE_OVERFLOW = ("the scores in one case reach about 250 and exp() overflows above 88 in float32: every exponent "
                    "must be a score minus m_new (at most 0), and the old state is rescaled by exp(m - m_new)")


def check_online_softmax_update(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(m, l, acc, scores_block, v_block) -> (m_new, l_new, acc_new)``."""
    return check_function("online_softmax_update", fn, online_softmax_update, _update_cases(),
                          mistakes=UPDATE_MISTAKES, output_names=("m_new", "l_new", "acc_new"),
                          nonfinite_hint=_UPDATE_OVERFLOW, exception_hints=[_UPDATE_SHAPES], atol=1e-5, rtol=1e-4,
                          strict=strict)


_UPDATE_SHAPES = ("must match the size of tensor",
                  "the shapes do not fit: keep the reduced axis, scores_block.amax(-1, keepdim=True) and "
                  "p.sum(-1, keepdim=True) are [..., n_q, 1] like m and l")


# ----------------------------------------------------------------------------- the tiled loop

def _tiled_reference(q, k, v, block_size):
    return F.scaled_dot_product_attention(q, k, v)


def _tiled(q, k, v, block_size, *, starts=None, width=None, divide=True, restart=False, scale=None):
    """The key-block loop with knobs for the classic mistakes."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    empty = (torch.full((*q.shape[:-1], 1), float("-inf")), torch.zeros(*q.shape[:-1], 1),
             torch.zeros(*q.shape[:-1], v.shape[-1]))
    m, l, acc = empty
    n = k.shape[-2]
    for start in (starts(n, block_size) if starts else range(0, n, block_size)):
        end = start + (width(block_size) if width else block_size)
        s = q @ k[..., start:end, :].transpose(-2, -1) * scale
        if restart:
            m, l, acc = empty
        m, l, acc = online_softmax_update(m, l, acc, s, v[..., start:end, :])
    return acc / l if divide else acc


def _tiled_cases() -> list[tuple]:
    g = _gen(12)
    # Keys with a positive mean: a query of -20s scores about -150 against every key (a running maximum
    # started at 0 underflows to 0 / 0), a query of +20s about +150 (exp() overflows above 88).
    k_far = torch.randn(2, 7, 16, generator=g) * 0.5 + 2.0
    q_far = torch.randn(2, 3, 16, generator=g)
    q_far[0, 0], q_far[1, 2] = -20.0, 20.0
    return [
        # 10 keys in blocks of 4: the last block is partial (keys 8, 9).
        (torch.randn(2, 3, 5, 8, generator=g), torch.randn(2, 3, 10, 8, generator=g),
         torch.randn(2, 3, 10, 6, generator=g), 4),
        (torch.randn(1, 7, 16, generator=g), torch.randn(1, 12, 16, generator=g), torch.randn(1, 12, 4, generator=g), 4),
        (torch.randn(4, 9, 8, generator=g) * 3, torch.randn(4, 9, 8, generator=g), torch.randn(4, 9, 8, generator=g), 3),
        (q_far, k_far, torch.randn(2, 7, 5, generator=g), 3),                    # 7 keys in blocks of 3
        (torch.randn(3, 4, 8, generator=g), torch.randn(3, 5, 8, generator=g), torch.randn(3, 5, 2, generator=g), 8),
        (torch.randn(2, 6, 4, generator=g), torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g), 1),
    ]


TILED_MISTAKES = [
    Mistake("the final division is missing: after the last block the output is acc / l", 
            lambda q, k, v, b: _tiled(q, k, v, b, divide=False)),
    Mistake("each block is one key short: slice k[..., start:start + block_size, :] (Python slices exclude the end)",
            lambda q, k, v, b: _tiled(q, k, v, b, width=lambda b: b - 1)),
    Mistake("the last block is skipped: loop with range(0, n_keys, block_size) so a partial last block is included",
            lambda q, k, v, b: _tiled(q, k, v, b, starts=lambda n, b: range(0, n - b, b))),
    Mistake("the first key is skipped: the blocks start at key 0",
            lambda q, k, v, b: _tiled(q, k, v, b, starts=lambda n, b: range(1, n, b))),
    Mistake("the scores are not scaled: multiply q @ k^T by 1 / sqrt(d)",
            lambda q, k, v, b: F.scaled_dot_product_attention(q, k, v, scale=1.0)),
    Mistake("the state restarts at every block, so only the last block counts: pass the (m, l, acc) returned by "
            "one step into the next",
            lambda q, k, v, b: _tiled(q, k, v, b, restart=True)),
    Mistake("divided by d: the scale is 1 / sqrt(d)",
            lambda q, k, v, b: _tiled(q, k, v, b, scale=1.0 / q.shape[-1])),
]

_TILED_NAN = ("one query scores about -150 against every key (another about +150): start m at -inf, not 0, so "
              "the first block sets the shift (with m = 0, exp(-150) underflows to 0 and the output is 0 / 0); "
              "l and acc start at 0, and the division comes once, after the last block")


def check_tiled_attention(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(q, k, v, block_size) -> attention output`` (non-causal) against PyTorch's SDPA."""
    return check_function("tiled_attention", fn, _tiled_reference, _tiled_cases(), mistakes=TILED_MISTAKES,
                          nonfinite_hint=_TILED_NAN, atol=1e-5, rtol=1e-4, strict=strict)


# ----------------------------------------------------------------------------- sliding window

def _distance(n: int) -> torch.Tensor:
    i = torch.arange(n)
    return i[:, None] - i[None, :]      # query index minus key index


WINDOW_MISTAKES = [
    Mistake("the window is one-sided: Longformer's window looks w keys to the left AND w to the right, |i - j| <= w "
            "(that is a causal window)", lambda n, w: (_distance(n) >= 0) & (_distance(n) <= w)),
    Mistake("the window is one-sided (only keys to the right): it is symmetric, |i - j| <= w",
            lambda n, w: (_distance(n) <= 0) & (_distance(n) >= -w)),
    Mistake("off by one: the window includes distance w itself, so use <= w, not < w",
            lambda n, w: _distance(n).abs() < w),
    Mistake("off by one: keys at distance w + 1 are outside the window; use <= w",
            lambda n, w: _distance(n).abs() <= w + 1),
    Mistake("the mask is inverted: True marks the keys a query MAY attend to (inside the window)",
            lambda n, w: _distance(n).abs() > w),
    Mistake("the window is w keys wide in total: it is w keys on EACH side plus the token itself, |i - j| <= w",
            lambda n, w: _distance(n).abs() <= w // 2),
    Mistake("the token itself is left out: the window includes distance 0, |i - j| <= w",
            lambda n, w: (_distance(n).abs() <= w) & (_distance(n) != 0)),
]


def _window_locate(args, name, got, want) -> str | None:
    n, w = args
    distance = _distance(n)
    wrong = got != want
    if not bool(got.any()):
        return "the mask is all False: True where query i may attend to key j, |i - j| <= w"
    if bool(wrong.any()):
        at = sorted(set(distance[wrong].tolist()))
        sides = {d > 0 for d in at if d != 0}
        if len(sides) == 1 and not any(-d in at for d in at if d != 0):
            side = "left (keys before the query, i - j > 0)" if sides == {True} else "right (keys after the query)"
            return f"wrong only on the {side}: the window is symmetric, |i - j| <= w"
        distances = sorted({abs(d) for d in at})
        return (f"wrong only at |i - j| = {', '.join(map(str, distances))} (w = {w}, n = {n}): True exactly where "
                "|i - j| <= w")
    return None


def check_sliding_window_mask(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(n, w) -> bool [n, n]``, True where ``|i - j| <= w``."""
    return check_function("sliding_window_mask", fn, sliding_window_mask, [(7, 2), (9, 3), (5, 0), (3, 4), (6, 5), (1, 0), (8, 1)],
                          mistakes=WINDOW_MISTAKES, output_names=("mask",), atol=0, rtol=0, locate=_window_locate,
                          strict=strict)


# ----------------------------------------------------------------------------- KV-cache append

def _kv_cases() -> list[tuple]:
    g = _gen(13)

    def t(*shape):
        return torch.randn(*shape, generator=g)
    return [
        # As many new positions as cached ones: a concatenation on the wrong axis has a wrong shape, not an error.
        (t(2, 3, 4, 5), t(2, 3, 4, 5), t(2, 3, 4, 5), t(2, 3, 4, 5)),
        (t(1, 2, 6, 4), t(1, 2, 6, 4), t(1, 2, 1, 4), t(1, 2, 1, 4)),   # one decoding step
        (t(2, 1, 0, 3), t(2, 1, 0, 3), t(2, 1, 5, 3), t(2, 1, 5, 3)),   # empty cache, then a prompt
    ]


KV_MISTAKES = [
    Mistake("concatenated on the head-size axis: the new positions go along the sequence axis, torch.cat(..., dim=-2)",
            lambda ck, cv, k, v: (torch.cat([ck, k], dim=-1), torch.cat([cv, v], dim=-1))),
    Mistake("concatenated on the heads axis (dim=1): the new positions go along the sequence axis, dim=-2",
            lambda ck, cv, k, v: (torch.cat([ck, k], dim=1), torch.cat([cv, v], dim=1))),
    Mistake("concatenated on the batch axis (dim=0): the new positions go along the sequence axis, dim=-2",
            lambda ck, cv, k, v: (torch.cat([ck, k], dim=0), torch.cat([cv, v], dim=0))),
    Mistake("the cache is overwritten: return the old keys/values followed by the new ones, not the new ones alone",
            lambda ck, cv, k, v: (k, v)),
    Mistake("the new positions are put first: the cache is in time order, old positions then new ones",
            lambda ck, cv, k, v: (torch.cat([k, ck], dim=-2), torch.cat([v, cv], dim=-2))),
    Mistake("keys and values are swapped in the result: return (keys, values)",
            lambda ck, cv, k, v: kv_append(cv, ck, v, k)),
    Mistake("torch.stack adds a new axis: torch.cat(..., dim=-2) joins the new positions to the cache along the "
            "sequence axis",
            lambda ck, cv, k, v: (torch.stack([ck, k], dim=-2), torch.stack([cv, v], dim=-2))),
    Mistake("torch.stack adds a new axis: torch.cat(..., dim=-2) joins the new positions to the cache along the "
            "sequence axis",
            lambda ck, cv, k, v: (torch.stack([ck, k], dim=2), torch.stack([cv, v], dim=2))),
    Mistake("the keys were joined with the values: append the new keys to the cached keys and the new values to "
            "the cached values",
            lambda ck, cv, k, v: (torch.cat([ck, cv], dim=-2), torch.cat([k, v], dim=-2))),
]


def check_kv_append(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(cache_k, cache_v, k_new, v_new) -> (keys, values)`` appended along the sequence axis."""
    return check_function("kv_append", fn, kv_append, _kv_cases(), mistakes=KV_MISTAKES, output_names=("keys", "values"),
                          atol=0, rtol=0, strict=strict)
