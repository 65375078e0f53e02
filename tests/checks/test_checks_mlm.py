"""Lesson 07's checkers catch what they claim to, each with its own hint.

Two libraries of wrong implementations:
1. every Mistake registered in course.checks.mlm, run through its checker,
   gets its own hint (so the cases tell the mistakes apart);
2. wrong solutions written the way a learner writes them (in-place edits, masked_fill, loops), each
   with the words its hint must contain.
Plus: the references and learner-style correct solutions pass; not attempting says so; a crash is one line.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from course.checks import mlm as cm
from course.checks.core import NOT_ATTEMPTED, PASSED
from course.mlm import apply_masking_rule, bidirectional_mask, mean_pool


pytestmark = pytest.mark.usefixtures("lenient_checks")


CHECKERS = [(cm.check_masking_rule, cm.MASKING_MISTAKES), (cm.check_bidirectional_mask, cm.MASK_MISTAKES),
            (cm.check_mean_pool, cm.POOL_MISTAKES), (cm.check_classification_head, cm.HEAD_MISTAKES)]
REGISTERED = [(checker, m) for checker, mistakes in CHECKERS for m in mistakes]


@pytest.mark.parametrize("checker, mistake", REGISTERED, ids=lambda x: getattr(x, "hint", getattr(x, "__name__", ""))[:40])
def test_every_registered_mistake_gets_its_own_hint(checker, mistake):
    result = checker(mistake.fn)
    assert not result.passed and mistake.hint in result.line, result.line
    assert "\n" not in result.line


# ------------------------------------------------------------------- learner-style masking rules

def masking_loop(ids, special, select_u, action_u, random_ids, mask_id, mask_prob=0.15):
    inputs, labels = ids.clone(), torch.full_like(ids, -100)
    for i in itertools.product(*[range(n) for n in ids.shape]):
        if special[i] or select_u[i] >= mask_prob:
            continue
        labels[i] = ids[i]
        if action_u[i] < 0.8:
            inputs[i] = mask_id
        elif action_u[i] < 0.9:
            inputs[i] = random_ids[i]
    return inputs, labels


def masking_inplace(ids, special, select_u, action_u, random_ids, mask_id, mask_prob=0.15):
    chosen = (select_u < mask_prob) & ~special
    labels = ids.clone()
    labels[~chosen] = -100
    ids[chosen & (action_u < 0.8)] = mask_id   # edits the caller's tensor
    return ids, labels


def masking_all_mask_fill(ids, special, select_u, action_u, random_ids, mask_id, mask_prob=0.15):
    chosen = (select_u < mask_prob) & ~special
    return ids.masked_fill(chosen, mask_id), ids.masked_fill(~chosen, -100)


def masking_specials(ids, special, select_u, action_u, random_ids, mask_id, mask_prob=0.15):
    chosen = select_u < mask_prob
    inputs = ids.clone()
    inputs[chosen & (action_u < 0.8)] = mask_id
    r = chosen & (action_u >= 0.8) & (action_u < 0.9)
    inputs[r] = random_ids[r]
    return inputs, torch.where(chosen, ids, -100)


def masking_float_labels(ids, special, select_u, action_u, random_ids, mask_id, mask_prob=0.15):
    inputs, labels = apply_masking_rule(ids, special, select_u, action_u, random_ids, mask_id, mask_prob)
    return inputs, labels.float()


@pytest.mark.parametrize("fn, words", [
    (masking_inplace, "changed its input in place"),
    (masking_all_mask_fill, "every chosen token became [MASK]"),
    (masking_specials, "special tokens were chosen"),
    (masking_float_labels, "labels has dtype torch.float32"),
])
def test_learner_style_wrong_masking_rules_are_named(fn, words):
    result = cm.check_masking_rule(fn)
    assert not result.passed and words in result.line, result.line


@pytest.mark.parametrize("fn", [apply_masking_rule, masking_loop])
def test_correct_masking_rules_pass(fn):
    assert cm.check_masking_rule(fn).status == PASSED


# ------------------------------------------------------------------- learner-style masks and pooling

def mask_broadcast_only(a):
    return a.bool()[:, None, None, :]          # right idea, but not expanded to [b, 1, s, s]


def mask_long(a):
    return a[:, None, None, :].expand(-1, 1, a.shape[1], -1)    # 0/1 integers, not booleans


def mask_from_eq_zero(a):
    return (a == 0)[:, None, None, :].expand(-1, 1, a.shape[1], -1)


def mask_ok(a):
    s = a.shape[1]
    return (a[:, None, :] == 1).unsqueeze(1).repeat(1, 1, s, 1)


@pytest.mark.parametrize("fn, words", [
    (mask_broadcast_only, "shape (3, 1, 1, 5), expected (3, 1, 5, 5)"),
    (mask_long, "dtype torch.int64, expected torch.bool"),
    (mask_from_eq_zero, "inverted"),
])
def test_learner_style_wrong_masks_are_named(fn, words):
    result = cm.check_bidirectional_mask(fn)
    assert not result.passed and words in result.line, result.line


def pool_loop(h, a):
    rows = []
    for b in range(h.shape[0]):
        n = int(a[b].sum())
        rows.append(h[b, :n].mean(0))           # padding sits at the end of each row
    return torch.stack(rows)


def pool_all(h, a):
    return h.sum(1) / h.shape[1]


def pool_no_keepdim_sum(h, a):
    m = a.unsqueeze(-1).float()
    return (h * m).sum(1)


@pytest.mark.parametrize("fn, words", [(pool_all, "padding was averaged in"), (pool_no_keepdim_sum, "a sum, not a mean")])
def test_learner_style_wrong_pooling_is_named(fn, words):
    result = cm.check_mean_pool(fn)
    assert not result.passed and words in result.line, result.line


def head_with_linear(h, wp, bp, wc, bc):
    return torch.nn.functional.linear(torch.tanh(torch.nn.functional.linear(h[:, 0], wp, bp)), wc, bc)


def head_with_probs(h, wp, bp, wc, bc):
    return torch.softmax(head_with_linear(h, wp, bp, wc, bc), dim=1)


def test_learner_style_heads():
    assert cm.check_classification_head(head_with_linear).status == PASSED
    assert "softmax applied" in cm.check_classification_head(head_with_probs).line


@pytest.mark.parametrize("checker, good", [(cm.check_bidirectional_mask, bidirectional_mask),
                                           (cm.check_bidirectional_mask, mask_ok),
                                           (cm.check_mean_pool, mean_pool), (cm.check_mean_pool, pool_loop),
                                           (cm.check_classification_head, cm.classification_head)])
def test_correct_solutions_pass(checker, good):
    assert checker(good).status == PASSED


@pytest.mark.parametrize("checker", [c for c, _ in CHECKERS])
def test_not_attempted_and_crashes_give_one_line(checker):
    def todo(*args):
        raise NotImplementedError()

    def crash(*args):
        raise RuntimeError("shapes do not match\nsecond line")

    assert checker(todo).status == NOT_ATTEMPTED
    line = checker(crash).line
    assert "RuntimeError: shapes do not match" in line and "\n" not in line


def test_strict_mode_raises_on_a_wrong_answer(monkeypatch):
    from course.checks import ExerciseFailed

    monkeypatch.setenv("COURSE_STRICT_CHECKS", "1")
    with pytest.raises(ExerciseFailed, match="special tokens"):
        cm.check_masking_rule(masking_specials)
