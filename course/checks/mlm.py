"""Checker for lesson 07's first exercise: BERT's masking rule for masked-language modelling.

The learner writes ``apply_masking_rule(ids, special, select_u, action_u, random_ids, mask_id, mask_prob)``
with the random draws handed in, so the answer is exact and checkable. The first case is built by
hand so that every branch happens at a known position: special tokens with a small ``select_u`` (a
rule that forgets them masks them), chosen tokens whose ``action_u`` falls in each of [0, 0.8),
[0.8, 0.9) and [0.9, 1), and tokens with ``select_u`` just above 0.15. The last case uses
``mask_prob = 0.3`` so a hard-coded 0.15 shows. ``tests/checks/test_checks_mlm.py`` proves each mistake
below gets its own hint.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..mlm import IGNORE_INDEX, apply_masking_rule
from .core import CheckResult, Mistake, check_function

__all__ = ["check_masking_rule", "MASKING_MISTAKES"]

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
