"""Lesson 10's checkers: each wrong implementation, written as a learner would, gets its own hint."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from course.checks.core import NOT_ATTEMPTED
from course.checks.viz import (
    BEST_HEAD_MISTAKES,
    FLIP_MISTAKES,
    ROLLOUT_MISTAKES,
    SHARE_MISTAKES,
    check_best_head,
    check_flipped_share,
    check_referent_share,
    check_rollout,
    reference_referent_share,
)
from course.viz import attention_rollout
from answer_library import Right, Wrong, library_tests

pytestmark = pytest.mark.usefixtures("lenient_checks")


# ------------------------------------------------------------------------------------ rollout

def rollout_learner(attentions, *, residual=True, order="later-left", combine="mean", layers="all"):
    """attentions [layers, heads, s, s] -> [s, s], with a loop the way a learner writes it."""
    s = attentions.shape[-1]
    result = torch.eye(s)
    chosen = attentions if layers == "all" else attentions[-1:]
    for layer in chosen:
        a = layer.mean(dim=0) if combine == "mean" else layer.max(dim=0).values
        if residual:
            a = (a + torch.eye(s)) / 2
            a = a / a.sum(dim=-1, keepdim=True)
        result = a @ result if order == "later-left" else result @ a
    return result


def rollout_variant(**kwargs):
    return lambda a: rollout_learner(a, **kwargs)


def rollout_reduce(attentions):
    per = attentions.mean(dim=1)
    eye = torch.eye(per.shape[-1])
    per = (per + eye) / 2
    per = per / per.sum(-1, keepdim=True)
    return functools.reduce(lambda acc, a: a @ acc, per, eye)


def rollout_multi_dot(attentions):
    per = attentions.double().mean(1) + torch.eye(attentions.shape[-1], dtype=torch.float64)
    per = per / per.sum(-1, keepdim=True)
    mats = list(per.flip(0))
    return (torch.linalg.multi_dot(mats) if len(mats) > 1 else mats[0]).float()


def rollout_no_renorm(attentions):
    per = 0.5 * attentions.mean(1) + 0.5 * torch.eye(attentions.shape[-1])
    out = torch.eye(attentions.shape[-1])
    for a in per:
        out = a @ out
    return out


WRONG_ROLLOUTS = [
    Wrong("no residual", rollout_variant(residual=False), "the residual is missing"),
    Wrong("earlier layer on the left", rollout_variant(order="earlier-left"), "wrong order"),
    Wrong("last layer only", rollout_variant(layers="last"), "only the last layer"),
    Wrong("max over heads", rollout_variant(combine="max"), "combined with max"),
    Wrong("rows not renormalised", rollout_no_renorm, "not renormalised"),
    Wrong("mean over layers", lambda a: rollout_learner(a.transpose(0, 1)), "averaged over the layers"),
    Wrong("starts from the first layer", lambda a: rollout_learner(torch.cat([a[:1], a])), "counted twice"),
    Wrong("A + I, no halving, no renormalising", lambda a: functools.reduce(
        lambda acc, x: x @ acc, a.mean(1) + torch.eye(a.shape[-1]), torch.eye(a.shape[-1])), "rows do not sum to 1"),
    Wrong("transposed result", lambda a: rollout_learner(a).T, "transpose"),
]

RIGHT_ROLLOUTS = [
    Right("a loop", rollout_learner),
    Right("functools.reduce", rollout_reduce),
    Right("multi_dot in float64, A + I renormalised", rollout_multi_dot),
    Right("the course's", lambda a: attention_rollout(a)),
]


# ------------------------------------------------------------------------------------ referent share

def share_learner(weights, it_pos, right_pos, wrong_pos, *, column=False, argmax=False, count=False, compare=None):
    wins = 0
    for b in range(len(it_pos)):
        row = weights[b, :, it_pos[b]] if column else weights[b, it_pos[b]]
        if argmax:
            wins += int(row.argmax() == right_pos[b])
        elif compare is not None:
            wins += int(compare(row[right_pos[b]], row[wrong_pos[b]]))
        else:
            wins += int(row[right_pos[b]] > row[wrong_pos[b]])
    return torch.tensor(float(wins) if count else wins / len(it_pos))


def share_variant(**kwargs):
    return lambda *a: share_learner(*a, **kwargs)


def share_gather(weights, it_pos, right_pos, wrong_pos):
    rows = weights.gather(1, it_pos[:, None, None].expand(-1, 1, weights.shape[-1]))[:, 0]
    right, wrong = rows.gather(1, right_pos[:, None]), rows.gather(1, wrong_pos[:, None])
    return (right > wrong).double().mean()


WRONG_SHARES = [
    Wrong("a column", share_variant(column=True), "you read a column"),
    Wrong("argmax over the row", share_variant(argmax=True), "no argmax over the row"),
    Wrong("the count", share_variant(count=True), "not the count"),
    Wrong(">= counts ties", share_variant(compare=lambda r, w: r >= w), "a tie counted as a win"),
    Wrong("compared the wrong way", share_variant(compare=lambda r, w: r < w), "compared the wrong way"),
    Wrong("pairs across the batch", lambda w, i, r, x: (w[:, i, r] > w[:, i, x]).float().mean(),
          "paired every example"),
    Wrong("rows, then every example's nouns", lambda w, i, r, x: (w[torch.arange(len(i)), i][:, r]
          > w[torch.arange(len(i)), i][:, x]).float().mean(), "take one per example"),
    Wrong("mean of booleans", lambda w, i, r, x: (w[torch.arange(len(i)), i, r] > w[torch.arange(len(i)), i, x]).mean(),
          ".float().mean()"),
    Wrong("a Python float", lambda *a: float(reference_referent_share(*a)), "torch.Tensor"),
    Wrong("shape (1,)", lambda *a: reference_referent_share(*a).reshape(1), "expected a single number"),
    Wrong("share of the weight", lambda w, i, r, x: (w[torch.arange(len(i)), i, r] / (
        w[torch.arange(len(i)), i, r] + w[torch.arange(len(i)), i, x])).mean(), "values differ"),
]

RIGHT_SHARES = [
    Right("a loop", share_learner),
    Right("the reference", reference_referent_share),
    Right("gather, float64", share_gather),
    Right("sum / len", lambda w, i, r, x: (w[torch.arange(len(i)), i, r] > w[torch.arange(len(i)), i, x]).sum()
          / len(i)),
]


# ------------------------------------------------------------------------------------ best head

def best_head_learner(scores, *, swap=False, lowest=False, divide_by="heads"):
    flat = scores.flatten()
    index = int(flat.argmin() if lowest else flat.argmax())
    width = scores.shape[1] if divide_by == "heads" else scores.shape[0]
    layer, head = index // width, index % width
    return (head, layer) if swap else (layer, head)


def best_head_loops(scores, *, ge=False, heads_outer=False, start=None):
    best, where = start, (0, 0)
    pairs = [(l, h) for l in range(scores.shape[0]) for h in range(scores.shape[1])]
    if heads_outer:
        pairs.sort(key=lambda p: (p[1], p[0]))
    for layer, head in pairs:
        value = float(scores[layer, head])
        if best is None or (value >= best if ge else value > best):
            best, where = value, (layer, head)
    return where


WRONG_BEST_HEADS = [
    Wrong("swapped", lambda s: best_head_learner(s, swap=True), "came back swapped"),
    Wrong("argmin", lambda s: best_head_learner(s, lowest=True), "not argmin"),
    Wrong("divided by layers", lambda s: best_head_learner(s, divide_by="layers"), "divide by the number of heads"),
    Wrong(">= keeps the last maximum", lambda s: best_head_loops(s, ge=True), "kept the LAST maximum"),
    Wrong("heads in the outer loop", lambda s: best_head_loops(s, heads_outer=True), "searched head by head"),
    Wrong("starts from 0", lambda s: best_head_loops(s, start=0.0), "started from a best score of 0"),
    Wrong("true division", lambda s: (int(s.flatten().argmax()) / s.shape[1] // 1, int(s.flatten().argmax()) % s.shape[1]),
          "layer is a float"),
    Wrong("floats from divmod of a float", lambda s: divmod(float(s.flatten().argmax()), s.shape[1]), "is a float"),
    Wrong("tensors", lambda s: (s.flatten().argmax() // s.shape[1], s.flatten().argmax() % s.shape[1]),
          "layer is a tensor"),
    Wrong("one tensor", lambda s: torch.tensor(best_head_learner(s)), "returned a tensor"),
    Wrong("the flat index", lambda s: int(s.flatten().argmax()), "return a pair"),
    Wrong("forgot return", lambda s: None, "returned None"),
    Wrong("1-based", lambda s: tuple(i + 1 for i in best_head_learner(s)), "counted from 1"),
    Wrong("max over heads, then the last best layer", lambda s: (lambda v, i: (
        int(len(v) - 1 - v.flip(0).argmax()), int(i[len(v) - 1 - v.flip(0).argmax()])))(*s.max(1)), "on a tie"),
]

RIGHT_BEST_HEADS = [
    Right("argmax and divmod", best_head_learner),
    Right("loops with >", best_head_loops),
    Right("max per layer, then argmax", lambda s: (lambda v, i: (int(v.argmax()), int(i[v.argmax()])))(*s.max(1))),
    Right("torch.unravel_index", lambda s: tuple(int(t) for t in torch.unravel_index(s.argmax(), s.shape))),
    Right("divmod", lambda s: divmod(int(s.argmax()), s.shape[1])),
    Right("a list", lambda s: list(best_head_learner(s))),
    Right("numpy", lambda s: tuple(np.unravel_index(int(np.argmax(s.numpy())), s.shape))),
]


# ------------------------------------------------------------------------------------ flipped share

def flip_learner(clean, corrupted, patched, *, towards="corrupted", by="whole", clip=False, absolute=False):
    """How far the patch moved the logit difference, written step by step the way a learner might."""
    moved = clean - patched if towards == "corrupted" else patched - clean
    way = {"whole": clean - corrupted, "clean": clean, "corrupted": corrupted}[by]
    if absolute:
        moved, way = moved.abs(), way.abs()
    share = moved / way
    return share.clamp(0.0, 1.0) if clip else share


def flip_variant(**kwargs):
    return lambda *a: flip_learner(*a, **kwargs)


def flip_loop(clean, corrupted, patched):
    flat = [(float(c) - float(p)) / (float(c) - float(x))
            for c, x, p in zip(clean.flatten(), corrupted.flatten(), patched.flatten())]
    return torch.tensor(flat, dtype=clean.dtype).reshape(clean.shape)


WRONG_FLIPS = [
    Wrong("patched - clean on top", flip_variant(towards="clean"), "the sign is flipped"),
    Wrong("what is left of the clean answer", lambda c, x, p: (p - x) / (c - x), "how much of the clean answer is left"),
    Wrong("over the clean difference", flip_variant(by="clean"), "divided by the clean difference alone"),
    Wrong("over minus the corrupted difference", lambda c, x, p: (c - p) / (-x), "divided by the corrupted difference"),
    Wrong("clipped", flip_variant(clip=True), "clipped to [0, 1]"),
    Wrong("clipped below only, with torch.clip", lambda c, x, p: torch.clip((c - p) / (c - x), min=0),
          "clipped to [0, 1]"),
    Wrong("clipped above only, with torch.where", lambda c, x, p: torch.where((c - p) / (c - x) > 1, 1.0,
                                                                               (c - p) / (c - x)), "clipped to [0, 1]"),
    Wrong("absolute values", flip_variant(absolute=True), "absolute values"),
    Wrong("the ratio patched / corrupted", lambda c, x, p: p / x, "not the share of the way"),
    Wrong("the mean over the pairs", lambda c, x, p: ((c - p) / (c - x)).mean(), "shape"),
    Wrong("a list", lambda c, x, p: ((c - p) / (c - x)).tolist(), "list"),
    Wrong("forgot return", lambda c, x, p: None, "None"),
    # holdouts, written after the checker was finished
    Wrong("over corrupted - clean", lambda c, x, p: (c - p) / (x - c), "the sign is flipped"),
    Wrong("difference of ratios", lambda c, x, p: 1 - p / c, "divided by the clean difference alone"),
]

RIGHT_FLIPS = [
    Right("the formula", lambda c, x, p: (c - p) / (c - x)),
    Right("both signs turned", lambda c, x, p: (p - c) / (x - c)),
    Right("one minus what is left", lambda c, x, p: 1 - (p - x) / (c - x)),
    Right("torch.div in float64, back to float32", lambda c, x, p: torch.div(c.double() - p.double(),
                                                                             c.double() - x.double()).float()),
    Right("a loop over the elements", flip_loop),
    Right("float64 left as it is", lambda c, x, p: (c.double() - p.double()) / (c.double() - x.double())),
]


LIBRARY = {
    check_rollout: (WRONG_ROLLOUTS, RIGHT_ROLLOUTS),
    check_referent_share: (WRONG_SHARES, RIGHT_SHARES),
    check_best_head: (WRONG_BEST_HEADS, RIGHT_BEST_HEADS),
    check_flipped_share: (WRONG_FLIPS, RIGHT_FLIPS),
}


test_each_wrong_answer_fails_with_its_words, test_each_right_answer_passes = library_tests(LIBRARY)


@pytest.mark.parametrize("checker, mistakes", [(check_rollout, ROLLOUT_MISTAKES), (check_referent_share, SHARE_MISTAKES),
                                               (check_best_head, BEST_HEAD_MISTAKES),
                                               (check_flipped_share, FLIP_MISTAKES)],
                         ids=["rollout", "share", "best", "flip"])
def test_every_listed_mistake_is_diagnosed_with_its_own_hint(checker, mistakes):
    for mistake in mistakes:
        result = checker(mistake.fn)
        assert not result.passed and mistake.hint in result.line, (mistake.hint, result.line)


def test_best_head_messages_name_the_case_and_the_tie_rule():
    line = check_best_head(lambda s: best_head_loops(s, ge=True)).line
    assert "you returned (1, 2), expected (0, 1)" in line and "case 5 of 9" in line and "\n" not in line


def test_a_checker_given_a_value_instead_of_a_function_says_so():
    assert "pass the function itself" in check_best_head((0, 1)).line


def test_unattempted_exercises_say_so():
    def todo(*args):
        raise NotImplementedError()

    for checker in (check_rollout, check_referent_share, check_best_head, check_flipped_share):
        assert checker(todo).status == NOT_ATTEMPTED
