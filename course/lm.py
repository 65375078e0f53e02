"""Small helpers for training a language model on one long sequence of token ids (lesson 08).

- :func:`unigram_loss`: the loss of the simplest model, which ignores the context and predicts each
  token with its frequency in the training text. A transformer must beat it to have learned anything
  about *order*.
- :func:`random_windows`: a batch of random windows ``x`` and the same windows shifted by one, ``y``.
- :func:`lm_loss`: the mean next-token cross-entropy of a batch of logits (the training loss).
- :func:`fixed_windows` and :func:`sequence_loss`: a deterministic validation loss.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course.data.tasks import IGNORE_INDEX
from course.device import model_device, to_device
from course.utils import eval_mode

__all__ = ["unigram_loss", "random_windows", "fixed_windows", "lm_loss", "sequence_loss"]


def _as_ids(ids: Sequence[int] | Tensor, name: str) -> Tensor:
    t = ids if isinstance(ids, Tensor) else torch.tensor(list(ids), dtype=torch.long)
    if t.dim() != 1 or t.is_floating_point():
        raise ValueError(f"{name} must be a 1-D sequence of integer token ids, got shape {tuple(t.shape)} {t.dtype}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty")
    return t.long()


def unigram_loss(train_ids: Sequence[int] | Tensor, val_ids: Sequence[int] | Tensor, vocab_size: int) -> float:
    """Cross-entropy (nats per token) on ``val_ids`` of a unigram model counted on ``train_ids``.

    Add-one (Laplace) smoothing: ``p(t) = (count(t) + 1) / (len(train_ids) + vocab_size)``, so a token
    never seen in training still gets a finite loss. Returns ``-mean(log p(t) for t in val_ids)``, in
    the same unit as ``F.cross_entropy`` (natural log). Ids must lie in ``[0, vocab_size)``.
    """
    train, val = _as_ids(train_ids, "train_ids"), _as_ids(val_ids, "val_ids")
    for name, t in (("train_ids", train), ("val_ids", val)):
        if int(t.min()) < 0 or int(t.max()) >= vocab_size:
            raise ValueError(f"{name} holds ids outside [0, {vocab_size}): {int(t.min())}..{int(t.max())}")
    counts = torch.bincount(train, minlength=vocab_size).double()
    log_p = torch.log(counts + 1) - math.log(train.numel() + vocab_size)   # [vocab]
    return float(-log_p[val].mean())


def random_windows(data: Tensor, batch_size: int, block: int, generator: torch.Generator | None = None
                   ) -> tuple[Tensor, Tensor]:
    """``batch_size`` random windows of ``block`` tokens from ``data [n]``: ``(x, y)``, each
    ``[batch_size, block]``, with ``y`` the window one token later (the targets)."""
    if data.dim() != 1 or data.numel() < block + 1:
        raise ValueError(f"need a 1-D tensor of more than block={block} ids, got shape {tuple(data.shape)}")
    starts = torch.randint(0, data.numel() - block, (batch_size,), generator=generator)
    offsets = torch.arange(block)
    x = data[starts[:, None] + offsets]                                   # [batch, block]
    y = data[starts[:, None] + offsets + 1]
    return x, y


def fixed_windows(data: Tensor, block: int, max_windows: int | None = None) -> tuple[Tensor, Tensor]:
    """Non-overlapping windows covering ``data`` from the start: ``(x, y)`` each ``[n_windows, block]``.
    Deterministic, for validation; ``max_windows`` keeps only the first that many."""
    if data.dim() != 1 or data.numel() < block + 1:
        raise ValueError(f"need a 1-D tensor of more than block={block} ids, got shape {tuple(data.shape)}")
    n = (data.numel() - 1) // block
    if max_windows is not None:
        n = min(n, max_windows)
    x = data[: n * block].view(n, block)
    y = data[1: n * block + 1].view(n, block)
    return x, y


def lm_loss(logits: Tensor, targets: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Mean cross-entropy of next-token predictions.

    ``logits: [batch, seq, vocab]``, ``targets: [batch, seq]`` (positions equal to
    ``ignore_index`` do not count) -> a scalar.
    """
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(f"lm_loss expects logits [batch, seq, vocab] and targets [batch, seq], "
                         f"got {tuple(logits.shape)} and {tuple(targets.shape)}")
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=ignore_index)


@torch.no_grad()
def sequence_loss(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 64) -> float:
    """Mean next-token cross-entropy of ``model`` over windows ``x, y [n, block]`` (eval mode, restored);
    ``x`` and ``y`` are moved to the model's device."""
    x, y = to_device((x, y), model_device(model))
    total, count = 0.0, 0
    with eval_mode(model):
        for i in range(0, x.shape[0], batch_size):
            logits = model(x[i: i + batch_size])
            total += float(F.cross_entropy(logits.flatten(0, 1), y[i: i + batch_size].flatten(), reduction="sum"))
            count += y[i: i + batch_size].numel()
    return total / count
