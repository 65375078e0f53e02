"""Lesson 01's checkers: a library of wrong implementations, each caught with its own hint."""
from __future__ import annotations

import math

import pytest
import torch

from checker_assertions import assert_fails_with
from course.checks.core import NOT_ATTEMPTED
from course.checks.rnn import check_gradient_reach, check_rnn_step, check_self_attend, check_sequential_steps
from course.rnn import gradient_reach, rnn_step, sequential_steps

# One wrong attention uses x.T on a batch on purpose; PyTorch warns that this is deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:The use of `x.T`:UserWarning")


def _run(checker, fn):
    return checker(fn, strict=False)




# --- one RNN step -------------------------------------------------------------------------------
def correct_rnn_step(x_t, h_prev, W_xh, W_hh, b):
    return torch.tanh(x_t @ W_xh + h_prev @ W_hh + b)


WRONG_RNN_STEPS = {
    "no tanh": (lambda x, h, Wx, Wh, b: x @ Wx + h @ Wh + b, "tanh is missing"),
    "input instead of hidden": (lambda x, h, Wx, Wh, b: torch.tanh(x @ Wx + x @ Wh + b), "x_t was used where"),
    "no recurrence": (lambda x, h, Wx, Wh, b: torch.tanh(x @ Wx + b), "previous hidden state is left out"),
    "both transposed": (lambda x, h, Wx, Wh, b: torch.tanh(x @ Wx.T + h @ Wh.T + b), "transposed weights"),
    "W_hh transposed": (lambda x, h, Wx, Wh, b: torch.tanh(x @ Wx + h @ Wh.T + b), "W_hh is transposed"),
    "no bias": (lambda x, h, Wx, Wh, b: torch.tanh(x @ Wx + h @ Wh), "bias b is missing"),
    "sigmoid": (lambda x, h, Wx, Wh, b: torch.sigmoid(x @ Wx + h @ Wh + b), "sigmoid instead of tanh"),
    "relu": (lambda x, h, Wx, Wh, b: torch.relu(x @ Wx + h @ Wh + b), "ReLU instead of tanh"),
    "torch's layout": (lambda x, h, Wx, Wh, b: torch.tanh(Wx @ x + Wh @ h + b), "shapes do not line up"),
}


def test_correct_rnn_step_and_the_course_version_pass():
    assert _run(check_rnn_step, correct_rnn_step).passed
    assert _run(check_rnn_step, rnn_step).line.startswith("✓ RNN step: correct on 3 case(s)")


@pytest.mark.parametrize("name", list(WRONG_RNN_STEPS))
def test_each_wrong_rnn_step_fails_with_its_hint(name):
    fn, words = WRONG_RNN_STEPS[name]
    assert_fails_with(_run(check_rnn_step, fn), words)


def test_rnn_step_of_the_wrong_shape_gets_a_one_line_message():
    assert_fails_with(_run(check_rnn_step, lambda x, h, Wx, Wh, b: correct_rnn_step(x, h, Wx, Wh, b).sum(0)),
                      "h_t has shape (4,), expected (3, 4)")


def test_rnn_step_that_raises_gets_a_one_line_message():
    assert_fails_with(_run(check_rnn_step, lambda x, h, Wx, Wh, b: x.reshape(7, -1)), "raised RuntimeError")


def test_unattempted_rnn_step_says_not_attempted_yet():
    def rnn_step_todo(x_t, h_prev, W_xh, W_hh, b):
        raise NotImplementedError()

    assert _run(check_rnn_step, rnn_step_todo).status == NOT_ATTEMPTED


def test_rnn_step_that_updates_h_in_place_is_caught():
    def in_place(x, h, Wx, Wh, b):
        h.mul_(0)
        return correct_rnn_step(x, h, Wx, Wh, b)

    assert_fails_with(_run(check_rnn_step, in_place), "changed its input in place")


# --- attention in one product ---------------------------------------------------------------------
def correct_self_attend(x):
    scores = x @ x.transpose(-2, -1) / math.sqrt(x.shape[-1])
    return torch.softmax(scores, dim=-1) @ x


WRONG_ATTENDS = {
    "wrong axis": (lambda x: torch.softmax(x @ x.transpose(-2, -1) / math.sqrt(x.shape[-1]), dim=-2) @ x,
                   "wrong axis"),
    "no scale": (lambda x: torch.softmax(x @ x.transpose(-2, -1), dim=-1) @ x, "not scaled"),
    "divide by d": (lambda x: torch.softmax(x @ x.transpose(-2, -1) / x.shape[-1], dim=-1) @ x, "instead of sqrt(d)"),
    "no softmax": (lambda x: (x @ x.transpose(-2, -1) / math.sqrt(x.shape[-1])) @ x, "no softmax"),
    "x.T on a batch": (lambda x: torch.softmax(x @ x.T / math.sqrt(x.shape[-1]), dim=-1) @ x, "x.transpose(-2, -1)"),
}


def test_correct_self_attend_passes():
    assert _run(check_self_attend, correct_self_attend).passed


@pytest.mark.parametrize("name", list(WRONG_ATTENDS))
def test_each_wrong_self_attend_fails_with_its_hint(name):
    fn, words = WRONG_ATTENDS[name]
    assert_fails_with(_run(check_self_attend, fn), words)


def test_self_attend_with_the_product_the_wrong_way_round_gets_a_shape_hint():
    assert_fails_with(_run(check_self_attend, lambda x: torch.softmax(x.T @ x, dim=-1) @ x), "shapes do not line up")


def test_self_attend_over_features_instead_of_positions_gets_the_shape_in_one_line():
    assert_fails_with(_run(check_self_attend, lambda x: x @ torch.softmax(x.transpose(-2, -1) @ x, dim=-1)),
                      "Largest error")  # same shape, different values: no known mistake, still one line


# --- sequential steps ------------------------------------------------------------------------------
WRONG_STEPS = {
    "rnn n*L": (lambda k, n, L: n * L if k == "rnn" else L, "not seq_len * n_layers"),
    "rnn ignores layers": (lambda k, n, L: n if k == "rnn" else L, "adds one step"),
    "rnn off by one": (lambda k, n, L: n + L if k == "rnn" else L, "off by one"),
    "attention grows with length": (lambda k, n, L: n + L - 1 if k == "rnn" else n, "whatever seq_len is"),
    "attention ignores layers": (lambda k, n, L: n + L - 1 if k == "rnn" else 1, "n_layers steps, not 1"),
}


def test_correct_sequential_steps_passes():
    assert _run(check_sequential_steps, sequential_steps).passed


@pytest.mark.parametrize("name", list(WRONG_STEPS))
def test_each_wrong_step_count_fails_with_its_hint(name):
    fn, words = WRONG_STEPS[name]
    assert_fails_with(_run(check_sequential_steps, fn), words)


def test_step_count_returned_as_a_float_gets_a_one_line_message():
    assert_fails_with(_run(check_sequential_steps, lambda k, n, L: float(sequential_steps(k, n, L))),
                      "should return an int, got float")


def test_step_count_with_both_kinds_wrong_names_the_first_one_found():
    # rnn: n * L and attention: n. Case 2 (attention, 10, 1) fails first, rnn still agrees there.
    assert_fails_with(_run(check_sequential_steps, lambda k, n, L: n * L if k == "rnn" else n),
                      "whatever seq_len is")


# --- gradient reach -------------------------------------------------------------------------------
def correct_reach(fn, x):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    out[-1].sum().backward()
    return x.grad.norm(dim=-1)


def _reach(target, reduce):
    def reach(fn, x):
        x = x.detach().clone().requires_grad_(True)
        out = fn(x)
        (g,) = torch.autograd.grad(target(out).sum(), x)
        return reduce(g)
    return reach


WRONG_REACHES = {
    "every output": (_reach(lambda o: o, lambda g: g.norm(dim=-1)), "gradient of every output"),
    "first output": (_reach(lambda o: o[0], lambda g: g.norm(dim=-1)), "gradient of the first output"),
    "signed sum": (_reach(lambda o: o[-1], lambda g: g.sum(-1)), "grad.norm(dim=-1)"),
    "squared": (_reach(lambda o: o[-1], lambda g: (g ** 2).sum(-1)), "squared norm"),
    "L1": (_reach(lambda o: o[-1], lambda g: g.abs().sum(-1)), "L1 norm"),
    "by distance": (_reach(lambda o: o[-1], lambda g: g.norm(dim=-1).flip(0)), "reversed"),
    "no requires_grad": (lambda fn, x: torch.autograd.grad(fn(x)[-1].sum(), x)[0].norm(dim=-1), "requires_grad"),
}


def test_correct_gradient_reach_and_the_course_version_pass():
    assert _run(check_gradient_reach, correct_reach).passed
    assert _run(check_gradient_reach, gradient_reach).passed


@pytest.mark.parametrize("name", list(WRONG_REACHES))
def test_each_wrong_gradient_reach_fails_with_its_hint(name):
    fn, words = WRONG_REACHES[name]
    assert_fails_with(_run(check_gradient_reach, fn), words)


def test_gradient_reach_over_the_wrong_dimension_gets_the_shape_in_one_line():
    assert_fails_with(_run(check_gradient_reach, _reach(lambda o: o[-1], lambda g: g.norm(dim=0))),
                      "output has shape (3,), expected (6,)")
