"""Decoding (lesson 09): greedy, beam search, its step, exact match, cross-attention maps, bad input."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from course.data.tasks import SEQ2SEQ_VOCAB, encode_sources
from course.models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig
from course.seed import seed_everything
from course.seq2seq import (
    compare_greedy_and_beam,
    beam_search,
    beam_step,
    cross_attention_maps,
    exact_match,
    greedy_decode,
    length_normalise,
    sequence_log_prob,
    translate,
)


@pytest.fixture(scope="module")
def model():
    seed_everything(0)
    cfg = EncoderDecoderConfig(vocab_size=len(SEQ2SEQ_VOCAB), context_length=20, d_model=32, num_heads=4, d_ff=64)
    return EncoderDecoder(cfg).eval()


class TableModel(nn.Module):
    """A stand-in decoder whose next-token probabilities are a table keyed by the output so far.

    Vocabulary: 0 <pad>, 1 <bos>, 2 <eos>, 3 "A", 4 "B". After <bos>: A 0.6, B 0.4. After A: <eos> 0.4,
    A 0.3, B 0.3. After B: <eos> 0.9. Greedy takes A (0.6) then <eos> (0.4): probability 0.24.
    Beam search with two beams also keeps B and finds B <eos>: 0.4 * 0.9 = 0.36, the better sequence.
    """

    TABLE = {(): [0, 0, 0, 0.6, 0.4], (3,): [0, 0, 0.4, 0.3, 0.3], (4,): [0, 0, 0.9, 0.05, 0.05]}

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(context_length=8, pad_id=0, vocab_size=5)

    def encode(self, src):
        return torch.zeros(src.shape[0], src.shape[1], 4)

    def decode(self, tgt_in, memory, src, need_weights=False):
        rows = []
        for seq in tgt_in.tolist():
            rows.append([self._logits(tuple(t for t in seq[1: i + 1])) for i in range(len(seq))])
        return torch.tensor(rows)

    def _logits(self, prefix):
        probs = self.TABLE.get(prefix[:1] if prefix else (), [0, 0, 1.0, 0, 0])
        if len(prefix) > 1:
            probs = [0, 0, 1.0, 0, 0]
        return [math.log(p) if p > 0 else -1e9 for p in probs]

    def forward(self, src, tgt_in):
        return self.decode(tgt_in, self.encode(src), src)


def test_beam_search_finds_a_higher_scoring_sequence_than_greedy_on_a_constructed_case():
    m, src = TableModel(), torch.tensor([[3, 4]])
    assert greedy_decode(m, src, 5) == [[3]]
    outputs, scores = beam_search(m, src, beam_size=2, max_new_tokens=5, return_scores=True)
    assert outputs == [[4]]
    assert scores[0] == pytest.approx(math.log(0.36), abs=1e-5)
    greedy_score, beam_score = sequence_log_prob(m, src, [[3]]), sequence_log_prob(m, src, outputs)
    assert float(greedy_score) == pytest.approx(math.log(0.24), abs=1e-5)
    assert float(beam_score) > float(greedy_score)


def test_sequence_log_prob_in_one_batch_equals_each_output_scored_alone(model):
    """Reference: the sum of log_softmax over each output's own forward pass, one source at a time."""
    src = encode_sources(["2024-03-07", "417", "37+48"])
    outputs = [[3, 4, 5, 6, 7], [8], []]                       # different lengths: the batch is padded
    batched = sequence_log_prob(model, src, outputs)
    for i, out in enumerate(outputs):
        ids = torch.tensor([[SEQ2SEQ_VOCAB.bos_id, *out, SEQ2SEQ_VOCAB.eos_id]])
        with torch.no_grad():
            logp = torch.log_softmax(model(src[i: i + 1], ids[:, :-1]), -1)[0]
        alone = sum(float(logp[t, ids[0, t + 1]]) for t in range(len(out) + 1))
        assert float(batched[i]) == pytest.approx(alone, abs=1e-4)


def test_compare_greedy_and_beam_counts_changed_fixed_and_broken_outputs():
    m, src = TableModel(), torch.tensor([[3, 4], [4, 3]])
    # ids 3 and 4 decode to the characters "0" and "1"; greedy says "0" for both sources, beam "1"
    report = compare_greedy_and_beam(m, src, ["1", "0"], beam_size=2, max_new_tokens=5)
    assert (report.n, report.changed, report.fixed, report.broken) == (2, 2, 1, 1)
    assert report.greedy_exact == report.beam_exact == 0.5
    assert report.greedy_log_prob == pytest.approx(math.log(0.24), abs=1e-5)
    assert report.beam_log_prob == pytest.approx(math.log(0.36), abs=1e-5)
    assert report.beam_at_least_greedy == 2
    same = compare_greedy_and_beam(m, src, ["0", "0"], greedy_ids=[[3], [3]], beam_ids=[[3], [3]])
    assert (same.changed, same.fixed, same.broken, same.greedy_exact) == (0, 0, 0, 1.0)
    with pytest.raises(ValueError, match="1 targets for 2 sources"):
        compare_greedy_and_beam(m, src, ["0"])


def test_beam_search_with_one_beam_equals_greedy(model):
    src = encode_sources(["2024-03-07", "417", "37+48", "hello world"])
    assert beam_search(model, src, beam_size=1, max_new_tokens=12) == greedy_decode(model, src, 12)


def test_beam_search_returns_its_score_and_never_scores_below_greedy(model):
    src = encode_sources(["2024-03-07", "417"])
    greedy = greedy_decode(model, src, 6)
    outputs, scores = beam_search(model, src, beam_size=4, max_new_tokens=6, return_scores=True)
    for i in range(2):
        if len(greedy[i]) < 6 and len(outputs[i]) < 6:  # both finished with <eos>: comparable totals
            assert scores[i] >= float(sequence_log_prob(model, src[i: i + 1], [greedy[i]])) - 1e-5
        if len(outputs[i]) < 6:
            assert scores[i] == pytest.approx(float(sequence_log_prob(model, src[i: i + 1], [outputs[i]])), abs=1e-4)


def test_greedy_decode_is_independent_of_batch_padding(model):
    alone = greedy_decode(model, encode_sources(["417"]), 8)
    padded = greedy_decode(model, encode_sources(["417", "2024-03-07"]), 8)
    assert padded[0] == alone[0]


def test_beam_step_flattens_beams_times_vocab_and_keeps_finished_beams():
    scores = torch.tensor([-0.1, -2.0])
    log_probs = torch.log(torch.tensor([[0.5, 0.45, 0.05], [0.1, 0.1, 0.8]]))
    new, parent, token = beam_step(scores, log_probs, torch.tensor([False, False]), 2, eos_id=2)
    assert parent.tolist() == [0, 0] and token.tolist() == [0, 1]  # both children of the strong beam
    torch.testing.assert_close(new, scores[0] + log_probs[0, :2])
    new, parent, token = beam_step(scores, log_probs, torch.tensor([True, False]), 2, eos_id=2)
    assert (parent[0].item(), token[0].item(), new[0].item()) == (0, 2, pytest.approx(-0.1))  # kept, unchanged


def test_length_normalise_divides_by_length_to_the_alpha():
    s, n = torch.tensor([-2.0, -6.0]), torch.tensor([2, 8])
    torch.testing.assert_close(length_normalise(s, n, 0.0), s)
    torch.testing.assert_close(length_normalise(s, n, 1.0), torch.tensor([-1.0, -0.75]))


def test_exact_match_counts_whole_sequences():
    assert exact_match(["7 March 2024", "85"], ["7 March 2024", "86"]) == 0.5
    assert exact_match([[1, 2], [3]], [[1, 2], [3]]) == 1.0
    with pytest.raises(ValueError, match="2 predictions but 1 targets"):
        exact_match(["a", "b"], ["a"])


def test_cross_attention_maps_have_one_row_per_output_token_summing_to_one(model):
    src = encode_sources(["2024-03-07", "417"])
    tgt_in = torch.tensor([[1, 10, 11], [1, 12, 0]])
    maps = cross_attention_maps(model, src, tgt_in)
    assert maps.shape == (2, 2, 4, 3, 10)  # [layers, batch, heads, t, s]
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, 4, 3))
    assert float(maps[:, 1, :, :, 3:].abs().max()) == 0.0  # "417" is padded after 3 characters


@pytest.mark.parametrize("call, words", [
    (lambda m: beam_search(m, encode_sources(["417"]), 0, 5), "beam_size must be a whole number >= 1"),
    (lambda m: greedy_decode(m, torch.zeros(1, 3, dtype=torch.long), 5), "the source is empty"),
    (lambda m: greedy_decode(m, torch.ones(1, 21, dtype=torch.long), 5), "at most context_length=20"),
    (lambda m: greedy_decode(m, encode_sources(["417"]), 0), "max_new_tokens must be between 1"),
    (lambda m: translate(m, ["12€"]), "does not know: '€'"),
    (lambda m: translate(m, [""]), "the source is empty"),
    (lambda m: translate(m, ["x" * 25]), "at most 20 fit"),
    (lambda m: greedy_decode(m, torch.ones(4, dtype=torch.long), 5), "src must be [batch, s]"),
])
def test_bad_input_gives_a_one_line_message(model, call, words):
    with pytest.raises(ValueError) as info:
        call(model)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_translate_returns_strings_with_greedy_and_beam(model):
    out = translate(model, ["417", "2024-03-07"], max_new_tokens=5)
    assert len(out) == 2 and all(isinstance(o, str) and len(o) <= 5 for o in out)
    assert translate(model, "417", beam_size=1, max_new_tokens=5) == translate(model, ["417"], beam_size=1, max_new_tokens=5)
    assert len(translate(model, ["417"], beam_size=3, max_new_tokens=5)) == 1


def test_cross_attention_in_the_open_equals_a_one_head_multi_head_attention_with_a_padding_mask():
    from course.attention import MultiHeadAttention
    from course.seq2seq import cross_attention

    seed_everything(0)
    mha = MultiHeadAttention(16, 1, bias=False)
    x, memory = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    with torch.no_grad():
        out, weights = cross_attention(x, memory, mha.q_proj.weight.T, mha.k_proj.weight.T, mha.v_proj.weight.T, mask)
        want, want_weights = mha(x, memory, memory, mask=mask[:, None, None, :], need_weights=True)
    torch.testing.assert_close(mha.out_proj(out), want, atol=1e-6, rtol=1e-5)  # float32
    torch.testing.assert_close(weights, want_weights[:, 0], atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="memory_mask must be"):
        cross_attention(x, memory, mha.q_proj.weight.T, mha.k_proj.weight.T, mha.v_proj.weight.T, mask[:, :3])


def test_decoding_leaves_the_model_in_the_mode_it_was_in():
    seed_everything(0)
    cfg = EncoderDecoderConfig(vocab_size=len(SEQ2SEQ_VOCAB), context_length=20, d_model=32, num_heads=4, d_ff=64,
                               dropout=0.1)
    training = EncoderDecoder(cfg).train()
    src = encode_sources(["417", "2024-03-07"])
    greedy_decode(training, src, 4)
    beam_search(training, src, beam_size=2, max_new_tokens=4)
    sequence_log_prob(training, src, [[3], [4]])
    cross_attention_maps(training, src, torch.ones(2, 3, dtype=torch.long))
    assert training.training and all(m.training for m in training.modules())
