"""Lesson 06's checkers: a library of wrong implementations, each caught with the right hint.

The wrong implementations are written the way a learner would write them, not copied from the
checker's own mistake list.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import course.checks.layers as layer_checks
from checker_assertions import assert_fails_with
from course.checks.core import NOT_ATTEMPTED, PASSED
from course.checks.layers import (
    check_feed_forward,
    check_layer_norm,
    check_rms_norm,
    check_sublayer_connection,
    check_swiglu,
)


pytestmark = pytest.mark.usefixtures("lenient_checks")




# ------------------------------------------------------------------------------------ LayerNorm


def ln_learner(x, weight, bias, eps, *, dim=-1, eps_outside=False, unbiased=False, centre=True, affine=True,
               no_eps=False):
    mu = x.mean(dim, keepdim=True)
    centred = x - mu if centre else x
    var = ((x - mu) ** 2).sum(dim, keepdim=True) / (x.shape[dim] - (1 if unbiased else 0))
    if not centre:
        var = (x ** 2).mean(dim, keepdim=True)
    if no_eps:
        y = centred / var ** 0.5
    elif eps_outside:
        y = centred / (var ** 0.5 + eps)
    else:
        y = centred / (var + eps) ** 0.5
    return weight * y + bias if affine else y


def ln_whole_tensor(x, weight, bias, eps):
    return (x - x.mean()) / (x.var(unbiased=False) + eps).sqrt() * weight + bias


WRONG_LAYER_NORMS = {
    "over the batch axis": (lambda x, w, b, e: ln_learner(x, w, b, e, dim=0), "wrong axis"),
    "over the sequence axis": (lambda x, w, b, e: ln_learner(x, w, b, e, dim=-2), "wrong axis"),
    "over the whole tensor": (ln_whole_tensor, "wrong axis"),
    "eps outside the sqrt": (lambda x, w, b, e: ln_learner(x, w, b, e, eps_outside=True), "eps outside the square root"),
    "no eps": (lambda x, w, b, e: ln_learner(x, w, b, e, no_eps=True), "eps left out"),
    "unbiased variance (torch.var default)": (
        lambda x, w, b, e: (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + e) * w + b,
        "unbiased variance"),
    "not centred": (lambda x, w, b, e: ln_learner(x, w, b, e, centre=False), "mean is not subtracted"),
    "no weight and bias": (lambda x, w, b, e: ln_learner(x, w, b, e, affine=False), "weight and bias are missing"),
    "weight and bias swapped": (lambda x, w, b, e: ln_learner(x, b, w, e), "swapped"),
}


def test_correct_layer_norm_passes_two_ways():
    assert check_layer_norm(ln_learner).status == PASSED
    assert check_layer_norm(lambda x, w, b, e: F.layer_norm(x, (x.shape[-1],), w, b, e)).status == PASSED


@pytest.mark.parametrize("name", list(WRONG_LAYER_NORMS))
def test_each_wrong_layer_norm_fails_with_its_hint(name):
    fn, words = WRONG_LAYER_NORMS[name]
    assert_fails_with(check_layer_norm(fn), words)


def test_layer_norm_wrong_shape_raising_and_unattempted_give_one_line():
    assert_fails_with(check_layer_norm(lambda x, w, b, e: ln_learner(x, w, b, e).mean(-1)), "has shape (3, 5), expected (3, 5, 4)")
    assert_fails_with(check_layer_norm(lambda x, w, b, e: x @ w[:3]), "raised RuntimeError")

    def layer_norm(x, weight, bias, eps):
        raise NotImplementedError()
    assert check_layer_norm(layer_norm).status == NOT_ATTEMPTED


# ------------------------------------------------------------------------------------ RMSNorm


def rms_learner(x, weight, eps, *, dim=-1, subtract_mean=False, eps_outside=False, no_sqrt=False, affine=True):
    h = x - x.mean(dim, keepdim=True) if subtract_mean else x
    ms = (h * h).mean(dim, keepdim=True)
    if no_sqrt:
        y = h / (ms + eps)
    elif eps_outside:
        y = h / (ms.sqrt() + eps)
    else:
        y = h / (ms + eps).sqrt()
    return y * weight if affine else y


WRONG_RMS_NORMS = {
    "subtracts the mean": (lambda x, w, e: rms_learner(x, w, e, subtract_mean=True), "does not subtract the mean"),
    "divides by the std": (lambda x, w, e: x / (x.std(-1, unbiased=False, keepdim=True) ** 2 + e).sqrt() * w,
                           "standard deviation"),
    "wrong axis": (lambda x, w, e: rms_learner(x, w, e, dim=0), "wrong axis"),
    "eps outside the sqrt": (lambda x, w, e: rms_learner(x, w, e, eps_outside=True), "eps outside the square root"),
    "no sqrt": (lambda x, w, e: rms_learner(x, w, e, no_sqrt=True), "square root is missing"),
    "no weight": (lambda x, w, e: rms_learner(x, w, e, affine=False), "weight is missing"),
}


def test_correct_rms_norm_passes():
    assert check_rms_norm(rms_learner).status == PASSED


@pytest.mark.parametrize("name", list(WRONG_RMS_NORMS))
def test_each_wrong_rms_norm_fails_with_its_hint(name):
    fn, words = WRONG_RMS_NORMS[name]
    assert_fails_with(check_rms_norm(fn), words)


# ------------------------------------------------------------------------------------ residual sublayer


def sublayer_learner(x, sublayer, norm, norm_first):
    if norm_first:
        return x + sublayer(norm(x))
    return norm(x + sublayer(x))


WRONG_SUBLAYERS = {
    "residual missing": (lambda x, s, n, nf: s(n(x)) if nf else n(s(x)), "residual is missing"),
    "residual missing, post-norm only": (lambda x, s, n, nf: x + s(n(x)) if nf else n(s(x)), "residual is missing"),
    "flag ignored, always pre-norm": (lambda x, s, n, nf: x + s(n(x)), "mixed up"),
    "flag ignored, always post-norm": (lambda x, s, n, nf: n(x + s(x)), "mixed up"),
    "flag inverted": (lambda x, s, n, nf: sublayer_learner(x, s, n, not nf), "mixed up"),
    "normalised input as the residual": (lambda x, s, n, nf: (n(x) + s(n(x))) if nf else n(x + s(x)),
                                         "adds the normalised input"),
    "norm on the output in pre-norm": (lambda x, s, n, nf: (x + n(s(x))) if nf else n(x + s(x)),
                                       "applied to the sublayer's output"),
    "post-norm normalises only the sublayer": (lambda x, s, n, nf: (x + s(n(x))) if nf else x + n(s(x)),
                                               "normalises after adding the residual"),
    "no norm": (lambda x, s, n, nf: x + s(x), "norm is missing"),
}


def test_correct_sublayer_connection_passes():
    assert check_sublayer_connection(sublayer_learner).status == PASSED


@pytest.mark.parametrize("name", list(WRONG_SUBLAYERS))
def test_each_wrong_sublayer_connection_fails_with_its_hint(name):
    fn, words = WRONG_SUBLAYERS[name]
    assert_fails_with(check_sublayer_connection(fn), words)


def test_sublayer_connection_in_place_and_raising_give_one_line():
    def in_place(x, s, n, nf):
        x += s(n(x)) if nf else s(x)
        return x if nf else n(x)
    assert_fails_with(check_sublayer_connection(in_place), "in place")
    assert_fails_with(check_sublayer_connection(lambda x, s, n, nf: s(n(x[..., :3]))), "raised")


# ------------------------------------------------------------------------------------ feed-forward


def ffn_learner(x, w1, b1, w2, b2):
    return torch.clamp(x @ w1 + b1, min=0) @ w2 + b2


WRONG_FFNS = {
    "no activation": (lambda x, w1, b1, w2, b2: (x @ w1 + b1) @ w2 + b2, "ReLU is missing"),
    "ReLU at the end": (lambda x, w1, b1, w2, b2: torch.clamp((x @ w1 + b1) @ w2 + b2, min=0), "after the second layer"),
    "no biases": (lambda x, w1, b1, w2, b2: torch.relu(x @ w1) @ w2, "biases are missing"),
    "GELU": (lambda x, w1, b1, w2, b2: F.gelu(x @ w1 + b1) @ w2 + b2, "this is GELU"),
}


def test_correct_feed_forward_passes():
    assert check_feed_forward(ffn_learner).status == PASSED


@pytest.mark.parametrize("name", list(WRONG_FFNS))
def test_each_wrong_feed_forward_fails_with_its_hint(name):
    fn, words = WRONG_FFNS[name]
    assert_fails_with(check_feed_forward(fn), words)


def test_feed_forward_with_transposed_weights_raises_in_one_line():
    assert_fails_with(check_feed_forward(lambda x, w1, b1, w2, b2: torch.relu(x @ w1.T + b1) @ w2.T + b2),
                       "raised RuntimeError")


def swiglu_learner(x, w_gate, w_up, w_down):
    g = x @ w_gate
    return (g * torch.sigmoid(g) * (x @ w_up)) @ w_down


WRONG_SWIGLUS = {
    "gate and up swapped": (lambda x, g, u, d: swiglu_learner(x, u, g, d), "swapped"),
    "sigmoid (GLU)": (lambda x, g, u, d: (torch.sigmoid(x @ g) * (x @ u)) @ d, "sigmoid instead of SiLU"),
    "GELU (GEGLU)": (lambda x, g, u, d: (F.gelu(x @ g) * (x @ u)) @ d, "GELU instead of SiLU"),
    "ReLU (ReGLU)": (lambda x, g, u, d: (torch.relu(x @ g) * (x @ u)) @ d, "ReLU instead of SiLU"),
    "no gate": (lambda x, g, u, d: F.silu(x @ g) @ d, "gate is missing"),
    "no activation": (lambda x, g, u, d: ((x @ g) * (x @ u)) @ d, "activation is missing"),
    "SiLU on the product": (lambda x, g, u, d: F.silu((x @ g) * (x @ u)) @ d, "after the product"),
    "added, not multiplied": (lambda x, g, u, d: (F.silu(x @ g) + x @ u) @ d, "are added"),
}


def test_correct_swiglu_passes():
    assert check_swiglu(swiglu_learner).status == PASSED


@pytest.mark.parametrize("name", list(WRONG_SWIGLUS))
def test_each_wrong_swiglu_fails_with_its_hint(name):
    fn, words = WRONG_SWIGLUS[name]
    assert_fails_with(check_swiglu(fn), words)


def test_swiglu_wrong_shape_gives_one_line():
    assert_fails_with(check_swiglu(lambda x, g, u, d: swiglu_learner(x, g, u, d)[..., :1]), "has shape")


# ------------------------------------------------------------------------------------ every hint is reachable


@pytest.mark.parametrize("checker, mistakes", [
    (check_layer_norm, "LAYER_NORM_MISTAKES"),
    (check_rms_norm, "RMS_NORM_MISTAKES"),
    (check_sublayer_connection, "SUBLAYER_MISTAKES"),
    (check_feed_forward, "FEED_FORWARD_MISTAKES"),
    (check_swiglu, "SWIGLU_MISTAKES"),
])
def test_every_listed_mistake_is_diagnosed_with_its_own_hint(checker, mistakes):
    """No mistake is shadowed by an earlier one, and none is accepted as correct."""
    for mistake in getattr(layer_checks, mistakes):
        result = checker(mistake.fn)
        assert not result.passed, mistake.hint
        assert mistake.hint in result.line, (mistake.hint, result.line)
