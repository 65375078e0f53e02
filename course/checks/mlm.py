"""Checkers for lesson 07 (:mod:`course.mlm`): BERT's masking rule, and the encoder exercises (the
padding mask, mean pooling, the classification head).

The masking rule: the learner writes ``apply_masking_rule(ids, special, select_u, action_u, random_ids, mask_id, mask_prob)``
with the random draws handed in, so the answer is exact and checkable. The first case is built by
hand so that every branch happens at a known position: special tokens with a small ``select_u`` (a
rule that forgets them masks them), chosen tokens whose ``action_u`` falls in each of [0, 0.8),
[0.8, 0.9) and [0.9, 1), and tokens with ``select_u`` just above 0.15. The last case uses
``mask_prob = 0.3`` so a hard-coded 0.15 shows.

The encoder exercises: cases always hold padded rows of different lengths next to unpadded ones (so a
pooling that counts padding, or a mask on the wrong axis, shows), non-symmetric weights (so a missing
transpose shows) and, for the head, hidden states whose first and last positions differ.

``tests/checks/test_checks_mlm.py`` proves each mistake below gets its own hint.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..mlm import IGNORE_INDEX, apply_masking_rule, bidirectional_mask, mean_pool
from .core import CheckResult, Mistake, check_function

__all__ = ["check_masking_rule", "MASKING_MISTAKES", "check_bidirectional_mask", "check_mean_pool",
           "check_classification_head", "MASK_MISTAKES", "POOL_MISTAKES", "HEAD_MISTAKES", "classification_head"]

MASK_ID = 4


def _hand_case() -> tuple:
    # position:      0   1   2   3   4   5   6   7   8   9   (row 0: [CLS] w w w w w w [SEP] [PAD] [PAD])
    ids = torch.tensor([[2, 11, 12, 13, 14, 15, 16, 3, 0, 0],
                        [2, 21, 22, 23, 24, 25, 26, 27, 28, 3]])
    special = ids < 5
    select_u = torch.tensor([[0.01, 0.05, 0.50, 0.10, 0.14, 0.20, 0.90, 0.02, 0.03, 0.60],
                             [0.04, 0.12, 0.08, 0.70, 0.16, 0.11, 0.13, 0.40, 0.06, 0.01]])
    action_u = torch.tensor([[0.30, 0.20, 0.50, 0.85, 0.95, 0.10, 0.40, 0.82, 0.97, 0.50],
                             [0.60, 0.70, 0.88, 0.20, 0.30, 0.93, 0.05, 0.85, 0.45, 0.75]])
    random_ids = torch.tensor([[40, 41, 42, 43, 44, 45, 46, 47, 48, 49],
                               [50, 51, 52, 53, 54, 55, 56, 57, 58, 59]])
    return ids, special, select_u, action_u, random_ids, MASK_ID, 0.15


def _random_case(seed: int, shape: tuple[int, int], mask_prob: float) -> tuple:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, shape, generator=g)
    ids[:, 0] = 2                              # [CLS]
    lengths = torch.randint(shape[1] // 2, shape[1], (shape[0],), generator=g)
    for row, n in enumerate(lengths.tolist()):
        ids[row, n] = 3                        # [SEP]
        ids[row, n + 1:] = 0                   # [PAD]
    special = ids < 5
    select_u = torch.rand(shape, generator=g)
    action_u = torch.rand(shape, generator=g)
    random_ids = (ids + torch.randint(1, 50, shape, generator=g) - 5) % 55 + 5  # a word, never the same one
    return ids, special, select_u, action_u, random_ids, MASK_ID, mask_prob


def _cases() -> list[tuple]:
    return [_hand_case(), _random_case(1, (4, 24), 0.15), _random_case(2, (3, 30), 0.3)]


def _rule(ids, special, select_u, action_u, random_ids, mask_id, p, *, skip_special=True, greater=False,
          hard_p=None, mask_lo=0.8, rand_hi=0.9, random_lo=None, random_everywhere=False, all_mask=False,
          labels_kind="chosen", fill=IGNORE_INDEX):
    """Variations on the rule; the defaults give the correct answer."""
    p = p if hard_p is None else hard_p
    chosen = (select_u > 1 - p) if greater else (select_u < p)
    if skip_special:
        chosen = chosen & ~special
    if all_mask:
        to_mask, to_random = chosen, torch.zeros_like(chosen)
    else:
        to_mask = chosen & (action_u < mask_lo)
        lo = mask_lo if random_lo is None else random_lo
        in_band = (action_u >= lo) & (action_u < rand_hi)
        to_random = in_band if random_everywhere else chosen & in_band
    inputs = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    inputs = torch.where(to_random, random_ids, inputs)
    where = {"chosen": chosen, "masked": to_mask, "everywhere": torch.ones_like(chosen)}[labels_kind if labels_kind != "inputs" else "chosen"]
    source = inputs if labels_kind == "inputs" else ids
    labels = torch.where(where, source, torch.full_like(ids, fill))
    return inputs, labels


def _m(**kw):
    return lambda *args: _rule(*args, **kw)


MASKING_MISTAKES = [
    Mistake("special tokens were chosen: [CLS], [SEP] and [PAD] must never be chosen: add `& ~special`",
            _m(skip_special=False)),
    Mistake("every chosen token became [MASK]: only 80% do (action_u < 0.8); 10% get a random word, 10% stay",
            _m(all_mask=True)),
    Mistake("labels must be -100 where a token was not chosen, so the loss ignores those positions",
            _m(labels_kind="everywhere")),
    Mistake("labels hold 0 at positions that were not chosen: use -100, the index cross_entropy ignores",
            _m(fill=0)),
    Mistake("labels only at the [MASK] positions: every chosen token gets a label, also the random and unchanged ones",
            _m(labels_kind="masked")),
    Mistake("the labels are the corrupted inputs: they must hold the ORIGINAL ids, so the model learns to undo the damage",
            _m(labels_kind="inputs")),
    Mistake("tokens were chosen with the wrong comparison: choose where select_u < mask_prob (15%), not above it",
            _m(greater=True)),
    Mistake("mask_prob is hard-coded as 0.15: use the mask_prob argument",
            _m(hard_p=0.15)),
    Mistake("random words also replaced tokens that were not chosen: restrict every replacement to chosen tokens",
            _m(random_everywhere=True)),
    Mistake("random and unchanged swapped: [0.8, 0.9) gets a random word, [0.9, 1) stays unchanged",
            _m(random_lo=0.9, rand_hi=1.01)),
    Mistake("no token was left unchanged: random words go to 0.8 <= action_u < 0.9 only, the last 10% keep their id",
            _m(rand_hi=1.01)),
]


def _reference(ids, special, select_u, action_u, random_ids, mask_id, p) -> tuple[Tensor, Tensor]:
    return apply_masking_rule(ids, special, select_u, action_u, random_ids, mask_id, p)


def check_masking_rule(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(ids, special, select_u, action_u, random_ids, mask_id, mask_prob) -> (inputs, labels)``."""
    return check_function("masking_rule", fn, _reference, _cases(), mistakes=MASKING_MISTAKES,
                          output_names=("inputs", "labels"), atol=0, rtol=0, strict=strict)


# ----------------------------------------------------------------------------------------------
# The encoder exercises: padding mask, mean pooling, classification head
# ----------------------------------------------------------------------------------------------

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
