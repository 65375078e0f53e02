"""Loading weights saved by another implementation (Hugging Face, PyTorch) into the course's models.

A loader is a *plan*: an ordered list of (our parameter, their parameter, transform). Following it
either fills every parameter or stops at the first one that does not fit and names it, with both
shapes, instead of PyTorch's long list of every mismatch (or, worse, a silent broadcast).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn


class WeightMismatchError(ValueError):
    """A checkpoint's parameter is missing, or does not fit the model's parameter."""


@dataclass(frozen=True)
class Step:
    """Copy ``source`` (after ``transform``) into our parameter ``target``."""

    target: str
    source: str
    transform: Callable[[Tensor], Tensor] | None = None
    note: str = ""


def transpose(t: Tensor) -> Tensor:
    """GPT-2's Conv1D stores ``[in, out]``; ``nn.Linear`` stores ``[out, in]``."""
    return t.t()


def chunk(index: int, parts: int, dim: int) -> Callable[[Tensor], Tensor]:
    """Take piece ``index`` of ``parts`` equal pieces along ``dim`` (e.g. q, k, v from a fused matrix)."""
    def take(t: Tensor) -> Tensor:
        if t.shape[dim] % parts:
            raise WeightMismatchError(f"cannot split a tensor of shape {tuple(t.shape)} into {parts} equal parts along dim {dim}")
        return t.chunk(parts, dim=dim)[index]
    return take


def then(*fns: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """Compose transforms left to right."""
    def composed(t: Tensor) -> Tensor:
        for fn in fns:
            t = fn(t)
        return t
    return composed


@torch.no_grad()
def load_plan(model: nn.Module, checkpoint: Mapping[str, Tensor], plan: Iterable[Step],
              ignore_unused: Iterable[str] = ()) -> nn.Module:
    """Follow ``plan``, copying checkpoint tensors into ``model``'s parameters (in place).

    Raises :class:`WeightMismatchError` naming the first parameter that is missing or does not fit,
    and, once all are copied, any checkpoint tensors the plan left unused (other than those whose
    names end with one of ``ignore_unused``), so a wrong model size cannot load silently.
    """
    ours = dict(model.named_parameters(remove_duplicate=False))
    used, filled = set(), set()
    for step in plan:
        if step.target not in ours:
            raise WeightMismatchError(f"the model has no parameter {step.target!r} (wanted for {step.source!r})")
        if step.source not in checkpoint:
            hint = f" ({step.note})" if step.note else ""
            raise WeightMismatchError(
                f"the checkpoint has no {step.source!r}, needed for {step.target!r}{hint}: "
                "does the configuration (layers, vocabulary) match the checkpoint?")
        value = checkpoint[step.source]
        value = step.transform(value) if step.transform else value
        param = ours[step.target]
        if tuple(value.shape) != tuple(param.shape):
            raise WeightMismatchError(
                f"{step.target}: the model's shape is {tuple(param.shape)}, but the checkpoint's "
                f"{step.source} gives {tuple(value.shape)}"
                + (" after transposing" if step.transform is transpose else ""))
        param.copy_(value.to(param.dtype))
        used.add(step.source)
        filled.add(step.target)
    unused = [k for k in checkpoint if k not in used and not any(k.endswith(s) for s in ignore_unused)]
    if unused:
        raise WeightMismatchError(f"the checkpoint has {len(unused)} tensor(s) the model does not use, "
                                  f"first {unused[0]!r}: is the model too small for it?")
    # Tied parameters appear under several names; they count as filled if any name was.
    tensors = {id(p): name for name, p in ours.items() if name in filled}
    missing = [name for name, p in ours.items() if name not in filled and id(p) not in tensors]
    if missing:
        raise WeightMismatchError(f"the plan left {missing[0]!r} unfilled")
    return model
