"""Timing that is correct on a GPU: warm up, synchronise, take many runs, report the median.

Built on ``torch.utils.benchmark.Timer``, which chooses the number of runs itself, with a clock that
first waits for the device being timed (CUDA or Apple MPS) to finish its queued work: a GPU runs
work asynchronously, so a clock that does not wait times only the kernel launches, not the work.
(``Timer``'s own default clock waits for CUDA only in the PyTorch versions before ``torch.accelerator``;
on MPS it would time the dispatch.)
"""
from __future__ import annotations

import timeit
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.utils.benchmark as tbench


@dataclass(frozen=True)
class Timing:
    """The result of :func:`benchmark`: median and spread of one call, in milliseconds."""

    label: str
    median_ms: float
    iqr_ms: float
    runs: int
    device: str

    def __str__(self) -> str:
        return f"{self.label}: {self.median_ms:.3g} ms (median of {self.runs}, IQR {self.iqr_ms:.2g} ms, {self.device})"


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for queued GPU work (CUDA or MPS) to finish; a no-op on the CPU."""
    kind = torch.device(device).type if device is not None else None
    if kind in (None, "cuda") and torch.cuda.is_available():
        torch.cuda.synchronize(torch.device(device) if kind == "cuda" else None)
    if kind in (None, "mps") and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        torch.mps.synchronize()


def synchronizing_timer(device: torch.device | str | None = None) -> Callable[[], float]:
    """A clock for ``torch.utils.benchmark.Timer``: it waits for ``device``'s queued work (every GPU
    present when ``device`` is None, as :func:`synchronize`), then reads ``timeit.default_timer``.
    On the CPU it only reads."""
    kind = torch.device(device).type if device is not None else None
    if kind == "cpu":
        return timeit.default_timer

    def timer() -> float:
        synchronize(device)
        return timeit.default_timer()
    return timer


def benchmark(
    fn: Callable[[], object],
    label: str = "",
    *,
    warmup: int = 2,
    min_run_time: float = 0.2,
    device: torch.device | str | None = None,
) -> Timing:
    """Time ``fn()`` (no arguments: close over the inputs) and return its median in ms.

    ``warmup`` calls run first and are not counted (they pay for allocation, autotuning and lazy
    initialisation). ``min_run_time`` seconds of repeated calls are then measured in blocks by
    ``torch.utils.benchmark.Timer.blocked_autorange``; the median of the blocks is reported, since
    the mean is pulled up by the occasional hiccup.

    ``device`` is where ``fn`` does its work: the clock waits for it (CUDA or MPS) before every
    reading, and the result is labelled with it. ``None`` means the CPU.
    """
    if not callable(fn):
        raise TypeError(f"benchmark needs a function of no arguments, got {type(fn).__name__}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    for _ in range(warmup):
        fn()
    synchronize(device)
    # Timer defaults to one thread; time with the threads the learner's own code would use.
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, label=label, num_threads=torch.get_num_threads(),
                         timer=synchronizing_timer(device))
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    where = str(device)
    return Timing(
        label=label or getattr(fn, "__name__", "fn"),
        median_ms=measurement.median * 1e3,
        iqr_ms=measurement.iqr * 1e3,
        runs=len(measurement.times),
        device=where,
    )

