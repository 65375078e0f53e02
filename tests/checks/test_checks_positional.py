"""Lesson 04's checkers: libraries of learner-style right and wrong answers (see answer_library.py), each wrong
one caught with the right hint, each right one accepted; every registered mistake reachable.

The wrong implementations are written the way a learner would write them (loops, torch.pow,
math.sin), not copied from the checker's own mistake list, so the tests prove the hints recognise
real code, not only themselves.
"""
from __future__ import annotations

import math

import pytest
import torch

from answer_library import Right, Wrong, library_tests
from checker_assertions import assert_fails_with
from course.checks.core import NOT_ATTEMPTED
from course.checks.positional import (
    check_apply_rope,
    check_apply_rope_halves,
    check_permutation_gap,
    check_relative_offset_matrix,
    check_sinusoidal_encoding,
)


pytestmark = pytest.mark.usefixtures("lenient_checks")




# ------------------------------------------------------------------------------------ sinusoidal


def pe_loops(num_positions, d_model, *, swap=False, invert=False, exponent="2i", start=0, halves=False,
             only_sin=False):
    """A learner-style loop implementation with switches for the classic mistakes."""
    pe = torch.zeros(num_positions, d_model)
    for pos in range(num_positions):
        p = pos + start
        for i in range(d_model // 2):
            for col in (2 * i, 2 * i + 1):
                e = {"2i": 2 * i / d_model, "i": i / d_model, "col": col / d_model, "no-d": 2 * i,
                     "int": 2 * i // d_model, "4i": 4 * i / d_model}[exponent]
                angle = p * 10000 ** e if invert else p / 10000 ** e
                is_sin = (col % 2 == 0) != swap or only_sin
                value = math.sin(angle) if is_sin else math.cos(angle)
                target = (i if col % 2 == 0 else d_model // 2 + i) if halves else col
                pe[pos, target] = value
    return pe


def correct_sinusoidal(num_positions, d_model):
    pos = torch.arange(num_positions).float()[:, None]
    div = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
    pe = torch.zeros(num_positions, d_model)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe


def pe_arange_doubled(num_positions, d_model):
    two_i = torch.arange(0, d_model, 2).float()
    angles = torch.arange(num_positions).float()[:, None] / 10000 ** (2 * two_i / d_model)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)


def pe_float64(num_positions, d_model):
    pos = torch.arange(num_positions, dtype=torch.float64)[:, None]
    omega = 10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    return torch.stack([(pos * omega).sin(), (pos * omega).cos()], dim=-1).reshape(num_positions, d_model)


def pe_base(num_positions, d_model, base):
    pos = torch.arange(num_positions).float()[:, None]
    omega = base ** (-torch.arange(0, d_model, 2).float() / d_model)
    return torch.stack([(pos * omega).sin(), (pos * omega).cos()], -1).flatten(1)


def pe_cos_as_shifted_sin(num_positions, d_model):
    angles = torch.arange(num_positions)[:, None] * 10000 ** (-torch.arange(0, d_model, 2) / d_model)
    return torch.stack([angles.sin(), (angles + math.pi / 2).sin()], -1).flatten(1).float()


WRONG_SINUSOIDAL = [
    Wrong("sin/cos swapped", lambda n, d: pe_loops(n, d, swap=True), "sin and cos are swapped"),
    Wrong("frequencies inverted", lambda n, d: pe_loops(n, d, invert=True), "frequencies inverted"),
    Wrong("exponent i/d", lambda n, d: pe_loops(n, d, exponent="i"), "you used i/d_model"),
    Wrong("odd column own exponent", lambda n, d: pe_loops(n, d, exponent="col"), "(2i+1)/d_model"),
    Wrong("exponent not divided by d", lambda n, d: pe_loops(n, d, exponent="no-d"), "division by d_model"),
    Wrong("halves", lambda n, d: pe_loops(n, d, halves=True), "two halves"),
    Wrong("only sin", lambda n, d: pe_loops(n, d, only_sin=True), "only sines"),
    Wrong("positions from 1", lambda n, d: pe_loops(n, d, start=1), "positions start at 1"),
    Wrong("integer division", lambda n, d: pe_loops(n, d, exponent="int"), "integer division in the exponent"),
    Wrong("2i doubled", pe_arange_doubled, "don't double them"),
    Wrong("transposed", lambda n, d: correct_sinusoidal(n, d).T, "has shape (4, 5), expected (5, 4)"),
    Wrong("a NumPy array", lambda n, d: correct_sinusoidal(n, d).numpy(), "got a NumPy array"),
    # holdout: written after the checker was finished; None where the line only says the values differ
    Wrong("base 1000", lambda n, d: pe_base(n, d, 1000.0), None),
]
RIGHT_SINUSOIDAL = [
    Right("exp and log", correct_sinusoidal),
    Right("loops with math.sin", pe_loops),
    Right("float64", pe_float64),
    Right("cos as a shifted sin", pe_cos_as_shifted_sin),
]  # the last: holdout


def test_sinusoidal_raising_gives_one_line():
    assert_fails_with(check_sinusoidal_encoding(lambda n, d: torch.zeros(n, d)[:, 99]), "raised IndexError")


def test_sinusoidal_not_attempted():
    def sinusoidal_encoding(n, d):
        raise NotImplementedError()
    assert check_sinusoidal_encoding(sinusoidal_encoding).status == NOT_ATTEMPTED


# ------------------------------------------------------------------------------------ offset matrix


def offset_loops(k, d_model, *, transpose=False, invert=False, forget_k=False, swap=False, same_sign=False):
    m = torch.zeros(d_model, d_model)
    for i in range(d_model // 2):
        w = 10000 ** (2 * i / d_model) if invert else 1 / 10000 ** (2 * i / d_model)
        a = (1 if forget_k else k) * w
        c, s = (math.sin(a), math.cos(a)) if swap else (math.cos(a), math.sin(a))
        block = torch.tensor([[c, s], [s if same_sign else -s, c]])
        m[2 * i:2 * i + 2, 2 * i:2 * i + 2] = block.T if transpose else block
    return m


WRONG_OFFSET = [
    Wrong("wrong direction", lambda k, d: offset_loops(k, d, transpose=True), "wrong way"),
    Wrong("frequencies inverted", lambda k, d: offset_loops(k, d, invert=True), "frequencies inverted"),
    Wrong("forgot k", lambda k, d: offset_loops(k, d, forget_k=True), "misses the offset"),
    Wrong("sin and cos swapped", lambda k, d: offset_loops(k, d, swap=True), "sin and cos swapped inside each block"),
    Wrong("no minus sign", lambda k, d: offset_loops(k, d, same_sign=True), "both corners of a block have the same sign"),
    Wrong("a column short", lambda k, d: offset_loops(k, d)[:, :-1], "has shape (4, 3)"),
    Wrong("k + 1", lambda k, d: offset_loops(k + 1, d), None),  # holdout
]


def offset_block_diag(k, d_model):
    omega = torch.pow(10000.0, -torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    c, s = torch.cos(k * omega), torch.sin(k * omega)
    return torch.block_diag(*[torch.stack([torch.stack([ci, si]), torch.stack([-si, ci])]) for ci, si in zip(c, s)]).float()


def offset_from_encodings(k, d_model):
    pe = torch.zeros(d_model, d_model)
    for i in range(0, d_model, 2):
        a = k / 10000 ** (i / d_model)
        pe[i, i] = pe[i + 1, i + 1] = math.cos(a)
        pe[i, i + 1], pe[i + 1, i] = math.sin(a), -math.sin(a)
    return pe


RIGHT_OFFSET = [
    Right("loops", offset_loops),
    Right("block_diag in float64", offset_block_diag),
    Right("index assignment", offset_from_encodings),
]


# ------------------------------------------------------------------------------------ RoPE


def rope_loops(x, *, sign=1.0, halves=False, invert=False, no_pos=False, start=0, one_freq=False, exponent=2):
    """Learner-style RoPE over the last two axes, with switches for the classic mistakes."""
    out = x.clone()
    seq, d = x.shape[-2], x.shape[-1]
    for m in range(seq):
        for i in range(d // 2):
            w = 1.0 if one_freq else (10000 ** (exponent * i / d) if invert else 10000 ** (-exponent * i / d))
            angle = (1.0 if no_pos else (m + start)) * w
            c, s = math.cos(angle), sign * math.sin(angle)
            a, b = (i, i + d // 2) if halves else (2 * i, 2 * i + 1)
            x0, x1 = x[..., m, a], x[..., m, b]
            out[..., m, a] = x0 * c - x1 * s
            out[..., m, b] = x0 * s + x1 * c
    return out


def rope_complex(x):
    seq, d = x.shape[-2], x.shape[-1]
    freqs = 1.0 / 10000 ** (torch.arange(0, d, 2).float() / d)
    rot = torch.polar(torch.ones(seq, d // 2), torch.outer(torch.arange(seq).float(), freqs))
    z = torch.view_as_complex(x.reshape(*x.shape[:-1], d // 2, 2))
    return torch.view_as_real(z * rot).reshape(x.shape)


def rope_float64_cached(x):
    seq, d = x.shape[-2], x.shape[-1]
    omega = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = torch.arange(seq, dtype=torch.float64)[:, None] * omega
    cos, sin = angles.cos().repeat_interleave(2, -1), angles.sin().repeat_interleave(2, -1)
    rotated = torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).flatten(-2)   # (-x1, x0) for each pair
    return (x.double() * cos + rotated.double() * sin).to(x.dtype)


def rope_positions_from_axis_1(x):
    d = x.shape[-1]
    omega = 10000.0 ** (-torch.arange(0, d, 2).float() / d)
    angles = torch.arange(x.shape[1]).float()[:, None] * omega
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * angles.cos() - x1 * angles.sin(), x0 * angles.sin() + x1 * angles.cos()], -1).flatten(-2)


def rope_cos_only(x):
    seq, d = x.shape[-2:]
    angles = torch.arange(seq).float()[:, None] * 10000 ** (-torch.arange(0, d, 2).float() / d)
    return torch.stack([x[..., 0::2] * angles.cos(), x[..., 1::2] * angles.cos()], -1).flatten(-2)


WRONG_ROPE = [
    Wrong("rotated the wrong way", lambda x: rope_loops(x, sign=-1.0), "wrong way"),
    Wrong("rotate-half pairing", lambda x: rope_loops(x, halves=True), "paired the wrong dimensions"),
    Wrong("frequencies inverted", lambda x: rope_loops(x, invert=True), "frequencies inverted"),
    Wrong("angle ignores position", lambda x: rope_loops(x, no_pos=True), "ignores the position"),
    Wrong("positions from 1", lambda x: rope_loops(x, start=1), "positions start at 1"),
    Wrong("one frequency", lambda x: rope_loops(x, one_freq=True), "one frequency for every pair"),
    Wrong("exponent i/d", lambda x: rope_loops(x, exponent=1), "you used i/d"),
    Wrong("2i doubled", lambda x: rope_loops(x, exponent=4), "don't double them"),
    Wrong("positions from axis 1", rope_positions_from_axis_1, "the positions run along the second-to-last axis"),
    Wrong("cos only", rope_cos_only, None),  # holdout
]
RIGHT_ROPE = [
    Right("loops", rope_loops),
    Right("complex numbers", rope_complex),
    Right("float64, cos and sin repeated", rope_float64_cached),
]


def test_rope_raising_and_in_place_give_one_line():
    assert_fails_with(check_apply_rope(lambda x: x.view(-1, 3)), "raised RuntimeError")

    def rope_in_place(x):
        x.mul_(1.0)
        x[..., 0] = 0
        return x
    assert_fails_with(check_apply_rope(rope_in_place), "in place")


# ------------------------------------------------------------------------------------ RoPE on split halves


def rope_rotate_half(x, *, minus_first=True, cat_freqs=True, start=0):
    """The way Hugging Face's Llama code writes it (cos/sin of cat(freqs, freqs), rotate_half), with switches."""
    seq, d = x.shape[-2], x.shape[-1]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    freqs = torch.outer(torch.arange(start, start + seq).float(), inv_freq)           # [seq, d/2]
    emb = torch.cat((freqs, freqs), dim=-1) if cat_freqs else freqs.repeat_interleave(2, dim=-1)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    rotated = torch.cat((-x2, x1), dim=-1) if minus_first else torch.cat((x2, -x1), dim=-1)
    return x * emb.cos() + rotated * emb.sin()


def rope_halves_by_permuting(x):
    """Reorder to adjacent pairs, rotate as complex numbers, reorder back."""
    d = x.shape[-1]
    order = [j for i in range(d // 2) for j in (i, i + d // 2)]      # halves -> adjacent pairs
    back = [order.index(j) for j in range(d)]
    return rope_complex(x[..., order])[..., back]


def rope_halves_positions_from_axis_1(x):
    d = x.shape[-1]
    angles = torch.arange(x.shape[1]).float()[:, None] * 10000.0 ** (-torch.arange(0, d, 2).float() / d)
    emb = torch.cat([angles, angles], -1)
    return x * emb.cos() + torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1) * emb.sin()


def rope_halves_flip(x):
    """A holdout: 'rotate half' done with flip, which reverses the order inside each half too."""
    seq, d = x.shape[-2], x.shape[-1]
    angles = torch.arange(seq).float()[:, None] * 10000.0 ** (-torch.arange(0, d, 2).float() / d)
    emb = torch.cat([angles, angles], -1)
    flipped = x.flip(-1)
    return x * emb.cos() + torch.cat([-flipped[..., : d // 2], flipped[..., d // 2:]], -1) * emb.sin()


WRONG_ROPE_HALVES = [
    Wrong("adjacent pairs", rope_loops, "paired adjacent dimensions"),
    Wrong("rotate_half with the minus on the first half", lambda x: rope_rotate_half(x, minus_first=False), "wrong way"),
    Wrong("frequencies repeat_interleaved", lambda x: rope_rotate_half(x, cat_freqs=False), "frequencies in the wrong order"),
    Wrong("frequencies inverted", lambda x: rope_loops(x, halves=True, invert=True), "frequencies inverted"),
    Wrong("angle ignores position", lambda x: rope_loops(x, halves=True, no_pos=True), "ignores the position"),
    Wrong("positions from 1", lambda x: rope_rotate_half(x, start=1), "positions start at 1"),
    Wrong("exponent i/d", lambda x: rope_loops(x, halves=True, exponent=1), "you used i/d"),
    Wrong("2i doubled", lambda x: rope_loops(x, halves=True, exponent=4), "don't double them"),
    Wrong("positions from axis 1", rope_halves_positions_from_axis_1, "the positions run along the second-to-last axis"),
    Wrong("rotate half by flipping", rope_halves_flip, None),  # holdout
]
RIGHT_ROPE_HALVES = [
    Right("rotate_half, as in Hugging Face's Llama", rope_rotate_half),
    Right("loops over (i, i + d/2)", lambda x: rope_loops(x, halves=True)),
    Right("permuted to adjacent pairs and back", rope_halves_by_permuting),
]


# ------------------------------------------------------------------------------------ permutation gap


def correct_gap(f, x, perm):
    return (f(x[:, perm]) - f(x)[:, perm]).abs().max()


def gap_loops(f, x, perm):
    a, b = f(x[:, perm]), f(x)[:, perm]
    worst = torch.tensor(0.0)
    for i in range(a.shape[0]):
        worst = torch.maximum(worst, (a[i] - b[i]).abs().max())
    return worst


WRONG_GAP = [
    Wrong("output not permuted", lambda f, x, perm: (f(x[:, perm]) - f(x)).abs().max(), "must be permuted too"),
    Wrong("inverse permutation", lambda f, x, perm: (f(x[:, perm]) - f(x)[:, torch.argsort(perm)]).abs().max(),
                            "the wrong way"),
    Wrong("mean instead of max", lambda f, x, perm: (f(x[:, perm]) - f(x)[:, perm]).abs().mean(), "not the mean"),
    Wrong("the batch axis permuted", lambda f, x, perm: (f(x[perm]) - f(x)[perm]).abs().max(), "permuted the batch axis"),
    Wrong("signed, the other way round", lambda f, x, perm: (f(x)[:, perm] - f(x[:, perm])).max(), "the difference is signed"),
    Wrong("a norm", lambda f, x, perm: torch.linalg.norm(f(x[:, perm]) - f(x)[:, perm]), "the norm of the whole difference"),
    Wrong("a float", lambda f, x, perm: float(correct_gap(f, x, perm)), "gap should be a torch.Tensor, got float"),
    Wrong("a bool", lambda f, x, perm: torch.allclose(f(x[:, perm]), f(x)[:, perm]), "gap should be a torch.Tensor, got bool"),
    Wrong("one gap per sequence", lambda f, x, perm: (f(x[:, perm]) - f(x)[:, perm]).abs().amax(dim=(1, 2)),
                             "gap has shape (6,), expected a single number"),
    Wrong("a sum", lambda f, x, perm: (f(x[:, perm]) - f(x)[:, perm]).abs().sum(), None),  # holdout
]
RIGHT_GAP = [
    Right(".abs().max()", correct_gap),
    Right("torch.max of torch.abs", lambda f, x, perm: torch.max(torch.abs(f(x[:, perm]) - f(x)[:, perm]))),
    Right("a loop over the batch", gap_loops),
    Right("the infinity norm", lambda f, x, perm: torch.linalg.vector_norm(f(x[:, perm]) - f(x)[:, perm], ord=float("inf"))),
]


def test_permutation_gap_that_raises_gives_one_line():
    assert_fails_with(check_permutation_gap(lambda f, x, perm: correct_gap(f, x[perm], perm)), "raised IndexError")


# ------------------------------------------------------------------------------------ the libraries

LIBRARY = {
    check_sinusoidal_encoding: (WRONG_SINUSOIDAL, RIGHT_SINUSOIDAL),
    check_relative_offset_matrix: (WRONG_OFFSET, RIGHT_OFFSET),
    check_apply_rope: (WRONG_ROPE, RIGHT_ROPE),
    check_apply_rope_halves: (WRONG_ROPE_HALVES, RIGHT_ROPE_HALVES),
    check_permutation_gap: (WRONG_GAP, RIGHT_GAP),
}


test_each_wrong_answer_fails_with_its_words, test_each_right_answer_passes = library_tests(LIBRARY)


# ------------------------------------------------------------------------------------ every hint is reachable


@pytest.mark.parametrize("checker, mistakes", [
    (check_sinusoidal_encoding, "SINUSOIDAL_MISTAKES"),
    (check_relative_offset_matrix, "OFFSET_MISTAKES"),
    (check_apply_rope, "ROPE_MISTAKES"),
    (check_apply_rope_halves, "ROPE_HALVES_MISTAKES"),
    (check_permutation_gap, "PERMUTATION_MISTAKES"),
])
def test_every_listed_mistake_is_diagnosed_with_its_own_hint(checker, mistakes):
    """No mistake is shadowed by an earlier one, and none is accepted as correct."""
    import course.checks.positional as module

    for mistake in getattr(module, mistakes):
        result = checker(mistake.fn)
        assert not result.passed, mistake.hint
        assert mistake.hint in result.line, (mistake.hint, result.line)
