"""Lesson 15's checkers: right answers pass; learner-style wrong answers get the hint for their mistake."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from answer_library import Right, Wrong, library_tests, unattempted_test

from course.checks.clip import check_clip_loss, check_recall_at_k, check_zero_shot

pytestmark = pytest.mark.usefixtures("lenient_checks")


# ------------------------------------------------------------------------------------ the loss, as learners write it

def loss_learner(image_features, text_features, logit_scale, *, normalise=True, scale="exp", clamp=True,
                 directions="both", reduce="mean"):
    if normalise:
        image_features = image_features / image_features.norm(dim=1, keepdim=True)
        text_features = text_features / text_features.norm(dim=1, keepdim=True)
    if scale == "exp":
        s = logit_scale.exp()
        if clamp:
            s = torch.clamp(s, max=100)
    elif scale == "raw":
        s = logit_scale
    elif scale == "none":
        s = 1.0
    else:
        s = 1 / torch.clamp(logit_scale.exp(), max=100)
    logits = s * image_features @ text_features.t()
    labels = torch.arange(logits.shape[0])
    image_loss = F.cross_entropy(logits, labels)
    text_loss = F.cross_entropy(logits.t(), labels)
    if directions == "images":
        return image_loss
    if directions == "texts":
        return text_loss
    return (image_loss + text_loss) / 2 if reduce == "mean" else image_loss + text_loss


def loss_by_hand(image_features, text_features, logit_scale):
    """log-softmax written out, float64, both directions."""
    i = F.normalize(image_features.double(), dim=-1)
    t = F.normalize(text_features.double(), dim=-1)
    logits = min(float(logit_scale.exp()), 100.0) * i @ t.T
    rows = -(logits.diag() - logits.logsumexp(1)).mean()
    cols = -(logits.diag() - logits.logsumexp(0)).mean()
    return ((rows + cols) / 2).float()


def loss_variant(**kw):
    return lambda i, t, s: loss_learner(i, t, s, **kw)


WRONG_LOSSES = [
    Wrong("no normalisation", loss_variant(normalise=False), "not normalised"),
    Wrong("scale used as it is", loss_variant(scale="raw"), "exp(logit_scale)"),
    Wrong("similarities not scaled", loss_variant(scale="none"), "not scaled"),
    Wrong("divides by the scale", loss_variant(scale="inverse"), "MULTIPLY"),
    Wrong("no clamp", loss_variant(clamp=False), "clamp"),
    Wrong("image -> text only", loss_variant(directions="images"), "only image -> text"),
    Wrong("text -> image only", loss_variant(directions="texts"), "only text -> image"),
    Wrong("sum of the directions", loss_variant(reduce="sum"), "summed"),
    Wrong("normalised over the batch", lambda i, t, s: loss_learner(i / i.norm(dim=0), t / t.norm(dim=0), s,
                                                                     normalise=False), "dim 0"),
    Wrong("labels all zero", lambda i, t, s: F.cross_entropy(
        s.exp().clamp(max=100) * F.normalize(i, dim=-1) @ F.normalize(t, dim=-1).T, torch.zeros(len(i), dtype=torch.long)),
        None),   # holdout: one direction and the wrong targets
    Wrong("mean squared distance", lambda i, t, s: (F.normalize(i, dim=-1) - F.normalize(t, dim=-1)).pow(2).sum(-1).mean(),
          None),  # holdout
]
RIGHT_LOSSES = [Right("two cross-entropies", loss_learner), Right("log-softmax by hand, float64", loss_by_hand),
                Right("logits of texts transposed", lambda i, t, s: loss_learner(t, i, s))]


# ------------------------------------------------------------------------------------ zero-shot

def zero_shot_loops(image_features, class_text_features):
    classes = []
    for templates in class_text_features:
        unit = torch.stack([v / v.norm() for v in templates])
        mean = unit.mean(0)
        classes.append(mean / mean.norm())
    classes = torch.stack(classes)
    scores = (image_features / image_features.norm(dim=-1, keepdim=True)) @ classes.T
    return scores.argmax(dim=1)


def zero_shot_einsum(image_features, class_text_features):
    c = F.normalize(F.normalize(class_text_features, dim=-1).sum(1), dim=-1)   # the sum points where the mean does
    return torch.einsum("ne,ce->nc", image_features, c).argmax(-1)               # image length does not change argmax


def zero_shot_variant(*, before=True, after=True, first_only=False, pick="max"):
    def fn(image_features, class_text_features):
        c = class_text_features[:, :1] if first_only else class_text_features
        if before:
            c = c / c.norm(dim=-1, keepdim=True)
        c = c.mean(dim=1)
        if after:
            c = c / c.norm(dim=-1, keepdim=True)
        scores = F.normalize(image_features, dim=-1) @ c.T
        return scores.argmax(1) if pick == "max" else scores.argmin(1)
    return fn


WRONG_ZERO_SHOT = [
    Wrong("plain dot products", zero_shot_variant(before=False, after=False), "nothing is normalised"),
    Wrong("averaged, then normalised", zero_shot_variant(before=False), "averaged before they are normalised"),
    Wrong("normalised, averaged, not again", zero_shot_variant(after=False), "normalise it again"),
    Wrong("first template only", zero_shot_variant(first_only=True), "only the first template"),
    Wrong("argmin", zero_shot_variant(pick="min"), "LEAST similar"),
    Wrong("scores instead of classes", lambda i, c: F.normalize(i, dim=-1) @ F.normalize(
        F.normalize(c, dim=-1).mean(1), dim=-1).T, "shape"),
    Wrong("argmax over the images", lambda i, c: (F.normalize(i, dim=-1) @ F.normalize(
        F.normalize(c, dim=-1).mean(1), dim=-1).T).argmax(0), "shape"),
    Wrong("nearest template, not the class average", lambda i, c: (F.normalize(i, dim=-1) @ F.normalize(
        c, dim=-1).flatten(0, 1).T).argmax(-1) // c.shape[1], None),    # holdout
]
RIGHT_ZERO_SHOT = [Right("loops", zero_shot_loops), Right("einsum and a sum", zero_shot_einsum),
                   Right("float64", lambda i, c: zero_shot_loops(i.double(), c.double()))]


# ------------------------------------------------------------------------------------ recall@k

def recall_loops(similarity, k):
    found = 0
    for i, row in enumerate(similarity):
        higher = sum(1 for j, v in enumerate(row) if j != i and v > row[i])
        found += higher < k
    return torch.tensor(found / len(similarity))


def recall_sort(similarity, k):
    right = similarity.diagonal().unsqueeze(1)
    better = (similarity > right).sum(dim=1)
    return (better < k).to(torch.float32).mean()


def recall_variant(*, ties_against=False, leq=False, count=False, columns=False, top1=False):
    def fn(similarity, k):
        s = similarity.T if columns else similarity
        right = s.diagonal().unsqueeze(1)
        better = (s >= right).sum(1) - 1 if ties_against else (s > right).sum(1)
        limit = 1 if top1 else k
        hit = better <= limit if leq else better < limit
        return hit.float().sum() if count else hit.float().mean()
    return fn


def recall_topk(similarity, k):  # torch.topk breaks ties its own way: a tie may push the right item out
    top = similarity.topk(k, dim=1).indices
    return (top == torch.arange(len(similarity))[:, None]).any(1).float().mean()


WRONG_RECALL = [
    Wrong("ties against", recall_variant(ties_against=True), "strictly HIGHER"),
    Wrong("the right item counts itself (>=)", lambda s, k: ((s >= s.diagonal().unsqueeze(1)).sum(1) < k).float().mean(),
          "beating itself"),
    Wrong("rank <= k", recall_variant(leq=True), "off by one"),
    Wrong("a count", recall_variant(count=True), "not their number"),
    Wrong("down the columns", recall_variant(columns=True), "ROW is a query"),
    Wrong("k ignored", recall_variant(top1=True), "k is ignored"),
    Wrong("topk without tie handling", recall_topk, "counted against it"),            # holdout
    Wrong("returns a bool per query", lambda s, k: (s > s.diag()[:, None]).sum(1) < k, "a single number"),  # holdout
]
RIGHT_RECALL = [Right("loops", recall_loops), Right("compare with the diagonal", recall_sort),
                Right("float64", lambda s, k: recall_sort(s.double(), k).float())]


LIBRARY = {
    check_clip_loss: (WRONG_LOSSES, RIGHT_LOSSES),
    check_zero_shot: (WRONG_ZERO_SHOT, RIGHT_ZERO_SHOT),
    check_recall_at_k: (WRONG_RECALL, RIGHT_RECALL),
}

# Each wrong answer fails, in one line holding its words; each right answer passes.
test_each_wrong_answer_fails_with_its_words, test_each_right_answer_passes = library_tests(LIBRARY)

test_an_unattempted_exercise_says_so = unattempted_test(LIBRARY)
