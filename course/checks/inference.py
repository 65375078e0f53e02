"""Checkers for lesson 17 (inference): per-channel int8 quantization, the distillation loss, top-k routing and
the speculative acceptance rule.

Each compares the learner's function with the package version in :mod:`course.inference` and names the likely
mistake from a library of wrong implementations. The cases separate the mistakes: rows of very different sizes
(so one scale for the whole tensor shows) and a non-square weight (so a scale per column does not pass by
shape), a row of zeros, values whose rounding differs from truncation; logits where teacher and student differ
and a temperature other than 1 and 2 (so a missing ``T**2`` or an unsoftened teacher shows); router scores with
no ties, ``k`` of 1, 2 and all experts; acceptance draws exactly at the ratio ``p / q``, a draft more confident
than the target and a run that is rejected early and would be accepted later.
tests/checks/test_checks_inference.py proves each mistake gets its hint.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from course.inference import absmax_quantize, acceptance_count, distillation_loss, top_k_routing

from .core import CheckResult, Mistake, check_function

__all__ = ["check_quantize_per_channel", "check_distillation_loss", "check_top_k_routing", "check_acceptance_count"]


# ----------------------------------------------------------------------------- per-channel quantization

def quantize_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(0)
    rows = torch.tensor([[0.05], [1.0], [7.0], [0.3], [20.0]])
    w = torch.randn(5, 9, generator=g) * rows                               # rows of very different sizes
    tall = torch.randn(12, 4, generator=g) * torch.linspace(0.1, 4, 12)[:, None]
    lopsided = torch.rand(3, 6, generator=g) * 2 + 0.5                      # all positive: absmax = max
    lopsided[1] = -lopsided[1]                                              # a row all negative
    with_zero = torch.randn(4, 5, generator=g)
    with_zero[2] = 0.0                                                      # a pruned row
    return [(w,), (tall,), (lopsided,), (with_zero,)]


def _per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return absmax_quantize(w, dim=0)


def _scaled(w, scale, how=torch.round):
    return how(w / scale).clamp(-127, 127).to(torch.int8), scale


QUANTIZE_MISTAKES = [
    Mistake("one scale for the whole tensor: each output row (channel) needs its own, its own max |w| / 127 "
            "(reduce over dim=1 with keepdim=True)",
            lambda w: _scaled(w, (w.abs().amax() / 127).expand(w.shape[0], 1))),
    Mistake("a scale per column: per channel means per OUTPUT row of w [out, in]; take max |w| over dim=1",
            lambda w: (torch.round(w / (w.abs().amax(dim=0, keepdim=True) / 127)).clamp(-127, 127).to(torch.int8),
                       w.abs().amax(dim=0, keepdim=True).T / 127)),
    Mistake("max, not max |w|: a row's largest magnitude may be negative; use w.abs().amax(dim=1, keepdim=True)",
            lambda w: _scaled(w, w.amax(dim=1, keepdim=True) / 127)),
    Mistake("divided by 128: int8 reaches -128 but only +127, so symmetric absmax maps max |w| to 127",
            lambda w: _scaled(w, w.abs().amax(dim=1, keepdim=True) / 128)),
    Mistake("divided by 128: int8 reaches -128 but only +127, so symmetric absmax maps max |w| to 127",
            lambda w: (torch.round(w / (w.abs().amax(dim=1, keepdim=True) / 128)).clamp(-128, 127).to(torch.int8),
                       w.abs().amax(dim=1, keepdim=True) / 128)),
    Mistake("divided by 255: that is the asymmetric (zero-point) range; symmetric absmax uses 127 levels each side",
            lambda w: _scaled(w, w.abs().amax(dim=1, keepdim=True) / 255)),
    Mistake("truncated instead of rounding: .to(torch.int8) cuts toward zero; round first (torch.round)",
            lambda w: (torch.trunc(w / (w.abs().amax(dim=1, keepdim=True) / 127)).to(torch.int8),
                       w.abs().amax(dim=1, keepdim=True) / 127)),
    Mistake("floor instead of round: torch.floor sends -0.2 to -1; round to the nearest code",
            lambda w: _scaled(w, w.abs().amax(dim=1, keepdim=True) / 127, torch.floor)),
    Mistake("the scale is the reciprocal: scale = max |w| / 127 (so that w ~ q * scale), and q = round(w / scale)",
            lambda w: _scaled(w, 127 / w.abs().amax(dim=1, keepdim=True))),
]


def _zero_rows(args, name, got, want):
    """Where the answer is wrong only in the rows of ``w`` that are all zeros, say so."""
    w = args[0]
    zero = ~w.bool().any(dim=1)                                             # [out]
    wrong = (got - want).abs().reshape(w.shape[0], -1).amax(dim=1) > 1e-6   # [out]
    if bool(zero.any()) and bool(wrong.any()) and bool((wrong <= zero).all()):
        return ("wrong only in the row of zeros: its max |w| is 0, so give it scale 1 (its codes are then 0) "
                "instead of dividing by 0")
    return None


def check_quantize_per_channel(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(w [out, in]) -> (q int8 [out, in], scale [out, 1])``: absmax per output row."""
    return check_function("quantize_per_channel", fn, _per_channel, quantize_cases(), mistakes=QUANTIZE_MISTAKES,
                          output_names=("q", "scale"), atol=1e-6, rtol=1e-5, batch_first=False, locate=_zero_rows,
                          nonfinite_hint="a row of zeros has max |w| = 0 and a scale of 0, so w / scale is 0 / 0: "
                                         "give such rows scale 1 (torch.where(absmax > 0, absmax / 127, 1))")


# ----------------------------------------------------------------------------- distillation loss

def distill_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(1)
    s1, t1 = torch.randn(6, 7, generator=g), torch.randn(6, 7, generator=g) * 3
    y1 = torch.randint(0, 7, (6,), generator=g)
    s2, t2 = torch.randn(10, 13, generator=g) * 2, torch.randn(10, 13, generator=g)
    y2 = torch.randint(0, 13, (10,), generator=g)
    s3, t3 = torch.randn(1, 5, generator=g), torch.randn(1, 5, generator=g) * 4
    return [(s1, t1, y1, 3.0, 0.7), (s2, t2, y2, 0.5, 0.25), (s3, t3, torch.tensor([4]), 4.0, 1.0),
            (s1, t1, y1, 1.0, 0.0)]


def _kl(s, t, T, reduction="batchmean"):
    ls, lt = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
    terms = lt.exp() * (lt - ls)                                            # [n, V]
    return {"batchmean": terms.sum(-1).mean(), "mean": terms.mean(), "sum": terms.sum()}[reduction]


def _ce(s, y):
    return F.cross_entropy(s, y)


DISTILL_MISTAKES = [
    Mistake("the T**2 factor is missing: dividing the logits by T shrinks the soft term's gradients by 1 / T**2, "
            "so multiply the KL term by T**2",
            lambda s, t, y, T, a: a * _kl(s, t, T) + (1 - a) * _ce(s, y)),
    Mistake("multiplied by T, not T**2: dividing the logits by T shrinks the soft term's gradients by 1 / T**2, "
            "so the KL term is multiplied by T * T",
            lambda s, t, y, T, a: a * T * _kl(s, t, T) + (1 - a) * _ce(s, y)),
    Mistake("the KL divergence is the wrong way round: it is KL(teacher || student), sum of p_teacher * "
            "(log p_teacher - log p_student)",
            lambda s, t, y, T, a: a * T * T * _kl(t, s, T) + (1 - a) * _ce(s, y)),
    Mistake("the teacher was not softened: divide the teacher's logits by T too",
            lambda s, t, y, T, a: a * T * T * _kl(s, t * T, T) + (1 - a) * _ce(s, y)),
    Mistake("the student was not softened: divide the student's logits by T too",
            lambda s, t, y, T, a: a * T * T * _kl(s * T, t, T) + (1 - a) * _ce(s, y)),
    Mistake("averaged over the vocabulary too (F.kl_div's reduction='mean'): sum over the vocabulary, average "
            "over positions (reduction='batchmean')",
            lambda s, t, y, T, a: a * T * T * _kl(s, t, T, "mean") + (1 - a) * _ce(s, y)),
    Mistake("summed over positions (reduction='sum'): average over positions (reduction='batchmean')",
            lambda s, t, y, T, a: a * T * T * _kl(s, t, T, "sum") + (1 - a) * _ce(s, y)),
    Mistake("alpha weighs the wrong term: alpha multiplies the soft (KL) term, 1 - alpha the hard labels",
            lambda s, t, y, T, a: (1 - a) * T * T * _kl(s, t, T) + a * _ce(s, y)),
    Mistake("the hard-label term is missing: add (1 - alpha) * cross_entropy(student_logits, targets)",
            lambda s, t, y, T, a: a * T * T * _kl(s, t, T)),
    Mistake("the hard labels were softened too: the cross-entropy uses the student's plain logits, not divided by T",
            lambda s, t, y, T, a: a * T * T * _kl(s, t, T) + (1 - a) * _ce(s / T, y)),
    Mistake("that is the soft cross-entropy, not the KL divergence: it adds the teacher's entropy (same gradient, "
            "another value); subtract sum p_teacher log p_teacher, or use F.kl_div",
            lambda s, t, y, T, a: a * T * T * -(F.softmax(t / T, -1) * F.log_softmax(s / T, -1)).sum(-1).mean()
            + (1 - a) * _ce(s, y)),
]


def check_distillation_loss(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(student_logits [n, V], teacher_logits [n, V], targets [n], temperature, alpha) -> scalar``."""
    return check_function("distillation_loss", fn, distillation_loss, distill_cases(), mistakes=DISTILL_MISTAKES,
                          output_names=("loss",), atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- top-k routing

def routing_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(2)
    return [
        (torch.randn(6, 5, generator=g) * 2, 2),
        (torch.randn(4, 8, generator=g) * 3, 3),
        (torch.randn(5, 4, generator=g), 1),                                # top-1: a weight of exactly 1
        (torch.randn(3, 4, generator=g) + 90, 4),                           # every expert; scores above 88
    ]


def _topk_probs(logits, k):
    return logits.softmax(-1).topk(k, dim=-1)


def _by_expert_number(values, experts):
    """Renormalised top-k weights and their experts, each token's sorted by expert number."""
    order = experts.argsort(-1)
    return (values / values.sum(-1, keepdim=True)).gather(-1, order), experts.gather(-1, order)


ROUTING_MISTAKES = [
    Mistake("the weights were not renormalised: divide the k kept probabilities by their sum, so each token's "
            "weights add up to 1",
            lambda x, k: tuple(_topk_probs(x, k))),
    Mistake("the weights are the raw router scores: take the softmax over experts first (or over the k kept scores)",
            lambda x, k: tuple(x.topk(k, dim=-1))),
    Mistake("softmax over the wrong axis: each token's probabilities are over experts, the last dimension (dim=-1)",
            lambda x, k: (lambda v, i: (v / v.sum(-1, keepdim=True), i))(*x.softmax(0).topk(k, dim=-1))),
    Mistake("picked the k SMALLEST: the router keeps the k most likely experts (torch.topk's default, largest=True)",
            lambda x, k: (lambda v, i: (v / v.sum(-1, keepdim=True), i))(*x.softmax(-1).topk(k, dim=-1, largest=False))),
    Mistake("the experts are listed smallest first: return them largest first, as torch.topk does",
            lambda x, k: (lambda v, i: (v.flip(-1) / v.sum(-1, keepdim=True), i.flip(-1)))(*_topk_probs(x, k))),
    Mistake("the experts are listed by their number: list each token's experts by weight, largest first, as "
            "torch.topk returns them (the right experts and weights, in another order)",
            lambda x, k: _by_expert_number(*_topk_probs(x, k))),
]


def check_top_k_routing(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(router_logits [tokens, n_experts], k) -> (weights [tokens, k], experts [tokens, k])``."""
    return check_function("top_k_routing", fn, top_k_routing, routing_cases(), mistakes=ROUTING_MISTAKES,
                          output_names=("weights", "experts"), atol=1e-5, rtol=1e-4, batch_first=False,
                          nonfinite_hint="scores above 88 overflow exp() in float32: use torch.softmax (it "
                                         "subtracts the max first)")


# ----------------------------------------------------------------------------- the acceptance rule

def _probs(rows):
    t = torch.tensor(rows, dtype=torch.float32)
    return t / t.sum(-1, keepdim=True)


def acceptance_cases() -> list[tuple]:
    q = _probs([[0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8], [0.5, 0.25, 0.25]])
    p = _probs([[0.25, 0.5, 0.25], [0.2, 0.3, 0.5], [0.4, 0.1, 0.5], [0.5, 0.25, 0.25]])
    tokens = torch.tensor([0, 1, 2, 0])
    g = torch.Generator().manual_seed(3)
    q5 = torch.softmax(torch.randn(5, 6, generator=g) * 2, -1)
    p5 = torch.softmax(torch.randn(5, 6, generator=g) * 2, -1)
    t5 = (q5.argmax(-1) + 1) % 6                                          # drafted tokens, not all the likeliest
    return [
        # token 0: ratio 0.5; token 1: 0.5; token 2: 0.625; token 3: p == q (always accepted)
        (tokens, q, p, torch.tensor([0.3, 0.2, 0.6, 0.99])),                # all four accepted: 4
        (tokens, q, p, torch.tensor([0.3, 0.7, 0.1, 0.1])),                 # rejected at 2nd, later ones pass: 1
        (tokens, q, p, torch.tensor([0.5, 0.1, 0.1, 0.1])),                 # u == p / q exactly: rejected, 0
        (tokens[:3], q[:3], p, torch.tensor([0.1, 0.4, 0.7])),              # target gives k + 1 rows: 2
        (t5, q5, p5, torch.rand(5, generator=g)),
        (t5, q5, p5, torch.zeros(5)),                                       # u = 0: accepted wherever p > 0
    ]


def _ratio(tokens, q, p):
    idx = tokens.long()[:, None]
    return p[: tokens.shape[0]].gather(1, idx)[:, 0], q.gather(1, idx)[:, 0]


def _leading(flags) -> int:
    n = 0
    for f in flags:
        if not f:
            break
        n += 1
    return n


def _leading_rows(tokens, q, p, u, shift: int) -> int:
    """Accepted draft tokens, checked one by one (stopping at the first rejection) against target row i + shift."""
    n = 0
    for i, x in enumerate(tokens.tolist()):
        if not float(u[i]) * float(q[i, x]) < float(p[i + shift, x]):
            break
        n += 1
    return n


ACCEPTANCE_MISTAKES = [
    Mistake("the ratio is upside down: accept when u < p(x) / q(x), the target's probability over the draft's",
            lambda t, q, p, u: _leading((u * _ratio(t, q, p)[0] < _ratio(t, q, p)[1]).tolist())),
    Mistake("counted every acceptance: checking stops at the first rejected token (the ones after it were "
            "drafted from a prefix the target does not keep)",
            lambda t, q, p, u: int((u * _ratio(t, q, p)[1] < _ratio(t, q, p)[0]).sum())),
    Mistake("accepted at u == p / q: the rule is u < p / q (a draw in [0, 1) lands below the ratio with "
            "probability exactly min(1, p / q))",
            lambda t, q, p, u: _leading((u * _ratio(t, q, p)[1] <= _ratio(t, q, p)[0]).tolist())),
    Mistake("that is the greedy rule (accept when the token is the target's argmax): with probabilities, accept "
            "when u < p(x) / q(x)",
            lambda t, q, p, u: _leading((p[: t.shape[0]].argmax(-1) == t).tolist())),
    Mistake("compared u with p(x) alone: the acceptance probability is p(x) / q(x) (capped at 1)",
            lambda t, q, p, u: _leading((u < _ratio(t, q, p)[0]).tolist())),
    Mistake("looked up the probabilities of the most likely token, not of the drafted token x_i",
            lambda t, q, p, u: _leading((u * q.max(-1).values < p[: t.shape[0]].gather(1, q.argmax(-1)[:, None])[:, 0]).tolist())),
    Mistake("read the target's row i + 1 for draft token i: row i of target_probs (the same row as draft_probs[i]) "
            "scores draft token i; the extra last row, when given, is for the bonus token",
            lambda t, q, p, u: _leading_rows(t, q, p, u, shift=1)),
    Mistake("counted the bonus token: return the number of draft tokens accepted (0..k), not the tokens added",
            lambda t, q, p, u: acceptance_count(t, q, p, u) + 1),
]


def _as_count(value):
    """A Python number (or a 0-d integer tensor) as a 0-d tensor; anything else unchanged, for the engine to name."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):                                     # a float is then named by its dtype
        return torch.tensor(value)
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point():
        return value.long()
    return value


def _counting(fn):
    return lambda *args: _as_count(fn(*args))


def check_acceptance_count(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(draft_tokens [k], draft_probs [k, V], target_probs [k or k + 1, V], uniforms [k]) -> int``."""
    mistakes = [Mistake(m.hint, _counting(m.fn)) for m in ACCEPTANCE_MISTAKES]
    return check_function("acceptance_count", fn, _counting(acceptance_count), acceptance_cases(), mistakes=mistakes,
                          output_names=("accepted",), convert=_as_count, strict=strict, exception_hints=[
                              ("out of bounds", "row i of target_probs is the target's distribution for draft token i (the "
                               "same row as draft_probs[i]); the extra last row, when given, is for the bonus "
                               "token: use target_probs[i], not target_probs[i + 1]")])
