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
from answer_library import Right, Wrong, library_tests
from course.checks.core import NOT_ATTEMPTED
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


def masking_by_index(ids, special, select_u, action_u, random_ids, mask_id, mask_prob=0.15):
    chosen = (select_u < mask_prob) & ~special
    inputs, labels = ids.clone(), ids.clone()
    labels[~chosen] = -100
    inputs[chosen & (action_u < 0.8)] = mask_id
    band = chosen & (action_u >= 0.8) & (action_u < 0.9)
    inputs[band] = random_ids[band]
    return inputs, labels


def masking_masked_fill(ids, special, select_u, action_u, random_ids, mask_id, mask_prob=0.15):
    chosen = select_u.lt(mask_prob).logical_and(special.logical_not())
    r = action_u
    inputs = ids.masked_fill(chosen & (r < 0.8), mask_id)
    inputs = torch.where(chosen & (0.8 <= r) & (r < 0.9), random_ids, inputs)
    return inputs, ids.masked_fill(~chosen, -100)


def masking_variant(*, choose=lambda u, p: u < p, mask=lambda r: r < 0.8, band=lambda r: (r >= 0.8) & (r < 0.9),
                    specials=True, label_fill=-100, label_source="ids", labels_at="chosen", mask_id_of=None,
                    random_of=None):
    """A learner's rule with one piece changed."""
    def rule(ids, special, select_u, action_u, random_ids, mask_id, mask_prob=0.15):
        chosen = choose(select_u, mask_prob)
        if specials:
            chosen = chosen & ~special
        to_mask = chosen & mask(action_u)
        to_random = chosen & band(action_u) & ~to_mask
        rnd = random_ids if random_of is None else random_of(ids)
        inputs = torch.where(to_mask, torch.full_like(ids, mask_id if mask_id_of is None else mask_id_of), ids)
        inputs = torch.where(to_random, rnd, inputs)
        where = {"chosen": chosen, "masked": to_mask, "all": torch.ones_like(chosen)}[labels_at]
        source = inputs if label_source == "inputs" else ids
        return inputs, torch.where(where, source, torch.full_like(ids, label_fill))
    return rule


def masking_inplace(ids, special, select_u, action_u, random_ids, mask_id, mask_prob=0.15):
    chosen = (select_u < mask_prob) & ~special
    labels = ids.clone()
    labels[~chosen] = -100
    ids[chosen & (action_u < 0.8)] = mask_id   # edits the caller's tensor
    return ids, labels


def masking_float_labels(ids, special, select_u, action_u, random_ids, mask_id, mask_prob=0.15):
    inputs, labels = apply_masking_rule(ids, special, select_u, action_u, random_ids, mask_id, mask_prob)
    return inputs, labels.float()


WRONG_MASKING = [
    Wrong("edits ids in place", masking_inplace, "changed its input in place"),
    Wrong("every chosen token masked", masking_variant(mask=lambda r: r < 2, band=lambda r: r > 2),
          "every chosen token became [MASK]"),
    Wrong("specials chosen", masking_variant(specials=False), "special tokens were chosen"),
    Wrong("float labels", masking_float_labels, "labels has dtype torch.float32"),
    Wrong("labels everywhere", masking_variant(labels_at="all"), "labels must be -100"),
    Wrong("labels 0 elsewhere", masking_variant(label_fill=0), "labels hold 0"),
    Wrong("labels only at [MASK]", masking_variant(labels_at="masked"), "labels only at the [MASK] positions"),
    Wrong("labels from the corrupted inputs", masking_variant(label_source="inputs"), "ORIGINAL ids"),
    Wrong("chosen above the threshold", masking_variant(choose=lambda u, p: u > 1 - p), "wrong comparison"),
    Wrong("chosen with u >= p", masking_variant(choose=lambda u, p: u >= p), "wrong comparison"),
    Wrong("0.15 hard-coded", masking_variant(choose=lambda u, p: u < 0.15), "hard-coded as 0.15"),
    Wrong("<= mask_prob", masking_variant(choose=lambda u, p: u <= p), "select_u equals mask_prob exactly"),
    Wrong("<= 0.8 for [MASK]", masking_variant(mask=lambda r: r <= 0.8), "action_u exactly 0.8 became [MASK]"),
    Wrong("> 0.8 for the random band", masking_variant(band=lambda r: (r > 0.8) & (r < 0.9)),
          "action_u exactly 0.8 was left unchanged"),
    Wrong("<= 0.9 for the random band", masking_variant(band=lambda r: (r >= 0.8) & (r <= 0.9)),
          "action_u exactly 0.9 got a random word"),
    Wrong("random and unchanged swapped", masking_variant(band=lambda r: r >= 0.9), "random and unchanged swapped"),
    Wrong("no token left unchanged", masking_variant(band=lambda r: r >= 0.8), "no token was left unchanged"),
    Wrong("random band 0.85-0.95", masking_variant(band=lambda r: (r >= 0.85) & (r < 0.95)), "wrong only at"),
    Wrong("[MASK] id hard-coded as 103", masking_variant(mask_id_of=103), "mask_id argument"),
    Wrong("its own random words", masking_variant(random_of=lambda ids: (ids * 7 + 3) % 50 + 5),
          "0.8 <= action_u < 0.9"),
    Wrong("random words everywhere in the band", lambda ids, sp, su, au, rid, m, p=0.15: (
        torch.where((au >= 0.8) & (au < 0.9) & ~sp, rid, apply_masking_rule(ids, sp, su, au, rid, m, p)[0]),
        apply_masking_rule(ids, sp, su, au, rid, m, p)[1]), "tokens that were not chosen"),
]

RIGHT_MASKING = [
    Right("the course's", apply_masking_rule),
    Right("a loop over positions", masking_loop),
    Right("index assignment", masking_by_index),
    Right("masked_fill and where", masking_masked_fill),
]


# ------------------------------------------------------------------- learner-style masks

def mask_ok(a):
    s = a.shape[1]
    return (a[:, None, :] == 1).unsqueeze(1).repeat(1, 1, s, 1)


def mask_loop(a):
    b, s = a.shape
    out = torch.zeros(b, 1, s, s, dtype=torch.bool)
    for i in range(b):
        for j in range(s):
            if a[i, j]:
                out[i, 0, :, j] = True
    return out


def mask_from_lengths(a):
    lengths = a.sum(1)
    keys = torch.arange(a.shape[1])[None, :] < lengths[:, None]
    return keys[:, None, None, :].expand(-1, 1, a.shape[1], -1)


WRONG_MASKS = [
    Wrong("not expanded", lambda a: a.bool()[:, None, None, :], "not expanded"),
    Wrong("long, not bool", lambda a: a[:, None, None, :].expand(-1, 1, a.shape[1], -1), "dtype torch.int64"),
    Wrong("float, not bool", lambda a: a.float()[:, None, None, :].expand(-1, 1, a.shape[1], -1), "dtype torch.float32"),
    Wrong("== 0", lambda a: (a == 0)[:, None, None, :].expand(-1, 1, a.shape[1], -1), "inverted"),
    Wrong("on the queries", lambda a: (a == 1)[:, None, :, None].expand(-1, 1, -1, a.shape[1]), "on the queries"),
    Wrong("queries and keys", lambda a: (a[:, :, None] * a[:, None, :]).bool().unsqueeze(1), "padded queries see nothing"),
    Wrong("causal", lambda a: a.bool()[:, None, None, :] & torch.ones(a.shape[1], a.shape[1]).tril().bool(),
          "causal triangle"),
    Wrong("all True", lambda a: torch.ones(a.shape[0], 1, a.shape[1], a.shape[1], dtype=torch.bool), "not masked at all"),
    Wrong("from the lengths", mask_from_lengths, "built from the lengths"),
    Wrong("no head axis", lambda a: a.bool()[:, None, :].expand(-1, a.shape[1], -1), "head axis is missing"),
    Wrong("lengths via argmin", lambda a: (torch.arange(a.shape[1]) < torch.where(
        a.all(1), a.shape[1], a.argmin(1))[:, None])[:, None, None, :].expand(-1, 1, a.shape[1], -1),
          "padded on the LEFT"),
]

RIGHT_MASKS = [
    Right("the course's", bidirectional_mask),
    Right("repeat", mask_ok),
    Right("a loop", mask_loop),
    Right("view and expand", lambda a: a.bool().view(a.shape[0], 1, 1, -1).expand(-1, -1, a.shape[1], -1)),
    Right("& with ones", lambda a: (a > 0)[:, None, None, :] & torch.ones(1, 1, a.shape[1], 1, dtype=torch.bool)),
]


# ------------------------------------------------------------------- learner-style pooling

def pool_loop(h, a):
    rows = []
    for b in range(h.shape[0]):
        rows.append(h[b][a[b].bool()].mean(0))
    return torch.stack(rows)


def pool_first_n(h, a):
    rows = []
    for b in range(h.shape[0]):
        n = int(a[b].sum())
        rows.append(h[b, :n].mean(0))           # assumes the padding sits at the end of each row
    return torch.stack(rows)


WRONG_POOLS = [
    Wrong("plain mean", lambda h, a: h.sum(1) / h.shape[1], "padding was averaged in"),
    Wrong("masked sum", lambda h, a: (h * a.unsqueeze(-1).float()).sum(1), "a sum, not a mean"),
    Wrong("divided by seq", lambda h, a: (h * a[..., None]).sum(1) / a.shape[1], "divided by the padded length"),
    Wrong("[CLS]", lambda h, a: h[:, 0, :], "[CLS] vector"),
    Wrong("mask inverted", lambda h, a: (h * (a == 0)[..., None]).sum(1) / (a == 0).sum(1, keepdim=True),
          "mask is inverted"),
    Wrong("first n positions", pool_first_n, "padded on the left"),
    Wrong("count without keepdim", lambda h, a: (h * a[..., None]).sum(1) / a.sum(1), "keepdim=True"),
    Wrong("count of the batch", lambda h, a: (h * a[..., None]).sum(1) / a.sum(), "whole batch"),
    Wrong("max pooling", lambda h, a: h.masked_fill(~a.bool()[..., None], -1e9).max(1).values, "values differ"),
]

RIGHT_POOLS = [
    Right("the course's", mean_pool),
    Right("a loop with a boolean index", pool_loop),
    Right("einsum", lambda h, a: torch.einsum("bsd,bs->bd", h, a.float()) / a.sum(1, keepdim=True)),
    Right("float64 inside", lambda h, a: ((h.double() * a[..., None]).sum(1) / a.sum(1, keepdim=True)).float()),
    Right("masked_fill then sum", lambda h, a: h.masked_fill(a[..., None] == 0, 0.0).sum(1)
          / a.sum(-1).unsqueeze(-1).clamp(min=1)),
]


# ------------------------------------------------------------------- learner-style heads

def head_with_linear(h, wp, bp, wc, bc):
    return torch.nn.functional.linear(torch.tanh(torch.nn.functional.linear(h[:, 0], wp, bp)), wc, bc)


WRONG_HEADS = [
    Wrong("softmax", lambda *a: torch.softmax(head_with_linear(*a), dim=1), "softmax applied"),
    Wrong("last position", lambda h, wp, bp, wc, bc: head_with_linear(h[:, [-1]], wp, bp, wc, bc), "LAST position"),
    Wrong("mean of positions", lambda h, wp, bp, wc, bc: head_with_linear(h.mean(1, keepdim=True), wp, bp, wc, bc),
          "averaged every position"),
    Wrong("no tanh", lambda h, wp, bp, wc, bc: (h[:, 0] @ wp.T + bp) @ wc.T + bc, "tanh is missing"),
    Wrong("ReLU pooler", lambda h, wp, bp, wc, bc: torch.relu(h[:, 0] @ wp.T + bp) @ wc.T + bc, "ReLU instead of tanh"),
    Wrong("w_pool not transposed", lambda h, wp, bp, wc, bc: torch.tanh(h[:, 0] @ wp + bp) @ wc.T + bc,
          "w_pool not transposed"),
    Wrong("w_cls not transposed", lambda h, wp, bp, wc, bc: torch.tanh(h[:, 0] @ wp.T + bp) @ wc + bc, "[out, in]"),
    Wrong("hidden[0]", lambda h, wp, bp, wc, bc: torch.tanh(h[0] @ wp.T + bp) @ wc.T + bc, "first SENTENCE"),
    Wrong("hidden[:, :1]", lambda h, wp, bp, wc, bc: torch.tanh(h[:, :1] @ wp.T + bp) @ wc.T + bc,
          "position axis was kept"),
    Wrong("no biases", lambda h, wp, bp, wc, bc: torch.tanh(h[:, 0] @ wp.T) @ wc.T, "biases are missing"),
    Wrong("tanh on the logits", lambda *a: torch.tanh(head_with_linear(*a)), "tanh applied to the logits"),
    Wrong("sigmoid pooler", lambda h, wp, bp, wc, bc: torch.sigmoid(h[:, 0] @ wp.T + bp) @ wc.T + bc, "values differ"),
]

RIGHT_HEADS = [
    Right("the course's", cm.classification_head),
    Right("F.linear", head_with_linear),
    Right("einsum", lambda h, wp, bp, wc, bc: torch.einsum("bd,cd->bc", torch.tanh(torch.einsum(
        "bd,ed->be", h[:, 0], wp) + bp), wc) + bc),
    Right("nn.Linear modules", lambda h, wp, bp, wc, bc: head_with_modules(h, wp, bp, wc, bc)),
]


def head_with_modules(h, wp, bp, wc, bc):
    pool, cls = torch.nn.Linear(wp.shape[1], wp.shape[0]), torch.nn.Linear(wc.shape[1], wc.shape[0])
    with torch.no_grad():
        pool.weight.copy_(wp), pool.bias.copy_(bp), cls.weight.copy_(wc), cls.bias.copy_(bc)
        return cls(torch.tanh(pool(h[:, 0])))


LIBRARY = {
    cm.check_masking_rule: (WRONG_MASKING, RIGHT_MASKING),
    cm.check_bidirectional_mask: (WRONG_MASKS, RIGHT_MASKS),
    cm.check_mean_pool: (WRONG_POOLS, RIGHT_POOLS),
    cm.check_classification_head: (WRONG_HEADS, RIGHT_HEADS),
}


test_each_wrong_answer_fails_with_its_words, test_each_right_answer_passes = library_tests(LIBRARY)


def test_the_masking_cases_hold_the_boundaries_the_rule_defines():
    ids, special, select_u, action_u, *_ = cm._cases()[0]
    chosen = (select_u < 0.15) & ~special
    assert bool(((select_u == torch.tensor(0.15)) & ~special).any())
    assert bool((chosen & (action_u == torch.tensor(0.8))).any()) and bool((chosen & (action_u == torch.tensor(0.9))).any())


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
        cm.check_masking_rule(masking_variant(specials=False))
