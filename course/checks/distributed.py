"""Checkers for lesson 19 (scale out).

Each checker compares the learner's function with the package version on a few cases (including the
boundaries the exercise defines) and, when the values are wrong, names the likely mistake from a library
of known wrong implementations. tests/checks/test_checks_distributed.py proves each mistake gets its hint.
"""
from __future__ import annotations

import torch

from course.distributed import centre
from .core import CheckResult, Mistake, check_function


def centre_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.tensor([[1.0, 2.0, 6.0]]),),
        (torch.randn(4, 6, generator=g),),
        (torch.randn(2, 3, 5, generator=g),),
        # A large shared offset: the result must not depend on it.
        (torch.randn(3, 7, generator=g) + 1000.0,),
    ]


CENTRE_MISTAKES = [
    Mistake("mean over the wrong axis: subtract each vector's mean over the last dimension (dim=-1)",
            lambda x: x - x.mean(dim=0, keepdim=True)),
    Mistake("subtracted the mean of the whole tensor: each vector needs its own mean (dim=-1, keepdim=True)",
            lambda x: x - x.mean()),
    Mistake("divided by the standard deviation as well: centring only subtracts the mean",
            lambda x: (x - x.mean(dim=-1, keepdim=True)) / x.std(dim=-1, keepdim=True)),
]


def check_centre(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(x [..., d]) -> [..., d]``, each vector minus its mean over the last dimension."""
    return check_function("centre", fn, centre, centre_cases(), mistakes=CENTRE_MISTAKES, atol=1e-4, strict=strict)
