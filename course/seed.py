"""Reproducibility: one call seeds every random number generator a lesson touches."""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int = 0, deterministic: bool = False) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (CPU and every GPU); return a seeded torch Generator.

    ``deterministic=True`` also asks PyTorch for deterministic kernels where they exist (slower on
    a GPU; the CPU is deterministic already for the course's sizes).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds CUDA and MPS
    os.environ["PYTHONHASHSEED"] = str(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)


def step_seed(seed: int, step: int) -> int:
    """The seed of step ``step`` of a run seeded with ``seed``: each step its own stream of random
    numbers, the same for the same ``(seed, step)`` (batch samplers: the same step gives the same batch)."""
    return seed * 1_000_003 + step
