"""Loading weights saved by another implementation (Hugging Face, PyTorch) into the course's models.

A loader is a *plan*: an ordered list of steps (our parameter, their tensor, transform). Following
it either fills every parameter or stops at the first one that does not fit and names it, with both
shapes, instead of PyTorch's long list of every mismatch (or, worse, a silent broadcast). Every
loader in the course follows a plan, so every misfit reads the same way:

    <our parameter>: the model's shape is <ours>, but the checkpoint's <their tensor> gives <theirs>
    the checkpoint has no '<their tensor>', needed for '<our parameter>': <what to check>
    the model has no parameter '<our parameter>' (wanted for '<their tensor>')

The *checkpoint* is whatever the weights come from: a Hugging Face state dict, or the
``state_dict()`` of a PyTorch module (``torch.nn.MultiheadAttention``, ``torch.nn.Transformer``, ...).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

CONFIGURATION_QUESTION = "does the configuration (layers, vocabulary) match the checkpoint?"
MODULE_QUESTION = "were both modules built with the same settings (sizes, bias)?"


class WeightMismatchError(ValueError):
    """A checkpoint's parameter is missing, or does not fit the model's parameter."""


@dataclass(frozen=True)
class Step:
    """Copy ``source`` (after ``transform``) into our parameter ``target``.

    ``into`` picks the part of ``target`` to fill (e.g. ``chunk(0, 3, dim=0)``: its first third), for
    a tensor of ours assembled from several of theirs. ``optional``: skip the step when neither the
    model has ``target`` nor the checkpoint ``source`` (a bias both were built without).
    """

    target: str
    source: str
    transform: Callable[[Tensor], Tensor] | None = None
    note: str = ""
    into: Callable[[Tensor], Tensor] | None = None
    optional: bool = False


def describe(transform: Callable[[Tensor], Tensor] | None) -> str:
    """What a transform does, in words ("transposing"); empty for none."""
    return getattr(transform, "description", "") if transform is not None else ""


def transpose(t: Tensor) -> Tensor:
    """GPT-2's Conv1D stores ``[in, out]``; ``nn.Linear`` stores ``[out, in]``."""
    return t.t()


transpose.description = "transposing"


def chunk(index: int, parts: int, dim: int) -> Callable[[Tensor], Tensor]:
    """Take piece ``index`` of ``parts`` equal pieces along ``dim`` (e.g. q, k, v from a fused matrix).

    The piece is a view, so it also serves as a :class:`Step`'s ``into``.
    """
    def take(t: Tensor) -> Tensor:
        if t.shape[dim] % parts:
            raise WeightMismatchError(f"cannot split a tensor of shape {tuple(t.shape)} into {parts} equal parts along dim {dim}")
        return t.chunk(parts, dim=dim)[index]
    take.description = f"taking part {index + 1} of {parts} along dim {dim}"
    return take


def then(*fns: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """Compose transforms left to right."""
    def composed(t: Tensor) -> Tensor:
        for fn in fns:
            t = fn(t)
        return t
    composed.description = " and ".join(d for d in map(describe, fns) if d)
    return composed


@torch.no_grad()
def load_plan(model: nn.Module, checkpoint: Mapping[str, Tensor], plan: Iterable[Step],
              ignore_unused: Iterable[str] = (), keep: Iterable[str] = (),
              question: str = CONFIGURATION_QUESTION) -> nn.Module:
    """Follow ``plan``, copying checkpoint tensors into ``model``'s parameters (in place).

    Raises :class:`WeightMismatchError` naming the first parameter that is missing or does not fit,
    and, once all are copied, any checkpoint tensors the plan left unused (other than those whose
    names end with one of ``ignore_unused``), so a wrong model size cannot load silently, and any
    parameter of ours the plan left unfilled (other than those whose names start with one of
    ``keep``, which stay as they are). ``question`` ends the message for a missing checkpoint tensor.
    """
    ours = dict(model.named_parameters(remove_duplicate=False))
    keep = tuple(keep)
    used, filled = set(), set()
    for step in plan:
        if step.optional and step.target not in ours and step.source not in checkpoint:
            continue
        if step.target not in ours:
            raise WeightMismatchError(f"the model has no parameter {step.target!r} (wanted for {step.source!r})")
        if step.source not in checkpoint:
            hint = f" ({step.note})" if step.note else ""
            raise WeightMismatchError(f"the checkpoint has no {step.source!r}, needed for {step.target!r}{hint}: {question}")
        value = checkpoint[step.source]
        value = step.transform(value) if step.transform else value
        param = ours[step.target]
        dest = step.into(param) if step.into else param
        if tuple(value.shape) != tuple(dest.shape):
            how = describe(step.transform)
            part = describe(step.into)
            raise WeightMismatchError(
                f"{step.target}{f' ({part})' if part else ''}: the model's shape is {tuple(dest.shape)}, but the "
                f"checkpoint's {step.source} gives {tuple(value.shape)}" + (f" after {how}" if how else ""))
        dest.copy_(value.to(param.dtype))
        used.add(step.source)
        filled.add(step.target)
    unused = [k for k in checkpoint if k not in used and not any(k.endswith(s) for s in ignore_unused)]
    if unused:
        raise WeightMismatchError(f"the checkpoint has {len(unused)} tensor(s) the model does not use, "
                                  f"first {unused[0]!r}: is the model too small for it?")
    # Tied parameters appear under several names; they count as filled if any name was.
    tensors = {id(p): name for name, p in ours.items() if name in filled}
    missing = [name for name, p in ours.items()
               if name not in filled and id(p) not in tensors and not name.startswith(keep)]
    if missing:
        raise WeightMismatchError(f"the plan left {missing[0]!r} unfilled")
    return model
