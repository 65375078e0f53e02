"""Choosing where tensors live: CUDA, Apple MPS or the CPU, and saying what each means.

Also what a CUDA GPU can do, from its compute capability: :func:`cuda_capability`,
:func:`half_dtype` (bfloat16 where the tensor cores take it, sm 8.0 and newer; float16 below, as on
Colab's T4, sm 7.5), :func:`free_memory_bytes`; and :func:`to_device`, which moves a batch (a tensor,
or tuples, lists and dicts of them) to a device.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch

_ENV = "COURSE_DEVICE"

_WHAT_IT_MEANS = {
    "cuda": "NVIDIA GPU: the lessons that train models or time kernels use it (results can differ from "
    "the CPU's in the last digits), and lesson 11's fused-kernel timings run for real.",
    "mps": "Apple GPU (MPS): the lessons that train models or time code use it; a few operations fall "
    "back to the CPU and float results can differ from the CPU in the last digits. Lesson 11's CUDA "
    "kernels and FlexAttention run on the CPU, and the GPU figures come from the kept reference table.",
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
    """A few lines: which device, its name, and what it means for the course (and, for an older CUDA GPU, what it lacks)."""
    device = torch.device(device) if device is not None else pick_device()
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        name = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}"
    elif device.type == "mps":
        name = "Apple GPU via Metal"
    else:
        threads = torch.get_num_threads()
        name = f"{threads} thread{'' if threads == 1 else 's'}"
    text = f"{device.type} ({name})\n{_WHAT_IT_MEANS.get(device.type, '')}".rstrip()
    capability = cuda_capability(device) if device.type == "cuda" else None
    if capability is not None and capability < BF16_CAPABILITY:
        text += (f"\nCompute capability {capability[0]}.{capability[1]} (below 8.0): no bfloat16 tensor cores, and "
                 "PyTorch's flash and cuDNN attention kernels refuse it; lesson 11 times float16 against the "
                 "memory-efficient kernel instead.")
    return text


# Compute capability from which the tensor cores take bfloat16 and PyTorch's flash and cuDNN attention
# kernels run (Ampere: A100, RTX 30xx). Below it (T4 and V100, sm 7.5 and 7.0) float16 is the fast dtype.
BF16_CAPABILITY = (8, 0)


def cuda_capability(device: torch.device | str | None = None) -> tuple[int, int] | None:
    """The CUDA GPU's compute capability ``(major, minor)``, or None for any other device."""
    device = torch.device(device) if device is not None else pick_device()
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability(device))


def half_dtype(device: torch.device | str | None = None) -> torch.dtype:
    """The 16-bit dtype to time on ``device``: bfloat16 on a CUDA GPU of compute capability 8.0 or
    newer, float16 on an older one (sm 7.5, Colab's T4: no bfloat16 tensor cores) and on MPS.
    On the CPU, float32 (the CPU has no half-precision speed to show)."""
    device = torch.device(device) if device is not None else pick_device()
    if device.type == "cuda":
        capability = cuda_capability(device)
        return torch.bfloat16 if capability is not None and capability >= BF16_CAPABILITY else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def free_memory_bytes(device: torch.device | str | None = None) -> int | None:
    """Free memory the CUDA GPU reports (``torch.cuda.mem_get_info``), or None where it cannot say."""
    device = torch.device(device) if device is not None else pick_device()
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return int(torch.cuda.mem_get_info(device)[0])


def to_device(batch: Any, device: torch.device | str | None) -> Any:
    """``batch`` with every tensor in it moved to ``device`` (tuples, named tuples, lists, dicts and
    dataclasses are walked; anything else is returned as it is). ``device=None`` returns ``batch``
    unchanged."""
    if device is None:
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):      # a named tuple keeps its type
        return type(batch)(*(to_device(x, device) for x in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(x, device) for x in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return dataclasses.replace(batch, **{f.name: to_device(getattr(batch, f.name), device)
                                             for f in dataclasses.fields(batch) if f.init})
    return batch


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (or buffer); the CPU for a model with neither."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")
