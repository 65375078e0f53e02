"""Lesson 12's checkers: libraries of learner-style right and wrong answers (see answer_library.py), each wrong one
caught with the words of its mistake, each right one accepted.

The answers are written the way a learner writes them (complex numbers, loops, torch.stack, manual softmax), not
copied from the checker's own mistake list. The last wrong answers of each list are holdouts, written after the
checker was finished; they must only be rejected.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from answer_library import Right, Wrong, library_tests, unattempted_test
from checker_assertions import assert_fails_with
from course.checks.llama import check_decode_step, check_llama_rms_norm, check_repeat_kv, check_rope_halves
from course.models import llama as L

pytestmark = pytest.mark.usefixtures("lenient_checks")


# ------------------------------------------------------------------------------------- RMSNorm

def rms_learner(x, weight, eps, *, upcast=True, centre=False, eps_outside=False, weight_on=True, dim=-1,
                hard_eps=None, cast_back=True, total=False):
    eps = eps if hard_eps is None else hard_eps
    h = x.float() if upcast else x
    if centre:
        h = h - h.mean(dim, keepdim=True)
    ms = (h * h).sum(dim, keepdim=True) if total else (h * h).mean(dim, keepdim=True)
    y = h / (ms.sqrt() + eps) if eps_outside else h / torch.sqrt(ms + eps)
    if not cast_back:
        return y * weight.float() if weight_on else y
    y = y.to(x.dtype)
    return y * weight if weight_on else y


def rms_no_eps(x, weight, eps):
    h = x.float()
    return (h / h.pow(2).mean(-1, keepdim=True).sqrt()).to(x.dtype) * weight


def rms_unbiased_std(x, weight, eps):          # holdout
    h = x.float()
    return (h / torch.sqrt(h.std(-1, keepdim=True) ** 2 + eps)).to(x.dtype) * weight


WRONG_RMS = [
    Wrong("statistics in float16", lambda x, w, e: rms_learner(x, w, e, upcast=False), "overflow"),
    Wrong("layer norm instead", lambda x, w, e: rms_learner(x, w, e, centre=True), "does not subtract the mean"),
    Wrong("eps after the root", lambda x, w, e: rms_learner(x, w, e, eps_outside=True), "eps outside the square root"),
    Wrong("no weight", lambda x, w, e: rms_learner(x, w, e, weight_on=False), "weight is missing"),
    Wrong("eps fixed at 1e-6", lambda x, w, e: rms_learner(x, w, e, hard_eps=1e-6), "hard-coded"),
    Wrong("over the first axis", lambda x, w, e: rms_learner(x, w, e, dim=0), "wrong axis"),
    Wrong("sum of squares", lambda x, w, e: rms_learner(x, w, e, total=True), "root MEAN square"),
    Wrong("left in float32", lambda x, w, e: rms_learner(x, w, e, cast_back=False), "cast the normalised x back"),
    Wrong("no eps at all", rms_no_eps, "eps sits inside"),
    Wrong("returns nothing", lambda x, w, e: None, "None"),
    Wrong("holdout: unbiased standard deviation", rms_unbiased_std, None),
]


def rms_functional(x, weight, eps):
    return F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype) * weight


def rms_float64(x, weight, eps):
    h = x.double()
    return (h / torch.sqrt(h.square().mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


def rms_weight_in_float32(x, weight, eps):
    h = x.float()
    return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


RIGHT_RMS = [Right("F.rms_norm in float32", rms_functional), Right("float64 inside", rms_float64),
             Right("weight multiplied before the cast", rms_weight_in_float32)]


# ------------------------------------------------------------------------------------- RoPE on split halves

def rope_learner(x, positions, base, *, layout="halves", sign=1.0, use_positions=True, base_fixed=None,
                 exponent="2i", freq_layout="cat", shift=0):
    d = x.shape[-1]
    b = base if base_fixed is None else base_fixed
    i = torch.arange(d // 2, dtype=torch.float32)
    omega = {"2i": b ** (-2 * i / d), "i": b ** (-i / d), "inverted": b ** (2 * i / d)}[exponent]
    pos = (positions if use_positions else torch.arange(x.shape[-2])).float() + shift
    angles = pos[:, None] * omega[None, :]
    if layout == "adjacent":
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = torch.empty_like(x)
        out[..., 0::2] = x0 * angles.cos() - sign * x1 * angles.sin()
        out[..., 1::2] = x1 * angles.cos() + sign * x0 * angles.sin()
        return out
    if freq_layout == "interleave":
        cos, sin = angles.cos().repeat_interleave(2, -1), angles.sin().repeat_interleave(2, -1)
    else:
        cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + sign * torch.cat([-x2, x1], -1) * sin


def rope_pairs_from_one(x, positions, base):
    d = x.shape[-1]
    omega = torch.tensor([base ** (-2 * i / d) for i in range(1, d // 2 + 1)])
    a = positions.float()[:, None] * omega
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * a.cos() - x2 * a.sin(), x2 * a.cos() + x1 * a.sin()], -1)


def rope_halves_swapped(x, positions, base):
    d = x.shape[-1]
    omega = base ** (-torch.arange(0, d, 2).float() / d)
    a = positions.float()[:, None] * omega
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x2 * a.cos() + x1 * a.sin(), x1 * a.cos() - x2 * a.sin()], -1)


def rope_first_half_only(x, positions, base):   # holdout
    d = x.shape[-1]
    omega = base ** (-torch.arange(0, d, 2).float() / d)
    a = positions.float()[:, None] * omega
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * a.cos() - x2 * a.sin(), x2], -1)


WRONG_ROPE = [
    Wrong("lesson 04's adjacent pairs", lambda x, p, b: rope_learner(x, p, b, layout="adjacent"), "adjacent dimensions"),
    Wrong("turns the other way", lambda x, p, b: rope_learner(x, p, b, sign=-1.0), "rotated the wrong way"),
    Wrong("positions from zero", lambda x, p, b: rope_learner(x, p, b, use_positions=False), "positions argument is ignored"),
    Wrong("base 10000 always", lambda x, p, b: rope_learner(x, p, b, base_fixed=10000.0), "hard-coded to 10000"),
    Wrong("i / d exponent", lambda x, p, b: rope_learner(x, p, b, exponent="i"), "wrong exponent"),
    Wrong("exponent sign", lambda x, p, b: rope_learner(x, p, b, exponent="inverted"), "frequencies inverted"),
    Wrong("frequencies interleaved", lambda x, p, b: rope_learner(x, p, b, freq_layout="interleave"),
          "laid out for adjacent pairs"),
    Wrong("positions from one", lambda x, p, b: rope_learner(x, p, b, shift=1), "off by one"),
    Wrong("pairs counted from 1, as in the paper's formula", rope_pairs_from_one, "counted from 1"),
    Wrong("halves concatenated in the wrong order", rope_halves_swapped, "halves come back swapped"),
    Wrong("returns nothing", lambda x, p, b: None, "None"),
    Wrong("holdout: second half left alone", rope_first_half_only, None),
]


def rope_complex(x, positions, base):
    d = x.shape[-1]
    omega = torch.pow(torch.tensor(float(base), dtype=torch.float64), -torch.arange(0, d, 2, dtype=torch.float64) / d)
    turn = torch.polar(torch.ones(len(positions), d // 2, dtype=torch.float64), positions.double()[:, None] * omega)
    z = torch.complex(x[..., : d // 2].double(), x[..., d // 2:].double()) * turn
    return torch.cat([z.real, z.imag], -1).to(x.dtype)


def rope_hf_style(x, positions, base):
    d = x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2).float() / d))
    emb = torch.cat([positions.float()[:, None] * inv_freq] * 2, dim=-1)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * emb.cos() + torch.cat((-x2, x1), dim=-1) * emb.sin()


def rope_loops(x, positions, base):
    d = x.shape[-1]
    out = x.clone()
    for s, m in enumerate(positions.tolist()):
        for i in range(d // 2):
            a = m * base ** (-2 * i / d)
            u, v = x[..., s, i], x[..., s, i + d // 2]
            out[..., s, i] = u * math.cos(a) - v * math.sin(a)
            out[..., s, i + d // 2] = v * math.cos(a) + u * math.sin(a)
    return out


RIGHT_ROPE = [Right("complex numbers", rope_complex), Right("Hugging Face's layout", rope_hf_style),
              Right("loops", rope_loops), Right("the package version", lambda x, p, b: L.rope_halves(x, p, b))]


# ------------------------------------------------------------------------------------- repeat_kv

WRONG_KV = [
    Wrong("tiled with repeat", lambda x, n: x.repeat(1, n, 1, 1), "tiled"),
    Wrong("concatenated copies", lambda x, n: torch.cat([x] * n, dim=1), "tiled"),
    Wrong("expand in front", lambda x, n: x[:, None].expand(x.shape[0], n, *x.shape[1:]).reshape(
        x.shape[0], n * x.shape[1], *x.shape[2:]), "tiled"),
    Wrong("along the positions", lambda x, n: x.repeat_interleave(n, dim=2), "sequence axis"),
    Wrong("no dim given", lambda x, n: x.repeat_interleave(n), "shape"),
    Wrong("n_rep forgotten", lambda x, n: x, "n_rep is ignored"),
    Wrong("holdout: stacked then flattened in front", lambda x, n: torch.stack([x] * n, dim=1).flatten(1, 2), None),
    Wrong("holdout: a list of heads", lambda x, n: [x] * n, None),
]


def kv_loop(x, n):
    return torch.cat([x[:, h:h + 1].repeat(1, n, 1, 1) for h in range(x.shape[1])], dim=1)


RIGHT_KV = [
    Right("repeat_interleave on dim 1", lambda x, n: x.repeat_interleave(n, dim=1)),
    Right("repeat_interleave on dim -3", lambda x, n: x.repeat_interleave(n, dim=-3)),
    Right("expand after the heads", lambda x, n: x[:, :, None].expand(-1, -1, n, -1, -1).flatten(1, 2)),
    Right("stack after the heads", lambda x, n: torch.stack([x] * n, dim=2).flatten(1, 2)),
    Right("a loop over heads", kv_loop),
]


# ------------------------------------------------------------------------------------- one decode step

def step_learner(q, k_new, v_new, cache_k, cache_v, base, *, at=lambda t: t, rotate=("q", "k"), causal=False,
                 attend_first=False, tile=False, scale=True, new_first=False, keep_raw_key=False, keep_old=False,
                 only_out=False):
    t = cache_k.shape[2]
    pos = torch.tensor([at(t)])
    qr = L.rope_halves(q, pos, base) if "q" in rotate else q
    kr = L.rope_halves(k_new, pos, base) if "k" in rotate else k_new
    vr = L.rope_halves(v_new, pos, base) if "v" in rotate else v_new
    join = (lambda old, new: torch.cat([new, old], 2)) if new_first else (lambda old, new: torch.cat([old, new], 2))
    keys, values = join(cache_k, kr), join(cache_v, vr)
    stored_k = join(cache_k, k_new) if keep_raw_key else keys
    att_k, att_v = (cache_k, cache_v) if attend_first else (keys, values)
    n = q.shape[1] // cache_k.shape[1]
    if tile:
        att_k, att_v = att_k.repeat(1, n, 1, 1), att_v.repeat(1, n, 1, 1)
    else:
        att_k, att_v = att_k.repeat_interleave(n, 1), att_v.repeat_interleave(n, 1)
    if causal:
        out = F.scaled_dot_product_attention(qr, att_k, att_v, is_causal=True)
    else:
        scores = qr @ att_k.transpose(-1, -2) / (math.sqrt(q.shape[-1]) if scale else 1.0)
        out = scores.softmax(-1) @ att_v
    if only_out:
        return out
    return (out, cache_k, cache_v) if keep_old else (out, stored_k, values)


def step_rotates_whole_cache(q, k_new, v_new, cache_k, cache_v, base):
    t = cache_k.shape[2]
    q = L.rope_halves(q, torch.tensor([t]), base)
    ck, cv = torch.cat([cache_k, k_new], 2), torch.cat([cache_v, v_new], 2)
    n = q.shape[1] // ck.shape[1]
    k = L.rope_halves(ck, torch.arange(t + 1), base)
    w = (q @ L.repeat_kv(k, n).transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
    return w @ L.repeat_kv(cv, n), ck, cv


def step_scaled_by_d(q, k_new, v_new, cache_k, cache_v, base):   # holdout
    t = cache_k.shape[2]
    pos = torch.tensor([t])
    q, k_new = L.rope_halves(q, pos, base), L.rope_halves(k_new, pos, base)
    ck, cv = torch.cat([cache_k, k_new], 2), torch.cat([cache_v, v_new], 2)
    n = q.shape[1] // ck.shape[1]
    w = (q @ L.repeat_kv(ck, n).transpose(-1, -2) / q.shape[-1]).softmax(-1)
    return w @ L.repeat_kv(cv, n), ck, cv


WRONG_STEP = [
    Wrong("rotated at position 0", lambda *a: step_learner(*a, at=lambda t: 0), "not turned for its position"),
    Wrong("rotated at t + 1", lambda *a: step_learner(*a, at=lambda t: t + 1), "position t + 1"),
    Wrong("rotated at t - 1", lambda *a: step_learner(*a, at=lambda t: t - 1), "position t - 1"),
    Wrong("the whole cache rotated each step", step_rotates_whole_cache, "rotated again"),
    Wrong("is_causal with one query", lambda *a: step_learner(*a, causal=True), "is_causal=True with one query"),
    Wrong("attends to the old cache", lambda *a: step_learner(*a, attend_first=True), "attended before"),
    Wrong("heads tiled", lambda *a: step_learner(*a, tile=True), "tiled"),
    Wrong("no 1/sqrt(d)", lambda *a: step_learner(*a, scale=False), "not scaled"),
    Wrong("new key in front", lambda *a: step_learner(*a, new_first=True), "new position went first"),
    Wrong("caches the raw key", lambda *a: step_learner(*a, keep_raw_key=True), "before rotation"),
    Wrong("caches not updated", lambda *a: step_learner(*a, keep_old=True), "returned unchanged"),
    Wrong("value rotated too", lambda *a: step_learner(*a, rotate=("q", "k", "v")), "value was rotated"),
    Wrong("only the query rotated", lambda *a: step_learner(*a, rotate=("q",)), "key was not rotated"),
    Wrong("returns the output only", lambda *a: step_learner(*a, only_out=True), "expected 3 values"),
    Wrong("holdout: scaled by 1/d", step_scaled_by_d, None),
]


def step_per_head(q, k_new, v_new, cache_k, cache_v, base):
    t = cache_k.shape[-2]
    q = L.rope_halves(q, torch.tensor([t]), base)
    k_new = L.rope_halves(k_new, torch.tensor([t]), base)
    keys, values = torch.cat([cache_k, k_new], -2), torch.cat([cache_v, v_new], -2)
    group = q.shape[1] // keys.shape[1]
    heads = []
    for h in range(q.shape[1]):
        w = torch.softmax(q[:, h].double() @ keys[:, h // group].double().transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)
        heads.append((w @ values[:, h // group].double()).float())
    return torch.stack(heads, 1), keys, values


def step_sdpa_gqa(q, k_new, v_new, cache_k, cache_v, base):
    pos = torch.arange(cache_k.shape[2], cache_k.shape[2] + 1)
    keys = torch.cat([cache_k, L.rope_halves(k_new, pos, base)], 2)
    values = torch.cat([cache_v, v_new], 2)
    n = q.shape[1] // keys.shape[1]
    out = F.scaled_dot_product_attention(L.rope_halves(q, pos, base), L.repeat_kv(keys, n), L.repeat_kv(values, n))
    return out, keys, values


RIGHT_STEP = [Right("a loop over query heads, float64 softmax", step_per_head), Right("SDPA without a mask", step_sdpa_gqa),
              Right("the package version", lambda *a: L.decode_step(*a))]


LIBRARY = {
    check_llama_rms_norm: (WRONG_RMS, RIGHT_RMS),
    check_rope_halves: (WRONG_ROPE, RIGHT_ROPE),
    check_repeat_kv: (WRONG_KV, RIGHT_KV),
    check_decode_step: (WRONG_STEP, RIGHT_STEP),
}

# Each wrong answer fails, in one line holding its words; each right answer passes.
test_each_wrong_answer_fails_with_its_words, test_each_right_answer_passes = library_tests(LIBRARY)

test_an_unattempted_exercise_says_so = unattempted_test(LIBRARY)


def test_a_float16_answer_that_keeps_float32_is_named_even_with_the_right_values():
    result = check_llama_rms_norm(lambda x, w, e: rms_learner(x, w, e, cast_back=False))
    assert_fails_with(result, "your result is torch.float32")


def test_the_decode_step_checker_covers_an_empty_cache():
    # A step that reads the last cached key (to find the device, say) works until the cache is empty: the first
    # token of a generation. The checker's last case is that boundary.
    def reads_the_last_cached_key(q, k_new, v_new, cache_k, cache_v, base):
        device = cache_k[0, 0, -1].device
        return L.decode_step(q.to(device), k_new, v_new, cache_k, cache_v, base)

    result = check_decode_step(reads_the_last_cached_key)
    assert_fails_with(result, "IndexError")
    assert "case 5 of 5" in result.line
