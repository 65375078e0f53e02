"""course.attention against PyTorch's own attention, with the same weights.

Tolerances: float32 throughout; outputs compared with atol=1e-6, rtol=1e-5 unless a test says
otherwise (a few matrix products of O(1) values; measured errors are ~1e-7).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course.attention import (
    FusedQKVAttention,
    MultiHeadAttention,
    MultiHeadAttentionEinops,
    attention_scores,
    causal_mask,
    copy_to_torch_mha,
    fused_from_mha,
    load_from_torch_mha,
    merge_heads,
    merge_heads_einops,
    mha_parameter_count,
    padding_mask,
    scaled_dot_product_attention,
    split_heads,
    split_heads_einops,
    to_torch_key_padding_mask,
    to_torch_mha_mask,
)
from course.seed import seed_everything
from course.weights import WeightMismatchError

ATOL, RTOL = 1e-6, 1e-5  # float32


@pytest.fixture(autouse=True)
def _seed():
    seed_everything(0)


def _qkv(batch=2, heads=3, seq_q=5, seq_k=7, d_k=8, d_v=6):
    return torch.randn(batch, heads, seq_q, d_k), torch.randn(batch, heads, seq_k, d_k), torch.randn(batch, heads, seq_k, d_v)


def _pair(d_model=16, num_heads=4, bias=True):
    """Our MHA and torch's, with the same weights (copied from torch's random init)."""
    theirs = nn.MultiheadAttention(d_model, num_heads, bias=bias, batch_first=True).eval()
    with torch.no_grad():  # torch initialises biases to zero; make them random so the copy is tested
        for p in theirs.parameters():
            p.normal_(0, 0.3)
    ours = load_from_torch_mha(MultiHeadAttention(d_model, num_heads, bias=bias), theirs).eval()
    return ours, theirs


# ----------------------------------------------------------------------------- scaled dot-product

def test_attention_scores_are_qkT_over_sqrt_dk():
    q, k, _ = _qkv()
    torch.testing.assert_close(attention_scores(q, k), q @ k.transpose(-2, -1) / math.sqrt(8), atol=ATOL, rtol=RTOL)


def test_sdpa_matches_torch_without_mask():
    q, k, v = _qkv()
    out, w = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=ATOL, rtol=RTOL)
    assert w.shape == (2, 3, 5, 7)


def test_sdpa_matches_torch_with_boolean_mask():
    q, k, v = _qkv()
    mask = torch.rand(2, 1, 5, 7) > 0.4
    mask[..., 0] = True  # every row keeps at least one key
    out, w = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=ATOL, rtol=RTOL)
    assert torch.all(w.masked_select(~mask.expand_as(w)) == 0)


def test_sdpa_matches_torch_with_causal_mask():
    q, k, v = _qkv(seq_q=6, seq_k=6)
    out, w = scaled_dot_product_attention(q, k, v, causal_mask(6))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=ATOL, rtol=RTOL)
    assert torch.all(w.triu(1) == 0)


def test_sdpa_matches_torch_with_custom_scale():
    q, k, v = _qkv()
    out, _ = scaled_dot_product_attention(q, k, v, scale=0.5)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, scale=0.5), atol=ATOL, rtol=RTOL)


def test_sdpa_weights_rows_sum_to_one():
    q, k, v = _qkv()
    _, w = scaled_dot_product_attention(q, k, v, causal_mask(7)[:5])
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 5), atol=1e-6, rtol=0)


def test_sdpa_row_with_no_allowed_key_gives_zeros_not_nan():
    q, k, v = _qkv(batch=1, heads=1, seq_q=3, seq_k=4)
    mask = torch.tensor([[True, False, True, False], [False] * 4, [True] * 4])
    out, w = scaled_dot_product_attention(q, k, v, mask)
    assert not torch.isnan(out).any() and not torch.isnan(w).any()
    assert torch.all(w[..., 1, :] == 0) and torch.all(out[..., 1, :] == 0)
    torch.testing.assert_close(w[..., [0, 2], :].sum(-1), torch.ones(1, 1, 2), atol=1e-6, rtol=0)
    # PyTorch's own SDPA makes the same choice (zeros for a fully masked row).
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=ATOL, rtol=RTOL)
    # ... and the gradient stays finite.
    q.requires_grad_(True)
    scaled_dot_product_attention(q, k, v, mask)[0].sum().backward()
    assert torch.isfinite(q.grad).all()


def test_sdpa_rejects_mismatched_d_k_naming_shapes():
    q, k, v = torch.randn(2, 5, 8), torch.randn(2, 7, 4), torch.randn(2, 7, 6)
    with pytest.raises(ValueError, match=r"q \(2, 5, 8\), k \(2, 7, 4\)"):
        scaled_dot_product_attention(q, k, v)


def test_sdpa_rejects_k_v_with_different_lengths_naming_shapes():
    q, k, v = torch.randn(2, 5, 8), torch.randn(2, 7, 8), torch.randn(2, 6, 8)
    with pytest.raises(ValueError, match=r"k \(2, 7, 8\), v \(2, 6, 8\)"):
        scaled_dot_product_attention(q, k, v)


def test_sdpa_rejects_non_bool_mask_naming_dtype():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="torch.float32"):
        scaled_dot_product_attention(q, k, v, torch.ones(5, 7))


def test_sdpa_rejects_mask_that_does_not_broadcast_naming_shapes():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"\(7, 5\).*\(2, 3, 5, 7\)"):
        scaled_dot_product_attention(q, k, v, torch.ones(7, 5, dtype=torch.bool))


# ----------------------------------------------------------------------------- masks

def test_causal_mask_is_lower_triangular_bool():
    m = causal_mask(4)
    assert m.dtype == torch.bool and m.shape == (4, 4)
    assert m.tolist() == [[True, False, False, False], [True, True, False, False],
                          [True, True, True, False], [True, True, True, True]]


def test_causal_mask_matches_torch_generate_square_subsequent_mask():
    # torch's mask is float: 0 where allowed, -inf where blocked.
    theirs = nn.Transformer.generate_square_subsequent_mask(5)
    assert torch.equal(causal_mask(5), theirs == 0)


def test_padding_mask_from_lengths_and_from_pad_tensor_agree():
    from_lengths = padding_mask([3, 1], seq_len=4)
    pad = torch.tensor([[False, False, False, True], [False, True, True, True]])
    assert from_lengths.shape == (2, 1, 1, 4)
    assert torch.equal(from_lengths, padding_mask(pad))
    assert from_lengths[:, 0, 0].tolist() == [[True, True, True, False], [True, False, False, False]]


def test_padding_mask_rejects_length_longer_than_seq_len():
    with pytest.raises(ValueError, match="seq_len=3"):
        padding_mask([5, 2], seq_len=3)


def test_to_torch_mha_mask_inverts_the_convention():
    assert torch.equal(to_torch_mha_mask(causal_mask(3)), torch.ones(3, 3, dtype=torch.bool).triu(1))


def test_to_torch_key_padding_mask_squeezes_and_inverts():
    kpm = to_torch_key_padding_mask(padding_mask([2, 3], seq_len=3))
    assert kpm.tolist() == [[False, False, True], [False, False, False]]
    with pytest.raises(ValueError, match=r"\(2, 3, 3\)"):
        to_torch_key_padding_mask(torch.ones(2, 3, 3, dtype=torch.bool))


# ----------------------------------------------------------------------------- heads

def test_split_and_merge_heads_are_inverse_and_match_einops():
    x = torch.randn(2, 5, 12)
    h = split_heads(x, 3)
    assert h.shape == (2, 3, 5, 4)
    torch.testing.assert_close(h[:, 1], x[..., 4:8], atol=0, rtol=0)  # head 1 = features 4..7
    torch.testing.assert_close(h, split_heads_einops(x, 3), atol=0, rtol=0)
    torch.testing.assert_close(merge_heads(h), x, atol=0, rtol=0)
    torch.testing.assert_close(merge_heads_einops(h), x, atol=0, rtol=0)


def test_split_heads_rejects_indivisible_d_model_naming_shape():
    with pytest.raises(ValueError, match=r"\(2, 5, 10\).*num_heads=3"):
        split_heads(torch.randn(2, 5, 10), 3)


# ----------------------------------------------------------------------------- multi-head attention

def test_mha_matches_torch_multiheadattention_without_mask():
    ours, theirs = _pair()
    x = torch.randn(3, 6, 16)
    out, w = ours(x, x, x, need_weights=True)
    ref, ref_w = theirs(x, x, x, need_weights=True)  # torch averages the weights over heads
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(w.mean(dim=1), ref_w, atol=ATOL, rtol=RTOL)
    _, ref_heads = theirs(x, x, x, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(w, ref_heads, atol=ATOL, rtol=RTOL)


def test_mha_matches_torch_multiheadattention_with_causal_mask():
    ours, theirs = _pair()
    x = torch.randn(3, 6, 16)
    mask = causal_mask(6)
    out, w = ours(x, x, x, mask=mask, need_weights=True)
    # torch's convention is the inverse: True = NOT allowed.
    ref, ref_w = theirs(x, x, x, attn_mask=to_torch_mha_mask(mask), need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(w, ref_w, atol=ATOL, rtol=RTOL)


def test_mha_matches_torch_multiheadattention_with_key_padding_mask():
    ours, theirs = _pair()
    x = torch.randn(3, 6, 16)
    lengths = [6, 4, 2]
    mask = padding_mask(lengths)                                    # [3, 1, 1, 6], True = real token
    key_padding_mask = to_torch_key_padding_mask(mask)              # [3, 6], True = padding
    out, w = ours(x, x, x, mask=mask, need_weights=True)
    ref, ref_w = theirs(x, x, x, key_padding_mask=key_padding_mask, need_weights=True)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(w.mean(dim=1), ref_w, atol=ATOL, rtol=RTOL)
    assert torch.all(w[2, :, :, 2:] == 0)  # the third sequence never looks at its padding


def test_mha_matches_torch_multiheadattention_with_causal_and_padding_masks_combined():
    ours, theirs = _pair()
    x = torch.randn(2, 5, 16)
    mask = causal_mask(5) & padding_mask([5, 3])                    # broadcasts to [2, 1, 5, 5]
    out = ours(x, x, x, mask=mask)
    ref, _ = theirs(x, x, x, attn_mask=to_torch_mha_mask(causal_mask(5)),
                    key_padding_mask=to_torch_mha_mask(padding_mask([5, 3])[:, 0, 0]))
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)


def test_mha_matches_torch_multiheadattention_for_cross_attention():
    ours, theirs = _pair()
    query, memory = torch.randn(2, 4, 16), torch.randn(2, 9, 16)
    value = torch.randn(2, 9, 16)
    out, w = ours(query, memory, value, need_weights=True)
    ref, ref_w = theirs(query, memory, value, need_weights=True)
    assert out.shape == (2, 4, 16) and w.shape == (2, 4, 4, 9)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(w.mean(dim=1), ref_w, atol=ATOL, rtol=RTOL)


def test_mha_without_bias_matches_torch():
    ours, theirs = _pair(bias=False)
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(ours(x, x, x), theirs(x, x, x)[0], atol=ATOL, rtol=RTOL)


def test_mha_accepts_per_example_3d_mask():
    ours, _ = _pair()
    x = torch.randn(2, 5, 16)
    mask3 = causal_mask(5).expand(2, 5, 5)
    torch.testing.assert_close(ours(x, x, x, mask=mask3), ours(x, x, x, mask=causal_mask(5)), atol=0, rtol=0)


def test_copy_to_torch_mha_round_trip():
    ours = MultiHeadAttention(16, 4)
    theirs = copy_to_torch_mha(ours, nn.MultiheadAttention(16, 4, batch_first=True))
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(ours(x, x, x), theirs(x, x, x)[0], atol=ATOL, rtol=RTOL)


def test_load_from_torch_mha_error_names_parameter_and_shapes():
    ours = MultiHeadAttention(16, 4)
    theirs = nn.MultiheadAttention(16, 4, batch_first=True)
    ours.out_proj = nn.Linear(16, 8)  # a deliberately wrong layer
    with pytest.raises(WeightMismatchError, match=r"^out_proj\.weight: the model's shape is \(8, 16\), "
                                                  r"but the checkpoint's out_proj\.weight gives \(16, 16\)$"):
        load_from_torch_mha(ours, theirs)


def test_load_from_torch_mha_rejects_bias_mismatch_naming_parameter():
    with pytest.raises(WeightMismatchError, match=r"the checkpoint has no 'in_proj_bias', needed for 'q_proj\.bias'"):
        load_from_torch_mha(MultiHeadAttention(16, 4, bias=True), nn.MultiheadAttention(16, 4, bias=False))
    with pytest.raises(WeightMismatchError, match=r"the model has no parameter 'q_proj\.bias' \(wanted for 'in_proj_bias'\)"):
        load_from_torch_mha(MultiHeadAttention(16, 4, bias=False), nn.MultiheadAttention(16, 4, bias=True))
    with pytest.raises(WeightMismatchError, match=r"the checkpoint has no 'q_proj\.bias', needed for 'in_proj_bias'"):
        copy_to_torch_mha(MultiHeadAttention(16, 4, bias=False), nn.MultiheadAttention(16, 4, bias=True))


def test_load_from_torch_mha_rejects_size_mismatch():
    with pytest.raises(ValueError, match="embed_dim=16, num_heads=2"):
        load_from_torch_mha(MultiHeadAttention(16, 4), nn.MultiheadAttention(16, 2))


def test_einops_mha_equals_view_transpose_mha():
    ours, _ = _pair()
    ein = MultiHeadAttentionEinops(16, 4)
    ein.load_state_dict(ours.state_dict())
    x, mem = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    mask = padding_mask([7, 3])
    out, w = ours(x, mem, mem, mask=mask, need_weights=True)
    out_e, w_e = ein(x, mem, mem, mask=mask, need_weights=True)
    torch.testing.assert_close(out_e, out, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(w_e, w, atol=ATOL, rtol=RTOL)


def test_fused_qkv_attention_equals_view_transpose_mha():
    ours, _ = _pair()
    fused = fused_from_mha(ours).eval()
    assert fused.qkv_proj.weight.shape == (48, 16)
    x = torch.randn(2, 6, 16)
    for mask in (None, causal_mask(6), padding_mask([6, 2])):
        out, w = fused(x, mask=mask, need_weights=True)
        ref, ref_w = ours(x, x, x, mask=mask, need_weights=True)
        torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(w, ref_w, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("d_model,num_heads", [(16, 4), (64, 8), (768, 12)])
def test_mha_parameter_count_is_4_d_squared_plus_4_d(d_model, num_heads):
    n = sum(p.numel() for p in MultiHeadAttention(d_model, num_heads).parameters())
    assert n == 4 * d_model**2 + 4 * d_model == mha_parameter_count(d_model)
    assert n == sum(p.numel() for p in nn.MultiheadAttention(d_model, num_heads).parameters())
    assert n == sum(p.numel() for p in FusedQKVAttention(d_model, num_heads).parameters())
    assert sum(p.numel() for p in MultiHeadAttention(d_model, num_heads, bias=False).parameters()) == \
        mha_parameter_count(d_model, bias=False)


def test_mha_rejects_wrong_d_model_naming_shape():
    with pytest.raises(ValueError, match=r"query must be \[batch, seq, d_model=16\].*\(2, 5, 12\)"):
        MultiHeadAttention(16, 4)(torch.randn(2, 5, 12), torch.randn(2, 5, 16), torch.randn(2, 5, 16))


def test_mha_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="d_model=10 must be divisible by num_heads=3"):
        MultiHeadAttention(10, 3)


def test_mha_dropout_only_in_training():
    mha = MultiHeadAttention(16, 4, dropout=0.5)
    x = torch.randn(2, 5, 16)
    mha.eval()
    torch.testing.assert_close(mha(x, x, x), mha(x, x, x), atol=0, rtol=0)
    mha.train()
    assert not torch.allclose(mha(x, x, x), mha(x, x, x))


def test_mha_gradients_match_torch():
    ours, theirs = _pair()
    x = torch.randn(2, 5, 16)
    ours(x, x, x, mask=causal_mask(5)).pow(2).sum().backward()
    theirs(x, x, x, attn_mask=to_torch_mha_mask(causal_mask(5)))[0].pow(2).sum().backward()
    d = 16
    grad_in = torch.cat([ours.q_proj.weight.grad, ours.k_proj.weight.grad, ours.v_proj.weight.grad])
    torch.testing.assert_close(grad_in, theirs.in_proj_weight.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.out_proj.weight.grad, theirs.out_proj.weight.grad, atol=1e-5, rtol=1e-4)
    assert grad_in.shape == (3 * d, d)


# ----------------------------------------------------------------------------- the fast path (no weights asked for)

def _mha_both_paths(mask, seed=0):
    """The output (and input gradient) of one MultiHeadAttention with and without need_weights."""
    seed_everything(seed)
    mha = MultiHeadAttention(32, 4)
    x = torch.randn(3, 7, 32)
    results = []
    for need_weights in (False, True):
        xi = x.clone().requires_grad_(True)
        mha.zero_grad()
        out = mha(xi, xi, xi, mask=mask, need_weights=need_weights)
        out = out[0] if need_weights else out
        out.pow(2).sum().backward()
        results.append((out.detach(), xi.grad, [p.grad.clone() for p in mha.parameters()]))
    return results


@pytest.mark.parametrize("mask", [
    None,
    causal_mask(7),
    padding_mask([7, 4, 1], seq_len=7),
    padding_mask([7, 4, 0], seq_len=7),                           # a row with no key: 0 on both paths
    torch.rand(3, 7, 7) > 0.3,                                    # per-example [batch, seq_q, seq_k]
], ids=["none", "causal", "padding", "empty-row", "per-example"])
def test_mha_fast_path_equals_the_explicit_path_outputs_and_gradients(mask):
    (fast, fast_dx, fast_dp), (slow, slow_dx, slow_dp) = _mha_both_paths(mask)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_dx, slow_dx, atol=1e-5, rtol=1e-5)
    for a, b in zip(fast_dp, slow_dp):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_mha_fast_path_rejects_a_bad_mask_as_the_explicit_path_does():
    mha = MultiHeadAttention(16, 2)
    x = torch.randn(2, 5, 16)
    for need_weights in (False, True):
        with pytest.raises(ValueError, match="torch.bool"):
            mha(x, x, x, mask=causal_mask(5).float(), need_weights=need_weights)
        with pytest.raises(ValueError, match="does not broadcast"):
            mha(x, x, x, mask=causal_mask(4), need_weights=need_weights)


def test_mha_fast_path_calls_torchs_fused_attention_only_without_weights(monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    mha = MultiHeadAttention(16, 2, dropout=0.1).train()
    x = torch.randn(2, 5, 16)
    mha(x, x, x, mask=causal_mask(5))
    assert len(calls) == 1 and calls[0]["dropout_p"] == 0.1
    mha.eval()(x, x, x)
    assert calls[1]["dropout_p"] == 0.0
    mha(x, x, x, need_weights=True)
    assert len(calls) == 2
