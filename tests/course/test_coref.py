"""course.coref: the "it" task's batches, loss, the attention measures, explorers."""
from __future__ import annotations

import matplotlib

matplotlib.use("agg")

import copy  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from course.coref import (  # noqa: E402
    PATCH_SITES, ROAD_SOURCES, ROADS, ItResolver, ablated_heads, activation_at, activation_patching, best_heads,
    coref_accuracy, coref_batch, coref_batches, coref_explorer, coref_loss, coref_roads, coref_tokenizer,
    encoder_attentions, flipped_share, head_ablation_accuracy, head_means, head_outputs, it_attention_accuracy,
    minimal_pairs, patch_layers, patched_logits, referent_attention_accuracy, rollout_it_accuracy, two_layer_roads,
    word_positions,
)
from course.data.sentences import is_test_combo, it_sentences  # noqa: E402
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


# ------------------------------------------------------------------ roads through two layers

def test_two_layer_roads_match_a_hand_count():
    # one example, one head, 4 tokens: query ("it") at 3, source (a noun) at 1, adjective at 2
    a0 = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0.6, 0.4, 0], [0.1, 0.2, 0.3, 0.4]])
    a1 = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0.0, 0.25, 0.5, 0.25]])
    att = torch.stack([a0, a1])[:, None, None]  # [2, 1, 1, 4, 4]
    q, src, adj = torch.tensor([3]), torch.tensor([1]), torch.tensor([2])
    roads = two_layer_roads(att, q, src, [adj, src, q])
    # L0 it->noun 0.2; L1 it->noun 0.25; via adj 0.5*0.6; via noun 0.25*1.0; via it 0.25*0.2; others 0*0
    torch.testing.assert_close(roads, torch.tensor([[0.2, 0.25, 0.3, 0.25, 0.05, 0.0]]))


def test_two_layer_roads_split_the_two_layer_product_exactly():
    """The two-hop roads, named or not, add up to (A1 @ A0)[query, source] (heads averaged first)."""
    torch.manual_seed(0)
    att = torch.rand(2, 3, 2, 6, 6).softmax(-1)
    q, src, via = torch.tensor([5, 4, 3]), torch.tensor([1, 0, 2]), [torch.tensor([2, 2, 1]), torch.tensor([0, 3, 3])]
    roads = two_layer_roads(att, q, src, via)
    a0, a1 = att.mean(2)
    product = a1 @ a0
    for i in range(3):
        assert torch.allclose(roads[i, 2:].sum(), product[i, q[i], src[i]], atol=1e-6)
        assert torch.allclose(roads[i, :2], torch.stack([a0[i, q[i], src[i]], a1[i, q[i], src[i]]]))


def test_two_layer_roads_reject_other_depths_and_mismatched_positions():
    with pytest.raises(ValueError, match=r"\[2 layers"):
        two_layer_roads(torch.rand(3, 1, 1, 4, 4), torch.tensor([3]), torch.tensor([1]), [])
    with pytest.raises(ValueError, match=r"via\[0\] must have shape \(1,\)"):
        two_layer_roads(torch.rand(2, 1, 1, 4, 4), torch.tensor([3]), torch.tensor([1]), [torch.tensor([1, 2])])


def test_coref_roads_has_one_row_per_reading_and_source(small_model, tokenizer):
    roads = coref_roads(small_model, tokenizer, it_sentences(20, seed=3, split="test"))
    assert roads.shape == (2, len(ROAD_SOURCES), len(ROADS)) and bool((roads >= 0).all())
    # every road's weight is a share of attention: the direct ones at most 1, the two-hop ones together too
    assert bool((roads[..., :2] <= 1 + 1e-6).all()) and bool((roads[..., 2:].sum(-1) <= 1 + 1e-6).all())


# ------------------------------------------------------------------ head ablation

def _logits(model, batch):
    with torch.no_grad():
        return model(batch.ids, batch.mask)


def test_head_outputs_are_the_attention_weights_times_the_values(small_model, tokenizer):
    """Reference: each layer's weights (need_weights=True) times its v_proj values, head by head."""
    batch = coref_batch(it_sentences(6, seed=4), tokenizer)
    got = head_outputs(small_model, batch.ids, batch.mask)  # [layers, b, s, heads, d_head]
    enc = small_model.encoder
    with torch.no_grad():
        x = enc.embedding_norm(enc.token_embedding(batch.ids) + enc.position_embedding(torch.arange(batch.ids.shape[1]))
                               + enc.segment_embedding(torch.zeros_like(batch.ids)))
        keys = batch.mask.bool()[:, None, None, :]
        for layer, block in enumerate(enc.blocks):
            attn = block.self_attn
            _, weights = attn(x, x, x, mask=keys, need_weights=True)
            values = attn.v_proj(x).unflatten(-1, (attn.num_heads, attn.d_head)).transpose(1, 2)  # [b, h, s, dh]
            want = (weights @ values).transpose(1, 2)  # [b, s, h, dh]
            torch.testing.assert_close(got[layer], want, atol=1e-5, rtol=1e-5)
            x = block(x, mask=keys)


def test_ablating_no_head_leaves_the_model_exactly_as_it_is(small_model, tokenizer):
    batch = coref_batch(it_sentences(8, seed=5), tokenizer)
    with ablated_heads(small_model, []):
        inside = _logits(small_model, batch)
    assert torch.equal(inside, _logits(small_model, batch))


def test_zero_ablating_a_head_equals_zeroing_its_columns_of_out_proj(small_model, tokenizer):
    """Reference: a copy of the model whose out_proj never reads that head's slice."""
    batch = coref_batch(it_sentences(8, seed=6), tokenizer)
    for layer, head in ((0, 1), (1, 0)):
        surgery = copy.deepcopy(small_model)
        attn = surgery.encoder.blocks[layer].self_attn
        with torch.no_grad():
            attn.out_proj.weight[:, head * attn.d_head:(head + 1) * attn.d_head] = 0.0
        with ablated_heads(small_model, [(layer, head)]):
            ablated = _logits(small_model, batch)
        torch.testing.assert_close(ablated, _logits(surgery, batch), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(ablated, _logits(small_model, batch), atol=1e-4)


class _OnlyBias(torch.nn.Module):
    """An attention sublayer that contributes nothing but its output projection's bias."""

    def __init__(self, bias):
        super().__init__()
        self.bias = bias

    def forward(self, query, key, value, mask=None, need_weights=False, cache=None):
        return self.bias.expand_as(query)


def test_zero_ablating_every_head_of_a_layer_removes_the_attention_sublayer_but_its_bias(small_model, tokenizer):
    batch = coref_batch(it_sentences(8, seed=7), tokenizer)
    for layer in range(2):
        removed = copy.deepcopy(small_model)
        block = removed.encoder.blocks[layer]
        block.self_attn = _OnlyBias(block.self_attn.out_proj.bias.detach())
        with ablated_heads(small_model, [(layer, h) for h in range(2)]):
            ablated = _logits(small_model, batch)
        torch.testing.assert_close(ablated, _logits(removed, batch), atol=1e-5, rtol=1e-5)


def test_mean_ablation_with_a_sentences_own_means_changes_nothing(small_model, tokenizer):
    """Over a data set of one sentence, each head's mean at each position is its own output."""
    one = it_sentences(1, seed=8)
    batch = coref_batch(one, tokenizer)
    means = head_means(small_model, tokenizer, one)
    with ablated_heads(small_model, [(0, 0), (0, 1), (1, 1)], means):
        inside = _logits(small_model, batch)
    torch.testing.assert_close(inside, _logits(small_model, batch), atol=1e-5, rtol=1e-5)


def test_head_means_average_each_position_over_the_sentences_that_reach_it(small_model, tokenizer):
    sentences = it_sentences(12, seed=9)  # "didn't cross" and "did not cross": two lengths
    lengths = {len(s.words) for s in sentences}
    assert len(lengths) > 1
    means = head_means(small_model, tokenizer, sentences)
    for layer, pos in ((0, 1), (1, max(lengths) + 1)):  # a position all reach, one only the longer reach
        outs = [head_outputs(small_model, *tokenizer.batch([" ".join(s.words)]))[layer, 0] for s in sentences
                if pos < len(s.words) + 2]
        torch.testing.assert_close(means[layer, pos], torch.stack([o[pos] for o in outs]).mean(0), atol=1e-5, rtol=1e-5)


def test_ablated_heads_says_which_head_does_not_exist_and_removes_its_hooks(small_model, tokenizer):
    with pytest.raises(ValueError, match=r"head \(2, 0\) does not exist: this model has layers 0 to 1"):
        with ablated_heads(small_model, [(2, 0)]):
            pass
    with pytest.raises(ValueError, match="means must be"):
        with ablated_heads(small_model, [(0, 0)], torch.zeros(2, 5, 3, 16)):
            pass
    batch = coref_batch(it_sentences(4, seed=10), tokenizer)
    before = _logits(small_model, batch)
    with pytest.raises(RuntimeError, match="inside"):
        with ablated_heads(small_model, [(0, 0), (1, 1)]):
            raise RuntimeError("inside")
    assert torch.equal(_logits(small_model, batch), before)
    assert all(not m._forward_pre_hooks for m in small_model.modules())


def test_head_ablation_accuracy_has_one_accuracy_per_head(small_model, tokenizer):
    sentences = it_sentences(16, seed=11, split="test")
    table = head_ablation_accuracy(small_model, tokenizer, sentences)
    assert table.shape == (2, 2) and bool(((table >= 0) & (table <= 1)).all())
    with ablated_heads(small_model, [(1, 0)]):
        assert float(table[1, 0]) == coref_accuracy(small_model, tokenizer, sentences)


# ------------------------------------------------------------------ activation patching

def test_minimal_pairs_differ_in_the_adjective_alone_and_are_held_out():
    pairs = minimal_pairs(30, seed=1)
    assert minimal_pairs(30, seed=1) == pairs and minimal_pairs(30, seed=2) != pairs
    for tired, wide in pairs:
        assert len(tired.words) == len(wide.words)
        differ = [i for i, (a, b) in enumerate(zip(tired.words, wide.words)) if a != b]
        assert differ == [tired.words.index(tired.adjective)] == [wide.words.index(wide.adjective)]
        assert (tired.label, tired.referent, wide.label, wide.referent) == (0, tired.animal, 1, wide.place)
        assert is_test_combo(tired.referent, tired.adjective) and is_test_combo(wide.referent, wide.adjective)


def test_patching_a_run_with_its_own_activation_changes_nothing(small_model, tokenizer):
    batch = coref_batch([t for t, _ in minimal_pairs(6, seed=3)], tokenizer)
    clean = _logits(small_model, batch)[torch.arange(6), batch.it_pos]
    for site in PATCH_SITES:
        for layer in range(patch_layers(small_model, site)):
            own = activation_at(small_model, batch, site, layer)
            for positions in ([3], None):
                assert torch.equal(patched_logits(small_model, batch, site, layer, positions, own), clean)


def test_patching_every_position_gives_the_corrupted_run_exactly(small_model, tokenizer):
    pairs = minimal_pairs(6, seed=4)
    clean, corrupt = (coref_batch([p[i] for p in pairs], tokenizer) for i in (0, 1))
    want = _logits(small_model, corrupt)[torch.arange(6), corrupt.it_pos]
    for layer in range(3):  # the embeddings, between the blocks, after the last block
        source = activation_at(small_model, corrupt, "residual", layer)
        assert torch.equal(patched_logits(small_model, clean, "residual", layer, None, source), want), layer


def test_patching_the_last_residual_stream_at_it_alone_gives_the_corrupted_answer(small_model, tokenizer):
    pairs = minimal_pairs(6, seed=5)
    clean, corrupt = (coref_batch([p[i] for p in pairs], tokenizer) for i in (0, 1))
    result = activation_patching(small_model, tokenizer, pairs, "residual")
    it = int(clean.it_pos[0])
    assert bool((clean.it_pos == it).all())
    torch.testing.assert_close(result.per_pair[2, it], torch.ones(6))
    others = [p for p in range(clean.ids.shape[1]) if p != it]
    assert float(result.per_pair[2, others].abs().max()) == 0.0


def test_patching_the_embeddings_matters_only_where_the_pair_differs(small_model, tokenizer):
    pairs = minimal_pairs(6, seed=6)
    result = activation_patching(small_model, tokenizer, pairs, "residual")
    adj = result.tokens.index("ADJ")
    torch.testing.assert_close(result.per_pair[0, adj], torch.ones(6))
    assert float(result.per_pair[0, [p for p in range(len(result.tokens)) if p != adj]].abs().max()) == 0.0
    assert result.tokens[result.tokens.index("ANIMAL") + 1] == "didn't" and "PLACE" in result.tokens


def test_only_the_row_of_it_in_the_last_layer_can_change_the_answer(small_model, tokenizer):
    """Patching layer 1's attention output anywhere but at "it" changes the logits at "it" not at all."""
    result = activation_patching(small_model, tokenizer, minimal_pairs(6, seed=7), "attention")
    it = result.tokens.index("it")
    assert float(result.per_pair[1, [p for p in range(len(result.tokens)) if p != it]].abs().max()) == 0.0
    assert float(result.per_pair[1, it].abs().max()) > 0


def test_activation_patching_rejects_pairs_that_do_not_line_up(small_model, tokenizer):
    a = it_sentences(2, seed=0)
    with pytest.raises(ValueError, match="differ in one word"):
        activation_patching(small_model, tokenizer, [(a[0], a[1])])
    with pytest.raises(ValueError, match="site must be one of"):
        activation_patching(small_model, tokenizer, minimal_pairs(2), "mlp")
    batch = coref_batch(a[:1], tokenizer)
    with pytest.raises(ValueError, match="the residual stream has layers 0 to 2"):
        activation_at(small_model, batch, "residual", 3)


def test_flipped_share_is_zero_at_the_clean_run_and_one_at_the_corrupted_run():
    clean, corrupted = torch.tensor([4.0, 2.0]), torch.tensor([-6.0, -2.0])
    torch.testing.assert_close(flipped_share(clean, corrupted, clean), torch.zeros(2))
    torch.testing.assert_close(flipped_share(clean, corrupted, corrupted), torch.ones(2))
    torch.testing.assert_close(flipped_share(clean, corrupted, torch.tensor([-1.0, 0.0])), torch.tensor([0.5, 0.5]))


# ------------------------------------------------------------------ the static picture of the explorer

def test_the_explorers_static_figure_is_the_picture_the_widget_shows(small_model, tokenizer):
    import io

    ex = coref_explorer(small_model, tokenizer, "the dog didn't cross the road because it was too wide .",
                        token="it", layer=1)
    for view in ("one head", "all heads"):
        ex.select(view=view)
        buffer = io.BytesIO()
        ex.figure().savefig(buffer, format="png", dpi=ex.dpi)
        assert buffer.getvalue() == bytes(ex.image.value)


def test_it_sentence_is_the_grammars_sentence_and_names_a_word_it_does_not_know():
    from course.data.sentences import it_sentence

    for s in it_sentences(40, seed=12, split="all"):
        verb = " ".join(s.words[2:s.words.index("the", 2)])
        assert it_sentence(s.animal, s.place, s.adjective, verb) == s
    with pytest.raises(ValueError, match="'moat' is not a place of the grammar"):
        it_sentence("fox", "moat", "tired")


def test_the_explorers_figure_says_when_there_is_nothing_to_draw(small_model, tokenizer):
    ex = coref_explorer(small_model, tokenizer, "")
    with pytest.raises(ValueError, match="give the explorer a sentence first"):
        ex.figure()
