"""scale out (lesson 19): the pieces the lesson builds in the open, in their package version.

The lesson writes each piece cell by cell; later lessons import it from here. Replace the example below
(centring vectors) with the lesson's own pieces, each with type hints and a docstring that says what shape
goes in and what comes out, and check each against PyTorch's own module in tests/course/test_distributed.py.
"""
from __future__ import annotations

from torch import Tensor

__all__ = ["centre"]


def centre(x: Tensor) -> Tensor:
    """``x [..., d] -> [..., d]``: each vector minus its own mean over the last dimension."""
    return x - x.mean(dim=-1, keepdim=True)
