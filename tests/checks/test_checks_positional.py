"""Lesson 04's checkers: a library of wrong implementations, each caught with the right hint.

The wrong implementations are written the way a learner would write them (loops, torch.pow,
math.sin), not copied from the checker's own mistake list, so the tests prove the hints recognise
real code, not only themselves.
"""
from __future__ import annotations

import math

import pytest
import torch

from checker_assertions import assert_fails_with
from course.checks.core import NOT_ATTEMPTED, PASSED
from course.checks.positional import (
    check_apply_rope,
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
                e = {"2i": 2 * i / d_model, "i": i / d_model, "col": col / d_model, "no-d": 2 * i}[exponent]
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


WRONG_SINUSOIDAL = {
    "sin/cos swapped": (lambda n, d: pe_loops(n, d, swap=True), "sin and cos are swapped"),
    "frequencies inverted": (lambda n, d: pe_loops(n, d, invert=True), "frequencies inverted"),
    "exponent i/d": (lambda n, d: pe_loops(n, d, exponent="i"), "you used i/d_model"),
    "odd column own exponent": (lambda n, d: pe_loops(n, d, exponent="col"), "(2i+1)/d_model"),
    "exponent not divided by d": (lambda n, d: pe_loops(n, d, exponent="no-d"), "division by d_model"),
    "halves": (lambda n, d: pe_loops(n, d, halves=True), "two halves"),
    "only sin": (lambda n, d: pe_loops(n, d, only_sin=True), "only sines"),
    "positions from 1": (lambda n, d: pe_loops(n, d, start=1), "positions start at 1"),
}


def test_correct_sinusoidal_passes_two_ways():
    assert check_sinusoidal_encoding(correct_sinusoidal).status == PASSED
    assert check_sinusoidal_encoding(pe_loops).status == PASSED


@pytest.mark.parametrize("name", list(WRONG_SINUSOIDAL))
def test_each_wrong_sinusoidal_fails_with_its_hint(name):
    fn, words = WRONG_SINUSOIDAL[name]
    assert_fails_with(check_sinusoidal_encoding(fn), words)


def test_sinusoidal_wrong_shape_and_raising_give_one_line():
    assert_fails_with(check_sinusoidal_encoding(lambda n, d: correct_sinusoidal(n, d).T), "has shape (4, 5), expected (5, 4)")
    assert_fails_with(check_sinusoidal_encoding(lambda n, d: torch.zeros(n, d)[:, 99]), "raised IndexError")


def test_sinusoidal_not_attempted():
    def sinusoidal_encoding(n, d):
        raise NotImplementedError()
    assert check_sinusoidal_encoding(sinusoidal_encoding).status == NOT_ATTEMPTED


# ------------------------------------------------------------------------------------ offset matrix


def offset_loops(k, d_model, *, transpose=False, invert=False, forget_k=False):
    m = torch.zeros(d_model, d_model)
    for i in range(d_model // 2):
        w = 10000 ** (2 * i / d_model) if invert else 1 / 10000 ** (2 * i / d_model)
        a = (1 if forget_k else k) * w
        block = torch.tensor([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
        m[2 * i:2 * i + 2, 2 * i:2 * i + 2] = block.T if transpose else block
    return m


WRONG_OFFSET = {
    "wrong direction": (lambda k, d: offset_loops(k, d, transpose=True), "wrong way"),
    "frequencies inverted": (lambda k, d: offset_loops(k, d, invert=True), "frequencies inverted"),
    "forgot k": (lambda k, d: offset_loops(k, d, forget_k=True), "misses the offset"),
}


def test_correct_offset_matrix_passes():
    assert check_relative_offset_matrix(offset_loops).status == PASSED


@pytest.mark.parametrize("name", list(WRONG_OFFSET))
def test_each_wrong_offset_matrix_fails_with_its_hint(name):
    fn, words = WRONG_OFFSET[name]
    assert_fails_with(check_relative_offset_matrix(fn), words)


def test_offset_matrix_wrong_shape_gives_one_line():
    assert_fails_with(check_relative_offset_matrix(lambda k, d: offset_loops(k, d)[:, :-1]), "has shape (4, 3)")


# ------------------------------------------------------------------------------------ RoPE


def rope_loops(x, *, sign=1.0, halves=False, invert=False, no_pos=False, start=0, one_freq=False):
    """Learner-style RoPE over the last two axes, with switches for the classic mistakes."""
    out = x.clone()
    seq, d = x.shape[-2], x.shape[-1]
    for m in range(seq):
        for i in range(d // 2):
            w = 1.0 if one_freq else (10000 ** (2 * i / d) if invert else 10000 ** (-2 * i / d))
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


WRONG_ROPE = {
    "rotated the wrong way": (lambda x: rope_loops(x, sign=-1.0), "wrong way"),
    "rotate-half pairing": (lambda x: rope_loops(x, halves=True), "paired the wrong dimensions"),
    "frequencies inverted": (lambda x: rope_loops(x, invert=True), "frequencies inverted"),
    "angle ignores position": (lambda x: rope_loops(x, no_pos=True), "ignores the position"),
    "positions from 1": (lambda x: rope_loops(x, start=1), "positions start at 1"),
    "one frequency": (lambda x: rope_loops(x, one_freq=True), "one frequency for every pair"),
}


def test_correct_rope_passes_two_ways():
    assert check_apply_rope(rope_loops).status == PASSED
    assert check_apply_rope(rope_complex).status == PASSED


@pytest.mark.parametrize("name", list(WRONG_ROPE))
def test_each_wrong_rope_fails_with_its_hint(name):
    fn, words = WRONG_ROPE[name]
    assert_fails_with(check_apply_rope(fn), words)


def test_rope_raising_and_in_place_give_one_line():
    assert_fails_with(check_apply_rope(lambda x: x.view(-1, 3)), "raised RuntimeError")

    def rope_in_place(x):
        x.mul_(1.0)
        x[..., 0] = 0
        return x
    assert_fails_with(check_apply_rope(rope_in_place), "in place")


# ------------------------------------------------------------------------------------ permutation gap


def correct_gap(f, x, perm):
    return (f(x[:, perm]) - f(x)[:, perm]).abs().max()


WRONG_GAP = {
    "output not permuted": (lambda f, x, perm: (f(x[:, perm]) - f(x)).abs().max(), "must be permuted too"),
    "inverse permutation": (lambda f, x, perm: (f(x[:, perm]) - f(x)[:, torch.argsort(perm)]).abs().max(),
                            "the wrong way"),
    "mean instead of max": (lambda f, x, perm: (f(x[:, perm]) - f(x)[:, perm]).abs().mean(), "not the mean"),
}


def test_correct_permutation_gap_passes():
    assert check_permutation_gap(correct_gap).status == PASSED


@pytest.mark.parametrize("name", list(WRONG_GAP))
def test_each_wrong_permutation_gap_fails_with_its_hint(name):
    fn, words = WRONG_GAP[name]
    assert_fails_with(check_permutation_gap(fn), words)


def test_permutation_gap_wrong_type_and_raising_give_one_line():
    assert_fails_with(check_permutation_gap(lambda f, x, perm: float(correct_gap(f, x, perm))),
                       "gap should be a torch.Tensor, got float")
    assert_fails_with(check_permutation_gap(lambda f, x, perm: correct_gap(f, x[perm], perm)), "raised IndexError")
    assert_fails_with(check_permutation_gap(lambda f, x, perm: (f(x[:, perm]) - f(x)[:, perm]).abs()),
                       "gap has shape")


# ------------------------------------------------------------------------------------ every hint is reachable


@pytest.mark.parametrize("checker, mistakes", [
    (check_sinusoidal_encoding, "SINUSOIDAL_MISTAKES"),
    (check_relative_offset_matrix, "OFFSET_MISTAKES"),
    (check_apply_rope, "ROPE_MISTAKES"),
    (check_permutation_gap, "PERMUTATION_MISTAKES"),
])
def test_every_listed_mistake_is_diagnosed_with_its_own_hint(checker, mistakes):
    """No mistake is shadowed by an earlier one, and none is accepted as correct."""
    import course.checks.positional as module

    for mistake in getattr(module, mistakes):
        result = checker(mistake.fn)
        assert not result.passed, mistake.hint
        assert mistake.hint in result.line, (mistake.hint, result.line)
