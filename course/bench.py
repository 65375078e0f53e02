"""Timing that is correct on a GPU: warm up, synchronise, take many runs, report the median.

Built on ``torch.utils.benchmark.Timer``, which synchronises CUDA around each measurement and
chooses the number of runs itself; a home-made ``time.time()`` loop would time only the kernel
launches on a GPU, not the work.
"""
from __future__ import annotations

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
        torch.cuda.synchronize()
    if kind in (None, "mps") and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        torch.mps.synchronize()


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
    """
    if not callable(fn):
        raise TypeError(f"benchmark needs a function of no arguments, got {type(fn).__name__}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    # Timer defaults to one thread; time with the threads the learner's own code would use.
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, label=label, num_threads=torch.get_num_threads())
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    where = str(device) if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    return Timing(
        label=label or getattr(fn, "__name__", "fn"),
        median_ms=measurement.median * 1e3,
        iqr_ms=measurement.iqr * 1e3,
        runs=len(measurement.times),
        device=where,
    )
