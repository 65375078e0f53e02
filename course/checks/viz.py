"""Checkers for lesson 10 (seeing attention): attention rollout, the "it" referent share, the best head, the
share of the answer that a patch flips.

The boundaries: for the rollout a single layer and a cropped attention map whose rows do not sum to 1
(the instructions renormalise the rows, which only then matters); for the referent share a tie
between the right and the wrong noun (a tie is not "more weight"); for the best head ties across
layers and within a layer (the instructions define the tie rule: lowest layer, then lowest head),
all scores negative (a search that starts from 0 finds nothing), a single layer and a single head.
The best head must come back as two Python ints: the checker reads the pair itself, so an index
that is a float or a tensor gets its own message instead of being cast into a right answer. For the
flipped share: a patch that overshoots (a share above 1), one that pushes the answer further toward the
clean one (below 0), clean differences of either sign, a table [layers, positions] and a 0-dim case.
"""
from __future__ import annotations

from numbers import Integral

import torch

from ..utils import describe_exception
from .core import CheckResult, FAILED, Mistake, NOT_ATTEMPTED, PASSED, check_function, report


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


def _rollout_not_renormalised(a):
    per = 0.5 * a.mean(1) + 0.5 * torch.eye(a.shape[-1])
    out = torch.eye(a.shape[-1])
    for layer in per:
        out = layer @ out
    return out


def _rollout_over_layers(a):
    per = 0.5 * a.mean(0) + 0.5 * torch.eye(a.shape[-1])
    per = per / per.sum(-1, keepdim=True)
    out = torch.eye(a.shape[-1])
    for layer in per:
        out = layer @ out
    return out


def _rollout_first_twice(a):
    per = 0.5 * a.mean(1) + 0.5 * torch.eye(a.shape[-1])
    per = per / per.sum(-1, keepdim=True)
    out = per[0]
    for layer in per:
        out = layer @ out
    return out


def _rollout_columns(a):
    per = 0.5 * a.mean(1) + 0.5 * torch.eye(a.shape[-1])
    per = per / per.sum(-2, keepdim=True)
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
    Mistake("the rows are not renormalised: after (A + I) / 2, divide each row by its sum (a cropped map's rows "
            "do not sum to 1)", _rollout_not_renormalised),
    Mistake("averaged over the layers (dim 0): the heads are dim 1, attentions.mean(1) gives one [seq, seq] per layer",
            _rollout_over_layers),
    Mistake("the first layer is counted twice: start the product from the identity, R = I, then R = A' @ R for "
            "every layer", _rollout_first_twice),
    Mistake("renormalised the columns: divide each ROW by its sum, sum(-1, keepdim=True)", _rollout_columns),
]


def _rollout_cases() -> list[tuple]:
    cropped = _stochastic(2, 3, 7, 7, seed=5)[..., 1:6, 1:6]          # rows of a cropped map do not sum to 1
    return [(_stochastic(2, 2, 3, 3, seed=0),), (_stochastic(3, 4, 5, 5, seed=1),), (_stochastic(1, 1, 4, 4, seed=2),),
            (cropped,)]


def check_rollout(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(attentions [layers, heads, s, s]) -> rollout [s, s]``."""
    return check_function("attention rollout", fn, reference_rollout, _rollout_cases(), mistakes=ROLLOUT_MISTAKES,
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
    tied = _stochastic(4, 5, 5, seed=6)
    tied[0, 4] = torch.tensor([0.3, 0.3, 0.1, 0.1, 0.2])     # right (0) and wrong (1) tie: not "more weight"
    tied[2, 3] = torch.tensor([0.1, 0.25, 0.25, 0.2, 0.2])   # right (2) and wrong (1) tie
    return [(w, it, right, wrong), (_stochastic(5, 7, 7, seed=4), torch.tensor([6, 5, 4, 3, 2]),
                                    torch.tensor([0, 1, 2, 0, 1]), torch.tensor([1, 0, 0, 1, 0])),
            (tied, torch.tensor([4, 2, 3, 1]), torch.tensor([0, 0, 2, 4]), torch.tensor([1, 4, 1, 0]))]


def _share_compare(weights, it_pos, right_pos, wrong_pos, compare):
    b = torch.arange(len(it_pos))
    rows = weights[b, it_pos]
    return compare(rows[b, right_pos], rows[b, wrong_pos]).float().mean()


def _share_all_pairs(weights, it_pos, right_pos, wrong_pos):
    return (weights[:, it_pos, right_pos] > weights[:, it_pos, wrong_pos]).float().mean()


def _share_rows_all_pairs(weights, it_pos, right_pos, wrong_pos):
    rows = weights[torch.arange(len(it_pos)), it_pos]  # right so far; then every row gets every example's nouns
    return (rows[:, right_pos] > rows[:, wrong_pos]).float().mean()


SHARE_MISTAKES = [
    Mistake("you read a column (who looks at 'it'); the row weights[b, it_pos] says where 'it' looks", _share_column),
    Mistake("compare the right noun with the wrong noun only, not with every token (no argmax over the row)",
            _share_argmax),
    Mistake("return the share (a mean between 0 and 1), not the count", _share_count),
    Mistake("a tie counted as a win: the right noun must get MORE weight than the wrong one (>, not >=)",
            lambda *a: _share_compare(*a, torch.ge)),
    Mistake("compared the wrong way round: count the examples where the RIGHT noun gets more weight than the wrong one",
            lambda *a: _share_compare(*a, torch.lt)),
    Mistake("paired every example with every example's positions: weights[:, it_pos, right_pos] is [b, b]; index "
            "the batch too, weights[torch.arange(b), it_pos, right_pos]", _share_all_pairs),
    Mistake("rows[:, right_pos] gives every row every example's noun positions ([b, b]): take one per example, "
            "rows[torch.arange(b), right_pos]", _share_rows_all_pairs),
]

SHARE_BOOL_MEAN = ("could not infer output dtype", "the comparison gives booleans: turn them into numbers before the "
                   "mean, (right > wrong).float().mean()")


def check_referent_share(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(weights [b, s, s], it_pos, right_pos, wrong_pos) -> share`` (0-dim tensor)."""
    return check_function("referent share", fn, reference_referent_share, _share_cases(), mistakes=SHARE_MISTAKES,
                          exception_hints=[SHARE_BOOL_MEAN], atol=1e-6, strict=strict)


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


def _best_head_last_on_tie(scores):
    best, where = None, None
    for layer in range(scores.shape[0]):
        for head in range(scores.shape[1]):
            if best is None or scores[layer, head] >= best:
                best, where = scores[layer, head], (layer, head)
    return where


def _best_head_heads_first(scores):
    best, where = None, None
    for head in range(scores.shape[1]):
        for layer in range(scores.shape[0]):
            if best is None or scores[layer, head] > best:
                best, where = scores[layer, head], (layer, head)
    return where


def _best_head_from_zero(scores):
    best, where = 0.0, (0, 0)
    for layer in range(scores.shape[0]):
        for head in range(scores.shape[1]):
            if scores[layer, head] > best:
                best, where = scores[layer, head], (layer, head)
    return where


BEST_HEAD_MISTAKES = [
    Mistake("(layer, head) came back swapped: the row index is the layer, the column the head", _best_head_swapped),
    Mistake("that is the lowest score: use argmax, not argmin", _best_head_worst),
    Mistake("to turn a flat index into (layer, head), divide by the number of heads (scores.shape[1])",
            _best_head_divides_by_layers),
    Mistake("on a tie you kept the LAST maximum: the lowest layer wins, then the lowest head (a strict > keeps "
            "the first; torch.argmax returns the first too)", _best_head_last_on_tie),
    Mistake("on a tie you searched head by head: the lowest LAYER wins first, then the lowest head (go through the "
            "layers in the outer loop, or argmax of the flattened table)", _best_head_heads_first),
    Mistake("the search started from a best score of 0: when every score is negative nothing beats it; start from "
            "the first score, or float('-inf')", _best_head_from_zero),
    Mistake("counted from 1: layers and heads are 0-based indices", lambda s: tuple(i + 1 for i in reference_best_head(s))),
]


def _best_head_cases() -> list[torch.Tensor]:
    return [torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.95, 0.7], [0.2, 0.3, 0.25, 0.0]]),  # all hints differ
            torch.tensor([[0.5, 0.52, 0.4], [0.9, 0.1, 0.3]]),
            torch.tensor([[0.1, 0.2, 0.3, 0.95], [0.5, 0.5, 0.5, 0.5]]),
            torch.tensor([[0.2, 0.3], [0.4, 0.1], [0.6, 0.99]]),
            torch.tensor([[0.1, 0.9, 0.3], [0.9, 0.2, 0.9]]),          # a tie across layers: (0, 1)
            torch.tensor([[0.2, 0.7, 0.7, 0.1], [0.3, 0.5, 0.6, 0.65]]),  # a tie within a layer: (0, 1)
            torch.tensor([[-0.5, -0.2], [-0.3, -0.9], [-0.25, -0.7]]),  # every score negative
            torch.tensor([[0.3, 0.1, 0.8, 0.2, 0.5]]),                  # one layer
            torch.tensor([[0.2], [0.9], [0.4]])]                        # one head


def _as_pair(value) -> tuple[tuple[int, int] | None, str | None]:
    """The learner's answer as (layer, head) of ints, or a problem in words; never casts a float or a tensor."""
    if value is None:
        return None, "returned None: return (layer, head) (is the `return` missing?)"
    if isinstance(value, torch.Tensor):
        return None, (f"returned a tensor of shape {tuple(value.shape)}: return a tuple of two Python ints, "
                      "(int(layer), int(head))")
    if not isinstance(value, (tuple, list)):
        return None, f"returned {type(value).__name__} {value!r}: return a pair (layer, head)"
    if len(value) != 2:
        return None, f"returned {len(value)} values: return two, (layer, head)"
    pair = []
    for name, v in zip(("layer", "head"), value):
        if isinstance(v, bool) or not isinstance(v, Integral):
            if isinstance(v, torch.Tensor):
                return None, f"{name} is a tensor: return Python ints, int({name}) or {name}.item()"
            if isinstance(v, float):
                return None, (f"{name} is a float ({v!r}): the row of a flat index is index // heads (floor "
                              "division gives an int); return Python ints")
            return None, f"{name} is {type(v).__name__} {v!r}: return Python ints"
        pair.append(int(v))
    return (pair[0], pair[1]), None


def _show(scores: torch.Tensor) -> str:
    text = str([[round(v, 4) for v in row] for row in scores.tolist()])
    return text if len(text) <= 70 else text[:67] + "..."


def evaluate_best_head(fn) -> CheckResult:
    """The best-head checker's verdict, without printing (see :func:`check_best_head`)."""
    exercise = "best head"
    if not callable(fn):
        return CheckResult(exercise, FAILED, f"expected a function, got {type(fn).__name__}; pass the function "
                           "itself, without calling it")
    cases = _best_head_cases()
    seen: list[tuple[torch.Tensor, tuple[int, int]]] = []
    for i, scores in enumerate(cases):
        where = f"case {i + 1} of {len(cases)}: scores {_show(scores)}"
        given = scores.clone()
        try:
            got = fn(given)
        except NotImplementedError:
            return CheckResult(exercise, NOT_ATTEMPTED, "not attempted yet: replace `raise NotImplementedError()` "
                               "with your code, then run this cell again")
        except Exception as exc:  # the learner's code may raise anything: one line
            return CheckResult(exercise, FAILED, f"your function raised {describe_exception(exc)} ({where})")
        if not torch.equal(given, scores):
            return CheckResult(exercise, FAILED, "your function changed its input in place; work on a copy instead")
        pair, problem = _as_pair(got)
        if problem:
            return CheckResult(exercise, FAILED, f"{problem} ({where}).")
        seen.append((scores, pair))
        want = reference_best_head(scores)
        if pair == want:
            continue
        hint = _best_head_hint(fn, seen, cases[i + 1:])
        if hint is None and 0 <= pair[0] < scores.shape[0] and 0 <= pair[1] < scores.shape[1] \
                and scores[pair] == scores[want]:
            hint = "that score ties the best one: on a tie the lowest layer wins, then the lowest head"
        text = f"you returned {pair}, expected {want} ({where})."
        return CheckResult(exercise, FAILED, f"{hint}: {text}" if hint else text)
    return CheckResult(exercise, PASSED, f"correct on {len(cases)} case(s).")


def _best_head_hint(fn, seen, later) -> str | None:
    """The first mistake that gives the learner's answers on every case so far; when several do, the later
    cases choose between them."""
    candidates = [m for m in BEST_HEAD_MISTAKES if _fits(m, seen)]
    for scores in later:
        if len(candidates) < 2:
            break
        try:
            pair, problem = _as_pair(fn(scores.clone()))
        except Exception:
            break
        fits = [m for m in candidates if problem is None and _fits(m, [(scores, pair)])]
        if not fits:
            break
        candidates = fits
    return candidates[0].hint if candidates else None


def _fits(mistake: Mistake, seen) -> bool:
    try:
        return all(tuple(int(v) for v in mistake.fn(s.clone())) == pair for s, pair in seen)
    except Exception:
        return False


def check_best_head(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(scores [layers, heads]) -> (layer, head)``, two Python ints; on a tie the lowest layer, then
    the lowest head."""
    return report(evaluate_best_head(fn), strict=strict)


# ------------------------------------------------------------------------------------ flipped share

def reference_flipped_share(clean, corrupted, patched) -> torch.Tensor:
    """Elementwise ``(clean - patched) / (clean - corrupted)``: 0 at the clean run, 1 at the corrupted run."""
    from course.coref import flipped_share
    return flipped_share(clean, corrupted, patched)


_CLIPPED = ("the shares are clipped to [0, 1]: keep values beyond either end (a patch can overshoot, or push the "
            "answer further toward the clean one)")

FLIP_MISTAKES = [
    Mistake("the sign is flipped: the share is (clean - patched) / (clean - corrupted), 0 when the patch changes "
            "nothing and 1 when it gives the corrupted run's difference",
            lambda c, x, p: (p - c) / (c - x)),
    Mistake("that is how much of the clean answer is left (1 at the clean run): the share that flipped is 0 at "
            "the clean run and 1 at the corrupted run", lambda c, x, p: (p - x) / (c - x)),
    Mistake("divided by the clean difference alone: divide by the whole way from clean to corrupted, "
            "clean - corrupted", lambda c, x, p: (c - p) / c),
    Mistake("divided by the corrupted difference alone: divide by the whole way from clean to corrupted, "
            "clean - corrupted", lambda c, x, p: (c - p) / -x),
    Mistake(_CLIPPED, lambda c, x, p: ((c - p) / (c - x)).clamp(0, 1)),
    Mistake("absolute values hide the direction: a patch that pushes toward the clean answer must give a "
            "negative share; no abs()", lambda c, x, p: (c - p).abs() / (c - x).abs()),
    Mistake("patched / corrupted is not the share of the way: measure how far the patch moved the answer from "
            "the clean run, (clean - patched) / (clean - corrupted)", lambda c, x, p: p / x),
]


def _flip_cases() -> list[tuple]:
    # shares 0.5, 0, 1.2 (overshoot), -0.375 (pushed toward the clean answer), 1 (fully flipped)
    first = (torch.tensor([4.0, 3.0, 5.0, 2.5, 6.0]), torch.tensor([-6.0, -3.0, -5.0, -1.5, -2.0]),
             torch.tensor([-1.0, 3.0, -7.0, 4.0, -2.0]))
    # [layers, positions], the other direction: the clean difference is negative, the corrupted one positive
    g = torch.Generator().manual_seed(7)
    clean = -2.0 - torch.rand(3, 5, generator=g) * 4
    corrupted = 1.0 + torch.rand(3, 5, generator=g) * 4
    patched = clean + (corrupted - clean) * (torch.rand(3, 5, generator=g) * 1.6 - 0.3)
    scalar = (torch.tensor(9.5), torch.tensor(-10.25), torch.tensor(3.0))
    return [first, (clean, corrupted, patched), scalar]


def _flip_locate(args, name, got, want) -> str | None:
    """Wrong only where the share lies outside [0, 1], and there cut to the nearer end: clipped."""
    wrong = (got - want).abs() > 1e-5
    outside = (want < 0) | (want > 1)
    if bool(wrong.any()) and bool((wrong <= outside).all()) and bool(((got[wrong] == 0) | (got[wrong] == 1)).all()):
        return _CLIPPED
    return None


def check_flipped_share(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(clean, corrupted, patched) -> share`` (elementwise, any shape, same shape as the inputs)."""
    return check_function("flipped share", fn, reference_flipped_share, _flip_cases(), mistakes=FLIP_MISTAKES,
                          atol=1e-5, locate=_flip_locate, strict=strict)
