"""Checkers for lesson 10 (seeing attention): attention rollout, the "it" referent share, the best head."""
from __future__ import annotations

import torch

from .core import CheckResult, Mistake, check_function


def _stochastic(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * 2).softmax(-1)


def reference_rollout(attentions: torch.Tensor) -> torch.Tensor:
    """``[layers, heads, s, s] -> [s, s]``: mean of heads, (A + I) / 2 renormalised, later layers on the left."""
    from course.viz import attention_rollout
    return attention_rollout(attentions, add_residual=True)


def _rollout_no_residual(a):
    from course.viz import attention_rollout
    return attention_rollout(a, add_residual=False)


def _rollout_wrong_order(a):
    per = a.mean(1)
    eye = torch.eye(per.shape[-1])
    per = 0.5 * per + 0.5 * eye
    per = per / per.sum(-1, keepdim=True)
    out = eye
    for layer in per:
        out = out @ layer
    return out


def _rollout_last_layer_only(a):
    per = 0.5 * a[-1].mean(0) + 0.5 * torch.eye(a.shape[-1])
    return per / per.sum(-1, keepdim=True)


def _rollout_max_heads(a):
    per = a.max(1).values
    per = 0.5 * per + 0.5 * torch.eye(a.shape[-1])
    per = per / per.sum(-1, keepdim=True)
    out = torch.eye(a.shape[-1])
    for layer in per:
        out = layer @ out
    return out


ROLLOUT_MISTAKES = [
    Mistake("the residual is missing: use (A + I) / 2 for each layer before multiplying", _rollout_no_residual),
    Mistake("the layers are multiplied in the wrong order: the later layer goes on the left (R = A_L @ ... @ A_1)",
            _rollout_wrong_order),
    Mistake("only the last layer is used: multiply every layer's matrix", _rollout_last_layer_only),
    Mistake("heads are combined with max: average them (mean over dim 1)", _rollout_max_heads),
]


def check_rollout(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(attentions [layers, heads, s, s]) -> rollout [s, s]``."""
    cases = [(_stochastic(2, 2, 3, 3, seed=0),), (_stochastic(3, 4, 5, 5, seed=1),), (_stochastic(1, 1, 4, 4, seed=2),)]
    return check_function("attention rollout", fn, reference_rollout, cases, mistakes=ROLLOUT_MISTAKES,
                          atol=1e-5, strict=strict)


def reference_referent_share(weights, it_pos, right_pos, wrong_pos) -> torch.Tensor:
    """``weights [b, s, s]``, positions ``[b]`` -> share of rows of "it" where right beats wrong (0-dim)."""
    rows = weights[torch.arange(len(it_pos)), it_pos]
    return (rows[torch.arange(len(it_pos)), right_pos] > rows[torch.arange(len(it_pos)), wrong_pos]).float().mean()


def _share_column(weights, it_pos, right_pos, wrong_pos):
    cols = weights[torch.arange(len(it_pos)), :, it_pos]  # who looks AT "it", not where "it" looks
    return (cols[torch.arange(len(it_pos)), right_pos] > cols[torch.arange(len(it_pos)), wrong_pos]).float().mean()


def _share_argmax(weights, it_pos, right_pos, wrong_pos):
    rows = weights[torch.arange(len(it_pos)), it_pos]
    return (rows.argmax(-1) == right_pos).float().mean()


def _share_count(weights, it_pos, right_pos, wrong_pos):
    return reference_referent_share(weights, it_pos, right_pos, wrong_pos) * len(it_pos)


def _share_cases() -> list[tuple]:
    w = _stochastic(8, 6, 6, seed=3)
    it = torch.tensor([3, 4, 3, 5, 2, 4, 3, 5])
    right = torch.tensor([1, 0, 5, 1, 4, 2, 0, 3])
    wrong = torch.tensor([2, 3, 1, 0, 0, 5, 1, 2])
    # make "it" in example 0 look hardest at a token that is neither noun, and column != row
    w[0, 3] = torch.tensor([0.05, 0.25, 0.10, 0.5, 0.05, 0.05])
    return [(w, it, right, wrong), (_stochastic(5, 7, 7, seed=4), torch.tensor([6, 5, 4, 3, 2]),
                                    torch.tensor([0, 1, 2, 0, 1]), torch.tensor([1, 0, 0, 1, 0]))]


SHARE_MISTAKES = [
    Mistake("you read a column (who looks at 'it'); the row weights[b, it_pos] says where 'it' looks", _share_column),
    Mistake("compare the right noun with the wrong noun only, not with every token (no argmax over the row)",
            _share_argmax),
    Mistake("return the share (a mean between 0 and 1), not the count", _share_count),
]


def check_referent_share(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(weights [b, s, s], it_pos, right_pos, wrong_pos) -> share`` (0-dim tensor)."""
    return check_function("referent share", fn, reference_referent_share, _share_cases(), mistakes=SHARE_MISTAKES,
                          atol=1e-6, strict=strict)


def reference_best_head(scores) -> tuple[int, int]:
    flat = int(torch.as_tensor(scores).flatten().argmax())
    return flat // scores.shape[1], flat % scores.shape[1]


def _best_head_swapped(scores):
    layer, head = reference_best_head(scores)
    return head, layer


def _best_head_worst(scores):
    flat = int(torch.as_tensor(scores).flatten().argmin())
    return flat // scores.shape[1], flat % scores.shape[1]


def _best_head_divides_by_layers(scores):
    flat = int(torch.as_tensor(scores).flatten().argmax())
    return flat // scores.shape[0], flat % scores.shape[0]


BEST_HEAD_MISTAKES = [
    Mistake("(layer, head) came back swapped: the row index is the layer, the column the head", _best_head_swapped),
    Mistake("that is the lowest score: use argmax, not argmin", _best_head_worst),
    Mistake("to turn a flat index into (layer, head), divide by the number of heads (scores.shape[1])",
            _best_head_divides_by_layers),
]


def check_best_head(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(scores [layers, heads]) -> (layer, head)`` as ints."""
    cases = [(torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.95, 0.7], [0.2, 0.3, 0.25, 0.0]]),),  # all hints differ
             (torch.tensor([[0.5, 0.52, 0.4], [0.9, 0.1, 0.3]]),),
             (torch.tensor([[0.1, 0.2, 0.3, 0.95], [0.5, 0.5, 0.5, 0.5]]),),
             (torch.tensor([[0.2, 0.3], [0.4, 0.1], [0.6, 0.99]]),)]
    def as_tensor(f):
        return lambda s: torch.tensor([int(v) for v in f(s)])

    mistakes = [Mistake(m.hint, as_tensor(m.fn)) for m in BEST_HEAD_MISTAKES]
    return check_function("best head", as_tensor(fn), as_tensor(reference_best_head), cases, mistakes=mistakes,
                          atol=0, strict=strict)
