"""EncoderDecoder (lesson 09) against torch.nn.Transformer with the same weights.

torch.nn.Transformer has no embeddings and no output layer, so the comparison feeds the same
embedded inputs to both stacks (``encoder_stack`` / ``decoder_stack``). Tolerance: max abs diff
< 1e-4 in float32 (the figure the lesson prints); in practice the difference is about 1e-6.
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from course.attention import causal_mask
from course.layers import DecoderBlock, load_from_torch_decoder_layer
from course.models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig, load_from_torch_transformer
from course.weights import WeightMismatchError
from course.seed import seed_everything

D, HEADS, FF = 32, 4, 64


def _pair(norm_first: bool, layers=(2, 2)):
    seed_everything(0)
    cfg = EncoderDecoderConfig(vocab_size=20, context_length=16, d_model=D, num_heads=HEADS, d_ff=FF, norm_first=norm_first,
                               num_encoder_layers=layers[0], num_decoder_layers=layers[1])
    ours = EncoderDecoder(cfg).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nested-tensor notices from torch
        theirs = nn.Transformer(D, HEADS, layers[0], layers[1], FF, dropout=0.0, batch_first=True,
                                norm_first=norm_first).eval()
    return load_from_torch_transformer(ours, theirs), theirs


def _padded_inputs():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(3, 7, D, generator=g), torch.randn(3, 5, D, generator=g)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[1, 5:] = True
    pad[2, 3:] = True
    return x, y, pad


@pytest.mark.parametrize("norm_first", [True, False], ids=["pre-norm", "post-norm"])
def test_stacks_match_torch_transformer_with_padding_and_causal_masks(norm_first):
    ours, theirs = _pair(norm_first)
    x, y, pad = _padded_inputs()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = theirs(x, y, tgt_mask=nn.Transformer.generate_square_subsequent_mask(5), src_key_padding_mask=pad,
                      memory_key_padding_mask=pad, tgt_is_causal=True)
        want_memory = theirs.encoder(x, src_key_padding_mask=pad)
        memory = ours.encoder_stack(x, (~pad)[:, None, None, :])
        got = ours.decoder_stack(y, memory, (~pad)[:, None, None, :])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)  # float32, max abs diff < 1e-4
    # torch's post-norm encoder may return zeros at padding (its nested-tensor fast path): compare real tokens.
    torch.testing.assert_close(memory[~pad], want_memory[~pad], atol=1e-4, rtol=0)


@pytest.mark.parametrize("norm_first", [True, False], ids=["pre-norm", "post-norm"])
def test_whole_model_equals_embeddings_then_torch_transformer_then_output_layer(norm_first):
    ours, theirs = _pair(norm_first)
    src = torch.tensor([[5, 6, 7, 8, 0, 0], [9, 10, 11, 12, 13, 14]])
    tgt_in = torch.tensor([[1, 4, 5, 6], [1, 7, 8, 0]])

    def embed(ids):
        return ours.token_embedding(ids) * math.sqrt(D) + ours.positions[: ids.shape[1]]

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pad = src == 0
        hidden = theirs(embed(src), embed(tgt_in), tgt_mask=nn.Transformer.generate_square_subsequent_mask(4),
                        src_key_padding_mask=pad, memory_key_padding_mask=pad, tgt_is_causal=True)
        torch.testing.assert_close(ours(src, tgt_in), ours.output(hidden), atol=1e-4, rtol=0)  # float32


@pytest.mark.parametrize("norm_first", [True, False], ids=["pre-norm", "post-norm"])
def test_decoder_block_matches_torch_decoder_layer(norm_first):
    seed_everything(0)
    theirs = nn.TransformerDecoderLayer(D, HEADS, FF, dropout=0.0, batch_first=True, norm_first=norm_first).eval()
    ours = load_from_torch_decoder_layer(DecoderBlock(D, HEADS, FF, norm_first=norm_first), theirs).eval()
    x, y, pad = _padded_inputs()
    with torch.no_grad():
        want = theirs(y, x, tgt_mask=nn.Transformer.generate_square_subsequent_mask(5), memory_key_padding_mask=pad,
                      tgt_is_causal=True)
        got, cross = ours(y, x, self_mask=causal_mask(5), memory_mask=(~pad)[:, None, None, :], need_weights=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)  # float32
    assert cross.shape == (3, HEADS, 5, 7)
    assert float(cross[2, :, :, 3:].abs().max()) == 0.0  # no attention to source padding


def test_source_padding_does_not_change_the_output():
    ours, _ = _pair(True)
    src, tgt_in = torch.tensor([[5, 6, 7]]), torch.tensor([[1, 4, 5]])
    padded = torch.tensor([[5, 6, 7, 0, 0]])
    torch.testing.assert_close(ours(src, tgt_in), ours(padded, tgt_in), atol=1e-5, rtol=1e-5)


def test_decoder_is_causal_later_target_tokens_do_not_change_earlier_logits():
    ours, _ = _pair(False)
    src = torch.tensor([[5, 6, 7, 8]])
    a, b = ours(src, torch.tensor([[1, 4, 5, 6]])), ours(src, torch.tensor([[1, 4, 9, 9]]))
    torch.testing.assert_close(a[:, :2], b[:, :2], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(a[:, 2:], b[:, 2:])


def test_decode_returns_cross_attention_per_layer_with_rows_summing_to_one():
    ours, _ = _pair(True, layers=(1, 3))
    src, tgt_in = torch.tensor([[5, 6, 7, 0]]), torch.tensor([[1, 4]])
    with torch.no_grad():
        logits, cross = ours.decode(tgt_in, ours.encode(src), src, need_weights=True)
    assert logits.shape == (1, 2, 20) and len(cross) == 3 and cross[0].shape == (1, HEADS, 2, 4)
    torch.testing.assert_close(cross[1].sum(-1), torch.ones(1, HEADS, 2))
    assert float(cross[0][..., 3].abs().max()) == 0.0


def test_padding_embedding_row_is_zero_and_output_is_tied():
    ours, _ = _pair(True)
    assert float(ours.token_embedding.weight.detach()[0].abs().max()) == 0.0
    assert ours.output.weight is ours.token_embedding.weight


def test_bad_inputs_and_mismatched_weights_give_clear_messages():
    ours, theirs = _pair(True)
    with pytest.raises(ValueError, match="longer than context_length=16"):
        ours(torch.ones(1, 17, dtype=torch.long), torch.ones(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"must lie in \[0, 20\)"):
        ours(torch.tensor([[25]]), torch.tensor([[1]]))
    with pytest.raises(ValueError, match="layer counts differ"):
        load_from_torch_transformer(_pair(True, layers=(1, 2))[0], theirs)
    with pytest.raises(TypeError, match="torch.nn.Transformer"):
        load_from_torch_transformer(ours, nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"must be \[batch, seq, 32\]"):
        ours.encoder_stack(torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="norm_first differs"):
        load_from_torch_transformer(_pair(False)[0], theirs)
    narrow = EncoderDecoder(EncoderDecoderConfig(vocab_size=20, context_length=16, d_model=D, num_heads=HEADS, d_ff=FF // 2))
    with pytest.raises(WeightMismatchError, match=r"^encoder_blocks\.0\.ffn\.linear1\.weight: the model's shape is "
                                                  r"\(32, 32\), but the checkpoint's encoder\.layers\.0\.linear1\.weight "
                                                  r"gives \(64, 32\)$"):
        load_from_torch_transformer(narrow, theirs)
