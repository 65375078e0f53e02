"""A small, reusable training loop: AdamW, warm-up then cosine decay, gradient clipping,
a progress bar, loss history, periodic evaluation and an optional live loss plot.

The lessons train different models on different data, so the loop only needs two things from
them: ``next_batch(step) -> batch`` and ``loss_fn(model, batch) -> scalar loss``.

Lesson 08 writes the same loop by hand; its three choices live here as small functions that both
use: :func:`decay_groups` (which parameters AdamW decays), :func:`lr_at` (linear warm-up, then cosine
decay) and gradient clipping with ``torch.nn.utils.clip_grad_norm_``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from course.device import model_device, to_device
from course.progress import progress
from course.utils import eval_mode

__all__ = ["History", "train", "evaluate", "lr_at", "decay_groups", "LiveLossPlot"]


@dataclass
class History:
    """What happened during :func:`train`: the loss at every step and the evaluations."""

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    device: str = ""          # where the last training run ran ("cpu", "cuda:0", "mps:0", ...)
    lrs: list[float] = field(default_factory=list)         # the learning rate of every step
    grad_norms: list[float] = field(default_factory=list)  # the gradient norm of every step, before clipping
    clipped: list[bool] = field(default_factory=list)      # whether clipping scaled that step's gradients down

    @property
    def final_eval(self) -> float:
        """The last evaluation's value (``nan`` if nothing was evaluated)."""
        return self.eval_loss[-1] if self.eval_loss else math.nan

    def smoothed(self, window: int = 20) -> list[float]:
        """The training loss averaged over the last ``window`` steps, for a readable curve."""
        out, total = [], 0.0
        for i, value in enumerate(self.train_loss):
            total += value
            if i >= window:
                total -= self.train_loss[i - window]
            out.append(total / min(i + 1, window))
        return out


def lr_at(step: int, steps: int, lr: float, warmup: int = 0, min_ratio: float = 0.1) -> float:
    """Learning rate at ``step`` (0-based) of ``steps``: linear warm-up over ``warmup`` steps
    (``lr / warmup``, ``2 lr / warmup``, ..., ``lr`` at step ``warmup - 1``), then cosine decay from ``lr``
    down to ``min_ratio * lr`` at the last step, ``steps - 1`` (and after it)."""
    if steps < 1 or warmup < 0 or not 0 <= min_ratio <= 1:
        raise ValueError(f"lr_at needs steps >= 1, warmup >= 0 and 0 <= min_ratio <= 1; got steps={steps}, "
                         f"warmup={warmup}, min_ratio={min_ratio}")
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    progress_ = (step - warmup) / max(1, steps - warmup - 1)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress_))))


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW's two parameter groups for ``model``: ``[{"params": decayed, "weight_decay": weight_decay},
    {"params": not decayed, "weight_decay": 0.0}]``.

    The course's convention (nanoGPT's): every trainable tensor with two or more dimensions decays (the
    weight matrices of linear layers and the embedding tables); tensors of one dimension do not (biases,
    and the gains and shifts of LayerNorm and RMSNorm, whose neutral value is 1 and 0, not 0). Each
    parameter is in exactly one group, a tied (shared) tensor once: ``model.parameters()`` lists it once.
    Frozen parameters (``requires_grad=False``) are in neither group.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Any], loss_fn: Callable[[nn.Module, Any], Tensor]) -> float:
    """Mean of ``loss_fn`` over ``batches`` in eval mode (the model's mode is restored after)."""
    with eval_mode(model):
        losses = [float(loss_fn(model, batch)) for batch in batches]
    if not losses:
        raise ValueError("evaluate was given no batches")
    return sum(losses) / len(losses)


class LiveLossPlot:
    """A loss curve that redraws in place in a notebook as training runs.

    Outside a notebook (or with ``enabled=False``) it draws nothing until :meth:`close`, which
    always leaves one final figure.
    """

    def __init__(self, title: str = "loss", every: int = 25, enabled: bool = True):
        import matplotlib.pyplot as plt

        self.every, self.title = every, title
        self.fig, self.ax = plt.subplots(figsize=(6, 3))
        plt.close(self.fig)  # shown through the display handle only
        self.handle = None
        if enabled:
            try:
                from IPython import get_ipython
                from IPython.display import display

                if get_ipython() is not None:
                    self.handle = display(self.fig, display_id=True)
            except ImportError:
                self.handle = None

    def draw(self, history: History) -> None:
        ax = self.ax
        ax.clear()
        ax.plot(history.steps, history.smoothed(), label="train (smoothed)")
        if history.eval_steps:
            ax.plot(history.eval_steps, history.eval_loss, "o-", label="validation")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(self.title)
        ax.legend(loc="upper right")
        self.fig.tight_layout()

    def update(self, history: History, step: int) -> None:
        if self.handle is not None and step % self.every == 0:
            self.draw(history)
            self.handle.update(self.fig)

    def close(self, history: History) -> None:
        self.draw(history)
        if self.handle is not None:
            self.handle.update(self.fig)
        else:
            try:
                from IPython.display import display

                display(self.fig)
            except ImportError:
                pass


def train(
    model: nn.Module,
    next_batch: Callable[[int], Any],
    loss_fn: Callable[[nn.Module, Any], Tensor],
    *,
    steps: int,
    lr: float = 3e-3,
    weight_decay: float = 0.01,
    warmup: int = 0,
    grad_clip: float | None = 1.0,
    eval_fn: Callable[[nn.Module], float] | None = None,
    eval_every: int = 100,
    live_plot: bool = False,
    plot_title: str = "loss",
    desc: str = "training",
    optimizer: torch.optim.Optimizer | None = None,
    history: History | None = None,
    device: torch.device | str | None = None,
    min_lr_ratio: float = 0.1,
) -> History:
    """Train ``model`` for ``steps`` optimiser steps and return the :class:`History`.

    ``next_batch(step)`` returns a batch (anything ``loss_fn`` accepts); ``loss_fn(model, batch)``
    returns a scalar loss. ``eval_fn(model)`` (called in eval mode every ``eval_every`` steps and
    at the end) returns a validation number, usually a loss. Pass a ``history`` to continue one.
    The model is left in eval mode, ready to be evaluated or to generate.

    ``device`` (e.g. ``course.device.pick_device()``): the model is moved there (and stays there) and
    every batch is moved there before ``loss_fn`` sees it (tensors inside tuples, lists, dicts and
    dataclasses too); ``eval_fn`` gets the model on that device. ``None`` leaves both where they are.
    Pass an ``optimizer`` only for a model already on ``device``.

    Each step (the loop lesson 08 writes by hand): set the learning rate to
    ``lr_at(step, steps, lr, warmup, min_lr_ratio)``, compute the loss, back-propagate, clip the gradients'
    total norm to ``grad_clip`` (``None``: no clipping), take an AdamW step on :func:`decay_groups`. The
    history records each step's loss, learning rate and gradient norm (before clipping) and whether it was
    clipped.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if device is not None:
        model.to(device)
    if optimizer is None:
        optimizer = torch.optim.AdamW(decay_groups(model, weight_decay), lr=lr)
    history = history or History()
    start_step = history.steps[-1] + 1 if history.steps else 0
    plot = LiveLossPlot(plot_title) if live_plot else None

    def run_eval(step: int) -> None:
        if eval_fn is None:
            return
        with eval_mode(model), torch.no_grad():
            value = float(eval_fn(model))
        history.eval_steps.append(step)
        history.eval_loss.append(value)

    history.device = str(model_device(model))
    model.train()
    started = time.perf_counter()
    bar = progress(range(steps), desc=desc)
    for i in bar:
        step = start_step + i
        step_lr = lr_at(i, steps, lr, warmup, min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = step_lr
        loss = loss_fn(model, to_device(next_batch(step), device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss.item()} at step {step}; try a smaller learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # The norm of all gradients together, as one long vector; above grad_clip, every gradient is scaled
        # by grad_clip / norm (direction kept). With no clip the limit is infinite: the norm, nothing scaled.
        norm = float(nn.utils.clip_grad_norm_(model.parameters(), math.inf if grad_clip is None else grad_clip))
        optimizer.step()
        history.steps.append(step)
        history.train_loss.append(loss.item())
        history.lrs.append(step_lr)
        history.grad_norms.append(norm)
        history.clipped.append(grad_clip is not None and norm > grad_clip)
        if eval_every and (i + 1) % eval_every == 0 and i + 1 < steps:
            run_eval(step)
        if hasattr(bar, "set_postfix") and i % 10 == 0:
            bar.set_postfix(loss=f"{history.smoothed()[-1]:.3f}")
        if plot is not None:
            plot.update(history, i)
    run_eval(start_step + steps - 1)
    history.seconds += time.perf_counter() - started
    model.eval()
    if plot is not None:
        plot.close(history)
    return history
