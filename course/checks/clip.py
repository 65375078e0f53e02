"""Checkers for lesson 15 (CLIP): the contrastive loss, the zero-shot classifier, recall@k.

The boundaries: for the loss features of different lengths (normalising matters only then), a logit scale above
log(100) (the clamp matters only then), a batch of one (the loss is 0 whatever the scale) and batches whose two
directions differ; for the zero-shot classifier caption vectors of different lengths and several templates
(normalising before and after the average matters only then), one template, one image; for recall@k ties with
the right item (the instructions count a tie in the item's favour), k = 1, k equal to the number of items, and a
query whose right item is exactly the k-th.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from course.clip import MAX_LOGIT_SCALE, clip_loss, recall_at_k, zero_shot_classify
from .core import CheckResult, Mistake, check_function


def _randn(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _lengths(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Rows of different lengths (between 0.3 and 3), so a missing normalisation shows."""
    g = torch.Generator().manual_seed(seed)
    return x * (0.3 + 2.7 * torch.rand(x.shape[0], 1, generator=g))


# ------------------------------------------------------------------------------------ the loss

def _logits(i, t, s, normalise=True, scale="exp-clamped"):
    if normalise:
        i, t = F.normalize(i, dim=-1), F.normalize(t, dim=-1)
    if scale == "exp-clamped":
        factor = s.exp().clamp(max=MAX_LOGIT_SCALE)
    elif scale == "exp":
        factor = s.exp()
    elif scale == "raw":
        factor = s
    elif scale == "none":
        factor = 1.0
    else:
        factor = 1 / s.exp().clamp(max=MAX_LOGIT_SCALE)
    return factor * i @ t.T


def _both(logits):
    target = torch.arange(len(logits))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


CLIP_LOSS_MISTAKES = [
    Mistake("the features are not normalised: cosine similarity needs unit vectors, F.normalize(x, dim=-1) on both sides",
            lambda i, t, s: _both(_logits(i, t, s, normalise=False))),
    Mistake("the scale is exp(logit_scale): logit_scale is its log (CLIP learns the log so the scale stays positive)",
            lambda i, t, s: _both(_logits(i, t, s, scale="raw"))),
    Mistake("the cosine similarities are not scaled: multiply them by exp(logit_scale), clamped at 100, before the "
            "cross-entropy (cosines in [-1, 1] are too flat for a confident softmax)",
            lambda i, t, s: _both(_logits(i, t, s, scale="none"))),
    Mistake("divided by the scale: MULTIPLY the similarities by exp(logit_scale) (= 1 / temperature)",
            lambda i, t, s: _both(_logits(i, t, s, scale="inverse"))),
    Mistake("the scale is not clamped: use exp(logit_scale).clamp(max=100), so the logits are never scaled by more than 100",
            lambda i, t, s: _both(_logits(i, t, s, scale="exp"))),
    Mistake("only image -> text: the loss is symmetric, the mean of the cross-entropy over the rows (image -> text) "
            "and over the columns (text -> image, logits.T)",
            lambda i, t, s: F.cross_entropy(_logits(i, t, s), torch.arange(len(i)))),
    Mistake("only text -> image: add the cross-entropy over the rows too (image -> text) and take the mean",
            lambda i, t, s: F.cross_entropy(_logits(i, t, s).T, torch.arange(len(i)))),
    Mistake("the two directions are summed: take their mean, (loss_images + loss_texts) / 2",
            lambda i, t, s: 2 * _both(_logits(i, t, s))),
    Mistake("normalised over the batch (dim 0): each vector is normalised over its own features, dim=-1",
            lambda i, t, s: _both(s.exp().clamp(max=MAX_LOGIT_SCALE) * F.normalize(i, dim=0) @ F.normalize(t, dim=0).T)),
    Mistake("the right caption of image i is text i: the targets are torch.arange(b), the diagonal",
            lambda i, t, s: (F.cross_entropy(_logits(i, t, s), torch.zeros(len(i), dtype=torch.long))
                             + F.cross_entropy(_logits(i, t, s).T, torch.zeros(len(i), dtype=torch.long))) / 2),
]


def _clip_loss_cases() -> list[tuple]:
    def pair(b, e, seed, close=0.0):
        images = _lengths(_randn(b, e, seed=seed), seed + 1)
        texts = _lengths(_randn(b, e, seed=seed + 2) + close * images, seed + 3)
        return images, texts
    return [(*pair(4, 3, 0, close=1.0), torch.tensor(math.log(1 / 0.07))),
            (*pair(6, 5, 10, close=2.0), torch.tensor(5.0)),          # exp(5) = 148 > 100: the clamp matters
            (*pair(3, 8, 20), torch.tensor(0.5)),
            (*pair(1, 4, 30), torch.tensor(2.0))]                     # a batch of one: the loss is 0


def check_clip_loss(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(image_features [b, e], text_features [b, e], logit_scale) -> 0-dim loss``."""
    return check_function("contrastive loss", fn, clip_loss, _clip_loss_cases(), mistakes=CLIP_LOSS_MISTAKES,
                          atol=1e-4, rtol=1e-4, strict=strict,
                          nonfinite_hint="the loss overflowed: normalise the features and clamp the scale at 100")


# ------------------------------------------------------------------------------------ zero-shot

def _zs(images, classes, before=True, after=True, templates="mean"):
    if templates == "first":
        classes = classes[:, :1]
    c = F.normalize(classes, dim=-1) if before else classes
    c = c.mean(1)
    c = F.normalize(c, dim=-1) if after else c
    return (F.normalize(images, dim=-1) @ c.T).argmax(-1)


ZERO_SHOT_MISTAKES = [
    Mistake("nothing is normalised: compare by cosine similarity, each caption vector made unit length before the "
            "average and the average made unit length again", lambda i, c: _zs(i, c, before=False, after=False)),
    Mistake("the caption vectors are averaged before they are normalised: make each one unit length first "
            "(a long caption vector would outvote the others)", lambda i, c: _zs(i, c, before=False)),
    Mistake("the average of the unit caption vectors is shorter than 1: normalise it again before comparing",
            lambda i, c: _zs(i, c, after=False)),
    Mistake("only the first template is used: average over all the templates of a class (dim 1)",
            lambda i, c: _zs(i, c, templates="first")),
    Mistake("that is the LEAST similar class: use argmax", lambda i, c: (
        F.normalize(i, dim=-1) @ F.normalize(F.normalize(c, dim=-1).mean(1), dim=-1).T).argmin(-1)),
    Mistake("averaged over the classes (dim 0): the templates are dim 1 of [classes, templates, e]",
            lambda i, c: (F.normalize(i, dim=-1) @ F.normalize(F.normalize(c, dim=-1).mean(0), dim=-1).T).argmax(-1)),
]


def _zero_shot_cases() -> list[tuple]:
    def case(n, classes, templates, e, seed):
        images = _lengths(_randn(n, e, seed=seed), seed + 1)
        texts = _randn(classes, templates, e, seed=seed + 2)
        lengths = 0.2 + 4 * torch.rand(classes, templates, 1, generator=torch.Generator().manual_seed(seed + 3))
        return images, texts * lengths
    return [case(40, 5, 3, 4, 0), case(30, 4, 2, 6, 10), case(12, 3, 1, 5, 20), case(1, 6, 4, 3, 30)]


def check_zero_shot(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(image_features [n, e], class_text_features [classes, templates, e]) -> [n]`` class indices."""
    return check_function("zero-shot classifier", fn, zero_shot_classify, _zero_shot_cases(),
                          mistakes=ZERO_SHOT_MISTAKES, strict=strict)


# ------------------------------------------------------------------------------------ recall@k

def _rank(similarity, compare=torch.gt):
    return compare(similarity, similarity.diag()[:, None]).sum(-1) - int(compare is torch.ge)


RECALL_MISTAKES = [
    Mistake("a tie with the right item is counted against it: count only the items scored strictly HIGHER (>)",
            lambda s, k: (_rank(s, torch.ge) < k).float().mean()),
    Mistake("the right item is counted as beating itself: with >= it is its own rival; count only the items scored "
            "strictly HIGHER (>)", lambda s, k: ((s >= s.diag()[:, None]).sum(-1) < k).float().mean()),
    Mistake("off by one: the right item is found when fewer than k items beat it (rank < k), not rank <= k",
            lambda s, k: (_rank(s) <= k).float().mean()),
    Mistake("return the share of queries found (a mean between 0 and 1), not their number",
            lambda s, k: (_rank(s) < k).float().sum()),
    Mistake("you ranked down the columns: each ROW is a query, its items are along the row (dim -1)",
            lambda s, k: (_rank(s.T) < k).float().mean()),
    Mistake("k is ignored: recall@k asks whether the right item is among the k best, not whether it is the best",
            lambda s, k: (_rank(s) < 1).float().mean()),
    Mistake("that counts the queries NOT found", lambda s, k: (_rank(s) >= k).float().mean()),
]


def _recall_cases() -> list[tuple]:
    s1 = _randn(6, 6, seed=0)
    tied = torch.tensor([[0.5, 0.5, 0.1, 0.2],      # the right item ties another: found at k = 1
                         [0.9, 0.3, 0.3, 0.2],      # one item above, one tied: rank 1
                         [0.1, 0.2, 0.4, 0.0],
                         [0.7, 0.7, 0.7, 0.7]])     # all tied: rank 0
    exactly_k = torch.tensor([[0.1, 0.9, 0.8, 0.2, 0.0],   # two items above the right one: found at k = 3, not 2
                              [0.3, 0.6, 0.9, 0.1, 0.2],
                              [0.8, 0.1, 0.5, 0.9, 0.4],
                              [0.2, 0.3, 0.1, 0.7, 0.6],
                              [0.5, 0.4, 0.3, 0.2, 0.1]])
    rows_not_columns = torch.tensor([[0.5, 0.1, 0.9, 0.0, 0.0],   # read down the columns, the ranks differ
                                     [0.2, 0.6, 0.0, 0.1, 0.1],
                                     [0.0, 0.3, 0.95, 0.2, 0.2],
                                     [0.9, 0.0, 0.1, 0.4, 0.4],
                                     [0.1, 0.1, 0.1, 0.1, 0.8]])
    return [(rows_not_columns, 1), (s1, 1), (s1, 3), (tied, 1), (exactly_k, 3), (exactly_k, 2), (_randn(5, 5, seed=2), 5),
            (torch.tensor([[0.3]]), 1)]


def check_recall_at_k(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(similarity [n, n], k) -> 0-dim share``: query i's right item is item i; a tie counts in its favour."""
    return check_function("recall@k", fn, recall_at_k, _recall_cases(), mistakes=RECALL_MISTAKES, atol=1e-6,
                          strict=strict)
