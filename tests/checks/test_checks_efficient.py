"""The lesson-11 checkers catch what they claim to, each mistake with its own hint."""
from __future__ import annotations

import math

import pytest
import torch

from course.checks import efficient as ce
from course.checks.core import Mistake
from course.efficient import kv_append, online_softmax_update, sliding_window_mask
from answer_library import Right, Wrong, library_tests


pytestmark = pytest.mark.usefixtures("lenient_checks")


def tiled_ok(q, k, v, block_size):
    scale = 1.0 / math.sqrt(q.shape[-1])
    m = torch.full((*q.shape[:-1], 1), float("-inf"))
    l, acc = torch.zeros_like(m), torch.zeros(*q.shape[:-1], v.shape[-1])
    for start in range(0, k.shape[-2], block_size):
        s = q @ k[..., start:start + block_size, :].transpose(-2, -1) * scale
        m, l, acc = online_softmax_update(m, l, acc, s, v[..., start:start + block_size, :])
    return acc / l


def update_handwritten(m, l, acc, s, v):
    """A correct solution in another style (no -inf guard: fine, the first block always has a finite max)."""
    m_new = torch.max(m, s.max(dim=-1, keepdim=True).values)
    corr = torch.exp(m - m_new)
    p = torch.exp(s - m_new)
    return m_new, corr * l + p.sum(-1, keepdim=True), corr * acc + p @ v


def window_handwritten(n, w):
    return torch.ones(n, n, dtype=torch.bool).triu(-w).tril(w)


CHECKERS = [
    (ce.check_online_softmax_update, ce.UPDATE_MISTAKES, [online_softmax_update, update_handwritten]),
    (ce.check_tiled_attention, ce.TILED_MISTAKES, [tiled_ok]),
    (ce.check_sliding_window_mask, ce.WINDOW_MISTAKES, [sliding_window_mask, window_handwritten]),
    (ce.check_kv_append, ce.KV_MISTAKES, [kv_append]),
]


@pytest.mark.parametrize("checker, mistakes, correct", CHECKERS, ids=lambda x: getattr(x, "__name__", ""))
def test_correct_solutions_pass(checker, mistakes, correct):
    for fn in correct:
        result = checker(fn)
        assert result.passed, result.line


MISTAKE_CASES = [(checker, m) for checker, mistakes, _ in CHECKERS for m in mistakes]


@pytest.mark.parametrize("checker, mistake", MISTAKE_CASES,
                         ids=[f"{c.__name__}-{i}" for i, (c, _) in enumerate(MISTAKE_CASES)])
def test_each_registered_mistake_gets_its_own_hint(checker, mistake: Mistake):
    result = checker(mistake.fn)
    assert not result.passed
    assert mistake.hint in result.line, result.line
    assert "\n" not in result.line


def test_kv_append_wrong_axis_written_by_hand_is_named_by_shape():
    def append_last_axis(ck, cv, k, v):
        return torch.cat((ck, k), -1), torch.cat((cv, v), -1)
    line = ce.check_kv_append(append_last_axis).line
    assert "head-size axis" in line and "shape" in line


# ------------------------------------------------------------------------------------ learner libraries

def update_variant(*, shift="new", alpha="down", rescale_l=True, rescale_acc=True, row_max=True, keep_sum=True):
    def update(m, l, acc, s, v):
        block_max = s.amax(dim=-1, keepdim=True) if row_max else s.amax(dim=(-2, -1), keepdim=True)
        m_new = torch.maximum(m, block_max)
        a = torch.exp(m - m_new) if alpha == "down" else torch.exp(m_new - m)
        p = torch.exp(s - {"new": m_new, "old": m, "block": block_max, "none": 0.0}[shift])
        total = p.sum(dim=-1, keepdim=keep_sum)
        return (m_new, (a * l if rescale_l else l) + total, (a * acc if rescale_acc else acc) + p @ v)
    return update


def update_unshifted(m, l, acc, s, v):
    """exp(s) * exp(-m_new): equal on paper, overflows for scores above 88."""
    m_new = torch.maximum(m, s.amax(-1, keepdim=True))
    alpha = torch.exp(m) / torch.exp(m_new)
    p = torch.exp(s) * torch.exp(-m_new)
    return m_new, alpha * l + p.sum(-1, keepdim=True), alpha * acc + p @ v


def update_float64(m, l, acc, s, v):
    m64, s64 = m.double(), s.double()
    m_new = torch.maximum(m64, s64.max(-1, keepdim=True).values)
    alpha = torch.exp(m64 - m_new)
    p = torch.exp(s64 - m_new)
    return m_new.float(), (alpha * l + p.sum(-1, keepdim=True)).float(), (alpha * acc + p @ v.double()).float()


def update_einsum(m, l, acc, s, v):
    m_new = torch.where(s.amax(-1, keepdim=True) > m, s.amax(-1, keepdim=True), m)
    alpha = (m - m_new).exp()
    p = (s - m_new).exp()
    return m_new, alpha * l + torch.einsum("...qb->...q", p)[..., None], alpha * acc + torch.einsum("...qb,...bd->...qd", p, v)


WRONG_UPDATES = [
    Wrong("no rescaling", update_variant(rescale_l=False, rescale_acc=False), "not rescaled"),
    Wrong("l rescaled, acc not", update_variant(rescale_acc=False), "l is rescaled but acc is not"),
    Wrong("acc rescaled, l not", update_variant(rescale_l=False), "acc is rescaled but l is not"),
    Wrong("block's own max in p", update_variant(shift="block"), "the block's own maximum"),
    Wrong("alpha upside down", update_variant(alpha="up"), "upside down"),
    Wrong("old max in p", update_variant(shift="old"), "OLD maximum"),
    Wrong("max of the whole block", update_variant(row_max=False), "maximum of the whole block"),
    Wrong("sum without keepdim", update_variant(keep_sum=False), "keepdim=True"),
    Wrong("no shift at all", update_variant(shift="none"), "not shifted"),
    Wrong("exp(s) * exp(-m_new)", update_unshifted, "overflows above 88"),
    Wrong("max without keepdim", lambda m, l, acc, s, v: (torch.maximum(m, s.amax(-1)),) * 3, "keepdim=True"),
    Wrong("returned the block max as m", lambda m, l, acc, s, v: (s.amax(-1, keepdim=True),) + tuple(
        online_softmax_update(m, l, acc, s, v)[1:]), "not the running maximum"),
    # A learner's "guard" against -inf that starts the first block's maximum at 0 (found by a reviewer).
    Wrong("-inf start replaced by 0", lambda m, l, acc, s, v: online_softmax_update(
        torch.where(torch.isinf(m), torch.zeros_like(m), m), l, acc, s, v), "started at 0 instead of -inf"),
]

RIGHT_UPDATES = [
    Right("the course's", online_softmax_update),
    Right("by hand, no -inf guard", update_handwritten),
    Right("float64 inside", update_float64),
    Right("einsum and where", update_einsum),
]


def tiled_variant(*, init_m=float("-inf"), restart=False, scale=None, blocks=None):
    def tiled(q, k, v, block_size):
        sc = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale(q.shape[-1])
        empty = (torch.full((*q.shape[:-1], 1), init_m), torch.zeros(*q.shape[:-1], 1),
                 torch.zeros(*q.shape[:-1], v.shape[-1]))
        m, l, acc = empty
        n = k.shape[-2]
        for start, end in (blocks(n, block_size) if blocks else
                           [(i, i + block_size) for i in range(0, n, block_size)]):
            if restart:
                m, l, acc = empty
            s = q @ k[..., start:end, :].transpose(-2, -1) * sc
            m, l, acc = online_softmax_update(m, l, acc, s, v[..., start:end, :])
        return acc / l
    return tiled


def tiled_split(q, k, v, block_size):
    m = torch.full((*q.shape[:-1], 1), -torch.inf)
    l, acc = torch.zeros_like(m), q.new_zeros(*q.shape[:-1], v.shape[-1])
    for kb, vb in zip(k.split(block_size, dim=-2), v.split(block_size, dim=-2)):
        m, l, acc = online_softmax_update(m, l, acc, q @ kb.mT / q.shape[-1] ** 0.5, vb)
    return acc / l


def tiled_while_float64(q, k, v, block_size):
    q64, k64, v64 = q.double(), k.double(), v.double()
    m = torch.full((*q.shape[:-1], 1), float("-inf"), dtype=torch.float64)
    l, acc = torch.zeros_like(m), torch.zeros(*q.shape[:-1], v.shape[-1], dtype=torch.float64)
    start = 0
    while start < k.shape[-2]:
        s = q64 @ k64[..., start:start + block_size, :].transpose(-2, -1) / math.sqrt(q.shape[-1])
        m, l, acc = online_softmax_update(m, l, acc, s, v64[..., start:start + block_size, :])
        start += block_size
    return (acc / l).float()


def tiled_inline(q, k, v, block_size):
    m = torch.full((*q.shape[:-1], 1), float("-inf"))
    l, acc = torch.zeros_like(m), torch.zeros(*q.shape[:-1], v.shape[-1])
    for start in range(0, k.shape[-2], block_size):
        s = torch.einsum("...qd,...kd->...qk", q, k[..., start:start + block_size, :]) / math.sqrt(q.shape[-1])
        m_new = torch.maximum(m, s.amax(-1, keepdim=True))
        p, alpha = torch.exp(s - m_new), torch.exp(m - m_new)
        l, acc = alpha * l + p.sum(-1, keepdim=True), alpha * acc + p @ v[..., start:start + block_size, :]
        m = m_new
    return acc / l


WRONG_TILED = [
    Wrong("no final division", lambda q, k, v, b: _undivided(q, k, v, b), "final division"),
    Wrong("blocks one key short", tiled_variant(blocks=lambda n, b: [(i, i + b - 1) for i in range(0, n, b)]),
          "one key short"),
    Wrong("the partial block skipped", tiled_variant(blocks=lambda n, b: [(i, i + b) for i in range(0, n - b + 1, b)]),
          "last block is skipped"),
    Wrong("n // block_size blocks", tiled_variant(blocks=lambda n, b: [(i * b, i * b + b) for i in range(n // b)]),
          "last block is skipped"),
    Wrong("starts at key 1", tiled_variant(blocks=lambda n, b: [(i, i + b) for i in range(1, n, b)]), "first key"),
    Wrong("no scale", tiled_variant(scale=lambda d: 1.0), "not scaled"),
    Wrong("divided by d", tiled_variant(scale=lambda d: 1.0 / d), "divided by d"),
    Wrong("state restarted each block", tiled_variant(restart=True), "state restarts"),
    Wrong("m starts at 0", tiled_variant(init_m=0.0), "start m at -inf"),
]


def _undivided(q, k, v, b):
    m = torch.full((*q.shape[:-1], 1), float("-inf"))
    l, acc = torch.zeros_like(m), torch.zeros(*q.shape[:-1], v.shape[-1])
    for start in range(0, k.shape[-2], b):
        s = q @ k[..., start:start + b, :].transpose(-2, -1) / math.sqrt(q.shape[-1])
        m, l, acc = online_softmax_update(m, l, acc, s, v[..., start:start + b, :])
    return acc


RIGHT_TILED = [
    Right("the lesson's loop", tiled_ok),
    Right("torch.split", tiled_split),
    Right("a while loop in float64", tiled_while_float64),
    Right("the update written inline, einsum", tiled_inline),
]


def window_loop(n, w):
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(max(0, i - w), min(n, i + w + 1)):
            mask[i, j] = True
    return mask


WRONG_WINDOWS = [
    Wrong("causal window", lambda n, w: torch.ones(n, n, dtype=torch.bool).tril() & ~torch.ones(n, n, dtype=torch.bool).tril(-w - 1),
          "one-sided"),
    Wrong("keys to the right only", lambda n, w: torch.ones(n, n, dtype=torch.bool).triu() & torch.ones(n, n, dtype=torch.bool).tril(w),
          "one-sided"),
    Wrong("< w", lambda n, w: (torch.arange(n)[:, None] - torch.arange(n)).abs() < w, "off by one"),
    Wrong("<= w + 1", lambda n, w: (torch.arange(n)[:, None] - torch.arange(n)).abs() <= w + 1, "off by one"),
    Wrong("inverted", lambda n, w: (torch.arange(n)[:, None] - torch.arange(n)).abs() > w, "inverted"),
    Wrong("w in total", lambda n, w: (torch.arange(n)[:, None] - torch.arange(n)).abs() <= w // 2, "EACH side"),
    Wrong("no diagonal", lambda n, w: ((torch.arange(n)[:, None] - torch.arange(n)).abs() <= w) & ~torch.eye(n, dtype=torch.bool),
          "token itself is left out"),
    Wrong("long", lambda n, w: ((torch.arange(n)[:, None] - torch.arange(n)).abs() <= w).long(), "dtype"),
    Wrong("triu/tril swapped", lambda n, w: torch.ones(n, n, dtype=torch.bool).tril(-w).triu(w), "all False"),
    Wrong("left side one short", lambda n, w: torch.ones(n, n, dtype=torch.bool).triu(-w + 1).tril(w), "on the left"),
    Wrong("min(w, n) clamp", lambda n, w: (torch.arange(n)[:, None] - torch.arange(n)).abs() <= min(w, n - 2),
          "|i - j| ="),
]

RIGHT_WINDOWS = [
    Right("the course's", sliding_window_mask),
    Right("triu and tril", window_handwritten),
    Right("loops", window_loop),
    Right("two comparisons", lambda n, w: (torch.arange(n)[None, :] >= torch.arange(n)[:, None] - w)
          & (torch.arange(n)[None, :] <= torch.arange(n)[:, None] + w)),
]


WRONG_KVS = [
    Wrong("last axis", lambda ck, cv, k, v: (torch.cat((ck, k), -1), torch.cat((cv, v), -1)), "head-size axis"),
    Wrong("heads axis", lambda ck, cv, k, v: (torch.cat((ck, k), 1), torch.cat((cv, v), 1)), "heads axis"),
    Wrong("batch axis", lambda ck, cv, k, v: (torch.cat((ck, k)), torch.cat((cv, v))), "batch axis"),
    Wrong("overwritten", lambda ck, cv, k, v: (k.clone(), v.clone()), "overwritten"),
    Wrong("new first", lambda ck, cv, k, v: (torch.cat((k, ck), 2), torch.cat((v, cv), 2)), "put first"),
    Wrong("k and v swapped", lambda ck, cv, k, v: (torch.cat((cv, v), 2), torch.cat((ck, k), 2)), "swapped"),
    Wrong("stacked", lambda ck, cv, k, v: (torch.stack((ck, k), 2), torch.stack((cv, v), 2)), "torch.stack"),
    Wrong("keys with values", lambda ck, cv, k, v: (torch.cat((ck, cv), 2), torch.cat((k, v), 2)),
          "joined with the values"),
    Wrong("only the keys", lambda ck, cv, k, v: torch.cat((ck, k), 2), "returned"),
]

RIGHT_KVS = [
    Right("the course's", kv_append),
    Right("dim=2", lambda ck, cv, k, v: (torch.cat([ck, k], dim=2), torch.cat([cv, v], dim=2))),
    Right("torch.concat, a list", lambda ck, cv, k, v: [torch.concat((ck, k), -2), torch.concat((cv, v), -2)]),
    Right("preallocated", lambda ck, cv, k, v: _preallocated(ck, cv, k, v)),
]


def _preallocated(ck, cv, k, v):
    t, s = ck.shape[-2], k.shape[-2]
    keys = ck.new_empty(*ck.shape[:-2], t + s, ck.shape[-1])
    values = cv.new_empty(*cv.shape[:-2], t + s, cv.shape[-1])
    keys[..., :t, :], keys[..., t:, :] = ck, k
    values[..., :t, :], values[..., t:, :] = cv, v
    return keys, values


LIBRARY = {
    ce.check_online_softmax_update: (WRONG_UPDATES, RIGHT_UPDATES),
    ce.check_tiled_attention: (WRONG_TILED, RIGHT_TILED),
    ce.check_sliding_window_mask: (WRONG_WINDOWS, RIGHT_WINDOWS),
    ce.check_kv_append: (WRONG_KVS, RIGHT_KVS),
}


test_each_wrong_answer_fails_with_its_words, test_each_right_answer_passes = library_tests(LIBRARY)


def test_the_update_cases_overflow_exp_without_the_shift():
    assert max(float(case[3].max()) for case in ce._update_cases()) > 88


def test_not_attempted_and_exceptions_give_one_line():
    def todo(*args):
        raise NotImplementedError()

    def broken(*args):
        raise IndexError("oops")
    for checker, _, _ in CHECKERS:
        assert "not attempted" in checker(todo).line
        assert "raised IndexError" in checker(broken).line


def test_window_mask_with_wrong_dtype_is_reported():
    line = ce.check_sliding_window_mask(lambda n, w: sliding_window_mask(n, w).float()).line
    assert line.startswith("✗") and "dtype" in line


def test_strict_mode_raises(monkeypatch):
    from course.checks import ExerciseFailed
    monkeypatch.setenv("COURSE_STRICT_CHECKS", "1")
    with pytest.raises(ExerciseFailed):
        ce.check_sliding_window_mask(lambda n, w: ~sliding_window_mask(n, w))
