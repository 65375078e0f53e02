"""The lesson-11 checkers catch what they claim to, each mistake with its own hint."""
from __future__ import annotations

import math

import pytest
import torch

from course.checks import efficient as ce
from course.checks.core import Mistake
from course.efficient import kv_append, online_softmax_update, sliding_window_mask


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
