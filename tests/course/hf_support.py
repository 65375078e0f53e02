"""Shared by the tests that build small Hugging Face models: call transformers without its warnings and
load reports (they would clutter the test output, and can print local paths), and compare logits."""
from __future__ import annotations

import warnings

import torch


def quietly(fn, *args, **kw):
    """``fn(*args, **kw)`` with Python warnings ignored and transformers' logging at error level."""
    import transformers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.logging.set_verbosity_error()
        return fn(*args, **kw)


def logits_gap(ours, theirs, ids) -> float:
    """Largest ``|ours(ids) - theirs(ids).logits|``: our model against a Hugging Face one on the same ids."""
    with torch.no_grad():
        return (ours(ids) - theirs(ids).logits).abs().max().item()
