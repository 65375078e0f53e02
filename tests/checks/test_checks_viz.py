"""Lesson 10's checkers: each wrong implementation, written as a learner would, gets its own hint."""
from __future__ import annotations

import pytest
import torch

from checker_assertions import assert_fails_with
from course.checks.core import NOT_ATTEMPTED
from course.checks.viz import check_best_head, check_referent_share, check_rollout

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


@pytest.mark.parametrize("kwargs, hint", [
    (dict(residual=False), "the residual is missing"),
    (dict(order="earlier-left"), "wrong order"),
    (dict(layers="last"), "only the last layer"),
    (dict(combine="max"), "combined with max"),
])
def test_rollout_checker_names_each_mistake(kwargs, hint):
    assert_fails_with(check_rollout(lambda a: rollout_learner(a, **kwargs)), hint)


def test_rollout_checker_accepts_a_correct_loop():
    assert check_rollout(rollout_learner).passed


# ------------------------------------------------------------------------------------ referent share

def share_learner(weights, it_pos, right_pos, wrong_pos, *, column=False, argmax=False, count=False):
    wins = 0
    for b in range(len(it_pos)):
        row = weights[b, :, it_pos[b]] if column else weights[b, it_pos[b]]
        if argmax:
            wins += int(row.argmax() == right_pos[b])
        else:
            wins += int(row[right_pos[b]] > row[wrong_pos[b]])
    return torch.tensor(float(wins) if count else wins / len(it_pos))


@pytest.mark.parametrize("kwargs, hint", [
    (dict(column=True), "you read a column"),
    (dict(argmax=True), "no argmax over the row"),
    (dict(count=True), "not the count"),
])
def test_referent_share_checker_names_each_mistake(kwargs, hint):
    assert_fails_with(check_referent_share(lambda *a: share_learner(*a, **kwargs)), hint)


def test_referent_share_checker_accepts_a_correct_loop():
    assert check_referent_share(share_learner).passed


# ------------------------------------------------------------------------------------ best head

def best_head_learner(scores, *, swap=False, lowest=False, divide_by="heads"):
    flat = scores.flatten()
    index = int(flat.argmin() if lowest else flat.argmax())
    width = scores.shape[1] if divide_by == "heads" else scores.shape[0]
    layer, head = index // width, index % width
    return (head, layer) if swap else (layer, head)


@pytest.mark.parametrize("kwargs, hint", [
    (dict(swap=True), "came back swapped"),
    (dict(lowest=True), "not argmin"),
    (dict(divide_by="layers"), "divide by the number of heads"),
])
def test_best_head_checker_names_each_mistake(kwargs, hint):
    assert_fails_with(check_best_head(lambda s: best_head_learner(s, **kwargs)), hint)


def test_best_head_checker_accepts_a_correct_version_and_loops():
    assert check_best_head(best_head_learner).passed

    def by_loops(scores):
        best = max((float(scores[i, j]), -i, -j) for i in range(scores.shape[0]) for j in range(scores.shape[1]))
        return -best[1], -best[2]

    assert check_best_head(by_loops).passed


def test_unattempted_exercises_say_so():
    def todo(*args):
        raise NotImplementedError()

    for checker in (check_rollout, check_referent_share, check_best_head):
        assert checker(todo).status == NOT_ATTEMPTED
