"""Norms, feed-forward networks and the transformer block, each against PyTorch's own module."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course.attention import causal_mask, padding_mask
from course.layers import (
    FeedForward,
    LayerNorm,
    RMSNorm,
    TransformerBlock,
    block_parameter_breakdown,
    block_parameter_formula,
    count_parameters,
    feed_forward,
    layer_norm,
    load_from_torch_encoder_layer,
    rms_norm,
    sublayer_connection,
    swiglu,
)
from course.seed import seed_everything
from course.weights import WeightMismatchError


@pytest.fixture(autouse=True)
def _seed():
    seed_everything(0)


def _randomise(module: nn.Module, scale: float = 0.3) -> nn.Module:
    """Give every parameter random values (so ones/zeros initialisations hide nothing)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)
    return module


# ------------------------------------------------------------------------------------ norms


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_layer_norm_matches_torch_layernorm_with_the_same_weights(eps, fused):
    theirs = _randomise(nn.LayerNorm(24, eps=eps))
    ours = LayerNorm(24, eps=eps, fused=fused)
    ours.load_state_dict(theirs.state_dict())       # same parameter names: weight, bias
    x = torch.randn(3, 7, 24) * 4 + 2
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-6)  # float32


def test_layer_norm_without_bias_matches_torch():
    theirs = _randomise(nn.LayerNorm(16, bias=False))
    ours = LayerNorm(16, bias=False)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(5, 16)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-6)  # float32


def test_fused_and_formula_layer_norm_agree_in_outputs_and_gradients():
    fused, formula = _randomise(LayerNorm(32)), LayerNorm(32, fused=False)
    formula.load_state_dict(fused.state_dict())
    x = (torch.randn(4, 9, 32) * 3 + 1).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    grad = torch.randn(4, 9, 32)
    fused(x).backward(grad)
    formula(x2).backward(grad)
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-5, rtol=1e-5)
    for (name, p1), p2 in zip(fused.named_parameters(), formula.parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, atol=1e-4, rtol=1e-5, msg=name)


def test_layer_norm_output_has_mean_zero_and_variance_one_before_scaling():
    y = layer_norm(torch.randn(4, 9, 32) * 10 + 3)
    torch.testing.assert_close(y.mean(-1), torch.zeros(4, 9), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(4, 9), atol=1e-4, rtol=0)


@pytest.mark.skipif(not hasattr(nn, "RMSNorm"), reason="torch.nn.RMSNorm needs torch >= 2.4")
@pytest.mark.parametrize("eps", [1e-6, 1e-2, None])
def test_rms_norm_matches_torch_rmsnorm_with_the_same_weights(eps):
    theirs = _randomise(nn.RMSNorm(24, eps=eps))
    ours = RMSNorm(24, eps=eps)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(3, 7, 24) * 4 + 2
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-6)  # float32


def test_rms_norm_is_layer_norm_for_zero_mean_inputs():
    x = torch.randn(6, 16)
    x = x - x.mean(-1, keepdim=True)
    torch.testing.assert_close(rms_norm(x, eps=1e-5), layer_norm(x, eps=1e-5), atol=1e-6, rtol=1e-6)


def test_norm_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"LayerNorm\(8\) expects x of shape \[\.\.\., 8\], got \(2, 6\)"):
        LayerNorm(8)(torch.randn(2, 6))
    with pytest.raises(ValueError, match=r"RMSNorm\(8\).*got \(2, 6\)"):
        RMSNorm(8)(torch.randn(2, 6))
    with pytest.raises(ValueError, match=r"weight has shape \(5,\), expected \(6,\)"):
        layer_norm(torch.randn(2, 6), torch.ones(5))


# ------------------------------------------------------------------------------------ feed-forward


def test_feed_forward_relu_is_the_2017_formula():
    ffn = _randomise(FeedForward(8, 20, "relu"))
    x = torch.randn(2, 5, 8)
    w1, b1, w2, b2 = ffn.linear1.weight.T, ffn.linear1.bias, ffn.linear2.weight.T, ffn.linear2.bias
    expected = torch.clamp(x @ w1 + b1, min=0) @ w2 + b2            # max(0, x W1 + b1) W2 + b2
    torch.testing.assert_close(ffn(x), expected, atol=1e-5, rtol=1e-5)  # float32
    torch.testing.assert_close(feed_forward(x, w1, b1, w2, b2), expected, atol=1e-5, rtol=1e-5)


def test_feed_forward_gelu_uses_the_exact_gelu():
    ffn = _randomise(FeedForward(8, 20, "gelu"))
    x = torch.randn(2, 5, 8)
    expected = ffn.linear2(F.gelu(ffn.linear1(x), approximate="none"))
    torch.testing.assert_close(ffn(x), expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(
        feed_forward(x, ffn.linear1.weight.T, ffn.linear1.bias, ffn.linear2.weight.T, ffn.linear2.bias, "gelu"),
        expected, atol=1e-5, rtol=1e-5)


def test_swiglu_gates_the_up_projection_with_silu_of_the_gate():
    ffn = _randomise(FeedForward(8, 12, "swiglu", bias=False))
    x = torch.randn(3, 8)
    gate, up = x @ ffn.gate.weight.T, x @ ffn.linear1.weight.T
    expected = (gate * torch.sigmoid(gate) * up) @ ffn.linear2.weight.T   # silu(z) = z * sigmoid(z)
    torch.testing.assert_close(ffn(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(swiglu(x, ffn.gate.weight.T, ffn.linear1.weight.T, ffn.linear2.weight.T),
                               expected, atol=1e-5, rtol=1e-5)


def test_feed_forward_errors_name_shapes_and_choices():
    with pytest.raises(ValueError, match="activation must be one of"):
        FeedForward(8, 16, "tanh")
    with pytest.raises(ValueError, match=r"x \(2, 8\), w1 \(6, 16\)"):
        feed_forward(torch.randn(2, 8), torch.randn(6, 16), None, torch.randn(16, 8), None)
    with pytest.raises(ValueError, match=r"w_down \(8, 8\)"):
        swiglu(torch.randn(2, 8), torch.randn(8, 16), torch.randn(8, 16), torch.randn(8, 8))
    with pytest.raises(ValueError, match=r"FeedForward\(d_model=8\).*got \(2, 4\)"):
        FeedForward(8, 16)(torch.randn(2, 4))


# ------------------------------------------------------------------------------------ residuals


def test_sublayer_connection_pre_and_post_norm():
    x = torch.randn(2, 3, 4)
    sub, norm = _randomise(nn.Linear(4, 4)), _randomise(nn.LayerNorm(4))
    torch.testing.assert_close(sublayer_connection(x, sub, norm, True), x + sub(norm(x)), atol=0, rtol=0)
    torch.testing.assert_close(sublayer_connection(x, sub, norm, False), norm(x + sub(x)), atol=0, rtol=0)


# ------------------------------------------------------------------------------------ the block


def _pair(norm_first: bool, activation: str, d_model=32, heads=4, d_ff=64, bias=True, eps=1e-5):
    theirs = nn.TransformerEncoderLayer(d_model, heads, d_ff, dropout=0.0, activation=activation,
                                        batch_first=True, norm_first=norm_first, bias=bias, layer_norm_eps=eps)
    _randomise(theirs, 0.1).eval()
    ours = TransformerBlock(d_model, heads, d_ff, norm_first=norm_first, activation=activation, bias=bias, eps=eps)
    load_from_torch_encoder_layer(ours, theirs).eval()
    return ours, theirs


@pytest.mark.parametrize("norm_first", [True, False], ids=["pre_norm", "post_norm"])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_block_matches_torch_transformerencoderlayer(norm_first, activation):
    ours, theirs = _pair(norm_first, activation)
    x = torch.randn(3, 10, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)  # float32


@pytest.mark.parametrize("norm_first", [True, False], ids=["pre_norm", "post_norm"])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_block_matches_torch_transformerencoderlayer_with_causal_mask(norm_first, activation):
    ours, theirs = _pair(norm_first, activation)
    x = torch.randn(3, 10, 32)
    allowed = causal_mask(10)                          # course convention: True = may attend
    with torch.no_grad():
        ref_bool = theirs(x, src_mask=~allowed)       # torch's boolean mask: True = NOT allowed
        ref_float = theirs(x, src_mask=nn.Transformer.generate_square_subsequent_mask(10), is_causal=True)
        out = ours(x, mask=allowed)
    torch.testing.assert_close(out, ref_bool, atol=1e-5, rtol=1e-5)   # float32
    torch.testing.assert_close(out, ref_float, atol=1e-5, rtol=1e-5)
    # The mask matters: the first position sees only itself, so its output differs from the unmasked one.
    assert not torch.allclose(out, ours(x), atol=1e-3)


def test_block_matches_torch_with_a_padding_mask():
    ours, theirs = _pair(True, "relu")
    x = torch.randn(2, 6, 32)
    lengths = [6, 4]
    with torch.no_grad():
        out = ours(x, mask=padding_mask(lengths))
        ref = theirs(x, src_key_padding_mask=~padding_mask(lengths)[:, 0, 0, :])
    torch.testing.assert_close(out[0], ref[0], atol=1e-5, rtol=1e-5)   # float32
    torch.testing.assert_close(out[1, :4], ref[1, :4], atol=1e-5, rtol=1e-5)  # torch's fast path may zero padded rows


def test_block_without_biases_matches_torch():
    ours, theirs = _pair(False, "relu", bias=False, eps=1e-6)
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)  # float32


def test_block_gradients_match_torch_in_training_mode_without_dropout():
    ours, theirs = _pair(True, "gelu")
    ours.train(), theirs.train()
    x = torch.randn(2, 5, 32)
    ours(x).pow(2).sum().backward()
    theirs(x).pow(2).sum().backward()
    torch.testing.assert_close(ours.ffn.linear1.weight.grad, theirs.linear1.weight.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.self_attn.q_proj.weight.grad, theirs.self_attn.in_proj_weight.grad[:32],
                               atol=1e-4, rtol=1e-4)  # float32, summed over 10 outputs


def test_weight_mapping_errors_name_the_parameter_and_the_shapes():
    theirs = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    with pytest.raises(WeightMismatchError, match=r"^ffn\.linear1\.weight: the model's shape is \(48, 32\), "
                                                  r"but the checkpoint's linear1\.weight gives \(64, 32\)$"):
        load_from_torch_encoder_layer(TransformerBlock(32, 4, 48, norm_first=False), theirs)
    with pytest.raises(ValueError, match=r"self_attn: .*embed_dim=32.*d_model=16"):
        load_from_torch_encoder_layer(TransformerBlock(16, 4, 64, norm_first=False), theirs)
    with pytest.raises(ValueError, match="norm_first differs"):
        load_from_torch_encoder_layer(TransformerBlock(32, 4, 64, norm_first=True), theirs)
    with pytest.raises(ValueError, match="activation differs"):
        load_from_torch_encoder_layer(TransformerBlock(32, 4, 64, norm_first=False, activation="gelu"), theirs)
    with pytest.raises(ValueError, match="uses RMSNorm"):
        load_from_torch_encoder_layer(TransformerBlock(32, 4, 64, norm_first=False, norm="rms"), theirs)
    no_bias = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, bias=False)
    with pytest.raises(WeightMismatchError, match=r"the checkpoint has no 'self_attn\.in_proj_bias', needed for "
                                                  r"'self_attn\.q_proj\.bias'"):
        load_from_torch_encoder_layer(TransformerBlock(32, 4, 64, norm_first=False), no_bias)


def test_block_with_rmsnorm_and_swiglu_runs_and_keeps_the_shape():
    block = TransformerBlock(32, 4, 48, norm="rms", activation="swiglu")
    x = torch.randn(2, 7, 32)
    assert block(x, mask=causal_mask(7)).shape == (2, 7, 32)
    with pytest.raises(ValueError, match=r"\[batch, seq, 32\], got \(7, 32\)"):
        block(torch.randn(7, 32))
    with pytest.raises(ValueError, match="norm must be one of"):
        TransformerBlock(32, 4, 48, norm="batch")


def test_block_dropout_acts_in_training_only():
    block = TransformerBlock(16, 2, 32, dropout=0.5)
    x = torch.randn(2, 6, 16)
    block.train()
    assert not torch.allclose(block(x), block(x))          # two different dropout masks
    block.eval()
    torch.testing.assert_close(block(x), block(x), atol=0, rtol=0)


def test_a_causal_block_does_not_look_ahead():
    block = TransformerBlock(16, 2, 32).eval()
    x = torch.randn(1, 8, 16)
    y = x.clone()
    y[:, 5:] = torch.randn(1, 3, 16)     # change the future
    with torch.no_grad():
        a, b = block(x, causal_mask(8)), block(y, causal_mask(8))
    torch.testing.assert_close(a[:, :5], b[:, :5], atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------------------ counting


@pytest.mark.parametrize("d_model, heads, d_ff, activation, norm, bias", [
    (32, 4, 64, "relu", "layer", True),
    (64, 8, 256, "gelu", "layer", True),
    (48, 3, 128, "swiglu", "rms", False),
    (16, 2, 40, "swiglu", "layer", True),
    (24, 6, 96, "relu", "rms", True),
    (40, 5, 100, "gelu", "layer", False),
])
def test_parameter_count_equals_the_formula(d_model, heads, d_ff, activation, norm, bias):
    block = TransformerBlock(d_model, heads, d_ff, activation=activation, norm=norm, bias=bias)
    formula = block_parameter_formula(d_model, d_ff, activation=activation, norm=norm, bias=bias)
    assert count_parameters(block) == formula
    parts = block_parameter_breakdown(d_model, d_ff, activation=activation, norm=norm, bias=bias)
    assert count_parameters(block.self_attn) == parts["attention"]
    assert count_parameters(block.ffn) == parts["feed-forward"]
    assert count_parameters(block.norm1) + count_parameters(block.norm2) == parts["norms"]


def test_parameter_count_matches_torch_and_the_closed_form():
    d, d_ff = 512, 2048                    # the base model of "Attention is all you need"
    theirs = nn.TransformerEncoderLayer(d, 8, d_ff, batch_first=True)
    assert count_parameters(theirs) == block_parameter_formula(d, d_ff) == 4 * d * d + 2 * d * d_ff + d_ff + 9 * d


def test_count_parameters_counts_shared_tensors_once_and_can_skip_frozen_ones():
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, lin)
    assert count_parameters(model) == 20
    lin.bias.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 16


def test_block_returns_the_attention_weights_it_used_when_asked():
    seed_everything(0)
    block = TransformerBlock(16, 4, 32).eval()
    x = torch.randn(2, 5, 16)
    mask = causal_mask(5)
    out, weights = block(x, mask=mask, need_weights=True)
    # without weights the block takes the fast path (torch's fused attention): equal to float32 rounding
    torch.testing.assert_close(out, block(x, mask=mask), atol=1e-5, rtol=1e-5)
    h = block.norm1(x)                                                       # pre-norm: attention sees norm1(x)
    _, expected = block.self_attn(h, h, h, mask=mask, need_weights=True)
    torch.testing.assert_close(weights, expected, atol=0, rtol=0)
    assert weights.shape == (2, 4, 5, 5) and bool((weights.triu(1) == 0).all())
