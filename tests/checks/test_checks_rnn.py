"""Lesson 01's checkers: libraries of learner-style right and wrong answers (see answer_library.py), each
wrong one caught with the words of its hint, each right one accepted; every registered mistake reachable."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from answer_library import Right, Wrong, library_tests
from checker_assertions import assert_fails_with
from course.checks import rnn as cr
from course.checks.core import NOT_ATTEMPTED
from course.checks.rnn import check_gradient_reach, check_rnn_step, check_self_attend, check_sequential_steps
from course.rnn import gradient_reach, rnn_step, sequential_steps

# One wrong attention uses x.T on a batch on purpose; PyTorch warns that this is deprecated.
pytestmark = [pytest.mark.filterwarnings("ignore:The use of `x.T`:UserWarning"), pytest.mark.usefixtures("lenient_checks")]


def _run(checker, fn):
    return checker(fn, strict=False)


# --- one RNN step -------------------------------------------------------------------------------
def correct_rnn_step(x_t, h_prev, W_xh, W_hh, b):
    return torch.tanh(x_t @ W_xh + h_prev @ W_hh + b)


def rnn_step_einsum(x_t, h_prev, W_xh, W_hh, b):
    return torch.tanh(torch.einsum("bi,ih->bh", x_t, W_xh) + torch.einsum("bj,jh->bh", h_prev, W_hh) + b)


def rnn_step_linear(x_t, h_prev, W_xh, W_hh, b):
    return torch.tanh(F.linear(x_t, W_xh.T, b) + F.linear(h_prev, W_hh.T))


def rnn_step_loops(x_t, h_prev, W_xh, W_hh, b):
    rows = [torch.tanh(x_t[i] @ W_xh + h_prev[i] @ W_hh + b) for i in range(x_t.shape[0])]
    return torch.stack(rows)


def rnn_step_float64(x_t, h_prev, W_xh, W_hh, b):
    pre = x_t.double() @ W_xh.double() + h_prev.double() @ W_hh.double() + b.double()
    return pre.tanh().float()


WRONG_RNN_STEPS = [
    Wrong("no tanh", lambda x, h, Wx, Wh, b: x @ Wx + h @ Wh + b, "tanh is missing"),
    Wrong("input instead of hidden", lambda x, h, Wx, Wh, b: torch.tanh(x @ Wx + x @ Wh + b), "x_t was used where"),
    Wrong("no recurrence", lambda x, h, Wx, Wh, b: torch.tanh(x @ Wx + b), "previous hidden state is left out"),
    Wrong("both transposed", lambda x, h, Wx, Wh, b: torch.tanh(x @ Wx.T + h @ Wh.T + b), "transposed weights"),
    Wrong("W_hh transposed", lambda x, h, Wx, Wh, b: torch.tanh(x @ Wx + h @ Wh.T + b), "W_hh is transposed"),
    Wrong("weights swapped", lambda x, h, Wx, Wh, b: torch.tanh(h @ Wx + x @ Wh + b), "the weights are swapped"),
    Wrong("no bias", lambda x, h, Wx, Wh, b: torch.tanh(x @ Wx + h @ Wh), "bias b is missing"),
    Wrong("bias after tanh", lambda x, h, Wx, Wh, b: torch.tanh(x @ Wx + h @ Wh) + b, "bias is added after the tanh"),
    Wrong("tanh of the input term only", lambda x, h, Wx, Wh, b: torch.tanh(x @ Wx + b) + h @ Wh, "tanh covers only part"),
    Wrong("sigmoid", lambda x, h, Wx, Wh, b: torch.sigmoid(x @ Wx + h @ Wh + b), "sigmoid instead of tanh"),
    Wrong("relu", lambda x, h, Wx, Wh, b: torch.relu(x @ Wx + h @ Wh + b), "ReLU instead of tanh"),
    Wrong("torch's layout", lambda x, h, Wx, Wh, b: torch.tanh(Wx @ x + Wh @ h + b), "shapes do not line up"),
    Wrong("elementwise product", lambda x, h, Wx, Wh, b: torch.tanh(x * Wx + h * Wh + b), "@ is the matrix product"),
    Wrong("first sequence's state for all", lambda x, h, Wx, Wh, b: torch.tanh(x @ Wx + h[0] @ Wh + b),
          "right for the first item along axis 0 and wrong for the others"),
    Wrong("summed over the batch", lambda x, h, Wx, Wh, b: correct_rnn_step(x, h, Wx, Wh, b).sum(0),
          "h_t has shape (4,), expected (3, 4): the first (batch) axis is missing"),
    # holdout: written after the checker was finished; None where the line only says the values differ
    Wrong("transposed result", lambda x, h, Wx, Wh, b: correct_rnn_step(x, h, Wx, Wh, b).T, "the last two axes are swapped"),
    Wrong("a tanh for each term", lambda x, h, Wx, Wh, b: torch.tanh(x @ Wx) + torch.tanh(h @ Wh) + b, None),
    Wrong("minus b", lambda x, h, Wx, Wh, b: torch.tanh(x @ Wx + h @ Wh - b), None),
]

RIGHT_RNN_STEPS = [Right("matmul", correct_rnn_step), Right("the course's", rnn_step), Right("einsum", rnn_step_einsum),
                   Right("F.linear", rnn_step_linear), Right("a loop over the batch", rnn_step_loops),
                   Right("float64 inside", rnn_step_float64)]


def test_the_course_version_passes_with_its_count_of_cases():
    assert _run(check_rnn_step, rnn_step).line.startswith("✓ RNN step: correct on 4 case(s)")


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


def self_attend_einsum(x):
    scores = torch.einsum("...id,...jd->...ij", x, x) / x.size(-1) ** 0.5
    return torch.einsum("...ij,...jd->...id", scores.softmax(-1), x)


def self_attend_torch(x):
    return F.scaled_dot_product_attention(x, x, x)


def self_attend_by_hand_with_shift(x):
    s = x @ x.mT / math.sqrt(x.shape[-1])
    e = (s - s.amax(dim=-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True) @ x


def self_attend_float64(x):
    y = x.double()
    return (torch.softmax(y @ y.transpose(-2, -1) / math.sqrt(y.shape[-1]), dim=-1) @ y).float()


def self_attend_by_hand_no_shift(x):
    s = x @ x.transpose(-2, -1) / math.sqrt(x.shape[-1])
    return s.exp() / s.exp().sum(dim=-1, keepdim=True) @ x


def self_attend_bmm(x):
    return torch.bmm(torch.softmax(torch.bmm(x, x.transpose(-2, -1)) / math.sqrt(x.shape[-1]), dim=-1), x)


WRONG_ATTENDS = [
    Wrong("wrong axis", lambda x: torch.softmax(x @ x.transpose(-2, -1) / math.sqrt(x.shape[-1]), dim=-2) @ x, "wrong axis"),
    Wrong("dim=1", lambda x: F.softmax(x @ x.transpose(-2, -1) / math.sqrt(x.shape[-1]), dim=1) @ x,
          "dim=1 is the last axis only without a batch"),
    Wrong("no scale", lambda x: torch.softmax(x @ x.transpose(-2, -1), dim=-1) @ x, "not scaled"),
    Wrong("divide by d", lambda x: torch.softmax(x @ x.transpose(-2, -1) / x.shape[-1], dim=-1) @ x, "instead of sqrt(d)"),
    Wrong("scale by the length", lambda x: torch.softmax(x @ x.mT / math.sqrt(x.shape[-2]), dim=-1) @ x,
          "scaled by the number of positions"),
    Wrong("d from x.shape[1]", lambda x: torch.softmax(x @ x.mT / math.sqrt(x.shape[1]), dim=-1) @ x,
          "x.shape[1] is the feature size only"),
    Wrong("no softmax", lambda x: (x @ x.transpose(-2, -1) / math.sqrt(x.shape[-1])) @ x, "no softmax"),
    Wrong("x.T on a batch", lambda x: torch.softmax(x @ x.T / math.sqrt(x.shape[-1]), dim=-1) @ x, "x.transpose(-2, -1)"),
    Wrong("product the wrong way round", lambda x: torch.softmax(x.T @ x, dim=-1) @ x, "shapes do not line up"),
    Wrong("softmax by hand, no shift", self_attend_by_hand_no_shift, "exp overflows for scores above about 88"),
    Wrong("torch.bmm", self_attend_bmm, "torch.bmm needs a batch axis"),
    Wrong("weights instead of output", lambda x: torch.softmax(x @ x.mT / math.sqrt(x.shape[-1]), dim=-1),
          "output has shape (5, 5), expected (5, 3)"),
    # holdout
    Wrong("scale on the output", lambda x: torch.softmax(x @ x.mT, -1) @ x / math.sqrt(x.shape[-1]), None),
]

RIGHT_ATTENDS = [
    Right("matmul", correct_self_attend),
    Right("einsum", self_attend_einsum),
    Right("F.sdpa", self_attend_torch),
    Right("by hand with the shift", self_attend_by_hand_with_shift),
    Right("float64 inside", self_attend_float64),
]


def test_self_attend_over_features_instead_of_positions_gets_one_line():
    result = _run(check_self_attend, lambda x: x @ torch.softmax(x.transpose(-2, -1) @ x, dim=-1))
    assert not result.passed and "\n" not in result.line


# --- sequential steps ------------------------------------------------------------------------------
def steps_forgets_attention(kind, seq_len, n_layers):
    if kind == "rnn":
        return seq_len + n_layers - 1


WRONG_STEPS = [
    Wrong("rnn n*L", lambda k, n, L: n * L if k == "rnn" else L, "not seq_len * n_layers"),
    Wrong("rnn ignores layers", lambda k, n, L: n if k == "rnn" else L, "adds one step"),
    Wrong("rnn off by one", lambda k, n, L: n + L if k == "rnn" else L, "off by one"),
    Wrong("rnn longest side", lambda k, n, L: max(n, L) if k == "rnn" else L, "not max(seq_len, n_layers)"),
    Wrong("attention grows with length", lambda k, n, L: n + L - 1 if k == "rnn" else n, "whatever seq_len is"),
    Wrong("attention ignores layers", lambda k, n, L: n + L - 1 if k == "rnn" else 1, "n_layers steps, not 1"),
    Wrong("a float", lambda k, n, L: float(sequential_steps(k, n, L)), "should return an int, got float"),
    Wrong("no return for attention", steps_forgets_attention, "did you forget `return`"),
    Wrong("'RNN' in capitals", lambda k, n, L: n + L - 1 if k == "RNN" else L, None),
    # holdout
    Wrong("attention one step more", lambda k, n, L: n + L - 1 if k == "rnn" else L + 1, "off by one"),
    Wrong("rnn n*L - (L-1)", lambda k, n, L: n * L - (L - 1) if k == "rnn" else L, None),
]

RIGHT_STEPS = [Right("the course's", sequential_steps),
               Right("a dict", lambda k, n, L: {"rnn": n + L - 1, "attention": L}[k]),
               Right("an int tensor", lambda k, n, L: torch.tensor(n + L - 1 if k == "rnn" else L))]


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


def reach_jacobian(fn, x):
    jac = torch.autograd.functional.jacobian(lambda t: fn(t)[-1].sum(), x)
    return torch.linalg.vector_norm(jac, dim=1)


def _reach(target, reduce):
    def reach(fn, x):
        x = x.detach().clone().requires_grad_(True)
        out = fn(x)
        (g,) = torch.autograd.grad(target(out).sum(), x)
        return reduce(g)
    return reach


def reach_without_sum(fn, x):
    x = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(x)[-1], x)
    return g.norm(dim=-1)


WRONG_REACHES = [
    Wrong("every output", _reach(lambda o: o, lambda g: g.norm(dim=-1)), "gradient of every output"),
    Wrong("first output", _reach(lambda o: o[0], lambda g: g.norm(dim=-1)), "gradient of the first output"),
    Wrong("last column", _reach(lambda o: o[:, -1], lambda g: g.norm(dim=-1)), "last feature (out[:, -1], a column)"),
    Wrong("signed sum", _reach(lambda o: o[-1], lambda g: g.sum(-1)), "grad.norm(dim=-1)"),
    Wrong("squared", _reach(lambda o: o[-1], lambda g: (g ** 2).sum(-1)), "squared norm"),
    Wrong("L1", _reach(lambda o: o[-1], lambda g: g.abs().sum(-1)), "L1 norm"),
    Wrong("by distance", _reach(lambda o: o[-1], lambda g: g.norm(dim=-1).flip(0)), "reversed"),
    Wrong("no requires_grad", lambda fn, x: torch.autograd.grad(fn(x)[-1].sum(), x)[0].norm(dim=-1), "requires_grad"),
    Wrong("no sum", reach_without_sum, "take out[-1].sum()"),
    Wrong("norm over positions", _reach(lambda o: o[-1], lambda g: g.norm(dim=0)), "output has shape (3,), expected (6,)"),
    Wrong("the gradient itself", _reach(lambda o: o[-1], lambda g: g), "output has shape (6, 3), expected (6,)"),
    # holdout
    Wrong("mean of the last output", _reach(lambda o: o[-1] / o.shape[-1], lambda g: g.norm(dim=-1)),
          "off by a constant factor"),
    Wrong("one norm for everything", _reach(lambda o: o[-1], lambda g: g.norm()), "you reduced it to a single number"),
]

RIGHT_REACHES = [
    Right("backward", correct_reach),
    Right("the course's", gradient_reach),
    Right("jacobian", reach_jacobian),
    Right("autograd.grad", _reach(lambda o: o[-1], lambda g: g.pow(2).sum(-1).sqrt())),
    Right("sum(-1)[-1]", _reach(lambda o: o.sum(-1)[-1], lambda g: g.norm(dim=-1))),
]  # holdout


# --- the libraries, in the shape answer_library.py reads ---------------------------------------------------
LIBRARY = {
    check_rnn_step: (WRONG_RNN_STEPS, RIGHT_RNN_STEPS),
    check_self_attend: (WRONG_ATTENDS, RIGHT_ATTENDS),
    check_sequential_steps: (WRONG_STEPS, RIGHT_STEPS),
    check_gradient_reach: (WRONG_REACHES, RIGHT_REACHES),
}


test_each_wrong_answer_fails_with_its_words, test_each_right_answer_passes = library_tests(LIBRARY)


REGISTERED = ([(check_rnn_step, m) for m in cr.RNN_STEP_MISTAKES]
              + [(check_self_attend, m) for m in cr.SELF_ATTEND_MISTAKES]
              + [(check_sequential_steps, m) for m in cr.SEQUENTIAL_STEP_MISTAKES]
              + [(check_gradient_reach, m) for m in cr.GRADIENT_REACH_MISTAKES])


@pytest.mark.parametrize("checker,mistake", REGISTERED, ids=[f"{c.__name__}:{m.hint[:40]}" for c, m in REGISTERED])
def test_every_registered_mistake_gets_its_own_hint(checker, mistake):
    assert_fails_with(_run(checker, mistake.fn), mistake.hint)


def test_the_attention_cases_include_scores_that_overflow_exp_in_float32():
    from course.checks.rnn import _attend_cases

    scores = [x @ x.transpose(-2, -1) / math.sqrt(x.shape[-1]) for (x,) in _attend_cases()]
    assert max(float(s.max()) for s in scores) > 88.8
