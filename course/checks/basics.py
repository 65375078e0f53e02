"""Checkers for lesson 00 (set-up): a softmax written by hand.

The cases hold the boundaries of the exercise: one row, a non-square matrix, a batch in front, a
1-D vector ("any shape"), a square matrix (so a maximum or a sum taken without ``keepdim=True``
broadcasts silently against the wrong axis) and scores far above 88, where ``exp`` overflows in
float32: rows around 1000, rows around -1000 (where ``exp`` underflows to 0 and 0/0 is NaN) and rows
spread from -100 to 100 (so shifting by the mean or the minimum instead of the maximum still overflows).
"""
from __future__ import annotations

import torch

from .core import CheckResult, Mistake, check_function


def softmax_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.tensor([[1.0, 2.0, 3.0]]),),
        (torch.randn(3, 3, generator=g) * 2,),                            # square: a lost keepdim runs silently
        (torch.randn(4, 5, generator=g),),
        (torch.randn(2, 3, 6, generator=g) * 3,),
        (torch.tensor([0.5, -1.0, 2.0, 0.0, 0.5]),),                       # 1-D: "a tensor of any shape"
        # Square, with scores that overflow exp() in float32 (above about 88) unless each row's maximum is
        # subtracted first; the third row overflows when shifted by its mean or minimum instead.
        (torch.tensor([[1000.0, 1001.0, 1002.0], [-5.0, 0.0, 5.0], [-100.0, 0.0, 100.0]]),),
        # A batch of rows near -1000 and +500: exp underflows to 0 without the shift (0/0 = NaN), and the
        # maximum of another axis or of the whole tensor is the wrong shift.
        (torch.tensor([[[-1000.0, -1001.0, -1003.0, -1000.5], [500.0, 499.0, 510.0, 505.0]],
                       [[3.0, 1.0, 2.0, 0.0], [-300.0, -290.0, -310.0, -295.0]]]),),
    ]


def _shifted(shift):
    def softmax(x):
        z = (x - shift(x)).exp()
        return z / z.sum(dim=-1, keepdim=True)
    return softmax


SOFTMAX_MISTAKES = [
    Mistake("softmax over the wrong axis: normalise along the last dimension (dim=-1), so each row sums to 1",
            lambda x: torch.softmax(x, dim=0)),
    Mistake("dim=1 is the last axis only for a 2-D input: use dim=-1, the last axis whatever the shape",
            lambda x: torch.softmax(x, dim=1) if x.dim() > 1 else torch.softmax(x, dim=0)),
    Mistake("the exponentials are not normalised: divide by their sum along the last dimension",
            lambda x: torch.exp(x - x.max(dim=-1, keepdim=True).values)),
    Mistake("the exponentials are not normalised: divide by their sum along the last dimension",
            lambda x: torch.exp(x)),
    Mistake("divided by the sum over the whole tensor: sum along the last dimension only, with keepdim=True",
            lambda x: torch.exp(x) / torch.exp(x).sum()),
    Mistake("divided by the sum over the whole tensor: sum along the last dimension only, with keepdim=True",
            lambda x: (x - x.max(dim=-1, keepdim=True).values).exp() / (x - x.max(dim=-1, keepdim=True).values).exp().sum()),
    Mistake("this is log-softmax: exponentiate, then divide by the sum",
            lambda x: torch.log_softmax(x, dim=-1)),
    Mistake("overflow on large inputs: subtract each row's maximum before exp (softmax is unchanged by a shift)",
            lambda x: torch.exp(x) / torch.exp(x).sum(dim=-1, keepdim=True)),
    Mistake("shifted by the maximum of the whole tensor: each row needs its own maximum, "
            "x.max(dim=-1, keepdim=True).values, or rows far below the overall maximum underflow to 0/0",
            _shifted(lambda x: x.max())),
    Mistake("shifted by the maximum along the wrong axis: take each row's maximum, x.max(dim=-1, keepdim=True)",
            _shifted(lambda x: x.max(dim=0, keepdim=True).values)),
    Mistake("shifted by the maximum along the wrong axis: take each row's maximum, x.max(dim=-1, keepdim=True)",
            _shifted(lambda x: x.max(dim=1, keepdim=True).values if x.dim() > 1 else x.max())),
    Mistake("shifted by the mean: only the maximum guarantees that no exponent is above 0 (no overflow)",
            _shifted(lambda x: x.mean(dim=-1, keepdim=True))),
    Mistake("shifted by the minimum: subtract the maximum, so that every exponent is at most 0 (no overflow)",
            _shifted(lambda x: x.min(dim=-1, keepdim=True).values)),
    Mistake("the row maximum lost its axis: x.max(dim=-1) without keepdim=True subtracts row i's maximum from "
            "column i; write x.max(dim=-1, keepdim=True).values",
            _shifted(lambda x: x.max(dim=-1).values)),
    Mistake("clamping the scores changes them (1000, 1001 and 1002 all become the same): subtract each row's maximum "
            "instead, which changes nothing", lambda x: torch.softmax(x.clamp(-80, 80), dim=-1)),
    Mistake("clamping the scores changes them (1000, 1001 and 1002 all become the same): subtract each row's maximum "
            "instead, which changes nothing", lambda x: torch.softmax(x.clamp(max=80), dim=-1)),
    Mistake("the row sums lost their axis: .sum(dim=-1) without keepdim=True divides column i by row i's sum; "
            "write .sum(dim=-1, keepdim=True)",
            lambda x: (x - x.max(dim=-1, keepdim=True).values).exp()
            / (x - x.max(dim=-1, keepdim=True).values).exp().sum(dim=-1)),
]

SOFTMAX_EXCEPTION_HINTS = [
    ("must match the size", "keep the reduced axis: x.max(dim=-1, keepdim=True) and .sum(dim=-1, keepdim=True), "
                            "so each row's maximum and sum line up with that row"),
    ("out of range", "count the axis from the end: dim=-1 is the last axis of a tensor of any shape"),
    ("unsupported operand", "x.max(dim=-1) returns (values, indices): take .values"),
    ("torch.return_types", "x.max(dim=-1) returns (values, indices): take .values"),
]


def check_softmax(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(x) -> softmax of x along the last dimension``, for any shape of ``x``."""
    return check_function("softmax", fn, lambda x: torch.softmax(x, dim=-1), softmax_cases(),
                          mistakes=SOFTMAX_MISTAKES, atol=1e-6, exception_hints=SOFTMAX_EXCEPTION_HINTS, strict=strict)
