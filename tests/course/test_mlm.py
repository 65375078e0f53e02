"""The masking rule, pooling and the MLM/classifier plumbing."""
from __future__ import annotations

import pytest
import torch

from course.data.sentences import grammar_vocabulary, sentence_corpus
from course.mlm import (
    IGNORE_INDEX,
    apply_masking_rule,
    bidirectional_mask,
    classification_batches,
    classification_loss,
    cls_pool,
    mask_tokens,
    masking_fractions,
    mean_pool,
    mlm_batches,
    mlm_loss,
    top_predictions,
)
from course.models import BertClassifier, BertConfig, BertEncoder, BertForMaskedLM
from course.tokenizers import SpecialWordTokenizer


@pytest.fixture(scope="module")
def tok():
    return SpecialWordTokenizer(grammar_vocabulary())


def test_masking_rule_follows_bert_on_hand_made_draws():
    ids = torch.tensor([[2, 10, 11, 12, 13, 3, 0]])
    special = ids < 5
    select = torch.tensor([[0.0, 0.1, 0.1, 0.1, 0.5, 0.0, 0.0]])
    action = torch.tensor([[0.0, 0.5, 0.85, 0.95, 0.5, 0.0, 0.0]])
    rand = torch.full_like(ids, 99)
    inputs, labels = apply_masking_rule(ids, special, select, action, rand, mask_id=4)
    assert inputs.tolist() == [[2, 4, 99, 12, 13, 3, 0]]
    assert labels.tolist() == [[-100, 10, 11, 12, -100, -100, -100]]
    assert ids.tolist() == [[2, 10, 11, 12, 13, 3, 0]]  # not modified in place
    with pytest.raises(ValueError, match="same shape"):
        apply_masking_rule(ids, special, select[:, :3], action, rand, 4)


def test_mask_tokens_gives_15_percent_split_80_10_10_and_never_touches_specials(tok):
    ids, _ = tok.batch(sentence_corpus(3000, seed=0))
    special = tok.special_mask(ids)
    inputs, labels = mask_tokens(ids, special, tok.mask_id, tok.vocab_size, torch.Generator().manual_seed(0))
    f = masking_fractions(ids, special, inputs, labels, tok.mask_id)
    # ~30,000 real words: the fractions lie within a few standard errors of the rule's
    assert abs(f["chosen"] - 0.15) < 0.01
    assert abs(f["[MASK]"] - 0.8) < 0.03 and abs(f["random"] - 0.1) < 0.02 and abs(f["unchanged"] - 0.1) < 0.025
    assert torch.equal(inputs[special], ids[special]) and (labels[special] == IGNORE_INDEX).all()
    random_spots = (labels != IGNORE_INDEX) & (inputs != tok.mask_id) & (inputs != ids)
    assert (inputs[random_spots] >= tok.num_special).all()  # random replacements are words
    again = mask_tokens(ids, special, tok.mask_id, tok.vocab_size, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], inputs) and torch.equal(again[1], labels)


def test_bidirectional_mask_hides_padding_keys_only_and_has_no_causal_triangle():
    m = bidirectional_mask(torch.tensor([[1, 1, 0], [1, 1, 1]]))
    assert m.shape == (2, 1, 3, 3) and m.dtype == torch.bool
    assert m[0, 0].tolist() == [[True, True, False]] * 3 and m[1].all()


def test_encoder_with_bidirectional_mask_equals_torch_transformer_encoder_with_key_padding_mask():
    """Our encoder blocks with the padding mask = torch.nn.TransformerEncoderLayer(norm_first=False, gelu)."""
    from course.layers import load_from_torch_encoder_layer

    torch.manual_seed(0)
    enc = BertEncoder(BertConfig(vocab_size=30, d_model=32, num_heads=4, num_layers=1, eps=1e-5)).eval()
    theirs = torch.nn.TransformerEncoderLayer(32, 4, 128, dropout=0.0, activation="gelu", batch_first=True).eval()
    load_from_torch_encoder_layer(enc.blocks[0], theirs)
    x = torch.randn(2, 6, 32)
    attention = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6])
    ours = enc.blocks[0](x, mask=bidirectional_mask(attention))
    with torch.no_grad():
        ref = theirs(x, src_key_padding_mask=attention == 0)
    real = attention.bool()
    torch.testing.assert_close(ours[real], ref[real], atol=1e-5, rtol=1e-5)  # float32


def test_encoder_need_weights_returns_the_same_hidden_states_and_rows_that_sum_to_one():
    torch.manual_seed(0)
    enc = BertEncoder(BertConfig(vocab_size=30, d_model=32, num_heads=4, num_layers=2)).eval()
    ids = torch.randint(5, 30, (2, 7))
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    hidden, weights = enc(ids, mask, need_weights=True)
    torch.testing.assert_close(hidden, enc(ids, mask), atol=1e-5, rtol=1e-5)  # without weights: the fast path
    assert len(weights) == 2 and weights[0].shape == (2, 4, 7, 7)
    torch.testing.assert_close(weights[1].sum(-1), torch.ones(2, 4, 7))
    assert (weights[0][0, :, :, 5:] == 0).all()  # nobody attends to padding


def test_mean_pool_averages_real_tokens_and_cls_pool_takes_position_zero():
    h = torch.arange(24.0).view(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    torch.testing.assert_close(mean_pool(h, mask), torch.stack([h[0, :2].mean(0), h[1].mean(0)]))
    torch.testing.assert_close(cls_pool(h), h[:, 0])
    with pytest.raises(ValueError, match=r"\(2, 3, 4\) and \(2, 2\)"):
        mean_pool(h, mask[:, :2])


def test_mlm_batches_are_deterministic_and_the_loss_only_counts_chosen_tokens(tok):
    texts = sentence_corpus(200, seed=0)
    nb = mlm_batches(texts, tok, batch_size=8, seed=1)
    a, b = nb(3), nb(3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    model = BertForMaskedLM(BertConfig(vocab_size=tok.vocab_size, context_length=32, d_model=32, num_heads=2, num_layers=1))
    loss = mlm_loss(model, a)
    logits = model(a["input_ids"], a["attention_mask"])
    chosen = a["labels"] != IGNORE_INDEX
    manual = torch.nn.functional.cross_entropy(logits[chosen], a["labels"][chosen])
    torch.testing.assert_close(loss, manual)
    preds = top_predictions(model, tok, "the [MASK] walked to the road .", k=3)
    assert len(preds) == 1 and len(preds[0]) == 3
    with pytest.raises(ValueError, match="no \\[MASK\\]"):
        top_predictions(model, tok, "the fox .")


def test_classifier_plumbing(tok):
    model = BertClassifier(BertConfig(vocab_size=tok.vocab_size, context_length=32, d_model=32, num_heads=2, num_layers=1), 2)
    nb = classification_batches(["the fox .", "the road was icy ."], [0, 1], tok, batch_size=4)
    batch = nb(0)
    assert batch["labels"].shape == (4,) and batch["input_ids"].shape[0] == 4
    assert classification_loss(model, batch).dim() == 0
    with pytest.raises(ValueError, match="as many labels"):
        classification_batches(["a"], [0, 1], tok, 2)
