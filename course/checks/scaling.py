"""Checkers for lesson 13 (scaling laws and emergence): FLOPs of a GPT training step, the power law's
line in log-log space, and the three scores of an answer (exact match, per-token, log-likelihood).

Each checker compares the learner's function with the package version in :mod:`course.scaling` and,
when the answer is wrong, names the likely mistake from a library of wrong implementations. The cases
separate the mistakes: for the FLOPs, a feed-forward width that is not ``4 d_model``, a batch above 1,
a context longer than the width and a vocabulary that differs from both; for the fit, exact power laws
(where any correct method recovers A and alpha) before noisy ones (where regressing the wrong way round
or without an intercept shows); for the scores, answers of different lengths, padded positions whose
prediction is wrong, and (last) ``-100`` at padded targets, as a real batch has them.
``tests/checks/test_checks_scaling.py`` proves each mistake gets its hint.
"""
from __future__ import annotations


import torch

from ..scaling import answer_metrics, fit_loglinear, gpt_training_flops
from .core import CheckResult, Mistake, check_function, check_values

__all__ = ["check_training_flops", "check_fit_loglinear", "check_answer_metrics"]


# ----------------------------------------------------------------------------- FLOPs of a training step

# (num_layers, d_model, d_ff, vocab_size, batch, seq)
_FLOPS_CASES = [
    (3, 24, 72, 95, 4, 40),       # every mistake below gives its own number here
    (1, 16, 48, 12, 4, 8),        # d_ff = 3 d_model, batch 4
    (3, 48, 200, 95, 2, 100),     # a context longer than the width
    (4, 128, 512, 50257, 8, 256),
]


def _parts(L, d, ff, V, B, T):
    """Forward FLOPs of one batch, part by part."""
    return {"qkv": B * L * 2 * T * d * 3 * d, "scores": B * L * 2 * T * T * d, "mix": B * L * 2 * T * T * d,
            "out": B * L * 2 * T * d * d, "ffn": B * L * 2 * 2 * T * d * ff, "head": B * 2 * T * d * V}


def _forward(**drop):
    def fn(L, d, ff, V, B, T):
        return sum(v for k, v in _parts(L, d, ff, V, B, T).items() if k not in drop)
    return fn


FLOPS_MISTAKES = [
    Mistake("only the forward pass: the backward pass costs twice the forward (a gradient for each input of "
            "every product), so a training step is 3 forwards",
            lambda *a: _forward()(*a)),
    Mistake("backward counted once: it takes two products of the same size per forward product, so "
            "forward + backward = 3 x forward",
            lambda *a: 2 * _forward()(*a)),
    Mistake("counted multiply-adds, not FLOPs: a product [m, k] @ [k, n] is 2 m k n FLOPs (a multiply and an add)",
            lambda *a: 3 * _forward()(*a) // 2),
    Mistake("that is 6 N D with N the blocks' weight matrices: add attention's two T x T products (Q K^T and "
            "weights @ V, 2 T T d each per layer) and the output layer (2 T d V)",
            lambda *a: 3 * _forward(scores=1, mix=1, head=1)(*a)),
    Mistake("attention's two T x T products are missing: Q K^T and weights @ V cost 2 T T d each, per layer",
            lambda *a: 3 * _forward(scores=1, mix=1)(*a)),
    Mistake("only one of attention's T x T products: the scores Q K^T and the weighted sum weights @ V "
            "cost 2 T T d each",
            lambda *a: 3 * _forward(mix=1)(*a)),
    Mistake("the output layer is missing: the logits cost 2 T d V (V = vocab_size), once per sequence, not per layer",
            lambda *a: 3 * _forward(head=1)(*a)),
    Mistake("the output layer counted in every layer: it runs once, after the last block",
            lambda L, d, ff, V, B, T: 3 * (_forward()(L, d, ff, V, B, T) + (L - 1) * _parts(L, d, ff, V, B, T)["head"])),
    Mistake("the token embedding counted as a product: it is a lookup (one row per token), no FLOPs; only the "
            "output layer multiplies by the d x V matrix",
            lambda L, d, ff, V, B, T: 3 * (_forward()(L, d, ff, V, B, T) + _parts(L, d, ff, V, B, T)["head"])),
    Mistake("that is 6 N D with N = 12 L d^2: that N assumes d_ff = 4 d_model (use the d_ff you are given), and "
            "6 N D leaves out attention's two T x T products and the output layer",
            lambda L, d, ff, V, B, T: 6 * 12 * L * d * d * B * T),
    Mistake("only the causal half of attention's T x T products: the course's attention computes the full "
            "T x T scores and then masks them, so count 2 T T d for each of the two products",
            lambda L, d, ff, V, B, T: 3 * (_forward(scores=1, mix=1)(L, d, ff, V, B, T)
                                           + B * L * 2 * 2 * (T * (T + 1) // 2) * d)),
    Mistake("the feed-forward width was taken as 4 d_model: use the d_ff you are given",
            lambda L, d, ff, V, B, T: 3 * _forward()(L, d, 4 * d, V, B, T)),
    Mistake("one projection for Q, K and V together: they are three d x d products (2 T d 3d)",
            lambda L, d, ff, V, B, T: 3 * (_forward()(L, d, ff, V, B, T) - 2 * _parts(L, d, ff, V, B, T)["qkv"] // 3)),
    Mistake("the output projection after attention is missing (2 T d d per layer)",
            lambda *a: 3 * _forward(out=1)(*a)),
    Mistake("the feed-forward has two products (d -> d_ff and d_ff -> d), 2 T d d_ff each",
            lambda L, d, ff, V, B, T: 3 * (_forward()(L, d, ff, V, B, T) - _parts(L, d, ff, V, B, T)["ffn"] // 2)),
    Mistake("the batch is missing: multiply by the number of sequences",
            lambda L, d, ff, V, B, T: 3 * _forward()(L, d, ff, V, 1, T)),
    Mistake("counted one token, not the sequence: every product has T rows",
            lambda L, d, ff, V, B, T: 3 * _forward()(L, d, ff, V, B, T) // T),
]


def check_training_flops(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(num_layers, d_model, d_ff, vocab_size, batch, seq) -> int``, the matrix-multiply FLOPs
    of one forward and backward pass (see :func:`course.scaling.gpt_training_flops`)."""
    return check_values("gpt_training_flops", fn, gpt_training_flops, _FLOPS_CASES, mistakes=FLOPS_MISTAKES,
                        strict=strict)


# ----------------------------------------------------------------------------- the line in log-log space

def _law(n, E, A, alpha):
    return E + A * n.pow(-alpha)


def _fit_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(13)
    n1 = torch.tensor([3e3, 7e3, 1.3e4, 2.5e4, 5.7e4, 1e5, 2.3e5], dtype=torch.float64)
    n2 = torch.tensor([1e5, 3e5, 1e6, 3e6, 1e7], dtype=torch.float64)
    n3 = torch.tensor([2e3, 8e3, 3.2e4, 1.28e5, 5.12e5, 2.048e6], dtype=torch.float64)
    noisy = _law(n3, 1.2, 30.0, 0.4) * (0.05 * torch.randn(6, generator=g, dtype=torch.float64)).exp()
    return [
        (n1, _law(n1, 1.5, 40.0, 0.35), 1.5),           # exact: every correct method recovers A and alpha
        (n2, _law(n2, 0.0, 8.0, 0.076), 0.0),           # E = 0: a pure power law (Kaplan's exponent)
        (n3, noisy, 1.0),                               # scattered points: least squares of log(L - E) on log n
        (n1.float(), _law(n1, 1.5, 40.0, 0.35).float(), 1.2),  # float32 input, E below the true one
    ]


def _line(u, v):
    du = u - u.mean()
    slope = (du * (v - v.mean())).sum() / (du * du).sum()
    return v.mean() - slope * u.mean(), slope


def _as_pair(intercept, slope, a=lambda i: i.exp(), sign=-1.0):
    return a(intercept), sign * slope


def _fit_with(transform_u=lambda n: n.log(), transform_v=lambda y, E: (y - E).log(), a=lambda i: i.exp(), sign=-1.0):
    def fn(n, loss, E):
        n, loss = n.double(), loss.double()
        intercept, slope = _line(transform_u(n), transform_v(loss, E))
        return _as_pair(intercept, slope, a, sign)
    return fn


def _reversed_regression(n, loss, E):
    u, v = n.double().log(), (loss.double() - E).log()
    c, s = _line(v, u)                    # u = c + s v  ->  v = -c/s + u/s
    return (-c / s).exp(), -1 / s


def _no_intercept(n, loss, E):
    u, v = n.double().log(), (loss.double() - E).log()
    slope = (u * v).sum() / (u * u).sum()
    return torch.tensor(1.0, dtype=torch.float64), -slope


FIT_MISTAKES = [
    Mistake("E was not subtracted: the straight line is log(loss - E) against log n",
            _fit_with(transform_v=lambda y, E: y.log())),
    Mistake("alpha has the wrong sign: the slope of the line is -alpha (the loss falls as n grows)",
            _fit_with(sign=1.0)),
    Mistake("returned the intercept itself as A: the intercept is log A, so A = exp(intercept)",
            _fit_with(a=lambda i: i)),
    Mistake("A = 10 ** intercept with natural logarithms: use the same base both ways (exp of a natural-log intercept)",
            _fit_with(a=lambda i: 10 ** i)),
    Mistake("mixed bases: log10 for the fit but exp for A (or the reverse); use one base throughout",
            _fit_with(transform_u=lambda n: n.log10(), transform_v=lambda y, E: (y - E).log10(), a=lambda i: i.exp())),
    Mistake("regressed log n on log(loss - E): least squares predicts the loss from the size, y on x, not the reverse",
            _reversed_regression),
    Mistake("the line has no intercept: fit log(loss - E) = log A - alpha log n, with a column of ones "
            "beside log n (or centre both)",
            _no_intercept),
    Mistake("added E: the power-law part is loss - E",
            _fit_with(transform_v=lambda y, E: (y + E).log())),
]


def _to_tensors(out):
    """The learner's ``(A, alpha)`` as float64 tensors (Python floats and 0-d tensors alike)."""
    if isinstance(out, (tuple, list)):
        return tuple(torch.as_tensor(v, dtype=torch.float64) if isinstance(v, (int, float)) else v for v in out)
    return out


def _reference_fit(n, loss, E):
    A, alpha = fit_loglinear(n, loss, E)
    return torch.tensor(A, dtype=torch.float64), torch.tensor(alpha, dtype=torch.float64)


def check_fit_loglinear(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(n, loss, E) -> (A, alpha)``: least squares of ``log(loss - E)`` on ``log n`` (natural
    logarithms), ``alpha = -slope``, ``A = exp(intercept)``; floats or 0-d tensors."""
    return check_function("fit_loglinear", fn, _reference_fit, _fit_cases(), mistakes=FIT_MISTAKES,
                          output_names=("A", "alpha"), atol=1e-6, rtol=1e-3, convert=_to_tensors,
                          nonfinite_hint="a logarithm of zero or of a negative number: E must stay below every loss, "
                                         "and take log(loss - E), not log(E - loss)",
                          strict=strict)


# ----------------------------------------------------------------------------- exact match, per token, log-likelihood

def _metrics_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(7)

    def case(n, t, vocab, lengths, pad_value, sharp=3.0, right=0.7):
        logits = torch.randn(n, t, vocab, generator=g)
        targets = torch.randint(0, vocab, (n, t), generator=g)
        # Make most predictions right, so that some rows are entirely right and exact match is not 0.
        boost = torch.rand(n, t, generator=g) < right
        logits.scatter_add_(-1, targets[..., None], (boost.float() * sharp)[..., None])
        mask = torch.zeros(n, t, dtype=torch.bool)
        for i, length in enumerate(lengths):
            mask[i, t - length:] = True                      # the answer at the end of each row
        # padded positions: predictions wrong on purpose (argmax != the value there), so counting them shows
        wrong_pad = (logits.argmax(-1) + 1) % vocab
        targets = torch.where(mask, targets, wrong_pad if pad_value is None else torch.full_like(targets, pad_value))
        return logits, targets, mask

    return [
        case(6, 5, 7, [3, 3, 1, 2, 3, 2], None),             # answers of 1-3 tokens; padding holds wrong ids
        case(8, 4, 12, [4, 2, 2, 3, 1, 4, 2, 3], None, sharp=5.0, right=0.85),
        case(5, 6, 12, [3, 3, 3, 3, 3], None, sharp=0.5),    # an unsure model: exact match 0 possible
        case(7, 8, 12, [3, 1, 2, 3, 3, 2, 1], -100),         # a real batch: -100 at the padded targets
    ]


def _metrics(exact_fn=None, token_fn=None, ll_fn=None):
    def fn(logits, targets, mask):
        e, t, ll = answer_metrics(logits, targets, mask)
        safe = targets.masked_fill(~mask, 0)
        logp = logits.log_softmax(-1)
        correct = logp.argmax(-1) == targets      # as a learner compares: padded targets never match
        if exact_fn is not None:
            e = exact_fn(correct, mask)
        if token_fn is not None:
            t = token_fn(correct, mask)
        if ll_fn is not None:
            ll = ll_fn(logits, logp, safe, mask)
        return e, t, ll
    return fn


def _gathered(values, safe):
    return values.gather(-1, safe[..., None])[..., 0]


METRICS_MISTAKES = [
    Mistake("exact match averaged over tokens: a row counts only if ALL its answer tokens are right "
            "(.all(dim=-1) over the masked positions, then the mean over rows)",
            _metrics(exact_fn=lambda c, m: (c & m).sum() / m.sum())),
    Mistake("exact match counts the padded positions: only the masked (answer) positions must be right; "
            "treat the others as right, (correct | ~mask).all(-1)",
            _metrics(exact_fn=lambda c, m: c.all(-1).float().mean())),
    Mistake("per-token accuracy counts the padded positions: divide the correct answer tokens by mask.sum()",
            _metrics(token_fn=lambda c, m: c.float().mean())),
    Mistake("per-token accuracy averaged row by row: rows with longer answers have more tokens; "
            "take all correct answer tokens over all answer tokens",
            _metrics(token_fn=lambda c, m: ((c & m).sum(-1).float() / m.sum(-1)).mean())),
    Mistake("per-token accuracy is the exact match: count each right token, not each fully right row",
            _metrics(token_fn=lambda c, m: (c | ~m).all(-1).float().mean())),
    Mistake("log-likelihood taken from the raw logits: take log_softmax over the vocabulary first",
            _metrics(ll_fn=lambda lg, lp, s, m: (_gathered(lg, s) * m).sum(-1).mean())),
    Mistake("log-likelihood as a probability: sum log p(target), not p(target)",
            _metrics(ll_fn=lambda lg, lp, s, m: (_gathered(lp.exp(), s) * m).sum(-1).mean())),
    Mistake("log-likelihood averaged over tokens: sum the answer's log-probabilities in each row (the log of the "
            "probability of the whole answer), then average over rows",
            _metrics(ll_fn=lambda lg, lp, s, m: (_gathered(lp, s) * m).sum() / m.sum())),
    Mistake("log-likelihood includes the padded positions: keep only the masked (answer) tokens",
            _metrics(ll_fn=lambda lg, lp, s, m: _gathered(lp, s).sum(-1).mean())),
    Mistake("returned the loss (negative log-likelihood): the log-likelihood is the sum of log p, at most 0",
            _metrics(ll_fn=lambda lg, lp, s, m: -(_gathered(lp, s) * m).sum(-1).mean())),
    Mistake("log_softmax over the wrong axis: normalise over the vocabulary (dim=-1)",
            _metrics(ll_fn=lambda lg, lp, s, m: (_gathered(lg.log_softmax(1), s) * m).sum(-1).mean())),
    Mistake("summed over every row: average the rows' log-likelihoods (mean over dim 0)",
            _metrics(ll_fn=lambda lg, lp, s, m: (_gathered(lp, s) * m).sum())),
]


_MINUS_100 = ("the padded targets hold -100 (the ignore index), not a token id: replace them before gather, "
              "targets.masked_fill(~mask, 0)")


def check_answer_metrics(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(logits [n, t, vocab], targets [n, t], mask [n, t]) -> (exact, per_token, log_likelihood)``,
    three 0-d tensors (see :func:`course.scaling.answer_metrics`)."""
    return check_function("answer_metrics", fn, answer_metrics, _metrics_cases(), mistakes=METRICS_MISTAKES,
                          output_names=("exact match", "per-token accuracy", "log-likelihood"), atol=1e-5, rtol=1e-4,
                          convert=_to_tensors,
                          exception_hints=[(text, _MINUS_100) for text in ("out of bounds", "index -100")],
                          strict=strict)
