"""Checkers for lesson 11 (efficient attention): the online-softmax step, the tiled loop, a
sliding-window mask and the KV-cache append.

The cases are chosen so that each listed mistake gives an output different from the correct one and
from the other mistakes: the online-softmax cases have a running state where the new block raises
the maximum in some rows and not in others; the tiled-loop cases have a key count that is not a
multiple of the block size; the window cases have n > 2w + 2; the first KV-cache case appends as
many positions as the cache holds, so concatenating on the wrong axis gives a shape instead of an
error. ``tests/checks/test_checks_efficient.py`` runs every mistake through its checker.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..efficient import kv_append, online_softmax_update, sliding_window_mask
from .core import FAILED, CheckResult, Mistake, check_function, evaluate_function, report

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
    # Mid-stream with heads and large scores (exp would overflow without the shift).
    seen = torch.randn(1, 2, 4, 6, generator=g) * 30
    m, l, acc = _state_after(seen, torch.randn(1, 2, 6, 3, generator=g))
    cases.append((m, l, acc, torch.randn(1, 2, 4, 5, generator=g) * 30, torch.randn(1, 2, 5, 3, generator=g)))
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


UPDATE_MISTAKES = [
    Mistake("l and acc are not rescaled: when the maximum rises from m to m_new, multiply both the old sum l and "
            "the old accumulator acc by exp(m - m_new) before adding the new block", _no_rescale),
    Mistake("l is rescaled but acc is not: the accumulator holds exp(score - m) * v terms too, so multiply it by "
            "exp(m - m_new) as well", _rescale_l_only),
    Mistake("acc is rescaled but l is not: the running sum l also needs the factor exp(m - m_new)", _rescale_acc_only),
    Mistake("the new block's exponentials use the block's own maximum: shift them by the running maximum "
            "m_new = max(m, block max), the same shift as the rescaled old state", _block_max_in_exp),
    Mistake("the returned m is the block's maximum, not the running maximum: m_new = torch.maximum(m, block max)",
            _block_max_as_m),
    Mistake("the rescaling factor is upside down: it is exp(m - m_new), which is at most 1", _inverted_alpha),
]


def check_online_softmax_update(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(m, l, acc, scores_block, v_block) -> (m_new, l_new, acc_new)``."""
    return check_function("online_softmax_update", fn, online_softmax_update, _update_cases(),
                          mistakes=UPDATE_MISTAKES, output_names=("m_new", "l_new", "acc_new"),
                          atol=1e-5, rtol=1e-4, strict=strict)


# ----------------------------------------------------------------------------- the tiled loop

def _tiled_reference(q, k, v, block_size):
    return F.scaled_dot_product_attention(q, k, v)


def _tiled(q, k, v, block_size, *, starts=None, width=None, divide=True):
    """The key-block loop with knobs for the classic mistakes."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    m = torch.full((*q.shape[:-1], 1), float("-inf"))
    l = torch.zeros_like(m)
    acc = torch.zeros(*q.shape[:-1], v.shape[-1])
    n = k.shape[-2]
    for start in (starts(n, block_size) if starts else range(0, n, block_size)):
        end = start + (width(block_size) if width else block_size)
        s = q @ k[..., start:end, :].transpose(-2, -1) * scale
        m, l, acc = online_softmax_update(m, l, acc, s, v[..., start:end, :])
    return acc / l if divide else acc


def _tiled_cases() -> list[tuple]:
    g = _gen(12)
    return [
        # 10 keys in blocks of 4: the last block is partial (keys 8, 9).
        (torch.randn(2, 3, 5, 8, generator=g), torch.randn(2, 3, 10, 8, generator=g),
         torch.randn(2, 3, 10, 6, generator=g), 4),
        (torch.randn(1, 7, 16, generator=g), torch.randn(1, 12, 16, generator=g), torch.randn(1, 12, 4, generator=g), 4),
        (torch.randn(4, 9, 8, generator=g) * 3, torch.randn(4, 9, 8, generator=g), torch.randn(4, 9, 8, generator=g), 3),
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
]


def check_tiled_attention(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(q, k, v, block_size) -> attention output`` (non-causal) against PyTorch's SDPA."""
    return check_function("tiled_attention", fn, _tiled_reference, _tiled_cases(), mistakes=TILED_MISTAKES,
                          atol=1e-5, rtol=1e-4, strict=strict)


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
]


def check_sliding_window_mask(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(n, w) -> bool [n, n]``, True where ``|i - j| <= w``."""
    return check_function("sliding_window_mask", fn, sliding_window_mask, [(7, 2), (9, 3), (5, 0), (3, 4)],
                          mistakes=WINDOW_MISTAKES, output_names=("mask",), atol=0, rtol=0, strict=strict)


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
]


def _shape_hint(fn, cases, mistakes) -> str | None:
    """When the learner's output has a wrong shape, name the mistake that gives the same shapes."""
    for args in cases:
        want = kv_append(*args)
        try:
            got = fn(*[a.clone() for a in args])
        except Exception:
            return None
        shapes = [tuple(g.shape) for g in got] if isinstance(got, (tuple, list)) else None
        if shapes == [tuple(w.shape) for w in want]:
            continue
        for mistake in mistakes:
            try:
                wrong = mistake.fn(*[a.clone() for a in args])
            except Exception:
                continue
            if shapes == [tuple(w.shape) for w in wrong]:
                return mistake.hint
        return None
    return None


def check_kv_append(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(cache_k, cache_v, k_new, v_new) -> (keys, values)`` appended along the sequence axis."""
    cases = _kv_cases()
    result = evaluate_function("kv_append", fn, kv_append, cases, mistakes=KV_MISTAKES,
                               output_names=("keys", "values"), atol=0, rtol=0)
    if result.status == FAILED and "has shape" in result.detail:
        hint = _shape_hint(fn, cases, KV_MISTAKES)
        if hint:
            result = CheckResult(result.exercise, FAILED, f"{hint} ({result.detail.rstrip('.')}).")
    return report(result, strict=strict)
