"""Lesson 06's checkers: a library of wrong implementations, each caught with the right hint.

The wrong implementations are written the way a learner would write them, not copied from the
checker's own mistake list.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import course.checks.layers as layer_checks
from checker_assertions import assert_fails_with
from answer_library import Right, Wrong, library_tests
from course.checks.core import NOT_ATTEMPTED
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


def ln_no_keepdim(x, weight, bias, eps):
    mu = x.mean(-1)
    return (x - mu) / torch.sqrt(((x - mu) ** 2).mean(-1) + eps) * weight + bias


def ln_float64(x, weight, bias, eps):
    h = x.double()
    y = (h - h.mean(-1, keepdim=True)) * torch.rsqrt(h.var(-1, unbiased=False, keepdim=True) + eps)
    return (y * weight.double() + bias.double()).to(x.dtype)


def ln_loop(x, weight, bias, eps):
    rows = x.reshape(-1, x.shape[-1])
    out = torch.empty_like(rows)
    for i, row in enumerate(rows):
        mu = sum(row.tolist()) / len(row)
        var = sum((v - mu) ** 2 for v in row.tolist()) / len(row)
        out[i] = (row - mu) / (var + eps) ** 0.5 * weight + bias
    return out.reshape(x.shape)


def ln_module(x, weight, bias, eps):
    norm = torch.nn.LayerNorm(x.shape[-1], eps=eps)
    with torch.no_grad():
        norm.weight.copy_(weight)
        norm.bias.copy_(bias)
        return norm(x)


def ln_moments(x, weight, bias, eps):
    """E[x^2] - E[x]^2: fine at these scales."""
    mu = x.mean(-1, keepdim=True)
    var = (x * x).mean(-1, keepdim=True) - mu * mu
    return (x - mu) / torch.sqrt(var.clamp_min(0) + eps) * weight + bias


WRONG_LAYER_NORMS = [
    Wrong("over the batch axis", lambda x, w, b, e: ln_learner(x, w, b, e, dim=0), "wrong axis"),
    Wrong("over the sequence axis", lambda x, w, b, e: ln_learner(x, w, b, e, dim=-2), "wrong axis"),
    Wrong("over the whole tensor", ln_whole_tensor, "wrong axis"),
    Wrong("over the last two axes", lambda x, w, b, e: (x - x.mean((-2, -1), keepdim=True))
          / torch.sqrt(x.var((-2, -1), unbiased=False, keepdim=True) + e) * w + b, "wrong axis"),
    Wrong("eps outside the sqrt", lambda x, w, b, e: ln_learner(x, w, b, e, eps_outside=True),
          "eps outside the square root"),
    Wrong("std + eps (torch.std, biased)", lambda x, w, b, e: (x - x.mean(-1, keepdim=True))
          / (x.std(-1, unbiased=False, keepdim=True) + e) * w + b, "eps outside the square root"),
    Wrong("no eps", lambda x, w, b, e: ln_learner(x, w, b, e, no_eps=True), "eps left out"),
    Wrong("eps hard-coded", lambda x, w, b, e: ln_learner(x, w, b, 1e-5), "eps is hard-coded"),
    Wrong("unbiased variance (torch.var default)",
          lambda x, w, b, e: (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + e) * w + b,
          "unbiased variance"),
    Wrong("not centred", lambda x, w, b, e: ln_learner(x, w, b, e, centre=False), "mean is not subtracted"),
    Wrong("variance of the raw x", lambda x, w, b, e: (x - x.mean(-1, keepdim=True))
          / torch.sqrt((x ** 2).mean(-1, keepdim=True) + e) * w + b, "not of x**2"),
    Wrong("divides by the variance", lambda x, w, b, e: (x - x.mean(-1, keepdim=True))
          / (x.var(-1, unbiased=False, keepdim=True) + e) * w + b, "square root is missing"),
    Wrong("no weight and bias", lambda x, w, b, e: ln_learner(x, w, b, e, affine=False), "weight and bias are missing"),
    Wrong("no bias", lambda x, w, b, e: ln_learner(x, w, torch.zeros_like(b), e), "bias is missing"),
    Wrong("no weight", lambda x, w, b, e: ln_learner(x, torch.ones_like(w), b, e), "weight is missing"),
    Wrong("weight and bias swapped", lambda x, w, b, e: ln_learner(x, b, w, e), "swapped"),
    Wrong("bias before the scale", lambda x, w, b, e: (ln_learner(x, w, b, e, affine=False) + b) * w,
          "bias is added before the scaling"),
    Wrong("mean without keepdim", ln_no_keepdim, "keepdim=True"),
    Wrong("normalised output doubled", lambda x, w, b, e: 2 * ln_learner(x, w, b, e, affine=False) * w + 2 * b,
          "yours = 2 × the expected"),
]

RIGHT_LAYER_NORMS = [
    Right("by hand", ln_learner),
    Right("F.layer_norm", lambda x, w, b, e: F.layer_norm(x, (x.shape[-1],), w, b, e)),
    Right("float64 inside, rsqrt", ln_float64),
    Right("a loop over rows in Python floats", ln_loop),
    Right("nn.LayerNorm with the weights copied", ln_module),
    Right("E[x^2] - E[x]^2", ln_moments),
]


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


def rms_loop(x, weight, eps):
    out = torch.empty_like(x)
    for index in torch.cartesian_prod(*[torch.arange(n) for n in x.shape[:-1]]).reshape(-1, x.dim() - 1) \
            if x.dim() > 1 else [()]:
        index = tuple(int(i) for i in index)
        row = x[index]
        out[index] = row / math.sqrt(float((row ** 2).sum()) / row.numel() + eps) * weight
    return out


WRONG_RMS_NORMS = [
    Wrong("subtracts the mean", lambda x, w, e: rms_learner(x, w, e, subtract_mean=True), "does not subtract the mean"),
    Wrong("divides by the std", lambda x, w, e: x / (x.std(-1, unbiased=False, keepdim=True) ** 2 + e).sqrt() * w,
          "standard deviation"),
    Wrong("wrong axis", lambda x, w, e: rms_learner(x, w, e, dim=0), "wrong axis"),
    Wrong("over the sequence axis", lambda x, w, e: rms_learner(x, w, e, dim=-2), "wrong axis"),
    Wrong("eps outside the sqrt", lambda x, w, e: rms_learner(x, w, e, eps_outside=True), "eps outside the square root"),
    Wrong("no sqrt", lambda x, w, e: rms_learner(x, w, e, no_sqrt=True), "square root is missing"),
    Wrong("no weight", lambda x, w, e: rms_learner(x, w, e, affine=False), "weight is missing"),
    Wrong("no eps", lambda x, w, e: x / x.pow(2).mean(-1, keepdim=True).sqrt() * w, "eps left out"),
    Wrong("eps hard-coded 1e-6", lambda x, w, e: rms_learner(x, w, 1e-6), "eps is hard-coded"),
    Wrong("divides by the norm", lambda x, w, e: x / (x.norm(dim=-1, keepdim=True) ** 2 + e).sqrt() * w,
          "root MEAN square"),
    Wrong("mean absolute value", lambda x, w, e: x / (x.abs().mean(-1, keepdim=True) + e) * w, "mean of |x|"),
    Wrong("rsqrt of the sum over d", lambda x, w, e: x * torch.rsqrt((x * x).sum(-1, keepdim=True) + e) * w,
          "root MEAN square"),
    Wrong("mean square without keepdim", lambda x, w, e: x / torch.sqrt((x * x).mean(-1) + e) * w, "keepdim=True"),
    Wrong("weight added", lambda x, w, e: rms_learner(x, w, e, affine=False) + w, "values differ"),
]

RIGHT_RMS_NORMS = [
    Right("by hand", rms_learner),
    Right("rsqrt", lambda x, w, e: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + e) * w),
    Right("float64 inside", lambda x, w, e: (x.double() / (x.double().square().mean(-1, keepdim=True) + e).sqrt()
                                             * w.double()).float()),
    Right("F.rms_norm", lambda x, w, e: F.rms_norm(x, (x.shape[-1],), w, e)),
    Right("a loop over rows", rms_loop),
    Right("einsum for the mean square", lambda x, w, e: x / torch.sqrt(torch.einsum("...d,...d->...", x, x)[..., None]
                                                                         / x.shape[-1] + e) * w),
]


# ------------------------------------------------------------------------------------ residual sublayer


def sublayer_learner(x, sublayer, norm, norm_first):
    if norm_first:
        return x + sublayer(norm(x))
    return norm(x + sublayer(x))


def sublayer_one_path(x, sublayer, norm, norm_first):
    h = sublayer(norm(x) if norm_first else x)
    out = x + h
    return out if norm_first else norm(out)


WRONG_SUBLAYERS = [
    Wrong("residual missing", lambda x, s, n, nf: s(n(x)) if nf else n(s(x)), "residual is missing"),
    Wrong("residual missing, post-norm only", lambda x, s, n, nf: x + s(n(x)) if nf else n(s(x)), "residual is missing"),
    Wrong("flag ignored, always pre-norm", lambda x, s, n, nf: x + s(n(x)), "mixed up"),
    Wrong("flag ignored, always post-norm", lambda x, s, n, nf: n(x + s(x)), "mixed up"),
    Wrong("flag inverted", lambda x, s, n, nf: sublayer_learner(x, s, n, not nf), "mixed up"),
    Wrong("normalised input as the residual", lambda x, s, n, nf: (n(x) + s(n(x))) if nf else n(x + s(x)),
          "adds the normalised input"),
    Wrong("norm on the output in pre-norm", lambda x, s, n, nf: (x + n(s(x))) if nf else n(x + s(x)),
          "applied to the sublayer's output"),
    Wrong("post-norm normalises only the sublayer", lambda x, s, n, nf: (x + s(n(x))) if nf else x + n(s(x)),
          "normalises after adding the residual"),
    Wrong("no norm", lambda x, s, n, nf: x + s(x), "norm is missing"),
    Wrong("post-norm as norm(x) + sublayer(x)", lambda x, s, n, nf: (x + s(n(x))) if nf else n(x) + s(x),
          "not norm(x) + sublayer(x)"),
    Wrong("pre-norm normalises the sum", lambda x, s, n, nf: n(x + s(n(x))) if nf else n(x + s(x)),
          "pre-norm leaves the sum alone"),
]

RIGHT_SUBLAYERS = [
    Right("two branches", sublayer_learner),
    Right("one path", sublayer_one_path),
    Right("torch.add", lambda x, s, n, nf: torch.add(x, s(n(x))) if nf else n(torch.add(x, s(x)))),
]


def test_layer_norm_wrong_shape_raising_and_unattempted_give_one_line():
    assert_fails_with(check_layer_norm(lambda x, w, b, e: ln_learner(x, w, b, e).mean(-1)), "has shape (3, 5), expected (3, 5, 4)")
    assert_fails_with(check_layer_norm(lambda x, w, b, e: x @ w[:3]), "raised RuntimeError")

    def layer_norm(x, weight, bias, eps):
        raise NotImplementedError()
    assert check_layer_norm(layer_norm).status == NOT_ATTEMPTED


def test_sublayer_connection_in_place_and_raising_give_one_line():
    def in_place(x, s, n, nf):
        x += s(n(x)) if nf else s(x)
        return x if nf else n(x)
    assert_fails_with(check_sublayer_connection(in_place), "in place")
    assert_fails_with(check_sublayer_connection(lambda x, s, n, nf: s(n(x[..., :3]))), "raised")


# ------------------------------------------------------------------------------------ feed-forward


def ffn_learner(x, w1, b1, w2, b2):
    return torch.clamp(x @ w1 + b1, min=0) @ w2 + b2


WRONG_FFNS = [
    Wrong("no activation", lambda x, w1, b1, w2, b2: (x @ w1 + b1) @ w2 + b2, "ReLU is missing"),
    Wrong("ReLU at the end", lambda x, w1, b1, w2, b2: torch.clamp((x @ w1 + b1) @ w2 + b2, min=0),
          "after the second layer"),
    Wrong("no biases", lambda x, w1, b1, w2, b2: torch.relu(x @ w1) @ w2, "biases are missing"),
    Wrong("GELU", lambda x, w1, b1, w2, b2: F.gelu(x @ w1 + b1) @ w2 + b2, "this is GELU"),
]

RIGHT_FFNS = [
    Right("clamp", ffn_learner),
    Right("F.linear with transposes", lambda x, w1, b1, w2, b2: F.linear(F.relu(F.linear(x, w1.T, b1)), w2.T, b2)),
]


def test_feed_forward_with_transposed_weights_raises_in_one_line():
    assert_fails_with(check_feed_forward(lambda x, w1, b1, w2, b2: torch.relu(x @ w1.T + b1) @ w2.T + b2),
                      "raised RuntimeError")


# ------------------------------------------------------------------------------------ SwiGLU


def swiglu_learner(x, w_gate, w_up, w_down):
    g = x @ w_gate
    return (g * torch.sigmoid(g) * (x @ w_up)) @ w_down


WRONG_SWIGLUS = [
    Wrong("gate and up swapped", lambda x, g, u, d: swiglu_learner(x, u, g, d), "swapped"),
    Wrong("sigmoid (GLU)", lambda x, g, u, d: (torch.sigmoid(x @ g) * (x @ u)) @ d, "sigmoid instead of SiLU"),
    Wrong("GELU (GEGLU)", lambda x, g, u, d: (F.gelu(x @ g) * (x @ u)) @ d, "GELU instead of SiLU"),
    Wrong("ReLU (ReGLU)", lambda x, g, u, d: (torch.relu(x @ g) * (x @ u)) @ d, "ReLU instead of SiLU"),
    Wrong("no gate", lambda x, g, u, d: F.silu(x @ g) @ d, "gate is missing"),
    Wrong("no activation", lambda x, g, u, d: ((x @ g) * (x @ u)) @ d, "activation is missing"),
    Wrong("SiLU on the product", lambda x, g, u, d: F.silu((x @ g) * (x @ u)) @ d, "after the product"),
    Wrong("added, not multiplied", lambda x, g, u, d: (F.silu(x @ g) + x @ u) @ d, "are added"),
    Wrong("brackets forgotten", lambda x, g, u, d: (F.silu(x @ g) * x @ u) @ d, "mind the brackets"),
    Wrong("half of SiLU", lambda x, g, u, d: (0.5 * F.silu(x @ g) * (x @ u)) @ d, "yours = 0.5 × the expected"),
]

RIGHT_SWIGLUS = [
    Right("sigmoid by hand", swiglu_learner),
    Right("F.silu", lambda x, g, u, d: (F.silu(x @ g) * (x @ u)) @ d),
    Right("einsum", lambda x, g, u, d: torch.einsum("...f,fd->...d",
                                                   F.silu(torch.einsum("...d,df->...f", x, g))
                                                   * torch.einsum("...d,df->...f", x, u), d)),
    Right("float64 inside", lambda x, g, u, d: (F.silu(x.double() @ g.double()) * (x.double() @ u.double())
                                                @ d.double()).float()),
    Right("1 / (1 + exp(-z))", lambda x, g, u, d: ((x @ g) / (1 + torch.exp(-(x @ g))) * (x @ u)) @ d),
]


def test_swiglu_wrong_shape_gives_one_line():
    assert_fails_with(check_swiglu(lambda x, g, u, d: swiglu_learner(x, g, u, d)[..., :1]), "has shape")


LIBRARY = {
    check_layer_norm: (WRONG_LAYER_NORMS, RIGHT_LAYER_NORMS),
    check_rms_norm: (WRONG_RMS_NORMS, RIGHT_RMS_NORMS),
    check_sublayer_connection: (WRONG_SUBLAYERS, RIGHT_SUBLAYERS),
    check_feed_forward: (WRONG_FFNS, RIGHT_FFNS),
    check_swiglu: (WRONG_SWIGLUS, RIGHT_SWIGLUS),
}


test_each_wrong_answer_fails_with_its_words, test_each_right_answer_passes = library_tests(LIBRARY)


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
