"""Choosing where tensors live: CUDA, Apple MPS or the CPU, and saying what each means."""
from __future__ import annotations

import os

import torch

_ENV = "COURSE_DEVICE"

_WHAT_IT_MEANS = {
    "cuda": "NVIDIA GPU: every lesson runs fast, and lesson 11's fused-kernel timings (flash, "
    "memory-efficient, cuDNN) run for real.",
    "mps": "Apple GPU (MPS): most lessons run faster; a few operations fall back to the CPU and "
    "float results can differ from the CPU in the last digits. Lesson 11's CUDA kernels are shown "
    "from the kept reference table.",
    "cpu": "CPU only: every lesson still runs (each is sized for a two-core laptop, under three "
    "minutes); GPU-only timings are shown from the kept reference table.",
}


def mps_available() -> bool:
    """True when PyTorch can use an Apple-silicon GPU."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def pick_device(prefer: str | None = None) -> torch.device:
    """Return the best available device: CUDA, then MPS, then CPU.

    ``prefer`` (or the environment variable ``COURSE_DEVICE``) forces one, e.g. ``"cpu"`` to
    reproduce the reference figures exactly. Asking for a device that is not there raises a
    ``ValueError`` that says what is available instead.
    """
    wanted = prefer or os.environ.get(_ENV)
    available = available_devices()
    if wanted:
        kind = torch.device(wanted).type
        if kind not in available:
            raise ValueError(
                f"device {wanted!r} is not available here; available: {', '.join(available)}"
            )
        return torch.device(wanted)
    return torch.device(available[0])


def available_devices() -> list[str]:
    """Device kinds usable here, best first, always ending with ``"cpu"``."""
    kinds = []
    if torch.cuda.is_available():
        kinds.append("cuda")
    if mps_available():
        kinds.append("mps")
    kinds.append("cpu")
    return kinds


def describe_device(device: torch.device | str | None = None) -> str:
    """One or two lines: which device, its name, and what it means for the course."""
    device = torch.device(device) if device is not None else pick_device()
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        name = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}"
    elif device.type == "mps":
        name = "Apple GPU via Metal"
    else:
        name = f"{torch.get_num_threads()} threads"
    return f"{device.type} ({name})\n{_WHAT_IT_MEANS.get(device.type, '')}".rstrip()
