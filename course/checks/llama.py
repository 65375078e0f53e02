"""Checkers for lesson 12 (a modern LLM): Llama's RMSNorm, RoPE on split halves, repeat_kv for grouped-query
attention, and one decode step against a KV cache.

Every ``check_*`` prints one line and returns the result; ``strict=False`` reports without raising even
under a grader. Each checker compares with the package version in :mod:`course.models.llama` and, on a wrong
answer, names the likely mistake from its library; tests/checks/test_checks_llama.py proves that
learner-style wrong answers get their hint.

The boundaries: for RMSNorm, float16 inputs whose squares overflow float16 (above 65504), a row of zeros (eps),
a large eps, one vector and four axes, and eps changing from case to case (no bfloat16 case: its rounding, one
unit in the third digit, would reject right answers that multiply by the weight before casting); for RoPE, positions that do not
start at 0 (as after a cache), a base other than 10000, one position, d = 2 and an odd number of pairs; for
repeat_kv, one key/value head, n_rep = 1 and several heads with n_rep > 1 (so tiling and repeating differ);
for the decode step, an empty cache (the first token, at position 0), one key/value head, as many key/value
heads as query heads, and caches long enough that a causal mask in the wrong place shows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from course.models.llama import decode_step, llama_rms_norm, repeat_kv, rope_halves
from course.positional import apply_rope

from .core import FAILED, CheckResult, Mistake, _call_learner, _clone, evaluate_function, report

# ----------------------------------------------------------------------------------------------
# Llama's RMSNorm: fn(x, weight, eps) -> [..., d] in x's dtype, the statistic in float32
# ----------------------------------------------------------------------------------------------


def _rms_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(12)
    cases = []
    x = torch.randn(3, 5, 8, generator=g) + 0.4                       # a non-zero mean: centring shows
    cases.append((x, 1.0 + 0.5 * torch.randn(8, generator=g), 1e-5))
    x = torch.randn(2, 6, generator=g) * 0.3
    x[1] = 0.0                                                        # a row of zeros: only eps avoids 0 / 0
    cases.append((x, 1.0 + 0.5 * torch.randn(6, generator=g), 0.5))  # a large eps: its place shows
    big = (torch.randn(2, 4, 8, generator=g) * 300).half()           # squares up to ~1e6 > 65504 (float16's max)
    cases.append((big, (1.0 + 0.3 * torch.randn(8, generator=g)).half(), 1e-5))
    x = torch.randn(7, generator=g) * 2 - 1                           # one vector, no leading axes
    cases.append((x, 1.0 + 0.5 * torch.randn(7, generator=g), 1e-2))
    x = torch.randn(2, 3, 2, 6, generator=g) * 4                      # four axes
    cases.append((x, 1.0 + 0.3 * torch.randn(6, generator=g), 1e-6))
    return cases


def _rms_in_dtype(x, weight, eps, *, centre=False, dim=-1, eps_outside=False, no_sqrt=False, affine=True,
                  hard_eps=None, upcast=True, cast_back=True, std=False, total=False):
    """A (possibly wrong) RMSNorm with switches for the classic mistakes."""
    eps = eps if hard_eps is None else hard_eps
    h = x.float() if upcast else x
    if centre:
        h = h - h.mean(dim=dim, keepdim=True)
    ms = (h.var(dim=dim, keepdim=True, unbiased=False) if std else
          h.pow(2).sum(dim=dim, keepdim=True) if total else h.pow(2).mean(dim=dim, keepdim=True))
    if no_sqrt:
        y = h / (ms + eps)
    elif eps_outside:
        y = h / (ms.sqrt() + eps)
    else:
        y = h * torch.rsqrt(ms + eps)
    y = y.to(x.dtype) if cast_back else y
    return y * weight if affine else y


RMS_MISTAKES = [
    Mistake("the mean square was computed in the input's dtype: in float16 the squares overflow above 65504 "
            "(300 squared is 90000) and become inf; compute it in float32 (x.float()), then cast back",
            lambda x, w, eps: _rms_in_dtype(x, w, eps, upcast=False)),
    Mistake("RMSNorm does not subtract the mean: divide x itself by sqrt(mean(x**2) + eps) (centring makes it "
            "LayerNorm)", lambda x, w, eps: _rms_in_dtype(x, w, eps, centre=True)),
    Mistake("divided by the standard deviation: RMSNorm divides by the root mean square sqrt(mean(x**2) + eps)",
            lambda x, w, eps: _rms_in_dtype(x, w, eps, std=True)),
    Mistake("eps outside the square root: divide by sqrt(mean(x**2) + eps), not sqrt(mean(x**2)) + eps",
            lambda x, w, eps: _rms_in_dtype(x, w, eps, eps_outside=True)),
    Mistake("the square root is missing: divide by sqrt(mean(x**2) + eps)",
            lambda x, w, eps: _rms_in_dtype(x, w, eps, no_sqrt=True)),
    Mistake("the weight is missing: finish with * weight",
            lambda x, w, eps: _rms_in_dtype(x, w, eps, affine=False)),
    Mistake("eps is hard-coded: use the eps argument (the cases pass different values)",
            lambda x, w, eps: _rms_in_dtype(x, w, eps, hard_eps=1e-5)),
    Mistake("eps is hard-coded: use the eps argument (the cases pass different values)",
            lambda x, w, eps: _rms_in_dtype(x, w, eps, hard_eps=1e-6)),
    Mistake("normalised over the wrong axis: take mean(x**2) over the last dimension (dim=-1), keepdim=True",
            lambda x, w, eps: _rms_in_dtype(x, w, eps, dim=0)),
    Mistake("normalised over the wrong axis: over the last dimension (dim=-1), not the one before it",
            lambda x, w, eps: _rms_in_dtype(x, w, eps, dim=-2)),
    Mistake("divided by sqrt(sum(x**2)): the root MEAN square takes mean(x**2), d times smaller",
            lambda x, w, eps: _rms_in_dtype(x, w, eps, total=True)),
]

_RMS_NAN = ("a row of zeros gives 0 / 0 unless eps sits inside the root, sqrt(mean(x**2) + eps); in float16, "
            "squares above 65504 overflow to inf")
_RMS_KEEPDIM = ("must match the size of tensor",
                "the shapes do not broadcast: keep the reduced axis, x.pow(2).mean(-1, keepdim=True) is [..., 1]")


def _keeps_dtype(exercise: str, result: CheckResult, fn, cases: list[tuple]) -> CheckResult:
    """A passing answer must also hand back x's dtype: the engine accepts the right values in any floating
    dtype, and a half-precision model wants its activations back in half precision."""
    if not result.passed:
        return result
    for i, args in enumerate(cases):
        dtype = args[0].dtype
        if dtype == torch.float32:
            continue
        call = _call_learner(fn, _clone(args), f"case {i + 1} of {len(cases)}", None, None)
        got = call.value
        if call.status is None and isinstance(got, torch.Tensor) and got.dtype != dtype:
            return CheckResult(exercise, FAILED, f"the values are right, but x is {dtype} and your result is "
                                                 f"{got.dtype}: cast the normalised x back to x.dtype before the "
                                                 f"weight, as Llama does (case {i + 1} of {len(cases)}).")
    return result


def check_llama_rms_norm(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(x: [..., d], weight: [d], eps) -> [..., d]``: Llama's RMSNorm, the mean square in float32,
    the normalised x cast back to x's dtype, then times ``weight``."""
    cases = _rms_cases()
    result = evaluate_function("llama_rms_norm", fn, llama_rms_norm, cases, mistakes=RMS_MISTAKES,
                               exception_hints=[_RMS_KEEPDIM], nonfinite_hint=_RMS_NAN, atol=1e-3, rtol=4e-3)
    return report(_keeps_dtype("llama_rms_norm", result, fn, cases), strict=strict)


# ----------------------------------------------------------------------------------------------
# RoPE on split halves: fn(x [..., seq, d], positions [seq], base) -> [..., seq, d]
# ----------------------------------------------------------------------------------------------


def _rope_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(13)
    return [
        (torch.randn(2, 5, 8, generator=g), torch.arange(5), 10000.0),
        (torch.randn(1, 2, 6, 8, generator=g), torch.arange(3, 9), 100000.0),     # after 3 cached tokens
        (torch.randn(2, 4, 4, generator=g), torch.arange(4), 500.0),              # a small base
        (torch.randn(1, 3, 1, 6, generator=g), torch.tensor([7]), 10000.0),        # one position, not 0
        (torch.randn(3, 4, 2, generator=g), torch.arange(4), 10000.0),            # d = 2: one pair
        (torch.randn(2, 3, 7, 10, generator=g), torch.arange(100, 107), 100000.0),  # an odd number of pairs
    ]


def _omega(d: int, base: float) -> torch.Tensor:
    return torch.pow(float(base), -torch.arange(0, d, 2, dtype=torch.float64) / d)


def _rope_variant(*, sign=1.0, from_zero=False, base10k=False, inverted=False, half_exponent=False,
                  adjacent_freqs=False, shift=0, pairs_from_one=False, halves_swapped=False):
    def rope(x, positions, base):
        d = x.shape[-1]
        b = 10000.0 if base10k else base
        omega = _omega(d, b)
        if inverted:
            omega = 1.0 / omega
        if half_exponent:
            omega = torch.pow(float(b), -torch.arange(0, d // 2, dtype=torch.float64) / d)
        if pairs_from_one:
            omega = torch.pow(float(b), -torch.arange(2, d + 2, 2, dtype=torch.float64) / d)
        pos = (torch.arange(x.shape[-2]) if from_zero else positions).double() + shift
        angles = pos[:, None] * omega[None, :]                            # [seq, d/2]
        cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
        if adjacent_freqs:                                                # frequencies laid out for adjacent pairs
            cos, sin = angles.cos().repeat_interleave(2, -1), angles.sin().repeat_interleave(2, -1)
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        rotated = torch.cat([-x2, x1], -1)                               # rotate_half
        out = x * cos.to(x.dtype) + sign * rotated * sin.to(x.dtype)
        return torch.cat([out[..., d // 2:], out[..., : d // 2]], -1) if halves_swapped else out
    return rope


ROPE_MISTAKES = [
    Mistake("paired adjacent dimensions (2i, 2i+1), lesson 04's layout: Llama pairs dimension i with i + d/2 "
            "(the two halves)", lambda x, p, b: apply_rope(x, p, b, interleaved=True)),
    Mistake("rotated the wrong way: the first half becomes x1 cos - x2 sin, the second x2 cos + x1 sin; you "
            "have the signs of sin swapped (rotate_half(x) is cat(-x2, x1), not cat(x2, -x1))",
            _rope_variant(sign=-1.0)),
    Mistake("the positions argument is ignored: rotate by the positions given (after a cache they do not start "
            "at 0), not by 0 .. seq-1", _rope_variant(from_zero=True)),
    Mistake("the base is hard-coded to 10000: use the base argument (SmolLM2's is 100000)", _rope_variant(base10k=True)),
    Mistake("frequencies inverted: pair i turns at base ** (-2i / d), not base ** (2i / d)", _rope_variant(inverted=True)),
    Mistake("wrong exponent: omega_i = base ** (-2i / d) with i counting pairs; you used i / d",
            _rope_variant(half_exponent=True)),
    Mistake("frequencies laid out for adjacent pairs: with split halves, dimensions i and i + d/2 share "
            "frequency i, so repeat the angles as cat([a, a]), not repeat_interleave(2)",
            _rope_variant(adjacent_freqs=True)),
    Mistake("positions off by one: rotate by the positions as given (the first token of a prompt is at 0)",
            _rope_variant(shift=1)),
    Mistake("the pairs are counted from 1: pair i = 0 .. d/2 - 1 turns at base ** (-2i / d), so the first pair "
            "turns at frequency 1 (torch.arange(0, d, 2) / d)", _rope_variant(pairs_from_one=True)),
    Mistake("the two halves come back swapped: the result is cat(x1 cos - x2 sin, x2 cos + x1 sin), the first "
            "half first", _rope_variant(halves_swapped=True)),
]


def check_rope_halves(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(x: [..., seq, d], positions: [seq], base) -> [..., seq, d]``: RoPE pairing dimension ``i``
    with ``i + d/2``, pair ``i`` turned by ``position * base ** (-2i / d)``."""
    hints = [("must match the size", "the positions run along the second-to-last axis of x (seq = x.shape[-2]): "
                                     "the angles are [seq, d/2], or [seq, d] once repeated for both halves")]
    result = evaluate_function("rope_halves", fn, lambda x, p, b: rope_halves(x, p, b), _rope_cases(),
                               mistakes=ROPE_MISTAKES, exception_hints=hints, atol=1e-4, rtol=1e-4)
    return report(result, strict=strict)


# ----------------------------------------------------------------------------------------------
# repeat_kv: fn(x [batch, kv_heads, seq, d_head], n_rep) -> [batch, kv_heads * n_rep, seq, d_head]
# ----------------------------------------------------------------------------------------------


def _kv_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(14)
    return [
        (torch.randn(1, 2, 3, 4, generator=g), 3),     # two heads, three copies each: tiling and repeating differ
        (torch.randn(2, 3, 5, 2, generator=g), 2),
        (torch.randn(2, 4, 3, 4, generator=g), 1),     # n_rep = 1: multi-head attention, nothing to repeat
        (torch.randn(1, 1, 4, 8, generator=g), 4),     # one key/value head: multi-query attention
        (torch.randn(3, 2, 1, 6, generator=g), 2),     # batch 3, one position
    ]


REPEAT_KV_MISTAKES = [
    Mistake("the copies are tiled (heads 0, 1, 0, 1): each key/value head serves n_rep query heads in a row "
            "(0, 0, 1, 1), so repeat each head in place: repeat_interleave(n_rep, dim=1), not repeat(1, n_rep, 1, 1)",
            lambda x, n: x.repeat(1, n, 1, 1)),
    Mistake("repeated along the sequence axis: the heads are axis 1 ([batch, kv_heads, seq, d_head])",
            lambda x, n: x.repeat_interleave(n, dim=2)),
    Mistake("repeated along the batch axis: the heads are axis 1 ([batch, kv_heads, seq, d_head])",
            lambda x, n: x.repeat_interleave(n, dim=0)),
    Mistake("repeated along the last axis: the heads are axis 1 ([batch, kv_heads, seq, d_head])",
            lambda x, n: x.repeat_interleave(n, dim=-1)),
    Mistake("n_rep is ignored: each of the kv_heads heads must appear n_rep times",
            lambda x, n: x.clone()),
]


def check_repeat_kv(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(x: [batch, kv_heads, seq, d_head], n_rep) -> [batch, kv_heads * n_rep, seq, d_head]``."""
    result = evaluate_function("repeat_kv", fn, repeat_kv, _kv_cases(), mistakes=REPEAT_KV_MISTAKES,
                               atol=0.0, rtol=0.0)
    return report(result, strict=strict)


# ----------------------------------------------------------------------------------------------
# One decode step: fn(q, k_new, v_new, cache_k, cache_v, base) -> (out, cache_k, cache_v)
# ----------------------------------------------------------------------------------------------


def _step_case(g, batch, heads, kv, t, d, base):
    q = torch.randn(batch, heads, 1, d, generator=g)
    k_new, v_new = torch.randn(batch, kv, 1, d, generator=g), torch.randn(batch, kv, 1, d, generator=g)
    cache_k, cache_v = torch.randn(batch, kv, t, d, generator=g), torch.randn(batch, kv, t, d, generator=g)
    return (q, k_new, v_new, cache_k, cache_v, base)


def _step_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(15)
    return [
        _step_case(g, 1, 4, 2, 3, 8, 10000.0),
        _step_case(g, 2, 6, 3, 5, 6, 100000.0),
        _step_case(g, 1, 3, 3, 7, 4, 10000.0),      # as many key/value heads as query heads
        _step_case(g, 2, 4, 1, 2, 8, 500.0),        # one key/value head
        _step_case(g, 1, 2, 1, 0, 4, 10000.0),      # an empty cache: the first token, at position 0
    ]


def _step_variant(*, position=None, rotate_q=True, rotate_k=True, rotate_v=False, causal=False, before=False,
                  tiled=False, no_scale=False, new_first=False, store_unrotated=False, keep_cache=False,
                  rerotate_cache=False):
    def step(q, k_new, v_new, cache_k, cache_v, base):
        t = cache_k.shape[-2]
        pos = torch.tensor([t if position is None else position(t)])
        qr = rope_halves(q, pos, base) if rotate_q else q
        kr = rope_halves(k_new, pos, base) if rotate_k else k_new
        vr = rope_halves(v_new, pos, base) if rotate_v else v_new
        stored = k_new if store_unrotated else kr
        pair = (lambda old, new: torch.cat([new, old], -2)) if new_first else (lambda old, new: torch.cat([old, new], -2))
        new_k, new_v = pair(cache_k, stored), pair(cache_v, vr)
        att_k, att_v = pair(cache_k, kr), pair(cache_v, vr)
        if before:
            att_k, att_v = cache_k, cache_v
        if rerotate_cache:                                                # the cached keys turned a second time
            att_k = rope_halves(pair(cache_k, k_new), torch.arange(t + 1), base)
        n = q.shape[1] // cache_k.shape[1]
        expand = (lambda x: x.repeat(1, n, 1, 1)) if tiled else (lambda x: repeat_kv(x, n))
        scale = 1.0 if no_scale else None
        out = F.scaled_dot_product_attention(qr, expand(att_k), expand(att_v), is_causal=causal, scale=scale)
        return (out, cache_k, cache_v) if keep_cache else (out, new_k, new_v)
    return step


DECODE_MISTAKES = [
    Mistake("the new token was not turned for its position: it sits at position t = cache_k.shape[-2], after "
            "the t cached ones (rotating at position 0, or not at all, leaves q and k_new as they are)",
            _step_variant(position=lambda t: 0)),
    Mistake("the new token was rotated at position t + 1: positions count from 0, so after t cached tokens it is "
            "at position t", _step_variant(position=lambda t: t + 1)),
    Mistake("the new token was rotated at position t - 1, the last cached one's: positions count from 0, so after "
            "t cached tokens the new one is at position t", _step_variant(position=lambda t: t - 1)),
    Mistake("the cached keys were rotated again: they are stored already rotated, each at its own position, so "
            "rotate only q and k_new (at position t) and append",
            _step_variant(rerotate_cache=True, store_unrotated=True)),
    Mistake("the key was not rotated: RoPE turns both the query and the new key", _step_variant(rotate_k=False)),
    Mistake("the query was not rotated: RoPE turns both the query and the new key", _step_variant(rotate_q=False)),
    Mistake("the value was rotated: RoPE turns queries and keys only, values stay as they are",
            _step_variant(rotate_v=True)),
    Mistake("is_causal=True with one query: SDPA aligns its causal mask to the top left, so the query sees only "
            "the first key; the new token may see every cached position, so use no mask",
            _step_variant(causal=True)),
    Mistake("the query attended before its own key and value joined the cache: append first, then attend to "
            "all t + 1 positions", _step_variant(before=True)),
    Mistake("the key/value heads are tiled (0, 1, 0, 1): query heads come in groups, heads 0 .. n_rep-1 read "
            "key/value head 0; use repeat_kv (repeat_interleave on dim 1)", _step_variant(tiled=True)),
    Mistake("the scores are not scaled: divide q k^T by sqrt(d_head) before the softmax", _step_variant(no_scale=True)),
    Mistake("the new position went first: append it after the cached ones, cat([cache_k, k_new], dim=-2)",
            _step_variant(new_first=True)),
    Mistake("the cache stores the key before rotation: store the rotated key (the cached keys are already "
            "rotated, each at its own position)", _step_variant(store_unrotated=True)),
    Mistake("the caches were returned unchanged: return them with the new key and value appended",
            _step_variant(keep_cache=True)),
]


def check_decode_step(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(q, k_new, v_new, cache_k, cache_v, base) -> (out, cache_k, cache_v)``: one token of
    grouped-query attention against a KV cache (see :func:`course.models.llama.decode_step`)."""
    hints = [("must match the size", "the shapes do not fit: q has `heads` heads, the cache `kv_heads`; repeat the "
                                     "key/value heads (repeat_kv) before q @ k^T, and append along the positions (dim=-2)")]
    nan = ("with an empty cache (t = 0) the query must still see its own key: append k_new and v_new before "
           "attending")
    result = evaluate_function("decode_step", fn, lambda *a: decode_step(*a), _step_cases(), mistakes=DECODE_MISTAKES,
                               output_names=("out", "cache_k", "cache_v"), exception_hints=hints,
                               nonfinite_hint=nan, atol=1e-4, rtol=1e-4)
    return report(result, strict=strict)

