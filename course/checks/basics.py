"""Checkers for lesson 00 (set-up): a softmax written by hand."""
from __future__ import annotations

import torch

from .core import CheckResult, Mistake, check_function


def softmax_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.tensor([[1.0, 2.0, 3.0]]),),
        (torch.randn(4, 5, generator=g),),
        (torch.randn(2, 3, 6, generator=g) * 3,),
        # Large scores: exp overflows to inf unless the row maximum is subtracted first.
        (torch.tensor([[1000.0, 1001.0, 1002.0], [-5.0, 0.0, 5.0]]),),
    ]


SOFTMAX_MISTAKES = [
    Mistake("softmax over the wrong axis: normalise along the last dimension (dim=-1), so each row sums to 1",
            lambda x: torch.softmax(x, dim=0)),
    Mistake("the exponentials are not normalised: divide by their sum along the last dimension",
            lambda x: torch.exp(x)),
    Mistake("divided by the sum over the whole tensor: sum along the last dimension only, with keepdim=True",
            lambda x: torch.exp(x) / torch.exp(x).sum()),
    Mistake("this is log-softmax: exponentiate, then divide by the sum",
            lambda x: torch.log_softmax(x, dim=-1)),
    Mistake("overflow on large inputs: subtract each row's maximum before exp (softmax is unchanged by a shift)",
            lambda x: torch.exp(x) / torch.exp(x).sum(dim=-1, keepdim=True)),
]


def check_softmax(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(x) -> softmax of x along the last dimension``, for any shape of ``x``."""
    return check_function("softmax", fn, lambda x: torch.softmax(x, dim=-1), softmax_cases(),
                          mistakes=SOFTMAX_MISTAKES, atol=1e-6, strict=strict)
