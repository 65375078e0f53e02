"""Checkers for lesson 07 (:mod:`course.mlm`): BERT's masking rule, and the encoder exercises (the
padding mask, mean pooling, the classification head).

The masking rule: the learner writes ``apply_masking_rule(ids, special, select_u, action_u, random_ids, mask_id, mask_prob)``
with the random draws handed in, so the answer is exact and checkable. The first case is built by
hand so that every branch happens at a known position: special tokens with a small ``select_u`` (a
rule that forgets them masks them), chosen tokens whose ``action_u`` falls in each of [0, 0.8),
[0.8, 0.9) and [0.9, 1), and tokens with ``select_u`` just above 0.15. Its third row holds the
boundaries the rule defines: ``select_u`` exactly ``mask_prob`` (not chosen: ``<`` is strict),
``action_u`` exactly 0.8 (a random word) and exactly 0.9 (unchanged), and ``select_u = 0``. The last
case uses ``mask_prob = 0.3`` (with a ``select_u`` of exactly 0.3) so a hard-coded 0.15 shows, and
``mask_id = 103`` so a hard-coded ``[MASK]`` id shows. When the learner's answer differs in a way no
mistake explains, the checker says which kind of position it is wrong at (special tokens, tokens
not chosen, the [MASK], random or unchanged band, or a boundary value).

The encoder exercises: cases always hold padded rows of different lengths next to unpadded ones (so a
pooling that counts padding, or a mask on the wrong axis, shows), rows padded on the LEFT and a row
with a single real token (the exercise allows padding anywhere, so a mask or a pooling built from
lengths shows), non-symmetric weights (so a missing transpose shows) and, for the head, hidden states whose first
and last positions differ.

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
                        [2, 21, 22, 23, 24, 25, 26, 27, 28, 3],
                        [2, 31, 32, 33, 34, 35, 36, 37, 38, 3]])
    special = ids < 5
    # Row 2 holds the boundaries: select_u == 0.15 at 1 and 0.0 at 2; action_u == 0.8 at 2, == 0.9 at 3.
    select_u = torch.tensor([[0.01, 0.05, 0.50, 0.10, 0.14, 0.20, 0.90, 0.02, 0.03, 0.60],
                             [0.04, 0.12, 0.08, 0.70, 0.16, 0.11, 0.13, 0.40, 0.06, 0.01],
                             [0.05, 0.15, 0.00, 0.149, 0.07, 0.151, 0.02, 0.30, 0.09, 0.10]])
    action_u = torch.tensor([[0.30, 0.20, 0.50, 0.85, 0.95, 0.10, 0.40, 0.82, 0.97, 0.50],
                             [0.60, 0.70, 0.88, 0.20, 0.30, 0.93, 0.05, 0.85, 0.45, 0.75],
                             [0.50, 0.30, 0.80, 0.90, 0.7999, 0.10, 0.8999, 0.50, 0.00, 0.20]])
    random_ids = torch.tensor([[40, 41, 42, 43, 44, 45, 46, 47, 48, 49],
                               [50, 51, 52, 53, 54, 55, 56, 57, 58, 59],
                               [60, 61, 62, 63, 64, 65, 66, 67, 68, 69]])
    return ids, special, select_u, action_u, random_ids, MASK_ID, 0.15


def _random_case(seed: int, shape: tuple[int, int], mask_prob: float, mask_id: int = MASK_ID) -> tuple:
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
    select_u[:, 1] = mask_prob                 # exactly at the threshold: not chosen (a word: [CLS] is at 0)
    return ids, special, select_u, action_u, random_ids, mask_id, mask_prob


def _cases() -> list[tuple]:
    return [_hand_case(), _random_case(1, (4, 24), 0.15), _random_case(2, (3, 30), 0.3, mask_id=103)]


def _rule(ids, special, select_u, action_u, random_ids, mask_id, p, *, skip_special=True, greater=False,
          hard_p=None, mask_lo=0.8, rand_hi=0.9, random_lo=None, random_everywhere=False, all_mask=False,
          labels_kind="chosen", fill=IGNORE_INDEX, select_le=False, mask_le=False, random_gt=False,
          random_le=False, hard_mask_id=None, at_least=False):
    """Variations on the rule; the defaults give the correct answer."""
    p = p if hard_p is None else hard_p
    mask_id = mask_id if hard_mask_id is None else hard_mask_id
    if greater or at_least:
        chosen = (select_u >= p) if at_least else (select_u > 1 - p)
    else:
        chosen = (select_u <= p) if select_le else (select_u < p)
    if skip_special:
        chosen = chosen & ~special
    if all_mask:
        to_mask, to_random = chosen, torch.zeros_like(chosen)
    else:
        to_mask = chosen & ((action_u <= mask_lo) if mask_le else (action_u < mask_lo))
        lo = mask_lo if random_lo is None else random_lo
        above = (action_u > lo) if random_gt else (action_u >= lo)
        below = (action_u <= rand_hi) if random_le else (action_u < rand_hi)
        in_band = above & below & ~to_mask
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
    Mistake("tokens were chosen with the wrong comparison: choose where select_u < mask_prob (15%), not above it",
            _m(at_least=True)),
    Mistake("mask_prob is hard-coded as 0.15: use the mask_prob argument",
            _m(hard_p=0.15)),
    Mistake("random words also replaced tokens that were not chosen: restrict every replacement to chosen tokens",
            _m(random_everywhere=True)),
    Mistake("random and unchanged swapped: [0.8, 0.9) gets a random word, [0.9, 1) stays unchanged",
            _m(random_lo=0.9, rand_hi=1.01)),
    Mistake("no token was left unchanged: random words go to 0.8 <= action_u < 0.9 only, the last 10% keep their id",
            _m(rand_hi=1.01)),
    Mistake("a token whose select_u equals mask_prob exactly was chosen: the comparison is strict, select_u < mask_prob",
            _m(select_le=True)),
    Mistake("a chosen token with action_u exactly 0.8 became [MASK]: [MASK] only where action_u < 0.8 (strict); "
            "0.8 itself gets a random word",
            _m(mask_le=True)),
    Mistake("a chosen token with action_u exactly 0.8 was left unchanged: random words go to 0.8 <= action_u < 0.9, "
            "0.8 included",
            _m(random_gt=True)),
    Mistake("a chosen token with action_u exactly 0.9 got a random word: random words only where action_u < 0.9; "
            "0.9 and above stay unchanged",
            _m(random_le=True)),
    Mistake("the [MASK] id is hard-coded: use the mask_id argument (the cases pass different ids)",
            _m(hard_mask_id=MASK_ID)),
    Mistake("the [MASK] id is hard-coded: use the mask_id argument (the cases pass different ids)",
            _m(hard_mask_id=103)),
]


def _masking_locate(args, name, got, want) -> str | None:
    """Which kinds of position the learner's inputs or labels are wrong at, in the rule's terms."""
    ids, special, select_u, action_u, random_ids, mask_id, p = args
    special = special.bool()
    wrong = got != want
    chosen = (select_u < p) & ~special
    kinds = [  # (positions of this kind, their boundary positions, words, words for the boundary)
        (special, None, "special tokens ([CLS], [SEP], [PAD]), which are never chosen", None),
        (~special & ~chosen, select_u == p, "tokens that were not chosen (select_u >= mask_prob): they keep their id "
         "and get label -100", f"tokens whose select_u equals mask_prob = {p} exactly (not chosen: < is strict)"),
        (chosen & (action_u < 0.8), None, "chosen tokens with action_u < 0.8 (they become mask_id)", None),
        (chosen & (action_u >= 0.8) & (action_u < 0.9), action_u == 0.8,
         "chosen tokens with 0.8 <= action_u < 0.9 (they get random_ids)",
         "chosen tokens with action_u exactly 0.8 (they get a random word)"),
        (chosen & (action_u >= 0.9), action_u == 0.9, "chosen tokens with action_u >= 0.9 (they stay unchanged)",
         "chosen tokens with action_u exactly 0.9 (they stay unchanged)"),
    ]
    found = []
    for where, edge, words, edge_words in kinds:
        hit = wrong & where
        if not bool(hit.any()):
            continue
        found.append(edge_words if edge is not None and not bool((hit & ~edge).any()) else words)
    if 1 <= len(found) <= 2:
        return "wrong only at " + " and at ".join(found)
    return None


def _reference(ids, special, select_u, action_u, random_ids, mask_id, p) -> tuple[Tensor, Tensor]:
    return apply_masking_rule(ids, special, select_u, action_u, random_ids, mask_id, p)


def check_masking_rule(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(ids, special, select_u, action_u, random_ids, mask_id, mask_prob) -> (inputs, labels)``."""
    return check_function("masking_rule", fn, _reference, _cases(), mistakes=MASKING_MISTAKES,
                          output_names=("inputs", "labels"), atol=0, rtol=0, locate=_masking_locate, strict=strict)


# ----------------------------------------------------------------------------------------------
# The encoder exercises: padding mask, mean pooling, classification head
# ----------------------------------------------------------------------------------------------

def _attention_masks() -> list[tuple]:
    return [(torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]),),
            (torch.tensor([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0, 0]]),),
            # left padding (the exercise allows padding anywhere) and a row with one real token
            (torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1], [0, 1, 1, 1, 1, 1]]),)]


def _from_lengths(a: Tensor) -> Tensor:
    """Real tokens taken to be the first attention_mask.sum(1) of each row (right padding only)."""
    return torch.arange(a.shape[1])[None, :] < a.sum(1, keepdim=True)


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
    Mistake("the mask was built from the lengths, as if padding were always at the end: some rows are padded on "
            "the left; take the attention_mask itself, attention_mask.bool()[:, None, None, :]",
            lambda a: _keys(_from_lengths(a))),
    Mistake("the mask is not expanded: [batch, 1, 1, seq] broadcasts, but the exercise asks for the full "
            "[batch, 1, seq, seq]; add .expand(-1, 1, seq, -1)",
            lambda a: a.bool()[:, None, None, :]),
    Mistake("the head axis is missing: return [batch, 1, seq, seq], the 1 broadcasting over heads",
            lambda a: _keys(a)[:, 0]),
]


def check_bidirectional_mask(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(attention_mask [b, s] of 1/0) -> bool [b, 1, s, s]``, True where key j is a real token."""
    return check_function("bidirectional_mask", fn, bidirectional_mask, _attention_masks(), mistakes=MASK_MISTAKES,
                          output_names=("mask",), atol=0, rtol=0, locate=_mask_locate, strict=strict)


def _mask_locate(args, name, got, want) -> str | None:
    a = args[0].bool()
    wrong = got != want
    left = ~a[:, :1] & a.any(1, keepdim=True)                           # rows that start with padding
    if bool(wrong.any()) and bool(left.any()) and not bool(wrong[~left[:, 0]].any()):
        return "wrong only in the rows padded on the LEFT (padding may sit anywhere: use the attention_mask itself)"
    return None


def _pool_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(7)
    return [(torch.randn(3, 5, 4, generator=g) + 1.0, torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])),
            (torch.randn(2, 7, 6, generator=g), torch.tensor([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0, 0]])),
            # left padding and a row with one real token
            (torch.randn(4, 6, 4, generator=g) - 0.5,
             torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1], [0, 1, 1, 1, 1, 1]]))]


def _pool_from_lengths(h: Tensor, a: Tensor) -> Tensor:
    return torch.stack([h[i, :n].mean(0) for i, n in enumerate(a.sum(1).tolist())])


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
    Mistake("averaged the first attention_mask.sum() positions, as if padding were always at the end: some rows "
            "are padded on the left; weight every position by the attention_mask itself",
            _pool_from_lengths),
    Mistake("divided by the number of real tokens in the whole batch: each sentence is divided by its own count, "
            "attention_mask.sum(1, keepdim=True)",
            lambda h, a: _masked_sum(h, a) / a.sum()),
]

POOL_SHAPE_HINT = ("must match the size of tensor",
                   "the shapes do not broadcast: the masked sum is [batch, d]; divide it by the count "
                   "[batch, 1], attention_mask.sum(1, keepdim=True) (and multiply hidden by "
                   "attention_mask[..., None], [batch, seq, 1])")


def check_mean_pool(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(hidden [b, s, d], attention_mask [b, s]) -> [b, d]``, the mean over real tokens."""
    return check_function("mean_pool", fn, mean_pool, _pool_cases(), mistakes=POOL_MISTAKES, output_names=("pooled",),
                          exception_hints=[POOL_SHAPE_HINT], atol=1e-5, strict=strict)


def classification_head(hidden: Tensor, w_pool: Tensor, b_pool: Tensor, w_cls: Tensor, b_cls: Tensor) -> Tensor:
    """BERT's head: ``tanh([CLS] W_pool^T + b_pool) W_cls^T + b_cls``; weights in ``nn.Linear`` layout.

    ``hidden [b, s, d]``, ``w_pool [d, d]``, ``b_pool [d]``, ``w_cls [classes, d]``, ``b_cls [classes]`` -> logits ``[b, classes]``.
    """
    return torch.tanh(hidden[:, 0] @ w_pool.T + b_pool) @ w_cls.T + b_cls


def _head_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(3)
    out = []
    for b, s, d, c in ((2, 5, 6, 3), (3, 4, 8, 2), (1, 3, 5, 4)):
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
    Mistake("hidden[0] is the first SENTENCE of the batch: the [CLS] vector of every sentence is hidden[:, 0], [batch, d]",
            lambda h, wp, bp, wc, bc: torch.tanh(h[0] @ wp.T + bp) @ wc.T + bc),
    Mistake("the position axis was kept: hidden[:, :1] is [batch, 1, d]; hidden[:, 0] gives [batch, d]",
            lambda h, wp, bp, wc, bc: torch.tanh(h[:, :1] @ wp.T + bp) @ wc.T + bc),
    Mistake("the biases are missing: tanh(cls @ w_pool.T + b_pool) @ w_cls.T + b_cls",
            lambda h, wp, bp, wc, bc: torch.tanh(h[:, 0] @ wp.T) @ wc.T),
    Mistake("tanh applied to the logits too: only the pooler has a tanh; the classifier is linear",
            lambda h, wp, bp, wc, bc: torch.tanh(classification_head(h, wp, bp, wc, bc))),
    Mistake("the classifier's bias is missing: ... @ w_cls.T + b_cls",
            lambda h, wp, bp, wc, bc: torch.tanh(h[:, 0] @ wp.T + bp) @ wc.T),
]

HEAD_SHAPE_HINT = ("cannot be multiplied",
                   "the weights are laid out as nn.Linear stores them, [out, in]: multiply by w_pool.T and w_cls.T")


def check_classification_head(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(hidden, w_pool, b_pool, w_cls, b_cls) -> logits [b, classes]`` (see :func:`classification_head`)."""
    return check_function("classification_head", fn, classification_head, _head_cases(), mistakes=HEAD_MISTAKES,
                          output_names=("logits",), exception_hints=[HEAD_SHAPE_HINT], atol=1e-5, strict=strict)
