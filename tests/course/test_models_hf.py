"""The course's GPT and BERT reproduce Hugging Face's models given the same weights.

Tolerance: max |difference| below 1e-4 in float32 (the issue's bar); in practice it is ~1e-6.
Models are small random ones built from a transformers config, so nothing is downloaded.
"""
from __future__ import annotations

import pytest
import torch
from hf_support import logits_gap, quietly

from course.models import GPT, BertConfig, BertEncoder, BertForMaskedLM, GPTConfig, WeightMismatchError

transformers = pytest.importorskip("transformers")
TOL = 1e-4


@pytest.fixture(scope="module")
def hf_gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=48, n_layer=3, n_head=4,
                                  bos_token_id=0, eos_token_id=0)
    return quietly(transformers.GPT2LMHeadModel, cfg).eval()


@pytest.fixture(scope="module")
def hf_bert_mlm():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=101, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=96, max_position_embeddings=40, attn_implementation="eager")
    return quietly(transformers.BertForMaskedLM, cfg).eval()


def test_gpt_matches_hf_gpt2_logits(hf_gpt2):
    ours = GPT.from_hf_gpt2(hf_gpt2)
    idx = torch.randint(0, 97, (2, 32), generator=torch.Generator().manual_seed(1))
    diff = logits_gap(ours, hf_gpt2, idx)
    assert diff < TOL, diff


def test_gpt_is_causal_future_tokens_do_not_change_past_logits(hf_gpt2):
    ours = GPT.from_hf_gpt2(hf_gpt2)
    idx = torch.randint(0, 97, (1, 10))
    changed = idx.clone()
    changed[0, 7:] = (changed[0, 7:] + 1) % 97
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[:, :7], ours(changed)[:, :7], atol=1e-6, rtol=1e-5)


def test_gpt_checkpoint_with_more_layers_names_the_first_unused_tensor(hf_gpt2):
    small = GPT(GPTConfig(vocab_size=97, context_length=32, d_model=48, num_heads=4, num_layers=2))
    with pytest.raises(WeightMismatchError, match=r"first 'h\.2\.[^']*'.*too small"):
        small.load_gpt2_state_dict(hf_gpt2.state_dict())


def test_gpt_checkpoint_of_another_width_names_the_parameter_and_both_shapes(hf_gpt2):
    wide = GPT(GPTConfig(vocab_size=97, context_length=32, d_model=64, num_heads=4, num_layers=3))
    with pytest.raises(WeightMismatchError, match=r"token_embedding.weight: the model's shape is \(97, 64\).*\(97, 48\)"):
        wide.load_gpt2_state_dict(hf_gpt2.state_dict())


def test_gpt_rejects_input_it_cannot_read_with_a_message():
    model = GPT(GPTConfig(vocab_size=10, context_length=8, d_model=16, num_heads=2, num_layers=1))
    for bad, words in [(torch.zeros(9, dtype=torch.long), r"\[batch, seq\]"),
                       (torch.zeros(1, 9, dtype=torch.long), "longer than the context window"),
                       (torch.full((1, 3), 10), r"must lie in \[0, 10\)"),
                       (torch.zeros(1, 3), "integer token ids")]:
        with pytest.raises(ValueError, match=words):
            model(bad)


def test_bert_encoder_matches_hf_bert_with_padding(hf_bert_mlm):
    ours = BertEncoder(BertConfig.from_hf(hf_bert_mlm.config))
    ours.load_bert_state_dict(hf_bert_mlm.state_dict()).eval()
    ids = torch.randint(1, 101, (2, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    ids[1, 8:] = 0
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    with torch.no_grad():
        theirs = hf_bert_mlm.bert(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        mine = ours(ids, mask, types)
    real = mask.bool()
    diff = (mine - theirs)[real].abs().max().item()  # padded positions' outputs are never used
    assert diff < TOL, diff


def test_bert_mlm_head_matches_hf_logits(hf_bert_mlm):
    ours = BertForMaskedLM(BertConfig.from_hf(hf_bert_mlm.config))
    ours.load_bert_state_dict(hf_bert_mlm.state_dict()).eval()
    ids = torch.randint(1, 101, (3, 9), generator=torch.Generator().manual_seed(3))
    diff = logits_gap(ours, hf_bert_mlm, ids)
    assert diff < TOL, diff


def test_bert_checkpoint_missing_a_layer_names_it(hf_bert_mlm):
    cfg = BertConfig.from_hf(hf_bert_mlm.config)
    cfg.num_layers = 3
    with pytest.raises(WeightMismatchError, match=r"no 'encoder\.layer\.2\.attention\.self\.query\.weight'"):
        BertEncoder(cfg).load_bert_state_dict(hf_bert_mlm.state_dict())


@pytest.mark.parametrize("flag, value", [("scale_attn_weights", False), ("scale_attn_by_inverse_layer_idx", True),
                                         ("reorder_and_upcast_attn", True)])
def test_gpt_refuses_gpt2_attention_variants_it_does_not_implement(flag, value):
    cfg = transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, **{flag: value})
    with pytest.raises(ValueError, match=flag):
        GPTConfig.from_hf(cfg)


@pytest.mark.parametrize("make", [lambda **kw: GPTConfig(vocab_size=10, **kw), lambda **kw: BertConfig(vocab_size=10, **kw)])
def test_configs_default_d_ff_to_four_widths_and_refuse_heads_that_do_not_divide(make):
    assert make(d_model=32, num_heads=4).d_ff == 128
    with pytest.raises(ValueError, match="d_model=30 is not divisible by num_heads=4"):
        make(d_model=30, num_heads=4)
