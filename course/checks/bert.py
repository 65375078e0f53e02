"""Checkers for lesson 07's encoder exercises: the padding mask, mean pooling, the classification head.

Cases always hold padded rows of different lengths next to unpadded ones (so a pooling that counts
padding, or a mask on the wrong axis, shows), non-symmetric weights (so a missing transpose shows)
and, for the head, hidden states whose first and last positions differ.
``tests/checks/test_checks_mlm.py`` proves each mistake below gets its own hint.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..mlm import bidirectional_mask, mean_pool
from .core import CheckResult, Mistake, check_function

__all__ = ["check_bidirectional_mask", "check_mean_pool", "check_classification_head",
           "MASK_MISTAKES", "POOL_MISTAKES", "HEAD_MISTAKES", "classification_head"]


def _attention_masks() -> list[tuple]:
    return [(torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]),),
            (torch.tensor([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0, 0]]),)]


def _keys(a: Tensor) -> Tensor:
    return a.bool()[:, None, None, :].expand(-1, 1, a.shape[1], -1)


def _queries(a: Tensor) -> Tensor:
    return a.bool()[:, None, :, None].expand(-1, 1, -1, a.shape[1])


MASK_MISTAKES = [
    Mistake("inverted: True must mark the REAL tokens (attention allowed), False the padding",
            lambda a: ~_keys(a)),
    Mistake("the mask is on the queries (rows): padding is hidden as a KEY, so mask the last axis, "
            "attention_mask[:, None, None, :]", _queries),
    Mistake("padded queries see nothing: their rows are all False, and softmax over nothing gives NaN; "
            "mask only the keys", lambda a: _keys(a) & _queries(a)),
    Mistake("a causal triangle: an encoder is bidirectional, every token sees the tokens after it too",
            lambda a: _keys(a) & torch.ones(a.shape[1], a.shape[1], dtype=torch.bool).tril()),
    Mistake("padding is not masked at all: use the attention_mask", lambda a: torch.ones_like(_keys(a))),
]


def check_bidirectional_mask(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(attention_mask [b, s] of 1/0) -> bool [b, 1, s, s]``, True where key j is a real token."""
    return check_function("bidirectional_mask", fn, bidirectional_mask, _attention_masks(),
                          mistakes=MASK_MISTAKES, output_names=("mask",), atol=0, rtol=0, strict=strict)


def _pool_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(7)
    return [(torch.randn(3, 5, 4, generator=g) + 1.0, torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])),
            (torch.randn(2, 7, 6, generator=g), torch.tensor([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0, 0]]))]


def _masked_sum(h: Tensor, a: Tensor) -> Tensor:
    return (h * a[..., None].to(h.dtype)).sum(1)


POOL_MISTAKES = [
    Mistake("the padding was averaged in: multiply by the attention_mask and divide by the number of REAL tokens",
            lambda h, a: h.mean(1)),
    Mistake("a sum, not a mean: divide the masked sum by the number of real tokens, attention_mask.sum(1)",
            _masked_sum),
    Mistake("divided by the padded length: divide by each row's number of real tokens, attention_mask.sum(1, keepdim=True)",
            lambda h, a: _masked_sum(h, a) / h.shape[1]),
    Mistake("that is the [CLS] vector (position 0): mean pooling averages over all the real tokens",
            lambda h, a: h[:, 0]),
    Mistake("the mask is inverted: average the positions where attention_mask is 1",
            lambda h, a: _masked_sum(h, 1 - a) / (1 - a).sum(1, keepdim=True)),
]


def check_mean_pool(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(hidden [b, s, d], attention_mask [b, s]) -> [b, d]``, the mean over real tokens."""
    return check_function("mean_pool", fn, mean_pool, _pool_cases(), mistakes=POOL_MISTAKES,
                          output_names=("pooled",), atol=1e-5, strict=strict)


def classification_head(hidden: Tensor, w_pool: Tensor, b_pool: Tensor, w_cls: Tensor, b_cls: Tensor) -> Tensor:
    """BERT's head: ``tanh([CLS] W_pool^T + b_pool) W_cls^T + b_cls``; weights in ``nn.Linear`` layout.

    ``hidden [b, s, d]``, ``w_pool [d, d]``, ``b_pool [d]``, ``w_cls [classes, d]``, ``b_cls [classes]`` -> logits ``[b, classes]``.
    """
    return torch.tanh(hidden[:, 0] @ w_pool.T + b_pool) @ w_cls.T + b_cls


def _head_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(3)
    out = []
    for b, s, d, c in ((2, 5, 6, 3), (3, 4, 8, 2)):
        out.append((torch.randn(b, s, d, generator=g), torch.randn(d, d, generator=g) * 0.7,
                    torch.randn(d, generator=g), torch.randn(c, d, generator=g), torch.randn(c, generator=g)))
    return out


HEAD_MISTAKES = [
    Mistake("pooled the LAST position: BERT puts [CLS] first and classifies from hidden[:, 0]",
            lambda h, wp, bp, wc, bc: torch.tanh(h[:, -1] @ wp.T + bp) @ wc.T + bc),
    Mistake("averaged every position: this head reads the [CLS] vector only, hidden[:, 0]",
            lambda h, wp, bp, wc, bc: torch.tanh(h.mean(1) @ wp.T + bp) @ wc.T + bc),
    Mistake("the pooler's tanh is missing: tanh(cls @ w_pool.T + b_pool), then the classifier",
            lambda h, wp, bp, wc, bc: (h[:, 0] @ wp.T + bp) @ wc.T + bc),
    Mistake("ReLU instead of tanh in the pooler: BERT's pooler uses tanh",
            lambda h, wp, bp, wc, bc: torch.relu(h[:, 0] @ wp.T + bp) @ wc.T + bc),
    Mistake("w_pool not transposed: nn.Linear stores [out, in], so multiply by w_pool.T",
            lambda h, wp, bp, wc, bc: torch.tanh(h[:, 0] @ wp + bp) @ wc.T + bc),
    Mistake("softmax applied: return the raw logits (cross_entropy applies log-softmax itself)",
            lambda h, wp, bp, wc, bc: classification_head(h, wp, bp, wc, bc).softmax(-1)),
]


def check_classification_head(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(hidden, w_pool, b_pool, w_cls, b_cls) -> logits [b, classes]`` (see :func:`classification_head`)."""
    return check_function("classification_head", fn, classification_head, _head_cases(), mistakes=HEAD_MISTAKES,
                          output_names=("logits",), atol=1e-5, strict=strict)
