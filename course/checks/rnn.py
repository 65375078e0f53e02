"""Checkers for lesson 01 (why attention): an RNN step, attention's one product, sequential steps,
and gradient reach.

The cases are built so each known mistake shows: the first RNN case has ``d_in == d_h`` (so using
``x_t`` where ``h_prev`` belongs, swapped or transposed weights, still runs and gives different values),
the others have ``d_in != d_h``, odd sizes and batch 1; attention's first input has more positions than
features (so ``x.T @ x`` has the wrong shape), later ones are batched (so a size counted from the front,
``x.shape[1]``, or ``dim=1`` means the sequence, not the features) and the last one has scores above 88,
where a softmax written by hand without the max shift overflows in float32; the gradient cases mix an
RNN, attention and a model whose last output sees only the last input, with more features out than in.
"""
from __future__ import annotations

import math

import torch

from course.rnn import gradient_reach, rnn_forward, sequential_steps

from .core import CheckResult, Mistake, check_function, check_values, evaluate_function, report, with_exception_hints

# ----------------------------------------------------------------------------------------------
# rnn_step(x_t, h_prev, W_xh, W_hh, b) -> h_t
# ----------------------------------------------------------------------------------------------


def _rnn_step_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(1)

    def case(batch, d_in, d_h):
        return (torch.randn(batch, d_in, generator=g), torch.randn(batch, d_h, generator=g),
                torch.randn(d_in, d_h, generator=g) * 0.5, torch.randn(d_h, d_h, generator=g) * 0.5,
                torch.randn(d_h, generator=g) * 0.5)

    return [case(3, 4, 4), case(2, 5, 3), case(1, 3, 6), case(4, 7, 5)]


def _reference_rnn_step(x_t, h_prev, W_xh, W_hh, b):
    return torch.tanh(x_t @ W_xh + h_prev @ W_hh + b)


RNN_STEP_MISTAKES = [
    Mistake("the tanh is missing: h_t = tanh(x_t @ W_xh + h_prev @ W_hh + b)",
            lambda x, h, Wx, Wh, b: x @ Wx + h @ Wh + b),
    Mistake("the input x_t was used where the previous hidden state belongs: the recurrent term is h_prev @ W_hh",
            lambda x, h, Wx, Wh, b: torch.tanh(x @ Wx + x @ Wh + b)),
    Mistake("the previous hidden state is left out: add h_prev @ W_hh, that is what makes it recurrent",
            lambda x, h, Wx, Wh, b: torch.tanh(x @ Wx + b)),
    Mistake("transposed weights: with row vectors the step is x_t @ W_xh and h_prev @ W_hh (W_xh is [d_in, d_h])",
            lambda x, h, Wx, Wh, b: torch.tanh(x @ Wx.T + h @ Wh.T + b)),
    Mistake("W_hh is transposed: the recurrent term is h_prev @ W_hh",
            lambda x, h, Wx, Wh, b: torch.tanh(x @ Wx + h @ Wh.T + b)),
    Mistake("the weights are swapped: W_xh multiplies the input x_t, W_hh the previous hidden state h_prev",
            lambda x, h, Wx, Wh, b: torch.tanh(h @ Wx + x @ Wh + b)),
    Mistake("the bias b is missing", lambda x, h, Wx, Wh, b: torch.tanh(x @ Wx + h @ Wh)),
    Mistake("the bias is added after the tanh: it belongs inside, tanh(x_t @ W_xh + h_prev @ W_hh + b)",
            lambda x, h, Wx, Wh, b: torch.tanh(x @ Wx + h @ Wh) + b),
    Mistake("the tanh covers only part of the sum: h_t = tanh(x_t @ W_xh + h_prev @ W_hh + b), all of it inside",
            lambda x, h, Wx, Wh, b: torch.tanh(x @ Wx + b) + h @ Wh),
    Mistake("sigmoid instead of tanh: the Elman RNN squashes with tanh, into (-1, 1)",
            lambda x, h, Wx, Wh, b: torch.sigmoid(x @ Wx + h @ Wh + b)),
    Mistake("ReLU instead of tanh: the Elman RNN squashes with tanh, into (-1, 1)",
            lambda x, h, Wx, Wh, b: torch.relu(x @ Wx + h @ Wh + b)),
]

_RNN_SHAPES = ("the shapes do not line up: with row vectors, x_t [batch, d_in] @ W_xh [d_in, d_h] "
               "and h_prev [batch, d_h] @ W_hh [d_h, d_h] (@ is the matrix product, * multiplies elementwise)")
RNN_STEP_EXCEPTION_HINTS = [("cannot be multiplied", _RNN_SHAPES), ("must match the size", _RNN_SHAPES)]


def check_rnn_step(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(x_t, h_prev, W_xh, W_hh, b) -> h_t`` with ``x_t [batch, d_in]``, ``h_prev [batch, d_h]``,
    ``W_xh [d_in, d_h]``, ``W_hh [d_h, d_h]``, ``b [d_h]`` and ``h_t [batch, d_h]``."""
    return check_function("RNN step", fn, _reference_rnn_step, _rnn_step_cases(),
                          mistakes=RNN_STEP_MISTAKES, output_names=("h_t",), atol=1e-5, batch_first=True,
                          exception_hints=RNN_STEP_EXCEPTION_HINTS, strict=strict)


# ----------------------------------------------------------------------------------------------
# self_attend(x) -> softmax(x x^T / sqrt(d)) x
# ----------------------------------------------------------------------------------------------
def _reference_self_attend(x):
    scores = x @ x.transpose(-2, -1) / math.sqrt(x.shape[-1])
    return torch.softmax(scores, dim=-1) @ x


def _attend_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(3)
    return [
        (torch.randn(5, 3, generator=g),),        # 5 positions, 3 features: x.T @ x has the wrong shape
        (torch.randn(2, 4, 6, generator=g),),     # a batch of 2 sequences
        (torch.randn(1, 7, 8, generator=g) * 2,),
        (torch.randn(2, 3, 4, generator=g) * 8,),  # scores above 88: exp overflows without the max shift
    ]


def _attend_variant(scale=True, softmax_dim=-1, divide_by_d=False, softmax=True, size=lambda x: x.shape[-1],
                    shift=True):
    def attend(x):
        d = size(x)
        scores = x @ x.transpose(-2, -1)
        if divide_by_d:
            scores = scores / d
        elif scale:
            scores = scores / math.sqrt(d)
        if not softmax:
            weights = scores
        elif shift:
            weights = torch.softmax(scores, dim=softmax_dim)
        else:
            weights = scores.exp() / scores.exp().sum(dim=softmax_dim, keepdim=True)
        return weights @ x
    return attend


SELF_ATTEND_MISTAKES = [
    Mistake("softmax over the wrong axis: each row of weights (one per output position) should sum to 1, "
            "softmax(..., dim=-1)", _attend_variant(softmax_dim=-2)),
    Mistake("the scores are not scaled: divide x @ x^T by sqrt(d) before the softmax",
            _attend_variant(scale=False)),
    Mistake("divided by d instead of sqrt(d)", _attend_variant(divide_by_d=True)),
    Mistake("no softmax: turn the scores into weights that sum to 1 along each row with torch.softmax(..., dim=-1)",
            _attend_variant(softmax=False)),
    Mistake("dim=1 is the last axis only without a batch in front: softmax over dim=-1",
            _attend_variant(softmax_dim=1)),
    Mistake("scaled by the number of positions: d is the feature size, x.shape[-1]",
            _attend_variant(size=lambda x: x.shape[-2])),
    Mistake("x.shape[1] is the feature size only without a batch in front: use x.shape[-1]",
            _attend_variant(size=lambda x: x.shape[1])),
    Mistake("exp overflows for scores above about 88: use torch.softmax, or subtract each row's maximum before exp",
            _attend_variant(shift=False)),
]

_XT_HINT = "x.T reverses every dimension; for a batch use x.transpose(-2, -1), which swaps only the last two"
_SHAPE_HINT = ("the shapes do not line up: the scores are x @ x.transpose(-2, -1), [..., seq, seq], "
               "and the output is weights @ x")


def check_self_attend(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(x [..., seq, d]) -> softmax(x x^T / sqrt(d)) x`` of shape ``[..., seq, d]``."""
    result = evaluate_function("attention in one product", fn, _reference_self_attend, _attend_cases(),
                               mistakes=SELF_ATTEND_MISTAKES, atol=1e-5)
    if "(case 1 of" in result.detail:  # the unbatched case: a shape error is not about x.T on a batch
        hints = [("cannot be multiplied", _SHAPE_HINT), ("size of tensor", _SHAPE_HINT)]
    else:
        hints = [(text, _XT_HINT) for text in ("cannot be multiplied", "size of tensor", "must match", "mT")]
    hints = [("3D tensor", "torch.bmm needs a batch axis in front: use @ (torch.matmul), which works with or without "
                           "one")] + hints
    return report(with_exception_hints(result, hints), strict=strict)


# ----------------------------------------------------------------------------------------------
# sequential_steps(kind, seq_len, n_layers) -> int
# ----------------------------------------------------------------------------------------------
_STEP_CASES = [("rnn", 10, 1), ("attention", 10, 1), ("rnn", 2, 7), ("rnn", 10, 3), ("attention", 10, 3),
               ("rnn", 1, 1), ("attention", 1000, 6), ("rnn", 1000, 6), ("rnn", 1, 4), ("attention", 1, 1)]


def _steps(rnn_rule, attention_rule):
    return lambda kind, n, layers: rnn_rule(n, layers) if kind == "rnn" else attention_rule(n, layers)


def _right_rnn(n, layers):
    return n + layers - 1


def _right_attention(n, layers):
    return layers


SEQUENTIAL_STEP_MISTAKES = [
    Mistake("an RNN's layers overlap like a staircase: layer 2 can work on token 1 while layer 1 reads token 2, "
            "so the chain is seq_len + n_layers - 1 steps, not seq_len * n_layers",
            _steps(lambda n, L: n * L, _right_attention)),
    Mistake("each extra RNN layer adds one step at the end of the staircase: seq_len + n_layers - 1",
            _steps(lambda n, L: n, _right_attention)),
    Mistake("off by one: one token through one layer is a single step (seq_len + n_layers - 1)",
            _steps(lambda n, L: n + L, _right_attention)),
    Mistake("the staircase is longer than its longest side: the last layer starts n_layers - 1 steps late and "
            "then reads seq_len tokens, seq_len + n_layers - 1 in all, not max(seq_len, n_layers)",
            _steps(lambda n, L: max(n, L), _right_attention)),
    Mistake("attention handles every position at once: each layer is one step, whatever seq_len is",
            _steps(_right_rnn, lambda n, L: n * L)),
    Mistake("attention handles every position at once: each layer is one step, whatever seq_len is",
            _steps(_right_rnn, lambda n, L: n)),
    Mistake("attention's layers still run one after another: n_layers steps, not 1",
            _steps(_right_rnn, lambda n, L: 1)),
]


def check_sequential_steps(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(kind: "rnn" | "attention", seq_len, n_layers) -> int``, the length of the critical path."""
    return check_values("sequential steps", fn, sequential_steps, _STEP_CASES,
                        mistakes=SEQUENTIAL_STEP_MISTAKES, strict=strict)


# ----------------------------------------------------------------------------------------------
# gradient_reach(model_fn, x) -> [seq]
# ----------------------------------------------------------------------------------------------
def _reach_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(4)
    d = 3
    W_xh, W_hh, b = (torch.randn(d, d, generator=g, dtype=torch.float64) * 0.8,
                     torch.randn(d, d, generator=g, dtype=torch.float64) * 0.8,
                     torch.randn(d, generator=g, dtype=torch.float64) * 0.1)

    def rnn(x):
        return rnn_forward(x, W_xh, W_hh, b)

    def attention(x):
        return torch.softmax(x @ x.T / math.sqrt(x.shape[-1]), dim=-1) @ x

    W = torch.randn(4, 2, generator=g, dtype=torch.float64)

    def pointwise(x):  # each output sees only its own input
        return torch.tanh(x @ W)

    return [
        (rnn, torch.randn(6, 3, generator=g, dtype=torch.float64)),
        (attention, torch.randn(5, 4, generator=g, dtype=torch.float64)),
        (pointwise, torch.randn(7, 4, generator=g, dtype=torch.float64)),
    ]


def _reach_variant(which="last", reduce="norm", flip=False):
    def reach(fn, x):
        x = x.detach().clone().requires_grad_(True)
        out = fn(x)
        target = {"last": out[-1], "all": out, "first": out[0], "column": out[:, -1]}[which]
        (grad,) = torch.autograd.grad(target.sum(), x)
        r = {"norm": grad.norm(dim=-1), "sum": grad.sum(dim=-1), "square": grad.pow(2).sum(dim=-1),
             "abs": grad.abs().sum(dim=-1)}[reduce]
        return r.flip(0) if flip else r
    return reach


GRADIENT_REACH_MISTAKES = [
    Mistake("the gradient of every output was taken (out.sum()); take only the last position's output, "
            "out[-1].sum()", _reach_variant(which="all")),
    Mistake("the gradient of the first output was taken; the question is what reaches the last position, out[-1]",
            _reach_variant(which="first")),
    Mistake("the gradient of the last feature (out[:, -1], a column) was taken: the last position is the last "
            "row, out[-1]", _reach_variant(which="column")),
    Mistake("signed sums of the gradient cancel out: return each position's gradient length, grad.norm(dim=-1)",
            _reach_variant(reduce="sum")),
    Mistake("this is the squared norm: take the square root, or use grad.norm(dim=-1)",
            _reach_variant(reduce="square")),
    Mistake("this is the sum of absolute values (L1 norm): use the Euclidean length, grad.norm(dim=-1)",
            _reach_variant(reduce="abs")),
    Mistake("the result is reversed: entry t belongs to input position t (flip only when plotting by distance)",
            _reach_variant(flip=True)),
]


def check_gradient_reach(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(model_fn, x [seq, d]) -> [seq]``: the norm of d(sum of the last output)/d x[t] for each t."""
    hints = [("does not require grad", "x needs requires_grad: work on x = x.detach().clone().requires_grad_(True) "
              "before calling the model"),
             ("only for scalar outputs", "a gradient needs one number to differentiate: take out[-1].sum()")]
    return check_function("gradient reach", fn, gradient_reach, _reach_cases(),
                          mistakes=GRADIENT_REACH_MISTAKES, atol=1e-8, rtol=1e-6, exception_hints=hints, strict=strict)
