"""The attention checkers (lessons 03 and 05) catch what they claim to, each with the right hint.

Two libraries of wrong implementations:
1. every Mistake registered in course.checks.attention, run through its own checker, must get its own
   hint (this proves the test cases tell the mistakes apart);
2. hand-written answers in the style a learner writes them (F.softmax, -1e9 instead of -inf, einsum,
   softmax by hand, float masks, ...): in LIBRARY (the shape answer_library.py reads), each wrong answer
   with the words its line must contain, each right answer accepted.
Plus: wrong shapes and exceptions give one line, not attempting gives "not attempted".
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from answer_library import Right, Wrong, library_tests
from course.attention import MultiHeadAttention, merge_heads, scaled_dot_product_attention, split_heads
from course.checks import ExerciseFailed
from course.checks import attention as ca

pytestmark = [pytest.mark.usefixtures("lenient_checks"), pytest.mark.filterwarnings("ignore:The use of `x.T`:UserWarning")]


def one_line(result) -> str:
    line = result.line
    assert "\n" not in line
    return line


# ----------------------------------------------------------------------------- right answers

def scores_ok(q, k):
    return q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])


def attention_ok(q, k, v):
    w = F.softmax(scores_ok(q, k), dim=-1)
    return w @ v, w


def masked_ok(q, k, v, mask):
    w = F.softmax(scores_ok(q, k).masked_fill(~mask, float("-inf")), dim=-1)
    return w @ v, w


def causal_ok(n):
    return torch.tril(torch.ones(n, n)).bool()


def split_ok(x, num_heads):
    b, s, d = x.shape
    return x.view(b, s, num_heads, d // num_heads).transpose(1, 2)


def merge_ok(x):
    b, h, s, d = x.shape
    return x.transpose(1, 2).contiguous().view(b, s, h * d)


def mha_ok(mha, query, key, value, mask=None):
    q = split_ok(mha.q_proj(query), mha.num_heads)
    k = split_ok(mha.k_proj(key), mha.num_heads)
    v = split_ok(mha.v_proj(value), mha.num_heads)
    out, _ = masked_ok(q, k, v, mask) if mask is not None else attention_ok(q, k, v)
    return mha.out_proj(merge_ok(out))


def scores_einsum(q, k):
    return torch.einsum("...qd,...kd->...qk", q, k) * q.shape[-1] ** -0.5


def scores_float64(q, k):
    return (q.double() @ k.double().mT / math.sqrt(q.shape[-1])).float()


def attention_by_hand(q, k, v):
    s = scores_ok(q, k)
    e = torch.exp(s - s.max(dim=-1, keepdim=True).values)
    w = e / e.sum(dim=-1, keepdim=True)
    return torch.einsum("...qk,...kd->...qd", w, v), w


def attention_float64(q, k, v):
    w = torch.softmax(q.double() @ k.double().mT / math.sqrt(q.shape[-1]), dim=-1)
    return (w @ v.double()).float(), w.float()


def masked_1e9(q, k, v, mask):
    w = torch.softmax(scores_ok(q, k).masked_fill(mask == 0, -1e9), dim=-1)
    return w @ v, w


def masked_where(q, k, v, mask):
    s = torch.where(mask, scores_ok(q, k), torch.tensor(float("-inf")))
    w = s.softmax(-1)
    return w @ v, w


def masked_additive(q, k, v, mask):
    w = F.softmax(scores_ok(q, k) + (~mask).float() * -1e9, dim=-1)
    return w @ v, w


def masked_by_hand(q, k, v, mask):
    s = scores_ok(q, k).masked_fill(~mask, float("-inf"))
    e = (s - s.amax(dim=-1, keepdim=True)).exp()
    w = e / e.sum(-1, keepdim=True)
    return w @ v, w


def masked_renormalised(q, k, v, mask):
    # Right on paper (zero the blocked weights, renormalise), but the softmax saw the blocked keys: when one of
    # them has a huge score, every allowed weight underflows to 0 and the renormalisation divides 0 by 0.
    w = F.softmax(scores_ok(q, k), dim=-1) * mask
    w = w / w.sum(dim=-1, keepdim=True)
    return w @ v, w


def split_einops(x, num_heads):
    return rearrange(x, "b s (h d) -> b h s d", h=num_heads)


def split_chunks(x, num_heads):
    return torch.stack(x.chunk(num_heads, dim=-1), dim=1)


def merge_einops(x):
    return rearrange(x, "b h s d -> b s (h d)")


def mha_torch_sdpa(mha, query, key, value, mask=None):
    q, k, v = (rearrange(p(t), "b s (h d) -> b h s d", h=mha.num_heads)
               for p, t in ((mha.q_proj, query), (mha.k_proj, key), (mha.v_proj, value)))
    return mha.out_proj(rearrange(F.scaled_dot_product_attention(q, k, v, attn_mask=mask), "b h s d -> b s (h d)"))


def mha_course(mha, query, key, value, mask=None):
    q, k, v = (split_heads(p(x), mha.num_heads) for p, x in
               ((mha.q_proj, query), (mha.k_proj, key), (mha.v_proj, value)))
    return mha.out_proj(merge_heads(scaled_dot_product_attention(q, k, v, mask)[0]))


def mha_by_hand(mha, query, key, value, mask=None):
    q, k, v = (split_ok(p(x), mha.num_heads) for p, x in ((mha.q_proj, query), (mha.k_proj, key), (mha.v_proj, value)))
    out, _ = masked_by_hand(q, k, v, mask) if mask is not None else attention_by_hand(q, k, v)
    return mha.out_proj(merge_ok(out))


RIGHT_ATTENTION_SCORES = [
    Right("matmul", scores_ok),
    Right("einsum", scores_einsum),
    Right("float64 inside", scores_float64),
]
RIGHT_ATTENTION = [
    Right("F.softmax", attention_ok),
    Right("softmax by hand with the shift", attention_by_hand),
    Right("float64 inside", attention_float64),
]
RIGHT_MASKED_ATTENTION = [
    Right("-inf", masked_ok),
    Right("-1e9", masked_1e9),
    Right("torch.where", masked_where),
    Right("an additive -1e9 mask", masked_additive),
    Right("softmax by hand with the shift", masked_by_hand),
    # holdout
    Right("-1e4 fill", lambda q, k, v, m: attention_from(scores_ok(q, k).masked_fill(~m, -1e4), v)),
]
RIGHT_CAUSAL_MASK = [
    Right("tril", causal_ok),
    Right("arange comparison", lambda n: torch.arange(n)[:, None] >= torch.arange(n)),
    Right("not triu", lambda n: ~torch.ones(n, n, dtype=torch.bool).triu(1)),
    # holdout
    Right("strict tril or the diagonal",
          lambda n: torch.ones(n, n, dtype=torch.bool).tril(-1) | torch.eye(n, dtype=torch.bool)),
]
RIGHT_SPLIT_HEADS = [
    Right("view and transpose", split_ok),
    Right("the course's", split_heads),
    Right("einops", split_einops),
    Right("chunks stacked", split_chunks),
    # holdout
    Right("unflatten", lambda x, h: x.unflatten(-1, (h, -1)).transpose(1, 2)),
]
RIGHT_MERGE_HEADS = [
    Right("transpose, contiguous, view", merge_ok),
    Right("the course's", merge_heads),
    Right("einops", merge_einops),
    Right("unbind and cat", lambda x: torch.cat(x.unbind(1), dim=-1)),
    # holdout
    Right("reshape, then contiguous",
          lambda x: x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1).contiguous()),
]
RIGHT_MULTI_HEAD_ATTENTION = [
    Right("by parts", mha_ok),
    Right("the course's sdpa", mha_course),
    Right("F.scaled_dot_product_attention", mha_torch_sdpa),
    Right("softmax by hand with the shift", mha_by_hand),
]


def attention_from(scores, v):
    w = scores.softmax(-1)
    return w @ v, w


# ----------------------------------------------------------------------------- 1. every registered mistake

REGISTERED = (
    [(ca.check_attention_scores, m) for m in ca.SCORE_MISTAKES]
    + [(ca.check_attention, m) for m in ca.ATTENTION_MISTAKES]
    + [(ca.check_masked_attention, m) for m in ca.MASKED_MISTAKES]
    + [(ca.check_causal_mask, m) for m in ca.CAUSAL_MISTAKES]
    + [(ca.check_split_heads, m) for m in ca.SPLIT_MISTAKES]
    + [(ca.check_merge_heads, m) for m in ca.MERGE_MISTAKES]
    + [(ca.check_multi_head_attention, m) for m in ca.MHA_MISTAKES]
)


@pytest.mark.parametrize("checker,mistake", REGISTERED,
                         ids=[f"{c.__name__}:{m.hint[:40]}" for c, m in REGISTERED])
def test_each_registered_mistake_gets_its_own_hint(checker, mistake):
    result = checker(mistake.fn)
    assert not result.passed
    assert mistake.hint in one_line(result), result.line


# ----------------------------------------------------------------------------- 2. learner-style wrong code

def scores_no_scale(q, k):
    return torch.matmul(q, k.transpose(-1, -2))


def scores_over_dk(q, k):
    return torch.matmul(q, k.transpose(-1, -2)) / k.size(-1)


def scores_kq(q, k):
    return torch.einsum("...kd,...qd->...kq", k, q) / math.sqrt(q.size(-1))


def attention_no_scale(q, k, v):
    w = F.softmax(q @ k.mT, dim=-1)
    return w @ v, w


def attention_over_dk(q, k, v):
    d_k = q.shape[-1]
    w = F.softmax(q @ k.mT / d_k, dim=-1)
    return w @ v, w


def attention_wrong_axis(q, k, v):
    w = F.softmax(q @ k.mT / q.shape[-1] ** 0.5, dim=-2)
    return w @ v, w


def attention_wrong_axis_positive_index(q, k, v):
    s = q @ k.mT / q.shape[-1] ** 0.5
    w = s.softmax(dim=s.ndim - 2)
    return w @ v, w


def attention_by_hand_no_shift(q, k, v):
    e = torch.exp(scores_ok(q, k))
    w = e / e.sum(-1, keepdim=True)
    return w @ v, w


def attention_shift_by_the_overall_max(q, k, v):
    s = scores_ok(q, k)
    e = torch.exp(s - s.max())
    w = e / e.sum(-1, keepdim=True)
    return w @ v, w


def attention_whole_matrix(q, k, v):
    s = scores_ok(q, k)
    w = s.flatten(-2).softmax(-1).reshape(s.shape)
    return w @ v, w


def masked_inverted(q, k, v, mask):
    s = scores_ok(q, k)
    s = s.masked_fill(mask, -1e9)
    w = s.softmax(-1)
    return w @ v, w


def masked_after_softmax(q, k, v, mask):
    w = F.softmax(scores_ok(q, k), dim=-1) * mask    # multiply by the mask after the softmax
    return w @ v, w


def masked_with_zero(q, k, v, mask):
    w = F.softmax(scores_ok(q, k) * mask, dim=-1)    # zeroes the scores instead of -inf
    return w @ v, w


def masked_no_scale(q, k, v, mask):
    w = F.softmax((q @ k.mT).masked_fill(~mask, -1e9), dim=-1)
    return w @ v, w


def masked_fill_not_kept(q, k, v, mask):
    s = scores_ok(q, k)
    s.masked_fill(~mask, float("-inf"))  # returns a new tensor, which is dropped
    w = s.softmax(-1)
    return w @ v, w


def masked_times_minus_inf(q, k, v, mask):
    w = F.softmax(scores_ok(q, k) + (~mask) * float("-inf"), dim=-1)
    return w @ v, w


def masked_one_minus(q, k, v, mask):
    w = F.softmax(scores_ok(q, k) - 1e9 * (1 - mask), dim=-1)
    return w @ v, w


def masked_by_hand_no_shift(q, k, v, mask):
    e = scores_ok(q, k).masked_fill(~mask, float("-inf")).exp()
    w = e / e.sum(-1, keepdim=True)
    return w @ v, w


def masked_max_before_mask(q, k, v, mask):
    s = scores_ok(q, k)
    s = (s - s.max(-1, keepdim=True).values).masked_fill(~mask, float("-inf"))
    w = s.exp() / s.exp().sum(-1, keepdim=True)
    return w @ v, w


def causal_triu(n):
    return torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)


def causal_no_diagonal(n):
    return torch.ones(n, n).tril(diagonal=-1) > 0


def split_reshape_no_transpose(x, num_heads):
    b, s, d = x.shape
    return x.reshape(b, num_heads, s, d // num_heads)


def split_view_no_transpose(x, num_heads):
    b, s, d = x.shape
    return x.view(b, s, num_heads, d // num_heads)


def split_heads_last(x, num_heads):
    b, s, d = x.shape
    return x.view(b, s, -1, num_heads).permute(0, 3, 1, 2)


def split_transpose_first(x, num_heads):
    b, s, d = x.shape
    return x.transpose(1, 2).reshape(b, num_heads, s, d // num_heads)


def merge_reshape_no_transpose(x):
    b, h, s, d = x.shape
    return x.reshape(b, s, h * d)


def merge_view(x):
    b, h, s, d = x.shape
    return x.transpose(1, 2).view(b, s, h * d)


def merge_heads_inner(x):
    b, h, s, d = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, s, h * d)


def mha_reshape_no_transpose(mha, query, key, value, mask=None):
    def split(t):
        return t.reshape(t.shape[0], mha.num_heads, t.shape[1], -1)

    q, k, v = split(mha.q_proj(query)), split(mha.k_proj(key)), split(mha.v_proj(value))
    out, _ = masked_ok(q, k, v, mask) if mask is not None else attention_ok(q, k, v)
    return mha.out_proj(merge_ok(out))


def mha_merge_no_transpose(mha, query, key, value, mask=None):
    q, k, v = (split_ok(p(x), mha.num_heads) for p, x in ((mha.q_proj, query), (mha.k_proj, key), (mha.v_proj, value)))
    out, _ = masked_ok(q, k, v, mask) if mask is not None else attention_ok(q, k, v)
    return mha.out_proj(out.reshape(query.shape[0], query.shape[1], -1))


def mha_scale_d_model(mha, query, key, value, mask=None):
    q, k, v = (split_ok(p(x), mha.num_heads) for p, x in ((mha.q_proj, query), (mha.k_proj, key), (mha.v_proj, value)))
    s = q @ k.mT / math.sqrt(query.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, -1e9)
    return mha.out_proj(merge_ok(s.softmax(-1) @ v))


def mha_no_out_proj(mha, query, key, value, mask=None):
    q, k, v = (split_ok(p(x), mha.num_heads) for p, x in ((mha.q_proj, query), (mha.k_proj, key), (mha.v_proj, value)))
    out, _ = masked_ok(q, k, v, mask) if mask is not None else attention_ok(q, k, v)
    return merge_ok(out)


def mha_self_only(mha, query, key, value, mask=None):
    return mha_ok(mha, query, query, query, mask)


def mha_inverted_mask(mha, query, key, value, mask=None):
    return mha_ok(mha, query, key, value, None if mask is None else ~mask)


def mha_ignores_mask(mha, query, key, value, mask=None):
    return mha_ok(mha, query, key, value, None)


def mha_by_hand_no_shift(mha, query, key, value, mask=None):
    q, k, v = (split_ok(p(x), mha.num_heads) for p, x in ((mha.q_proj, query), (mha.k_proj, key), (mha.v_proj, value)))
    out, _ = masked_by_hand_no_shift(q, k, v, mask) if mask is not None else attention_by_hand_no_shift(q, k, v)
    return mha.out_proj(merge_ok(out))


def attention_scaled_after(q, k, v):
    w = torch.softmax(q @ k.mT, -1)
    return w @ v / math.sqrt(q.shape[-1]), w


def attention_scores_as_weights(q, k, v):
    s = q @ k.mT / math.sqrt(q.shape[-1])
    return torch.softmax(s, -1) @ v, s


def masked_transposed_mask(q, k, v, mask):
    w = scores_ok(q, k).masked_fill(~mask.transpose(-2, -1), float("-inf")).softmax(-1)
    return w @ v, w


def masked_fill_minus_100(q, k, v, mask):
    w = scores_ok(q, k).masked_fill(~mask, -100.0).softmax(-1)
    return w @ v, w


def split_permute_0231(x, num_heads):
    b, s, d = x.shape
    return x.view(b, s, num_heads, d // num_heads).permute(0, 2, 3, 1)


def merge_transpose_23(x):
    b, h, s, d = x.shape
    return x.transpose(2, 3).reshape(b, s, h * d)


def mha_v_proj_for_keys(mha, query, key, value, mask=None):
    return _mha_with(mha, query, mha.v_proj(key), mha.v_proj(value), mask)


def _mha_with(mha, query, k_projected, v_projected, mask):
    q, k, v = (split_ok(t, mha.num_heads) for t in (mha.q_proj(query), k_projected, v_projected))
    out, _ = masked_ok(q, k, v, mask) if mask is not None else attention_ok(q, k, v)
    return mha.out_proj(merge_ok(out))


def mha_no_heads(mha, query, key, value, mask=None):
    q, k, v = mha.q_proj(query), mha.k_proj(key), mha.v_proj(value)
    s = q @ k.mT / math.sqrt(mha.d_head)
    if mask is not None:
        s = s.masked_fill(~(mask[:, 0] if mask.dim() == 4 else mask), float("-inf"))
    return mha.out_proj(s.softmax(-1) @ v)


# The "# holdout" answers were written after the checkers were finished; None where the line only says the
# values differ.
WRONG_ATTENTION_SCORES = [
    Wrong("no scale", scores_no_scale, "missing scale"),
    Wrong("over d_k", scores_over_dk, "wrong scale: divided by d_k"),
    Wrong("k q^T", scores_kq, "transposed"),
    Wrong("times sqrt(d_k)", lambda q, k: q @ k.mT * math.sqrt(q.shape[-1]), "scale upside down"),
    Wrong("sqrt of the key count", lambda q, k: q @ k.mT / math.sqrt(k.size(-2)),
          "scaled by the wrong size"),
    Wrong("softmax too early", lambda q, k: F.softmax(scores_ok(q, k), -1), "softmax applied too early"),
    Wrong("k.T on a batch", lambda q, k: q @ k.T / math.sqrt(q.shape[-1]),
          "transpose only the last two axes"),
    Wrong("transpose(1, 2)", lambda q, k: q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]),
          "transpose only the last two axes"),
    Wrong("summed", lambda q, k: scores_ok(q, k).sum(-1), "scores has shape (6,), expected (6, 6)"),
    # holdout
    Wrong("q and k each over sqrt(d_k)",
          lambda q, k: (q / math.sqrt(q.shape[-1])) @ (k / math.sqrt(q.shape[-1])).mT, "divided by d_k"),
]
WRONG_ATTENTION = [
    Wrong("no scale", attention_no_scale, "missing scale"),
    Wrong("over d_k", attention_over_dk, "wrong scale: divided by d_k"),
    Wrong("wrong axis", attention_wrong_axis, "softmax over the wrong axis"),
    Wrong("wrong axis, positive index", attention_wrong_axis_positive_index, "softmax over the wrong axis"),
    Wrong("whole matrix", attention_whole_matrix, "softmax over the whole score matrix"),
    Wrong("by hand, no shift", attention_by_hand_no_shift, "exp overflows for scores above about 88"),
    Wrong("shift by the overall max", attention_shift_by_the_overall_max, "maximum of the whole tensor"),
    Wrong("only the output", lambda q, k, v: attention_ok(q, k, v)[0], "expected 2 values (output, weights)"),
    Wrong("weights first", lambda q, k, v: attention_ok(q, k, v)[::-1],
          "the two values are in the wrong order: return (output, weights)"),
    # holdout
    Wrong("scaled after the softmax", attention_scaled_after, None),
    Wrong("the scores as weights", attention_scores_as_weights, "weights should be weights, non-negative"),
]
WRONG_MASKED_ATTENTION = [
    Wrong("inverted", masked_inverted, "mask inverted"),
    Wrong("after softmax", masked_after_softmax, "mask applied after softmax"),
    Wrong("scores set to zero", masked_with_zero, "masked scores set to 0"),
    Wrong("no scale", masked_no_scale, "missing scale"),
    Wrong("masked_fill result dropped", masked_fill_not_kept, "the mask is ignored"),
    Wrong("mask times -inf", masked_times_minus_inf, "0 * -inf is NaN"),
    Wrong("1 - mask", masked_one_minus, "invert it with ~mask"),
    Wrong("by hand, no shift", masked_by_hand_no_shift, "exp overflows for scores above about 88"),
    Wrong("max before masking", masked_max_before_mask, "row maximum was taken before masking"),
    Wrong("zeroed after softmax, renormalised", masked_renormalised,
          "a blocked key with a huge score"),
    # holdout
    Wrong("mask transposed", masked_transposed_mask, "the mask must broadcast against them"),
    Wrong("fill -100", masked_fill_minus_100, "a finite fill such as -100"),
]
WRONG_CAUSAL_MASK = [
    Wrong("triu", causal_triu, "mask inverted"),
    Wrong("strictly below", causal_no_diagonal, "diagonal is missing"),
    Wrong("one step ahead", lambda n: torch.ones(n, n, dtype=torch.bool).tril(1), "one step into the future"),
    Wrong("upper triangle", lambda n: torch.ones(n, n, dtype=torch.bool).triu(), "upper triangle"),
    Wrong("floats", lambda n: torch.ones(n, n).tril(), "dtype torch.float32, expected torch.bool"),
    Wrong("ints", lambda n: torch.ones(n, n, dtype=torch.long).tril(), "dtype torch.int64"),
    # holdout
    Wrong("rows flipped", lambda n: torch.ones(n, n, dtype=torch.bool).tril().flip(0),
          "reversed along axis 0"),
]
WRONG_SPLIT_HEADS = [
    Wrong("reshape, no transpose", split_reshape_no_transpose, "reshape without transpose"),
    Wrong("view, no transpose", split_view_no_transpose, "reshape without transpose"),
    Wrong("(d_head, heads)", split_heads_last, "features split in the wrong order"),
    Wrong("transposed first", split_transpose_first, "transposed before splitting"),
    # holdout
    Wrong("permute (0, 2, 3, 1)", split_permute_0231, "the last two axes are swapped"),
]
WRONG_MERGE_HEADS = [
    Wrong("reshape, no transpose", merge_reshape_no_transpose, "reshape without transpose"),
    Wrong("view on a transposed tensor", merge_view, "not contiguous"),
    Wrong("heads innermost", merge_heads_inner, "features merged in the wrong order"),
    # holdout
    Wrong("transpose(2, 3)", merge_transpose_23, "right numbers in the wrong places"),
]
WRONG_MULTI_HEAD_ATTENTION = [
    Wrong("split without transpose", mha_reshape_no_transpose, "reshape without transpose"),
    Wrong("merge without transpose", mha_merge_no_transpose, "merged by reshape without transpose"),
    Wrong("scale by d_model", mha_scale_d_model, "scaled by sqrt(d_model)"),
    Wrong("no out_proj", mha_no_out_proj, "output projection is missing"),
    Wrong("self-attention only", mha_self_only, "projected from the query"),
    Wrong("inverted mask", mha_inverted_mask, "mask inverted"),
    Wrong("mask ignored", mha_ignores_mask, "the mask is ignored"),
    Wrong("by hand, no shift", mha_by_hand_no_shift, "exp overflows for scores above about 88"),
    # holdout
    Wrong("v_proj for the keys", mha_v_proj_for_keys, None),
    Wrong("no heads", mha_no_heads, None),
]


LIBRARY = {
    ca.check_attention_scores: (WRONG_ATTENTION_SCORES, RIGHT_ATTENTION_SCORES),
    ca.check_attention: (WRONG_ATTENTION, RIGHT_ATTENTION),
    ca.check_masked_attention: (WRONG_MASKED_ATTENTION, RIGHT_MASKED_ATTENTION),
    ca.check_causal_mask: (WRONG_CAUSAL_MASK, RIGHT_CAUSAL_MASK),
    ca.check_split_heads: (WRONG_SPLIT_HEADS, RIGHT_SPLIT_HEADS),
    ca.check_merge_heads: (WRONG_MERGE_HEADS, RIGHT_MERGE_HEADS),
    ca.check_multi_head_attention: (WRONG_MULTI_HEAD_ATTENTION, RIGHT_MULTI_HEAD_ATTENTION),
}


test_each_wrong_answer_fails_with_its_words, test_each_right_answer_passes = library_tests(LIBRARY)


@pytest.mark.parametrize("wrong", WRONG_CAUSAL_MASK, ids=str)
def test_a_wrong_mask_gets_no_largest_error(wrong):
    # a largest error means something for floating outputs only, not for a boolean mask
    assert "Largest error" not in ca.check_causal_mask(wrong.fn).line


# ----------------------------------------------------------------------------- boundaries

def test_the_masked_cases_cover_every_mask_shape_and_left_padding():
    masks = [case[3] for case in ca._masked_cases()]
    shapes = {tuple(m.shape) for m in masks}
    assert (5, 6) in shapes and (6, 6) in shapes and (2, 1, 1, 7) in shapes
    left_padded = [m for m in masks if m.dim() == 4 and not bool(m[..., 0].all())]
    assert left_padded, "a padding mask with the padding in front"
    assert all(bool(m.any(-1).all()) for m in masks), "no fully masked row: -1e9 stays as right as -inf"


def test_the_attention_cases_have_scores_that_overflow_exp_in_float32():
    for cases in (ca._attention_cases(), ca._masked_cases()):
        assert max(float(scores_ok(c[0], c[1]).max()) for c in cases) > 88.8


# ----------------------------------------------------------------------------- shapes, exceptions, not attempted

def test_float_causal_mask_is_rejected_naming_the_dtype():
    result = ca.check_causal_mask(lambda n: torch.ones(n, n).tril())
    assert "dtype torch.float32, expected torch.bool" in one_line(result)


def test_function_that_raises_gives_a_one_line_message():
    def broken(q, k, v, mask):
        raise RuntimeError("The size of tensor a (5) must match the size of tensor b (6)\nat dimension 1")

    result = ca.check_masked_attention(broken)
    assert not result.passed
    assert "Your function raised RuntimeError: The size of tensor a (5)" in one_line(result)
    assert "at dimension 1" not in result.line


def test_not_attempted_is_reported():
    def todo(q, k):
        raise NotImplementedError()

    result = ca.check_attention_scores(todo)
    assert result.status == "not attempted"


def test_strict_mode_raises(monkeypatch):
    monkeypatch.setenv("COURSE_STRICT_CHECKS", "1")
    with pytest.raises(ExerciseFailed, match="missing scale"):
        ca.check_attention_scores(scores_no_scale)


def test_strict_false_reports_without_raising_even_in_strict_mode(monkeypatch):
    monkeypatch.setenv("COURSE_STRICT_CHECKS", "1")
    result = ca.check_attention(attention_wrong_axis, strict=False)
    assert not result.passed and "softmax over the wrong axis" in result.line


def test_mha_checker_runs_the_learner_without_autograd():
    def needs_no_grad(mha, query, key, value, mask=None):
        assert not torch.is_grad_enabled()
        return mha_ok(mha, query, key, value, mask)

    assert ca.check_multi_head_attention(needs_no_grad).passed


def test_mha_checker_does_not_change_the_global_random_stream():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ca.check_multi_head_attention(mha_ok)
    torch.testing.assert_close(torch.rand(3), expected)


def test_mha_checker_module_is_the_course_module():
    mha = ca._mha_cases()[0][0]
    assert isinstance(mha, MultiHeadAttention) and mha.num_heads == 3 and mha.d_model == 12
