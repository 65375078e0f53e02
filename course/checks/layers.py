"""Checkers for lesson 06 (the block): LayerNorm, RMSNorm, residual sublayers, feed-forward networks.

Every ``check_*`` prints one line and returns the result; ``strict=False`` reports without raising
even under a grader (to show what a checker says about a deliberately wrong function).

The cases are built so each known mistake shows: inputs ``[batch=3, seq=5, d=4]`` (normalising
over the wrong axis changes the result and keeps the shape), a large ``eps`` and rows of tiny
variance (where ``sqrt(var + eps)`` and ``sqrt(var) + eps`` differ), non-zero means (so
forgetting to centre shows) and random scales and shifts (so forgetting them shows). The
boundaries: a constant row and a row of zeros (variance 0: without eps, 0 / 0), a square input
``[5, 5]``, a single vector ``[7]`` and a 4-D input (any number of leading axes), and eps that changes
from case to case (a hard-coded eps shows).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from course.layers import feed_forward, layer_norm, rms_norm, sublayer_connection, swiglu

from .core import CheckResult, Mistake, check_function

# A learner's shapes that do not broadcast: most often a mean or sum taken without keepdim=True.
KEEPDIM_HINT = ("must match the size of tensor",
                "the shapes do not broadcast: keep the reduced axis with keepdim=True (x.mean(-1, keepdim=True) "
                "is [..., 1], so it divides each row by its own statistic)")

# ----------------------------------------------------------------------------------------------
# LayerNorm: fn(x, weight, bias, eps) -> [..., d]
# ----------------------------------------------------------------------------------------------


def _norm_inputs(g: torch.Generator, shape, scale: float = 1.0, shift: float = 0.5):
    d = shape[-1]
    x = torch.randn(*shape, generator=g) * scale + shift
    weight = 1.0 + 0.5 * torch.randn(d, generator=g)
    bias = 0.3 * torch.randn(d, generator=g)
    return x, weight, bias


def _layer_norm_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(6)
    cases = []
    x, w, b = _norm_inputs(g, (3, 5, 4))
    x[1, 2], x[2, 4] = 0.3, 0.0                  # a constant token and a zero token: variance 0
    cases.append((x, w, b, 0.5))                 # large eps: sqrt(var + eps) vs sqrt(var) + eps differ clearly
    x, w, b = _norm_inputs(g, (3, 5, 4), scale=2.0, shift=1.0)
    cases.append((x, w, b, 1e-5))
    x, w, b = _norm_inputs(g, (2, 6), scale=1e-3, shift=0.0)
    cases.append((x, w, b, 1e-5))                # tiny variance: eps matters
    x, w, b = _norm_inputs(g, (4, 8))
    cases.append((x, w, b, 1e-5))
    x, w, b = _norm_inputs(g, (5, 5), scale=1.5)
    x[1] = 0.75                                  # a constant row: variance 0, only eps keeps 0 / 0 away
    x[3] = 0.0                                   # a row of zeros (a padding vector): the same for RMSNorm
    cases.append((x, w, b, 1e-3))                # square: a mean without keepdim broadcasts the wrong way
    x, w, b = _norm_inputs(g, (7,), scale=0.8, shift=-0.4)
    cases.append((x, w, b, 1e-2))                # a single vector: no leading axes
    x, w, b = _norm_inputs(g, (2, 3, 2, 6), scale=1.2)
    cases.append((x, w, b, 1e-5))                # two batch axes
    return cases


def _ln_generic(dims, *, unbiased=False, eps_outside=False, centre=True, affine=True, mean_only=False,
                no_eps=False, hard_eps=None, no_sqrt=False, raw_square=False, weight=True, bias=True,
                bias_first=False):
    def ln(x, w, b, eps):
        eps = eps if hard_eps is None else hard_eps
        mean = x.mean(dim=dims, keepdim=True) if centre else torch.zeros_like(x)
        var = x.var(dim=dims, keepdim=True, unbiased=unbiased) if centre else x.pow(2).mean(dim=dims, keepdim=True)
        if raw_square:
            var = x.pow(2).mean(dim=dims, keepdim=True)
        if mean_only:
            y = x - mean
        elif no_eps:
            y = (x - mean) / var.sqrt()
        elif eps_outside:
            y = (x - mean) / (var.sqrt() + eps)
        elif no_sqrt:
            y = (x - mean) / (var + eps)
        else:
            y = (x - mean) / torch.sqrt(var + eps)
        if not affine:
            return y
        if bias_first:
            return (y + b) * w
        return (y * w if weight else y) + (b if bias else 0)
    return ln


def _whole_tensor_ln(x, weight, bias, eps):
    mean = x.mean()
    var = x.var(unbiased=False)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


LAYER_NORM_MISTAKES = [
    Mistake("normalised over the wrong axis: take the mean and variance over the last dimension (dim=-1, the "
            "features of one token), with keepdim=True",
            _ln_generic(0)),
    Mistake("normalised over the wrong axis: take the mean and variance over the last dimension (dim=-1) only, "
            "one token at a time; you used the sequence axis",
            _ln_generic(-2)),
    Mistake("normalised over the wrong axis: over the last dimension (dim=-1) only, not over the whole tensor",
            _whole_tensor_ln),
    Mistake("normalised over the wrong axis: over the last dimension (dim=-1) only, one token at a time, "
            "not over the last two",
            _ln_generic((-2, -1))),
    Mistake("eps outside the square root: divide by sqrt(var + eps), not sqrt(var) + eps",
            _ln_generic(-1, eps_outside=True)),
    Mistake("eps left out: divide by sqrt(var + eps)",
            _ln_generic(-1, no_eps=True)),
    Mistake("eps is hard-coded: use the eps argument (the cases pass different values)",
            _ln_generic(-1, hard_eps=1e-5)),
    Mistake("eps is hard-coded: use the eps argument (the cases pass different values)",
            _ln_generic(-1, hard_eps=1e-6)),
    Mistake("the square root is missing: divide by sqrt(var + eps), the standard deviation, not by the variance",
            _ln_generic(-1, no_sqrt=True)),
    Mistake("the variance is the mean of (x - mean)**2, not of x**2 (that is the mean square, RMSNorm's statistic)",
            _ln_generic(-1, raw_square=True)),
    Mistake("unbiased variance: LayerNorm divides by d, not d - 1 (use unbiased=False or ((x - mean)**2).mean(-1))",
            _ln_generic(-1, unbiased=True)),
    Mistake("the mean is not subtracted: centre each vector, (x - mean) / sqrt(var + eps) (without centring this is RMSNorm)",
            _ln_generic(-1, centre=False)),
    Mistake("weight and bias are missing: finish with y * weight + bias",
            _ln_generic(-1, affine=False)),
    Mistake("the bias is missing: finish with y * weight + bias",
            _ln_generic(-1, bias=False)),
    Mistake("the weight is missing: finish with y * weight + bias",
            _ln_generic(-1, weight=False)),
    Mistake("the bias is added before the scaling: y * weight + bias, not (y + bias) * weight",
            _ln_generic(-1, bias_first=True)),
    Mistake("only centred: also divide by sqrt(var + eps)",
            _ln_generic(-1, mean_only=True)),
    Mistake("weight and bias swapped: y * weight + bias",
            lambda x, w, b, eps: layer_norm(x, b, w, eps)),
]


def check_layer_norm(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(x: [..., d], weight: [d], bias: [d], eps) -> [..., d]`` against ``F.layer_norm``."""
    def reference(x, weight, bias, eps):
        return F.layer_norm(x, x.shape[-1:], weight, bias, eps)
    return check_function("layer_norm", fn, reference, _layer_norm_cases(), mistakes=LAYER_NORM_MISTAKES,
                          exception_hints=[KEEPDIM_HINT], nonfinite_hint=_EPS_NAN, atol=1e-5, rtol=1e-4, strict=strict)


_EPS_NAN = ("a row whose entries are all equal has variance 0, and only eps keeps 0 / 0 away: "
            "divide by sqrt(var + eps)")


# ----------------------------------------------------------------------------------------------
# RMSNorm: fn(x, weight, eps) -> [..., d]
# ----------------------------------------------------------------------------------------------


def _rms_norm_cases() -> list[tuple]:
    return [(x, w, eps) for x, w, _, eps in _layer_norm_cases()]


def _rms_generic(dim=-1, *, subtract_mean=False, eps_outside=False, no_sqrt=False, affine=True, std=False,
                 no_eps=False, hard_eps=None, total=False, absolute=False):
    def rms(x, weight, eps):
        eps = eps if hard_eps is None else hard_eps
        h = x - x.mean(dim=dim, keepdim=True) if subtract_mean else x
        if std:
            ms = x.var(dim=dim, keepdim=True, unbiased=False)
        elif total:
            ms = h.pow(2).sum(dim=dim, keepdim=True)
        elif absolute:
            return h / (h.abs().mean(dim=dim, keepdim=True) + eps) * weight
        else:
            ms = h.pow(2).mean(dim=dim, keepdim=True)
        if no_eps:
            y = h / ms.sqrt()
        elif no_sqrt:
            y = h / (ms + eps)
        elif eps_outside:
            y = h / (ms.sqrt() + eps)
        else:
            y = h / torch.sqrt(ms + eps)
        return y * weight if affine else y
    return rms


RMS_NORM_MISTAKES = [
    Mistake("RMSNorm does not subtract the mean: divide x itself by sqrt(mean(x**2) + eps) (centring makes it LayerNorm)",
            _rms_generic(subtract_mean=True)),
    Mistake("divided by the standard deviation: RMSNorm divides by the root mean square sqrt(mean(x**2) + eps), "
            "which includes the mean",
            _rms_generic(std=True)),
    Mistake("normalised over the wrong axis: take mean(x**2) over the last dimension (dim=-1), keepdim=True",
            _rms_generic(dim=0)),
    Mistake("normalised over the wrong axis: over the last dimension (dim=-1), not the sequence axis",
            _rms_generic(dim=-2)),
    Mistake("eps outside the square root: divide by sqrt(mean(x**2) + eps), not sqrt(mean(x**2)) + eps",
            _rms_generic(eps_outside=True)),
    Mistake("the square root is missing: divide by sqrt(mean(x**2) + eps), the root of the mean square",
            _rms_generic(no_sqrt=True)),
    Mistake("the weight is missing: finish with y * weight",
            _rms_generic(affine=False)),
    Mistake("eps left out: divide by sqrt(mean(x**2) + eps) (a row of zeros, a padding vector, gives 0 / 0 without it)",
            _rms_generic(no_eps=True)),
    Mistake("eps is hard-coded: use the eps argument (the cases pass different values)",
            _rms_generic(hard_eps=1e-6)),
    Mistake("eps is hard-coded: use the eps argument (the cases pass different values)",
            _rms_generic(hard_eps=1e-5)),
    Mistake("divided by the length sqrt(sum(x**2)), not the root MEAN square: take mean(x**2) over the last "
            "dimension (the sum is d times larger)",
            _rms_generic(total=True)),
    Mistake("divided by the mean of |x|: RMSNorm divides by the root mean square, sqrt(mean(x**2) + eps)",
            _rms_generic(absolute=True)),
]


def check_rms_norm(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(x: [..., d], weight: [d], eps) -> [..., d]``: ``x / sqrt(mean(x**2, -1) + eps) * weight``."""
    return check_function("rms_norm", fn, rms_norm, _rms_norm_cases(), mistakes=RMS_NORM_MISTAKES,
                          exception_hints=[KEEPDIM_HINT], nonfinite_hint=_RMS_NAN, atol=1e-5, rtol=1e-4, strict=strict)


_RMS_NAN = "a row of zeros (a padding vector) gives 0 / 0 unless eps sits inside: sqrt(mean(x**2) + eps)"


# ----------------------------------------------------------------------------------------------
# Residual sublayer: fn(x, sublayer, norm, norm_first) -> [..., d]
# ----------------------------------------------------------------------------------------------


def _sublayer_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(7)
    cases = []
    for shape, norm_first in (((2, 5, 4), True), ((3, 4, 4), False), ((1, 6, 8), True), ((2, 3, 8), False)):
        d = shape[-1]
        sub = nn.Linear(d, d)
        norm = nn.LayerNorm(d)
        with torch.no_grad():
            for p in (*sub.parameters(), *norm.parameters()):
                p.copy_(torch.randn(p.shape, generator=g) * 0.7 + (1.0 if p is norm.weight else 0.0))
        sub.requires_grad_(False)
        norm.requires_grad_(False)
        x = torch.randn(*shape, generator=g) + 0.5
        cases.append((x, sub, norm, norm_first))
    return cases


def _pre(x, s, n):
    return x + s(n(x))


def _post(x, s, n):
    return n(x + s(x))


_MIXED = ("pre-norm and post-norm mixed up: norm_first=True gives x + sublayer(norm(x)); "
          "norm_first=False gives norm(x + sublayer(x))")

SUBLAYER_MISTAKES = [
    Mistake("the residual is missing: add the input back, x + sublayer(norm(x)) for pre-norm, "
            "norm(x + sublayer(x)) for post-norm",
            lambda x, s, n, nf: s(n(x)) if nf else n(s(x))),
    Mistake("the residual is missing: add the input back, x + sublayer(norm(x)) for pre-norm, "
            "norm(x + sublayer(x)) for post-norm",
            lambda x, s, n, nf: _pre(x, s, n) if nf else n(s(x))),
    Mistake("the residual is missing: add the input back, x + sublayer(norm(x)) for pre-norm, "
            "norm(x + sublayer(x)) for post-norm",
            lambda x, s, n, nf: s(n(x)) if nf else _post(x, s, n)),
    Mistake(_MIXED, lambda x, s, n, nf: _post(x, s, n) if nf else _pre(x, s, n)),
    Mistake(_MIXED, lambda x, s, n, nf: _pre(x, s, n)),
    Mistake(_MIXED, lambda x, s, n, nf: _post(x, s, n)),
    Mistake("the residual adds the normalised input: pre-norm adds the raw x, x + sublayer(norm(x))",
            lambda x, s, n, nf: n(x) + s(n(x)) if nf else _post(x, s, n)),
    Mistake("the norm is applied to the sublayer's output: pre-norm normalises the sublayer's input, "
            "x + sublayer(norm(x))",
            lambda x, s, n, nf: x + n(s(x)) if nf else _post(x, s, n)),
    Mistake("post-norm normalises after adding the residual: norm(x + sublayer(x)), not x + norm(sublayer(x))",
            lambda x, s, n, nf: _pre(x, s, n) if nf else x + n(s(x))),
    Mistake("the norm is missing: pre-norm is x + sublayer(norm(x)), post-norm is norm(x + sublayer(x))",
            lambda x, s, n, nf: x + s(x)),
    Mistake("post-norm normalises the sum: norm(x + sublayer(x)), not norm(x) + sublayer(x)",
            lambda x, s, n, nf: _pre(x, s, n) if nf else n(x) + s(x)),
    Mistake("pre-norm leaves the sum alone: x + sublayer(norm(x)), without a norm around it (the residual "
            "path carries no norm)",
            lambda x, s, n, nf: n(_pre(x, s, n)) if nf else _post(x, s, n)),
]


def check_sublayer_connection(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(x, sublayer, norm, norm_first) -> [..., d]``: the residual connection with its norm."""
    return check_function("sublayer_connection", fn, sublayer_connection, _sublayer_cases(),
                          mistakes=SUBLAYER_MISTAKES, atol=1e-5, rtol=1e-4, strict=strict)


# ----------------------------------------------------------------------------------------------
# Feed-forward networks
# ----------------------------------------------------------------------------------------------


def _ffn_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(8)
    cases = []
    for shape, d_ff in (((2, 5, 4), 6), ((3, 8), 12), ((1, 3, 6), 10)):
        d = shape[-1]
        x = torch.randn(*shape, generator=g)
        w1, w2 = torch.randn(d, d_ff, generator=g) / d ** 0.5, torch.randn(d_ff, d, generator=g) / d_ff ** 0.5
        b1, b2 = 0.5 * torch.randn(d_ff, generator=g), 0.5 * torch.randn(d, generator=g)
        cases.append((x, w1, b1, w2, b2))
    return cases


FEED_FORWARD_MISTAKES = [
    Mistake("the ReLU is missing: FFN(x) = max(0, x W1 + b1) W2 + b2 (without it the two layers collapse into one linear map)",
            lambda x, w1, b1, w2, b2: (x @ w1 + b1) @ w2 + b2),
    Mistake("the ReLU is applied after the second layer: apply it to the hidden layer, max(0, x W1 + b1) W2 + b2",
            lambda x, w1, b1, w2, b2: torch.relu((x @ w1 + b1) @ w2 + b2)),
    Mistake("ReLU applied before adding b1: max(0, x W1 + b1)",
            lambda x, w1, b1, w2, b2: (torch.relu(x @ w1) + b1) @ w2 + b2),
    Mistake("the biases are missing: FFN(x) = max(0, x W1 + b1) W2 + b2",
            lambda x, w1, b1, w2, b2: torch.relu(x @ w1) @ w2),
    Mistake("this is GELU: the exercise asks for ReLU, max(0, .)",
            lambda x, w1, b1, w2, b2: F.gelu(x @ w1 + b1) @ w2 + b2),
]


def check_feed_forward(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(x: [..., d], w1: [d, d_ff], b1: [d_ff], w2: [d_ff, d], b2: [d]) -> [..., d]`` (ReLU FFN)."""
    return check_function("feed_forward", fn, lambda *a: feed_forward(*a, activation="relu"), _ffn_cases(),
                          mistakes=FEED_FORWARD_MISTAKES, atol=1e-5, rtol=1e-4, strict=strict)


def _swiglu_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(9)
    cases = []
    for shape, d_ff in (((2, 5, 4), 6), ((3, 8), 12), ((1, 3, 6), 10)):
        d = shape[-1]
        x = torch.randn(*shape, generator=g)
        w_gate = torch.randn(d, d_ff, generator=g) / d ** 0.5
        w_up = torch.randn(d, d_ff, generator=g) / d ** 0.5
        w_down = torch.randn(d_ff, d, generator=g) / d_ff ** 0.5
        cases.append((x, w_gate, w_up, w_down))
    return cases


SWIGLU_MISTAKES = [
    Mistake("the gate and the up projection are swapped: SiLU goes on x W_gate, which multiplies x W_up",
            lambda x, wg, wu, wd: swiglu(x, wu, wg, wd)),
    Mistake("sigmoid instead of SiLU: silu(z) = z * sigmoid(z) (plain sigmoid is the original GLU)",
            lambda x, wg, wu, wd: (torch.sigmoid(x @ wg) * (x @ wu)) @ wd),
    Mistake("GELU instead of SiLU: SwiGLU uses silu(z) = z * sigmoid(z) (GELU makes it GEGLU)",
            lambda x, wg, wu, wd: (F.gelu(x @ wg) * (x @ wu)) @ wd),
    Mistake("ReLU instead of SiLU: silu(z) = z * sigmoid(z) (ReLU makes it ReGLU)",
            lambda x, wg, wu, wd: (torch.relu(x @ wg) * (x @ wu)) @ wd),
    Mistake("the gate is missing: multiply silu(x W_gate) by the up projection x W_up before W_down",
            lambda x, wg, wu, wd: F.silu(x @ wg) @ wd),
    Mistake("the activation is missing: silu(x W_gate) * (x W_up), then W_down",
            lambda x, wg, wu, wd: ((x @ wg) * (x @ wu)) @ wd),
    Mistake("SiLU applied after the product: silu(x W_gate) * (x W_up), the SiLU on the gate alone",
            lambda x, wg, wu, wd: F.silu((x @ wg) * (x @ wu)) @ wd),
    Mistake("the gate and up projections are added: SwiGLU multiplies them, silu(x W_gate) * (x W_up)",
            lambda x, wg, wu, wd: (F.silu(x @ wg) + (x @ wu)) @ wd),
]


def check_swiglu(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(x: [..., d], w_gate: [d, d_ff], w_up: [d, d_ff], w_down: [d_ff, d]) -> [..., d]``."""
    return check_function("swiglu", fn, swiglu, _swiglu_cases(), mistakes=SWIGLU_MISTAKES,
                          exception_hints=[SWIGLU_SHAPE_HINT], atol=1e-5, rtol=1e-4, strict=strict)


SWIGLU_SHAPE_HINT = ("must match the size of tensor",
                     "the shapes do not fit: x @ w_gate and x @ w_up are both [..., d_ff]; multiply them "
                     "elementwise (mind the brackets: silu(x @ w_gate) * (x @ w_up)), then @ w_down")
