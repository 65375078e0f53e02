"""Lesson 17's checkers: right answers pass; learner-style wrong answers get the hint for their mistake."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from answer_library import Right, Wrong, library_tests, unattempted_test

from course.checks.inference import (check_acceptance_count, check_distillation_loss, check_quantize_per_channel,
                                     check_top_k_routing)

pytestmark = pytest.mark.usefixtures("lenient_checks")


# ----------------------------------------------------------------------------- per-channel quantization

def loop_quantize(w):
    q = torch.zeros_like(w, dtype=torch.int8)
    scale = torch.ones(w.shape[0], 1)
    for i in range(w.shape[0]):
        m = max(abs(float(v)) for v in w[i])
        if m > 0:
            scale[i, 0] = m / 127
            q[i] = torch.round(w[i] / scale[i, 0]).to(torch.int8)
    return q, scale


def float64_quantize(w):
    absmax = w.double().abs().max(dim=1, keepdim=True).values
    scale = torch.where(absmax == 0, torch.ones_like(absmax), absmax / 127)
    return (w.double() / scale).round().clamp(-127, 127).to(torch.int8), scale.float()


def no_zero_guard(w):
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    return torch.round(w / scale).to(torch.int8), scale


QUANTIZE_WRONG = [
    Wrong("whole-tensor max", lambda w: (torch.round(w / (w.abs().max() / 127)).to(torch.int8),
                                         (w.abs().max() / 127).repeat(w.shape[0], 1)), "whole tensor"),
    Wrong("max down the columns", lambda w: (torch.round(w / (w.abs().max(dim=0, keepdim=True).values / 127)).to(torch.int8),
                                             (w.abs().max(dim=0).values / 127)[:, None]), "per column"),
    Wrong("signed max", lambda w: (torch.round(w / (w.max(dim=1, keepdim=True).values / 127)).clamp(-127, 127).to(torch.int8),
                                   w.max(dim=1, keepdim=True).values / 127), "max |w|"),
    Wrong("128 levels", lambda w: (torch.round(w * 128 / w.abs().amax(1, keepdim=True)).clamp(-128, 127).to(torch.int8),
                                   w.abs().amax(1, keepdim=True) / 128), "divided by 128"),
    Wrong("cast without rounding", lambda w: ((w / (w.abs().amax(1, keepdim=True) / 127)).to(torch.int8),
                                              w.abs().amax(1, keepdim=True) / 127), "truncated"),
    Wrong("scale as [out]", lambda w: (float64_quantize(w)[0], float64_quantize(w)[1][:, 0]), "shape"),
    Wrong("codes left in float", lambda w: (float64_quantize(w)[0].float(), float64_quantize(w)[1]), "dtype"),
    Wrong("a zero row divides by zero", no_zero_guard, "row of zeros"),
    # holdout, written after the checker: the scale is rounded to 3 decimals
    Wrong("rounded scale", lambda w: (lambda q, s: (torch.round(w / s.round(decimals=3).clamp(min=1e-3)).clamp(-127, 127)
                                                   .to(torch.int8), s.round(decimals=3)))(*float64_quantize(w)), None),
]
QUANTIZE_RIGHT = [
    Right("loops", loop_quantize),
    Right("float64 inside", float64_quantize),
    Right("amax and where", lambda w: (lambda s: ((w / s).round().to(torch.int8), s))(
        torch.where(w.abs().amax(-1, keepdim=True) > 0, w.abs().amax(-1, keepdim=True) / 127, torch.tensor(1.0)))),
]


# ----------------------------------------------------------------------------- distillation loss

def loop_kl(s, t, T):
    total = 0.0
    for i in range(s.shape[0]):
        p = torch.softmax(t[i] / T, 0)
        total = total + (p * (p.log() - torch.log_softmax(s[i] / T, 0))).sum()
    return total / s.shape[0]


DISTILL_WRONG = [
    Wrong("T, not T squared", lambda s, t, y, T, a: a * T * loop_kl(s, t, T) + (1 - a) * F.cross_entropy(s, y), "not T**2"),
    Wrong("no T squared", lambda s, t, y, T, a: a * F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean")
          + (1 - a) * F.cross_entropy(s, y), "T**2"),
    Wrong("reverse KL", lambda s, t, y, T, a: a * T * T * loop_kl(t, s, T) + (1 - a) * F.cross_entropy(s, y), "wrong way round"),
    Wrong("raw teacher", lambda s, t, y, T, a: a * T * T * F.kl_div(F.log_softmax(s / T, -1), F.softmax(t, -1), reduction="batchmean")
          + (1 - a) * F.cross_entropy(s, y), "teacher was not softened"),
    Wrong("mean over everything", lambda s, t, y, T, a: a * T * T * (F.softmax(t / T, -1) * (F.log_softmax(t / T, -1)
          - F.log_softmax(s / T, -1))).mean() + (1 - a) * F.cross_entropy(s, y), "vocabulary too"),
    Wrong("alpha swapped", lambda s, t, y, T, a: (1 - a) * T * T * loop_kl(s, t, T) + a * F.cross_entropy(s, y), "wrong term"),
    Wrong("soft labels only", lambda s, t, y, T, a: a * T * T * loop_kl(s, t, T), "hard-label term"),
    Wrong("soft cross-entropy", lambda s, t, y, T, a: a * T * T * (-(F.softmax(t / T, -1) * F.log_softmax(s / T, -1)).sum(-1).mean())
          + (1 - a) * F.cross_entropy(s, y), "soft cross-entropy"),
    Wrong("returns a float", lambda s, t, y, T, a: float(a * T * T * loop_kl(s, t, T) + (1 - a) * F.cross_entropy(s, y)), "float"),
    # holdout: probabilities where kl_div wants log-probabilities
    Wrong("probabilities into kl_div", lambda s, t, y, T, a: a * T * T * F.kl_div(F.softmax(s / T, -1), F.softmax(t / T, -1),
          reduction="batchmean") + (1 - a) * F.cross_entropy(s, y), None),
]
DISTILL_RIGHT = [
    Right("loops", lambda s, t, y, T, a: a * T * T * loop_kl(s, t, T) + (1 - a) * F.cross_entropy(s, y)),
    Right("kl_div with log_target", lambda s, t, y, T, a: a * T ** 2 * F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1),
          log_target=True, reduction="batchmean") + (1 - a) * F.cross_entropy(s, y)),
    Right("float64 inside", lambda s, t, y, T, a: (a * T * T * loop_kl(s.double(), t.double(), T)
          + (1 - a) * F.cross_entropy(s.double(), y)).float()),
]


# ----------------------------------------------------------------------------- top-k routing

def loop_routing(x, k):
    w, e = torch.zeros(x.shape[0], k), torch.zeros(x.shape[0], k, dtype=torch.long)
    for i in range(x.shape[0]):
        order = sorted(range(x.shape[1]), key=lambda j: -float(x[i, j]))[:k]
        top = torch.softmax(x[i], 0)[order]
        w[i], e[i] = top / top.sum(), torch.tensor(order)
    return w, e


def ascending(x, k):
    v, i = torch.softmax(x, -1).sort(-1)
    v, i = v[:, -k:], i[:, -k:]
    return v / v.sum(-1, keepdim=True), i


ROUTING_WRONG = [
    Wrong("no renormalising", lambda x, k: torch.topk(torch.softmax(x, -1), k), "renormalised"),
    Wrong("softmax over tokens", lambda x, k: (lambda v, i: (v / v.sum(-1, keepdim=True), i))(*torch.softmax(x, 0).topk(k)),
          "wrong axis"),
    Wrong("smallest", lambda x, k: (lambda v, i: (v / v.sum(-1, keepdim=True), i))(*torch.softmax(x, -1).topk(k, largest=False)),
          "SMALLEST"),
    Wrong("raw scores", lambda x, k: torch.topk(x, k), "raw router scores"),
    Wrong("ascending order", ascending, "largest first"),
    Wrong("sorted by expert number", lambda x, k: (lambda v, i: (v.gather(-1, i.argsort(-1)) / v.sum(-1, keepdim=True),
                                                                 i.sort(-1).values))(*torch.softmax(x, -1).topk(k)),
          "by their number"),
    Wrong("exp without the max", lambda x, k: (lambda p: (lambda v, i: (v / v.sum(-1, keepdim=True), i))(*p.topk(k)))(
        x.exp() / x.exp().sum(-1, keepdim=True)), "overflow"),
    # holdout: weights of all experts, not only the k kept
    Wrong("all weights", lambda x, k: (torch.softmax(x, -1), torch.softmax(x, -1).topk(k).indices), None),
]
ROUTING_RIGHT = [
    Right("loops", loop_routing),
    Right("softmax over the kept scores", lambda x, k: (lambda v, i: (torch.softmax(v, -1), i))(*x.topk(k, dim=-1))),
    Right("sort", lambda x, k: (lambda p: (p.sort(-1, descending=True).values[:, :k]
                                           / p.sort(-1, descending=True).values[:, :k].sum(-1, keepdim=True),
                                           p.sort(-1, descending=True).indices[:, :k]))(torch.softmax(x.double(), -1))),
]


# ----------------------------------------------------------------------------- the acceptance rule

def loop_accept(tokens, q, p, u):
    n = 0
    for i in range(tokens.shape[0]):
        x = int(tokens[i])
        if float(u[i]) < float(p[i, x]) / float(q[i, x]):
            n += 1
        else:
            break
    return n


ACCEPT_WRONG = [
    Wrong("q over p", lambda t, q, p, u: loop_accept(t, p, q, u), "upside down"),
    Wrong("counts all", lambda t, q, p, u: sum(float(u[i]) < float(p[i, t[i]] / q[i, t[i]]) for i in range(len(t))),
          "stops at the first"),
    Wrong("less or equal", lambda t, q, p, u: next((i for i in range(len(t)) if not float(u[i]) <= float(p[i, t[i]] / q[i, t[i]])),
                                                   len(t)), "u == p / q"),
    Wrong("greedy", lambda t, q, p, u: next((i for i in range(len(t)) if int(p[i].argmax()) != int(t[i])), len(t)), "greedy rule"),
    Wrong("target row i + 1", lambda t, q, p, u: next((i for i in range(len(t))
                                                       if not float(u[i]) < float(p[i + 1, t[i]] / q[i, t[i]])), len(t)),
          "row i + 1"),
    Wrong("adds the bonus", lambda t, q, p, u: loop_accept(t, q, p, u) + 1, "bonus"),
    Wrong("returns a float", lambda t, q, p, u: float(loop_accept(t, q, p, u)), "dtype"),
    # holdout: the ratio capped with min(1, .) and compared with <=
    Wrong("min and <=", lambda t, q, p, u: next((i for i in range(len(t))
                                                 if not float(u[i]) <= min(1.0, float(p[i, t[i]] / q[i, t[i]]))), len(t)), None),
]
ACCEPT_RIGHT = [
    Right("loop", loop_accept),
    Right("cumprod of the accepted flags", lambda t, q, p, u: int(
        (u < p[: len(t)].gather(1, t[:, None])[:, 0] / q.gather(1, t[:, None])[:, 0]).long().cumprod(0).sum())),
    Right("0-d tensor", lambda t, q, p, u: torch.tensor(loop_accept(t, q, p, u))),
]

LIBRARY = {
    check_quantize_per_channel: (QUANTIZE_WRONG, QUANTIZE_RIGHT),
    check_distillation_loss: (DISTILL_WRONG, DISTILL_RIGHT),
    check_top_k_routing: (ROUTING_WRONG, ROUTING_RIGHT),
    check_acceptance_count: (ACCEPT_WRONG, ACCEPT_RIGHT),
}

# Each wrong answer fails, in one line holding its words; each right answer passes.
test_each_wrong_answer_fails_with_its_words, test_each_right_answer_passes = library_tests(LIBRARY)

test_an_unattempted_exercise_says_so = unattempted_test(LIBRARY)
