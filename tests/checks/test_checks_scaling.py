"""Lesson 13's checkers: right answers, written other ways, pass; learner-style wrong answers get the hint
for their mistake."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from answer_library import Right, Wrong, library_tests, unattempted_test

from course.checks.scaling import (
    _FLOPS_CASES,
    _fit_cases,
    _metrics_cases,
    FIT_MISTAKES,
    FLOPS_MISTAKES,
    METRICS_MISTAKES,
    check_answer_metrics,
    check_fit_loglinear,
    check_training_flops,
)
from course.scaling import answer_metrics, fit_loglinear, gpt_training_flops

pytestmark = pytest.mark.usefixtures("lenient_checks")


# ----------------------------------------------------------------------------- FLOPs, as learners write them

def flops_by_parts(L, d, d_ff, V, batch, seq, *, backward=2, mac=2, attention=2, head=True, ff=None, qkv=3,
                   per_layer_head=False, proj=True, ff_products=2):
    """A learner's count with one choice changed (the right one by default)."""
    ff = d_ff if ff is None else ff
    layer = mac * seq * d * qkv * d + attention * mac * seq * seq * d + (mac * seq * d * d if proj else 0) \
        + ff_products * mac * seq * d * ff
    lm = mac * seq * d * V if head else 0
    forward = L * (layer + (lm if per_layer_head else 0)) + (0 if per_layer_head else lm)
    return (1 + backward) * batch * forward


def flops_per_token_times_tokens(L, d, d_ff, V, batch, seq):
    tokens = batch * seq
    per_token = 2 * (3 * d * d + d * d + 2 * d * d_ff) * L + 2 * 2 * seq * d * L + 2 * d * V
    return 3 * per_token * tokens


def flops_loop(L, d, d_ff, V, batch, seq):
    def matmul(m, k, n):
        return 2 * m * k * n
    total = 0
    for _ in range(batch):
        for _ in range(L):
            total += sum(matmul(seq, d, d) for _ in range(3))            # q, k, v
            total += matmul(seq, d, seq) + matmul(seq, seq, d)            # scores, weights @ v
            total += matmul(seq, d, d) + matmul(seq, d, d_ff) + matmul(seq, d_ff, d)
        total += matmul(seq, d, V)
    return total + 2 * total                                              # backward: twice the forward


WRONG_FLOPS = [
    Wrong("forward only", lambda *a: flops_by_parts(*a, backward=0), "only the forward pass"),
    Wrong("backward equal to forward", lambda *a: flops_by_parts(*a, backward=1), "backward counted once"),
    Wrong("multiply-adds", lambda *a: flops_by_parts(*a, mac=1), "multiply-adds"),
    Wrong("6 N D with block weights", lambda L, d, ff, V, B, T: 6 * L * (4 * d * d + 2 * d * ff) * B * T, "6 N D"),
    Wrong("no attention products", lambda *a: flops_by_parts(*a, attention=0), "T x T products are missing"),
    Wrong("only Q K^T", lambda *a: flops_by_parts(*a, attention=1), "only one of attention's"),
    Wrong("no output layer", lambda *a: flops_by_parts(*a, head=False), "output layer is missing"),
    Wrong("output layer per layer", lambda *a: flops_by_parts(*a, per_layer_head=True), "in every layer"),
    Wrong("embedding lookup counted as a product", lambda L, d, ff, V, B, T: flops_by_parts(L, d, ff, V, B, T)
          + 3 * B * 2 * T * V * d, "token embedding counted"),
    Wrong("6 N D with N = 12 L d^2", lambda L, d, ff, V, B, T: 6 * (12 * L * d ** 2) * (B * T), "N = 12 L d^2"),
    Wrong("causal half of the T x T products", lambda L, d, ff, V, B, T: flops_by_parts(L, d, ff, V, B, T, attention=0)
          + 3 * B * L * 2 * 2 * d * sum(range(1, T + 1)), "causal half"),
    Wrong("d_ff = 4 d", lambda L, d, ff, V, B, T: flops_by_parts(L, d, ff, V, B, T, ff=4 * d), "4 d_model"),
    Wrong("fused qkv counted once", lambda *a: flops_by_parts(*a, qkv=1), "three d x d products"),
    Wrong("no output projection", lambda *a: flops_by_parts(*a, proj=False), "output projection"),
    Wrong("one feed-forward product", lambda *a: flops_by_parts(*a, ff_products=1), "two products"),
    Wrong("forgot the batch", lambda L, d, ff, V, B, T: flops_by_parts(L, d, ff, V, 1, T), "batch is missing"),
    Wrong("per token", lambda L, d, ff, V, B, T: flops_by_parts(L, d, ff, V, B, 1), None),
    Wrong("a float", lambda *a: float(flops_by_parts(*a)), "should return an int"),
    Wrong("returns nothing", lambda *a: None, "None"),
    # holdouts, written after the checker was finished
    Wrong("seq squared forgotten in scores", lambda L, d, ff, V, B, T: flops_by_parts(L, d, ff, V, B, T, attention=0)
          + 3 * B * L * 2 * 2 * T * d, None),
    Wrong("backward of the head left out", lambda L, d, ff, V, B, T: flops_by_parts(L, d, ff, V, B, T, head=False)
          + B * 2 * T * d * V, None),
]
RIGHT_FLOPS = [
    Right("by parts", lambda *a: flops_by_parts(*a)),
    Right("per token times tokens", flops_per_token_times_tokens),
    Right("a loop over products", flops_loop),
]


# ----------------------------------------------------------------------------- the line, as learners write it

def fit_polyfit(n, loss, E):
    slope, intercept = np.polyfit(np.log(n.double().numpy()), np.log(loss.double().numpy() - E), 1)
    return float(np.exp(intercept)), float(-slope)


def fit_lstsq(n, loss, E):
    X = torch.stack([torch.ones_like(n, dtype=torch.float64), n.double().log()], dim=1)
    sol = torch.linalg.lstsq(X, (loss.double() - E).log()[:, None]).solution[:, 0]
    return sol[0].exp(), -sol[1]


def fit_log10(n, loss, E):
    u, v = torch.log10(n.double()), torch.log10(loss.double() - E)
    slope = ((u - u.mean()) * (v - v.mean())).sum() / ((u - u.mean()) ** 2).sum()
    return 10 ** (v.mean() - slope * u.mean()), -slope


def fit_float32(n, loss, E):
    u, v = n.log(), (loss - E).log()
    du = u - u.mean()
    slope = (du * (v - v.mean())).sum() / (du * du).sum()
    return torch.exp(v.mean() - slope * u.mean()), -slope


def fit_e_minus_loss(n, loss, E):
    u, v = n.double().log(), (E - loss.double()).log()              # NaN: E lies below every loss
    du = u - u.mean()
    slope = (du * (v - v.mean())).sum() / (du * du).sum()
    return torch.exp(v.mean() - slope * u.mean()), -slope


def fit_with(*, subtract=True, sign=-1, a=math.exp, reverse=False, intercept=True, add=False):
    def fn(n, loss, E):
        u = np.log(n.double().numpy())
        y = loss.double().numpy()
        v = np.log(y + E if add else (y - E if subtract else y))
        if reverse:
            s, c = np.polyfit(v, u, 1)
            return float(np.exp(-c / s)), float(-1 / s)
        if not intercept:
            slope = float((u * v).sum() / (u * u).sum())
            return 1.0, -slope
        slope, c = np.polyfit(u, v, 1)
        return float(a(c)), float(sign * slope)
    return fn


WRONG_FITS = [
    Wrong("log of the loss", fit_with(subtract=False), "E was not subtracted"),
    Wrong("slope as alpha", fit_with(sign=1), "wrong sign"),
    Wrong("A is the intercept", fit_with(a=lambda c: c), "intercept itself"),
    Wrong("10 ** intercept", fit_with(a=lambda c: 10 ** c), "same base"),
    Wrong("log n on log L", fit_with(reverse=True), "y on x"),
    Wrong("through the origin", fit_with(intercept=False), "no intercept"),
    Wrong("plus E", fit_with(add=True), "added E"),
    Wrong("log(E - loss)", fit_e_minus_loss, "E must stay below"),
    Wrong("three values", lambda n, loss, E: [1.0, 2.0, 3.0], "returned 3 values"),
    Wrong("returns nothing", lambda n, loss, E: None, "None"),
    # holdouts
    Wrong("fits the loss in linear space", lambda n, loss, E: tuple(
        float(v) for v in np.polyfit(n.double().numpy(), loss.double().numpy() - E, 1)), None),
    Wrong("alpha from the first and last points", lambda n, loss, E: (
        1.0, float(-(math.log(loss[-1] - E) - math.log(loss[0] - E)) / (math.log(n[-1]) - math.log(n[0])))), None),
]
RIGHT_FITS = [
    Right("numpy polyfit", fit_polyfit),
    Right("torch lstsq with a column of ones", fit_lstsq),
    Right("log10 both ways", fit_log10),
    Right("in the input's dtype", fit_float32),
]


# ----------------------------------------------------------------------------- the scores, as learners write them

def metrics_loop(logits, targets, mask):
    n = logits.shape[0]
    exact, right, total, ll = 0, 0, 0, 0.0
    for i in range(n):
        row_ok = True
        for j in range(logits.shape[1]):
            if not mask[i, j]:
                continue
            logp = torch.log_softmax(logits[i, j].double(), dim=0)
            ok = int(logp.argmax()) == int(targets[i, j])
            right += ok
            total += 1
            row_ok &= ok
            ll += float(logp[int(targets[i, j])])
        exact += row_ok
    return exact / n, right / total, ll / n


def metrics_where(logits, targets, mask):
    t = torch.where(mask, targets, torch.zeros_like(targets))
    logp = torch.nn.functional.log_softmax(logits, dim=-1)
    hit = (logp.argmax(-1) == t) | ~mask
    exact = hit.all(-1).float().mean()
    per_token = (hit & mask).float().sum() / mask.float().sum()
    ll = torch.where(mask, torch.gather(logp, 2, t.unsqueeze(-1)).squeeze(-1), 0.0).sum(1).mean()
    return exact, per_token, ll


def metrics_cross_entropy(logits, targets, mask):
    t = targets.masked_fill(~mask, -100)
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), t, reduction="none")   # [n, t], 0 at -100
    pred = logits.argmax(-1)
    correct = (pred == t) & mask
    exact = (correct.sum(-1) == mask.sum(-1)).double().mean()
    return exact, correct.sum() / mask.sum(), -nll.sum(-1).mean()


def metrics_variant(*, exact="rows", tokens="all", ll="sum", log=True, pads=False):
    def fn(logits, targets, mask):
        m = torch.ones_like(mask) if pads else mask
        t = targets.masked_fill(~mask, 0)
        logp = logits.log_softmax(-1) if log else logits
        correct = (logits.argmax(-1) == targets) & m
        if exact == "rows":
            e = (correct | ~m).all(-1).float().mean()
        elif exact == "tokens":
            e = correct.sum() / m.sum()
        else:
            e = (logits.argmax(-1) == targets).all(-1).float().mean()
        if tokens == "all":
            tok = correct.sum() / m.sum()
        elif tokens == "everything":
            tok = (logits.argmax(-1) == targets).float().mean()
        else:
            tok = (correct.sum(-1) / m.sum(-1)).mean()
        lp = logp.gather(-1, t[..., None])[..., 0] * m
        if ll == "sum":
            lik = lp.sum(-1).mean()
        elif ll == "mean":
            lik = lp.sum() / m.sum()
        elif ll == "nll":
            lik = -lp.sum(-1).mean()
        else:
            lik = (logp.exp().gather(-1, t[..., None])[..., 0] * m).sum(-1).mean()
        return e, tok, lik
    return fn


WRONG_METRICS = [
    Wrong("exact as token mean", metrics_variant(exact="tokens"), "exact match averaged over tokens"),
    Wrong("exact over every position", metrics_variant(exact="everything"), "exact match counts the padded"),
    Wrong("token accuracy over everything", metrics_variant(tokens="everything"), "per-token accuracy counts the padded"),
    Wrong("token accuracy per row", metrics_variant(tokens="rows"), "row by row"),
    Wrong("raw logits", metrics_variant(log=False), "raw logits"),
    Wrong("probabilities", metrics_variant(ll="prob"), "as a probability"),
    Wrong("mean log-prob per token", metrics_variant(ll="mean"), "averaged over tokens"),
    Wrong("negative log-likelihood", metrics_variant(ll="nll"), "negative log-likelihood"),
    Wrong("padded log-probs kept", lambda lg, tg, m: metrics_variant()(lg, tg, m)[:2] + (
        lg.log_softmax(-1).gather(-1, tg.masked_fill(~m, 0)[..., None])[..., 0].sum(-1).mean(),), "includes the padded"),
    Wrong("python floats, exact wrong", lambda lg, tg, m: tuple(float(v) for v in metrics_variant(exact="tokens")(lg, tg, m)),
          "exact match averaged over tokens"),
    Wrong("gathers -100", lambda lg, tg, m: metrics_variant()(lg, tg.clone(), m)[:2] + (
        lg.log_softmax(-1).gather(-1, tg[..., None])[..., 0].mul(m).sum(-1).mean(),), "-100"),
    Wrong("two values", lambda lg, tg, m: metrics_where(lg, tg, m)[:2], "returned 2 values"),
    # holdouts
    Wrong("ll summed over the batch", lambda lg, tg, m: metrics_where(lg, tg, m)[:2] + (
        metrics_where(lg, tg, m)[2] * lg.shape[0],), None),
    Wrong("exact from the last token only", lambda lg, tg, m: (
        (lg.argmax(-1)[:, -1] == tg[:, -1]).float().mean(),) + tuple(metrics_where(lg, tg, m)[1:]), None),
]
RIGHT_METRICS = [
    Right("a loop in float64", metrics_loop),
    Right("torch.where", metrics_where),
    Right("cross_entropy with ignore_index", metrics_cross_entropy),
]

LIBRARY = {
    check_training_flops: (WRONG_FLOPS, RIGHT_FLOPS),
    check_fit_loglinear: (WRONG_FITS, RIGHT_FITS),
    check_answer_metrics: (WRONG_METRICS, RIGHT_METRICS),
}

# Each wrong answer fails, in one line holding its words; each right answer passes.
test_each_wrong_answer_fails_with_its_words, test_each_right_answer_passes = library_tests(LIBRARY)


# ----------------------------------------------------------------------------- the mistake libraries themselves

@pytest.mark.parametrize("checker, mistakes, cases, reference", [
    (check_training_flops, FLOPS_MISTAKES, _FLOPS_CASES, gpt_training_flops),
    (check_fit_loglinear, FIT_MISTAKES, _fit_cases(), None),
    (check_answer_metrics, METRICS_MISTAKES, _metrics_cases(), None),
], ids=["flops", "fit", "metrics"])
def test_every_known_mistake_gets_its_own_hint(checker, mistakes, cases, reference):
    for mistake in mistakes:
        result = checker(mistake.fn)
        assert not result.passed, mistake.hint
        assert mistake.hint in result.line, (mistake.hint, result.line)


def test_flops_mistakes_differ_from_the_answer_and_each_other_on_some_case():
    for i, a in enumerate(FLOPS_MISTAKES):
        assert any(a.fn(*c) != gpt_training_flops(*c) for c in _FLOPS_CASES), a.hint
        for b in FLOPS_MISTAKES[i + 1:]:
            assert any(a.fn(*c) != b.fn(*c) for c in _FLOPS_CASES), (a.hint, b.hint)


def test_the_fit_cases_include_a_noisy_one_where_regressing_backwards_differs():
    n, loss, E = _fit_cases()[2]
    A, alpha = fit_loglinear(n, loss, E)
    back = FIT_MISTAKES[5].fn(n, loss, E)
    assert abs(float(back[1]) - alpha) > 1e-3


def test_the_metric_cases_have_rows_of_different_lengths_some_fully_right_and_minus_100_padding():
    cases = _metrics_cases()
    for logits, targets, mask in cases:
        assert mask.any(-1).all()
    assert any(len(set(m.sum(-1).tolist())) > 1 for _, _, m in cases)
    assert any(float(answer_metrics(*c)[0]) > 0 for c in cases)
    assert (cases[-1][1][~cases[-1][2]] == -100).all()

test_an_unattempted_exercise_says_so = unattempted_test(LIBRARY)
