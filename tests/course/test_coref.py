"""course.coref: the "it" task's batches, loss, the attention measures, explorers."""
from __future__ import annotations

import matplotlib

matplotlib.use("agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from course.coref import (  # noqa: E402
    ItResolver, best_heads, coref_accuracy, coref_batch, coref_batches, coref_explorer, coref_loss,
    coref_tokenizer, encoder_attentions, it_attention_accuracy, referent_attention_accuracy,
    rollout_it_accuracy, word_positions,
)
from course.data.sentences import it_sentences  # noqa: E402
from course.models import BertConfig  # noqa: E402
from course.seed import seed_everything  # noqa: E402
from course.train import train  # noqa: E402
from course.viz import to_bertviz  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    return coref_tokenizer()


@pytest.fixture(scope="module")
def small_model(tokenizer):
    seed_everything(0)
    return ItResolver(BertConfig(vocab_size=tokenizer.vocab_size, context_length=24, d_model=32, num_heads=2,
                                 num_layers=2)).eval()


def test_coref_batch_positions_point_at_it_and_the_two_nouns(tokenizer):
    sentences = it_sentences(20, seed=0)
    b = coref_batch(sentences, tokenizer)
    for i, s in enumerate(sentences):
        words = tokenizer.decode(b.ids[i].tolist()).split()
        assert words[b.it_pos[i]] == "it"
        assert words[b.right_pos[i]] == s.referent
        assert words[b.wrong_pos[i]] == (s.place if s.referent == s.animal else s.animal)
        assert words[b.adj_pos[i]] == s.adjective
        assert tokenizer.itos[b.target[i]] == s.referent


def test_coref_batches_are_deterministic_per_step(tokenizer):
    nb = coref_batches(it_sentences(50), tokenizer, batch_size=8, seed=3)
    assert torch.equal(nb(5).ids, nb(5).ids) and not torch.equal(nb(5).ids, nb(6).ids)


def test_measuring_leaves_the_model_in_the_mode_it_was_in(tokenizer):
    from course.coref import resolve_it

    seed_everything(0)
    model = ItResolver(BertConfig(vocab_size=tokenizer.vocab_size, context_length=24, d_model=32, num_heads=2,
                                  num_layers=1, dropout=0.1)).train()
    sentences = it_sentences(4, seed=0)
    coref_accuracy(model, tokenizer, sentences)
    resolve_it(model, tokenizer, "the fox didn't cross the road because it was tired .".split())
    it_attention_accuracy(model, tokenizer, sentences)
    assert all(m.training for m in model.modules())


def test_resolver_learns_the_task_on_held_out_pairs(tokenizer):
    """A short training run: well above chance (0.5 for picking one of the two nouns) on held-out pairs."""
    seed_everything(0)
    model = ItResolver(BertConfig(vocab_size=tokenizer.vocab_size, context_length=24, d_model=64, num_heads=4,
                                  num_layers=2))
    train(model, coref_batches(it_sentences(2000, 0, "train"), tokenizer, 64), coref_loss, steps=150, lr=3e-3,
          warmup=20, desc="test")
    assert coref_accuracy(model, tokenizer, it_sentences(200, 1, "test")) > 0.9


def test_referent_attention_accuracy_matches_a_hand_count():
    # 1 layer, 2 examples, 2 heads, 4 tokens; "it" at 3, right noun at 1, wrong at 2 (example 0) / 0 (example 1)
    att = torch.zeros(1, 2, 2, 4, 4)
    att[0, 0, 0, 3] = torch.tensor([0.1, 0.6, 0.2, 0.1])  # ex 0, head 0: right wins and is the max
    att[0, 0, 1, 3] = torch.tensor([0.5, 0.2, 0.3, 0.0])  # ex 0, head 1: wrong wins
    att[0, 1, 0, 3] = torch.tensor([0.2, 0.3, 0.0, 0.5])  # ex 1, head 0: right beats wrong, but "it" is the max
    att[0, 1, 1, 3] = torch.tensor([0.4, 0.4, 0.1, 0.1])  # ex 1, head 1: a tie is not a win
    it, right, wrong = torch.tensor([3, 3]), torch.tensor([1, 1]), torch.tensor([2, 0])
    nouns = referent_attention_accuracy(att, it, right, wrong, among="nouns")
    strict = referent_attention_accuracy(att, it, right, wrong, among="all")
    torch.testing.assert_close(nouns, torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(strict, torch.tensor([[0.5, 0.0]]))


def test_referent_attention_accuracy_rejects_mismatched_positions():
    with pytest.raises(ValueError, match=r"it_pos must have shape \(2,\)"):
        referent_attention_accuracy(torch.rand(1, 2, 2, 4, 4), torch.tensor([1]), torch.tensor([0, 1]),
                                    torch.tensor([0, 1]))


def test_it_attention_accuracy_has_one_number_per_layer_and_head(small_model, tokenizer):
    sentences = it_sentences(40, seed=2, split="test")
    for query in ("it", "adjective"):
        table = it_attention_accuracy(small_model, tokenizer, sentences, query=query)
        assert table.shape == (2, 2) and bool(((table >= 0) & (table <= 1)).all())
    assert rollout_it_accuracy(small_model, tokenizer, sentences).shape == (2,)


def test_best_heads_orders_by_score_then_position():
    scores = torch.tensor([[0.5, 0.9], [0.9, 0.1]])
    assert [(l, h) for l, h, _ in best_heads(scores, k=3)] == [(0, 1), (1, 0), (0, 0)]


def test_bertviz_head_view_accepts_the_encoder_adapter(small_model, tokenizer):
    import bertviz
    ids, mask = tokenizer.batch(["the dog didn't cross the road because it was too wide ."])
    att = to_bertviz(encoder_attentions(small_model.encoder, ids, mask))
    html = bertviz.head_view(att, tokenizer.decode(ids[0].tolist()).split(), html_action="return")
    assert "bertviz-" in html.data and len(html.data) < 60_000


def test_word_positions_finds_whole_tokens():
    assert word_positions(["[CLS]", "the", "animal", "it", "It"], "it") == [3, 4]


# ------------------------------------------------------------------ the explorer on the coref model

def test_coref_explorer_runs_live_and_answers(small_model, tokenizer):
    ex = coref_explorer(small_model, tokenizer, "the dog didn't cross the road because it was too wide .",
                        token="it", layer=1)
    assert ex.tokens[0] == "[CLS]" and ex.tokens[ex.token.value] == "it" and ex.layer.value == 1
    assert "it =" in ex.answer.value and "looks most at" in ex.message.value


@pytest.mark.parametrize("text,expected", [
    ("", "empty"),
    (" ".join(["the"] * 30), "Too long"),
    ("the dog didn't cross the moat because it was too deep .", "Unknown word"),
])
def test_coref_explorer_bad_input_one_line_and_keeps_working(small_model, tokenizer, text, expected):
    ex = coref_explorer(small_model, tokenizer, "the cat was tired .")
    picture = bytes(ex.image.value)
    ex.text.value = text
    assert expected in ex.message.value and "Traceback" not in ex.message.value
    assert bytes(ex.image.value) == picture
    ex.text.value = "the fox didn't cross the river because it was too tired ."
    assert "tokens" in ex.message.value and bytes(ex.image.value) != picture


def test_coref_explorer_says_when_there_is_no_it(small_model, tokenizer):
    ex = coref_explorer(small_model, tokenizer, "the cat was tired .")
    assert "No 'it'" in ex.answer.value
