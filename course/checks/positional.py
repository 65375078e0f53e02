"""Checkers for lesson 04 (positional encodings): sinusoidal encodings, the offset matrix, RoPE (adjacent pairs
and split halves), permutations.

Every ``check_*`` prints one line and returns the result; ``strict=False`` reports without raising
even under a grader (to show what a checker says about a deliberately wrong function).

Each test case is chosen so that every known mistake gives an output different from the correct
one and from the other mistakes (small positions and dimensions on the first case, so even the
"inverted frequency" mistakes, with their huge angles, are computed reproducibly).

The boundaries: a single position and the smallest d_model (2); offsets k = 0 (the identity), negative
and larger than d_model; RoPE on one position (left unrotated), d = 2 (where the two layouts coincide) and batches with head axes in
front (so the positions must be read from axis -2); permutation tests with a batch at least as long as
the sequence (so permuting the batch axis by mistake runs), with a permutation whose inverse differs.
"""
from __future__ import annotations

import math

import torch
from einops import rearrange

from course.positional import apply_rope, permutation_gap, relative_offset_matrix, sinusoidal_encoding

from .core import CheckResult, Mistake, check_function

# ----------------------------------------------------------------------------------------------
# Sinusoidal encodings: fn(num_positions, d_model) -> [num_positions, d_model]
# ----------------------------------------------------------------------------------------------


def _pe_from(angles_fn, layout: str = "interleave", first: str = "sin", start: int = 0):
    """Build a (possibly wrong) encoding from ``angles_fn(pos [n,1], col_or_pair [1,m], d) -> angles``."""

    def pe(num_positions: int, d_model: int) -> torch.Tensor:
        pos = torch.arange(start, start + num_positions, dtype=torch.float64)[:, None]
        if layout == "per-column":  # every column its own exponent: column j uses j/d
            j = torch.arange(d_model, dtype=torch.float64)[None, :]
            angles = angles_fn(pos, j, d_model)
            out = torch.where(j.long() % 2 == 0, angles.sin(), angles.cos())
            return out.float()
        two_i = torch.arange(0, d_model, 2, dtype=torch.float64)[None, :]
        angles = angles_fn(pos, two_i, d_model)                                  # [n, d/2]
        a, b = (angles.sin(), angles.cos()) if first == "sin" else (angles.cos(), angles.sin())
        if layout == "halves":
            return torch.cat([a, b], dim=-1).float()
        if layout == "sin-only":
            return torch.stack([angles.sin(), angles.sin()], -1).flatten(-2).float()
        return torch.stack([a, b], dim=-1).flatten(-2).float()

    return pe


def _standard(pos, two_i, d):
    return pos / torch.pow(10000.0, two_i / d)


SINUSOIDAL_MISTAKES = [
    Mistake("sin and cos are swapped: even dimensions 2i take sin, odd dimensions 2i+1 take cos",
            _pe_from(_standard, first="cos")),
    Mistake("frequencies inverted: divide the position by 10000^(2i/d_model), don't multiply "
            "(the angle is pos / 10000^(2i/d), so the frequencies go from 1 down to 1/10000)",
            _pe_from(lambda pos, two_i, d: pos * torch.pow(10000.0, two_i / d))),
    Mistake("wrong exponent: use 2i/d_model, where i counts the (sin, cos) pairs; you used i/d_model",
            _pe_from(lambda pos, two_i, d: pos / torch.pow(10000.0, (two_i / 2) / d))),
    Mistake("wrong exponent: both dimensions of a pair share one frequency, 10000^(2i/d_model); "
            "you gave the odd dimension 2i+1 the exponent (2i+1)/d_model",
            _pe_from(lambda pos, j, d: pos / torch.pow(10000.0, j / d), layout="per-column")),
    Mistake("wrong exponent: the exponent is 2i/d_model (a fraction between 0 and 1); you left out the division by d_model",
            _pe_from(lambda pos, two_i, d: pos / torch.pow(10000.0, two_i))),
    Mistake("sines and cosines in two halves: interleave them, sin in column 2i and cos in column 2i+1 of each pair",
            _pe_from(_standard, layout="halves")),
    Mistake("only sines: the odd dimensions 2i+1 take cos",
            _pe_from(_standard, layout="sin-only")),
    Mistake("positions start at 1: the first row is position 0 (sin 0 = 0, cos 0 = 1)",
            _pe_from(_standard, start=1)),
    Mistake("integer division in the exponent: 2 * i // d_model is 0 for every pair; divide with /, so the "
            "exponent 2i/d_model is a fraction", _pe_from(lambda pos, two_i, d: pos / torch.pow(10000.0, two_i // d))),
    Mistake("wrong exponent: the exponent is 2i/d_model with i counting pairs (0, 1, 2, ...); with "
            "torch.arange(0, d_model, 2) the values are already 2i, so don't double them",
            _pe_from(lambda pos, two_i, d: pos / torch.pow(10000.0, 2 * two_i / d))),
]


def check_sinusoidal_encoding(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(num_positions, d_model) -> [num_positions, d_model]`` (float) against the 2017 formula."""
    cases = [(5, 4), (6, 8), (50, 16), (3, 2), (1, 6)]
    return check_function("sinusoidal_encoding", fn, sinusoidal_encoding, cases,
                          mistakes=SINUSOIDAL_MISTAKES, atol=1e-5, rtol=1e-4, strict=strict)


# ----------------------------------------------------------------------------------------------
# The offset matrix: fn(k, d_model) -> M_k [d_model, d_model] with PE(pos + k) = M_k PE(pos)
# ----------------------------------------------------------------------------------------------


def _omega(d: int) -> torch.Tensor:
    return torch.pow(10000.0, -torch.arange(0, d, 2, dtype=torch.float64) / d)


def _blocks(k: int, d: int, block_fn, omega=None) -> torch.Tensor:
    omega = _omega(d) if omega is None else omega
    return torch.block_diag(*[block_fn(k * w) for w in omega]).float()


def _rot(a):
    return torch.tensor([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]], dtype=torch.float64)


OFFSET_MISTAKES = [
    Mistake("the rotation goes the wrong way (this is M_{-k}): the sin row of a block is [cos(kw), +sin(kw)], "
            "the cos row is [-sin(kw), cos(kw)]",
            lambda k, d: _blocks(k, d, lambda a: _rot(a).T)),
    Mistake("frequencies inverted: the angle of pair i is k / 10000^(2i/d_model), not k * 10000^(2i/d_model)",
            lambda k, d: _blocks(k, d, _rot, omega=1.0 / _omega(d))),
    Mistake("the angle misses the offset: each block turns by k * omega_i, not by omega_i",
            lambda k, d: _blocks(1, d, _rot)),
    Mistake("this is PE(k) laid on the diagonal, not a rotation: each 2x2 block is "
            "[[cos(kw), sin(kw)], [-sin(kw), cos(kw)]]",
            lambda k, d: torch.diag(sinusoidal_encoding(abs(k) + 1, d)[abs(k)])),
    Mistake("sin and cos swapped inside each block: the diagonal of a block holds cos(kw), the corners "
            "+sin(kw) (top right) and -sin(kw) (bottom left)",
            lambda k, d: _blocks(k, d, lambda a: torch.tensor([[math.sin(a), math.cos(a)], [-math.cos(a), math.sin(a)]],
                                                              dtype=torch.float64))),
    Mistake("both corners of a block have the same sign: a rotation is [[cos, sin], [-sin, cos]]",
            lambda k, d: _blocks(k, d, lambda a: torch.tensor([[math.cos(a), math.sin(a)], [math.sin(a), math.cos(a)]],
                                                              dtype=torch.float64))),
]


def check_relative_offset_matrix(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(k, d_model) -> M_k: [d_model, d_model]`` (block-diagonal rotations by ``k * omega_i``)."""
    cases = [(3, 4), (1, 8), (-2, 6), (7, 2), (0, 4), (13, 6)]
    return check_function("relative_offset_matrix", fn, relative_offset_matrix, cases,
                          mistakes=OFFSET_MISTAKES, atol=1e-5, rtol=1e-4, strict=strict)


# ----------------------------------------------------------------------------------------------
# RoPE: fn(x) -> x rotated, x: [..., seq, d], positions 0 .. seq-1, base 10000
# ----------------------------------------------------------------------------------------------


def _rope_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(4)
    return [
        (torch.randn(2, 5, 4, generator=g),),
        (torch.randn(3, 7, 8, generator=g),),
        (torch.randn(2, 3, 6, 8, generator=g),),   # [batch, heads, seq, d_head]
        (torch.randn(1, 4, 2, generator=g),),
        (torch.randn(2, 4, 1, 6, generator=g),),   # a single position: left as it is
        (torch.randn(3, 9, 10, generator=g),),     # odd seq, d/2 odd, batch 3
    ]


def _rope_with(omega_fn, pos_shift: int = 0, sign: float = 1.0, layout: str = "interleave", rotate: bool = True,
               pair_order: str = "same"):
    def rope(x: torch.Tensor) -> torch.Tensor:
        seq, d = x.shape[-2], x.shape[-1]
        pos = torch.arange(seq, dtype=torch.float64) + pos_shift
        angles = pos[:, None] * omega_fn(d)[None, :] if rotate else omega_fn(d)[None, :].expand(seq, -1)
        if pair_order == "repeat_interleave":   # split halves, but the frequencies laid out (w0, w0, w1, w1, ...)
            angles = angles.repeat_interleave(2, dim=-1)
            angles = torch.stack([angles[:, : d // 2], angles[:, d // 2:]])           # first half, second half
            cos, sin = angles.cos().float(), (sign * angles.sin()).float()
            x0, x1 = x[..., : d // 2], x[..., d // 2:]
            return torch.cat([x0 * cos[0] - x1 * sin[0], x1 * cos[1] + x0 * sin[1]], dim=-1)
        cos, sin = angles.cos().float(), (sign * angles.sin()).float()
        if layout == "interleave":
            pairs = rearrange(x, "... (h two) -> ... h two", two=2)
            x0, x1 = pairs[..., 0], pairs[..., 1]
        else:
            x0, x1 = x[..., : d // 2], x[..., d // 2:]
        r0, r1 = x0 * cos - x1 * sin, x0 * sin + x1 * cos
        if layout == "interleave":
            return rearrange(torch.stack([r0, r1], -1), "... h two -> ... (h two)")
        return torch.cat([r0, r1], dim=-1)

    return rope


ROPE_MISTAKES = [
    Mistake("rotated the wrong way: (x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos); you have the signs of sin swapped",
            _rope_with(_omega, sign=-1.0)),
    Mistake("paired the wrong dimensions: rotate adjacent pairs (0,1), (2,3), ...; you paired dimension i with "
            "i + d/2 (the 'rotate half' layout)",
            _rope_with(_omega, layout="halves")),
    Mistake("frequencies inverted: the angle is pos / 10000^(2i/d), not pos * 10000^(2i/d)",
            _rope_with(lambda d: 1.0 / _omega(d))),
    Mistake("the angle ignores the position: rotate position m by m * omega_i, so position 0 is unchanged",
            _rope_with(_omega, rotate=False)),
    Mistake("positions start at 1: the first position is 0 and is left unrotated",
            _rope_with(_omega, pos_shift=1)),
    Mistake("one frequency for every pair: pair i turns at omega_i = 10000^(-2i/d)",
            _rope_with(lambda d: torch.ones(d // 2, dtype=torch.float64))),
    Mistake("wrong exponent: omega_i = 10000^(-2i/d) with i counting pairs; you used i/d",
            _rope_with(lambda d: torch.pow(10000.0, -torch.arange(0, d // 2, dtype=torch.float64) / d))),
    Mistake("wrong exponent: omega_i = 10000^(-2i/d) with i counting pairs (0, 1, 2, ...); the values of "
            "torch.arange(0, d, 2) are already 2i, so don't double them",
            _rope_with(lambda d: torch.pow(10000.0, -2 * torch.arange(0, d, 2, dtype=torch.float64) / d))),
]

ROPE_EXCEPTION_HINTS = [("must match the size", "the positions run along the second-to-last axis: "
                                                "seq = x.shape[-2] (x.shape[1] is the heads axis for [batch, heads, seq, d])")]


def check_apply_rope(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(x: [..., seq, d]) -> [..., seq, d]``: RoPE with positions 0..seq-1, base 10000, adjacent pairs."""
    return check_function("apply_rope", fn, lambda x: apply_rope(x), _rope_cases(), mistakes=ROPE_MISTAKES,
                          atol=1e-5, rtol=1e-4, exception_hints=ROPE_EXCEPTION_HINTS, strict=strict)


# ----------------------------------------------------------------------------------------------
# RoPE on split halves: fn(x) -> x rotated, pairs (i, i + d/2), as in Hugging Face's Llama ("rotate half")
# ----------------------------------------------------------------------------------------------


def _rope_halves_rotate_half_swapped(x: torch.Tensor) -> torch.Tensor:
    """rotate_half written as cat([x2, -x1]) instead of cat([-x2, x1]): the rotation runs the other way."""
    return _rope_with(_omega, sign=-1.0, layout="halves")(x)


ROPE_HALVES_MISTAKES = [
    Mistake("paired adjacent dimensions (2i, 2i+1): in the split-halves layout dimension i pairs with i + d/2 "
            "(x1 = x[..., :d//2], x2 = x[..., d//2:])",
            _rope_with(_omega)),
    Mistake("rotated the wrong way: rotate_half(x) is cat([-x2, x1]) (minus on the second half), so the result is "
            "(x1 cos - x2 sin, x2 cos + x1 sin); you have the signs of sin swapped",
            _rope_halves_rotate_half_swapped),
    Mistake("frequencies in the wrong order: each half runs through omega_0 .. omega_{d/2-1} once, so the angles of "
            "the full vector are cat([angles, angles], -1), not angles.repeat_interleave(2, -1)",
            _rope_with(_omega, pair_order="repeat_interleave")),
    Mistake("frequencies inverted: the angle is pos / 10000^(2i/d), not pos * 10000^(2i/d)",
            _rope_with(lambda d: 1.0 / _omega(d), layout="halves")),
    Mistake("the angle ignores the position: rotate position m by m * omega_i, so position 0 is unchanged",
            _rope_with(_omega, rotate=False, layout="halves")),
    Mistake("positions start at 1: the first position is 0 and is left unrotated",
            _rope_with(_omega, pos_shift=1, layout="halves")),
    Mistake("wrong exponent: omega_i = 10000^(-2i/d) with i counting pairs; you used i/d",
            _rope_with(lambda d: torch.pow(10000.0, -torch.arange(0, d // 2, dtype=torch.float64) / d), layout="halves")),
    Mistake("wrong exponent: omega_i = 10000^(-2i/d) with i counting pairs (0, 1, 2, ...); the values of "
            "torch.arange(0, d, 2) are already 2i, so don't double them",
            _rope_with(lambda d: torch.pow(10000.0, -2 * torch.arange(0, d, 2, dtype=torch.float64) / d),
                       layout="halves")),
]


def check_apply_rope_halves(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(x: [..., seq, d]) -> [..., seq, d]``: RoPE with pairs (i, i + d/2), positions 0..seq-1, base 10000."""
    return check_function("apply_rope_halves", fn, lambda x: apply_rope(x, interleaved=False), _rope_cases(),
                          mistakes=ROPE_HALVES_MISTAKES, atol=1e-5, rtol=1e-4, exception_hints=ROPE_EXCEPTION_HINTS,
                          strict=strict)


# ----------------------------------------------------------------------------------------------
# The permutation test: fn(f, x, perm) -> max |f(x[:, perm]) - f(x)[:, perm]| (0-d tensor)
# ----------------------------------------------------------------------------------------------


def _toy_attention(seed: int, positions: bool):
    """A small fixed self-attention ``[batch, seq, 4] -> [batch, seq, 4]``, with or without positions."""
    g = torch.Generator().manual_seed(seed)
    wq, wk, wv = (torch.randn(4, 4, generator=g) for _ in range(3))
    pe = sinusoidal_encoding(16, 4) * 2.0

    def attend(x: torch.Tensor) -> torch.Tensor:
        if positions:
            x = x + pe[: x.shape[1]]
        q, k, v = x @ wq, x @ wk, x @ wv
        return torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1) @ v

    attend.__name__ = "attention_with_positions" if positions else "attention_without_positions"
    return attend


def _perm_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(5)
    perm5 = torch.tensor([2, 0, 3, 4, 1])      # a 5-cycle: its inverse is a different permutation
    perm6 = torch.tensor([1, 2, 0, 5, 3, 4])
    batch_first = torch.randn(6, 5, 4, generator=torch.Generator().manual_seed(6))
    return [
        # batch 6 >= seq 5: x[perm] (the batch axis) runs instead of failing
        (_toy_attention(3, positions=True), batch_first, perm5),
        (_toy_attention(0, positions=True), torch.randn(2, 5, 4, generator=g), perm5),
        (_toy_attention(1, positions=False), torch.randn(3, 5, 4, generator=g), perm5),
        (_toy_attention(2, positions=True), torch.randn(1, 6, 4, generator=g), perm6),
    ]


PERMUTATION_MISTAKES = [
    Mistake("compare f(x[:, perm]) with f(x)[:, perm]: the output of the unpermuted input must be permuted too",
            lambda f, x, perm: (f(x[:, perm]) - f(x)).abs().max()),
    Mistake("permuted the output back the wrong way: index f(x) with perm itself (f(x)[:, perm]), not its inverse",
            lambda f, x, perm: (f(x[:, perm]) - f(x)[:, torch.argsort(perm)]).abs().max()),
    Mistake("return the largest absolute difference (.abs().max()), not the mean",
            lambda f, x, perm: (f(x[:, perm]) - f(x)[:, perm]).abs().mean()),
    Mistake("take the absolute value before the maximum: .abs().max()",
            lambda f, x, perm: (f(x[:, perm]) - f(x)[:, perm]).max()),
    Mistake("permuted the batch axis: x[perm] reorders the sequences of the batch; the positions are axis 1, "
            "x[:, perm] and f(x)[:, perm]",
            lambda f, x, perm: (f(x[perm]) - f(x)[perm]).abs().max()),
    Mistake("the difference is signed: the gap is the largest ABSOLUTE difference, .abs().max()",
            lambda f, x, perm: (f(x)[:, perm] - f(x[:, perm])).max()),
    Mistake("this is the norm of the whole difference, not its largest entry: .abs().max()",
            lambda f, x, perm: (f(x[:, perm]) - f(x)[:, perm]).norm()),
]


def check_permutation_gap(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(f, x: [batch, seq, d], perm: [seq]) -> 0-d tensor max |f(x[:, perm]) - f(x)[:, perm]|``."""
    hints = [("out of bounds for dimension 0", "the positions are axis 1: permute them with x[:, perm] and f(x)[:, perm] "
                                               "(x[perm] reorders the batch)")]
    return check_function("permutation_gap", fn, permutation_gap, _perm_cases(), mistakes=PERMUTATION_MISTAKES,
                          output_names=("gap",), atol=1e-5, rtol=1e-4, exception_hints=hints, strict=strict)
