"""Lesson 08's other pieces: a GPT assembled by hand from the course's pieces (as the lesson's ``MyGPT``) equal to
``course.models.GPT``, the next-token loss, the unigram baseline, the training windows, and GPT-2 weights that go
through a save/reload on disk (tests/course/test_models_hf.py covers the in-memory case) and generate
the same tokens as Hugging Face's ``generate``.

Tolerance for logits: max |difference| below 1e-4 in float32 (the issue's bar) against Hugging Face; 1e-5
between the hand-built GPT and the package's (the same operations).
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hf_support import logits_gap, quietly

from torch import nn

from course.attention import causal_mask
from course.generate import generate
from course.layers import LayerNorm, TransformerBlock
from course.lm import fixed_windows, lm_loss, random_windows, sequence_loss, unigram_loss
from course.models import GPT, GPTConfig

TOL = 1e-4


# ----------------------------------------------------------------------------- the GPT, assembled by hand

class HandBuiltGPT(nn.Module):
    """The lesson's MyGPT, written again: nn.Embedding for tokens and positions, pre-norm TransformerBlocks,
    a final LayerNorm and a bias-free head, tied or not."""

    def __init__(self, c: GPTConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(c.vocab_size, c.d_model)
        self.position_embedding = nn.Embedding(c.context_length, c.d_model)
        self.blocks = nn.ModuleList(TransformerBlock(c.d_model, c.num_heads, c.d_ff, norm_first=True,
                                                     activation=c.activation, eps=c.eps) for _ in range(c.num_layers))
        self.final_norm = LayerNorm(c.d_model, c.eps)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_weights:
            self.lm_head.weight = self.token_embedding.weight

    def forward(self, idx):
        T = idx.shape[1]
        x = self.token_embedding(idx) + self.position_embedding(torch.arange(T))
        for block in self.blocks:
            x = block(x, mask=causal_mask(T))
        return self.lm_head(self.final_norm(x))


def _package_state_for_hand_built(gpt: GPT) -> dict:
    return {k.replace("position_embedding.embedding.", "position_embedding."): v for k, v in gpt.state_dict().items()}


@pytest.mark.parametrize("tied", [True, False])
def test_a_gpt_built_by_hand_from_the_course_pieces_gives_the_package_gpts_logits(tied):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=23, context_length=12, d_model=32, num_heads=4, num_layers=3, tie_weights=tied)
    package = GPT(config).eval()
    with torch.no_grad():                              # weights where every piece matters, not GPT-2's small init
        for p in package.parameters():
            p.add_(0.3 * torch.randn_like(p))
    hand = HandBuiltGPT(config).eval()
    hand.load_state_dict(_package_state_for_hand_built(package))   # strict: the same parameters, one renamed
    assert (hand.lm_head.weight is hand.token_embedding.weight) == tied
    idx = torch.randint(0, 23, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for T in (12, 5, 1):
            torch.testing.assert_close(hand(idx[:, :T]), package(idx[:, :T]), atol=1e-5, rtol=1e-5)


def test_the_hand_built_and_package_gpts_have_the_same_gradients():
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=17, context_length=8, d_model=16, num_heads=2, num_layers=2)
    package = GPT(config)
    hand = HandBuiltGPT(config)
    hand.load_state_dict(_package_state_for_hand_built(package))
    idx = torch.randint(0, 17, (2, 8), generator=torch.Generator().manual_seed(2))
    for model in (package, hand):
        lm_loss(model(idx[:, :-1]), idx[:, 1:]).backward()
    hand_grads = dict(hand.named_parameters())
    for name, p in package.named_parameters():
        torch.testing.assert_close(hand_grads[name.replace("position_embedding.embedding.", "position_embedding.")].grad,
                                   p.grad, atol=1e-6, rtol=1e-5)


def test_weight_tying_saves_one_vocabulary_by_d_model_table():
    from course.layers import count_parameters

    config = GPTConfig(vocab_size=95, context_length=32, d_model=64, num_heads=4, num_layers=2)
    untied = dataclasses.replace(config, tie_weights=False)
    assert count_parameters(GPT(untied)) - count_parameters(GPT(config)) == 95 * 64
    with torch.device("meta"):
        gpt2 = GPT(GPTConfig(vocab_size=50257, context_length=1024, d_model=768, num_heads=12, num_layers=12))
    assert count_parameters(gpt2) == 124_439_808   # GPT-2 small, as Hugging Face counts it


# ----------------------------------------------------------------------------- the training loss

def test_lm_loss_equals_log_vocab_for_uniform_logits_and_ignores_padding():
    logits = torch.zeros(2, 5, 7)
    targets = torch.randint(0, 7, (2, 5))
    assert lm_loss(logits, targets).item() == pytest.approx(math.log(7))
    targets[0, :] = -100
    assert lm_loss(logits, targets).item() == pytest.approx(math.log(7))


def test_lm_loss_names_the_shapes_it_was_given():
    with pytest.raises(ValueError, match=r"\(2, 5, 7\) and \(2, 4\)"):
        lm_loss(torch.zeros(2, 5, 7), torch.zeros(2, 4, dtype=torch.long))


# ----------------------------------------------------------------------------- unigram baseline

def test_unigram_loss_matches_a_hand_computation_with_add_one_smoothing():
    # train counts over vocab 4: id0 x3, id1 x1, id2 x0, id3 x0 -> (c + 1) / (4 + 4) = 4/8, 2/8, 1/8, 1/8
    train, val = [0, 0, 1, 0], [0, 2, 1]
    want = -(math.log(4 / 8) + math.log(1 / 8) + math.log(2 / 8)) / 3
    assert unigram_loss(train, val, vocab_size=4) == pytest.approx(want, abs=1e-12)
    assert unigram_loss(torch.tensor(train), torch.tensor(val), 4) == pytest.approx(want, abs=1e-12)


def test_unigram_loss_of_a_uniform_corpus_is_log_vocab():
    ids = list(range(10)) * 5
    assert unigram_loss(ids, ids, 10) == pytest.approx(math.log(10), abs=1e-12)


@pytest.mark.parametrize("train, val, vocab, words", [
    ([0, 5], [0], 4, r"train_ids holds ids outside \[0, 4\)"),
    ([0], [], 4, "val_ids is empty"),
    ([[0, 1]], [0], 4, "1-D sequence"),
])
def test_unigram_loss_rejects_bad_ids_with_a_message(train, val, vocab, words):
    with pytest.raises(ValueError, match=words):
        unigram_loss(train, val, vocab)


# ----------------------------------------------------------------------------- windows and validation loss

def test_random_windows_targets_are_the_inputs_shifted_by_one():
    data = torch.arange(100)
    x, y = random_windows(data, 6, 10, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (6, 10)
    assert torch.equal(y, x + 1)


def test_fixed_windows_cover_the_data_without_overlap():
    x, y = fixed_windows(torch.arange(23), 5)
    assert x.shape == (4, 5) and x.flatten().tolist() == list(range(20))
    assert torch.equal(y, x + 1)
    assert fixed_windows(torch.arange(23), 5, max_windows=2)[0].shape == (2, 5)
    with pytest.raises(ValueError, match="more than block=5"):
        fixed_windows(torch.arange(5), 5)


def test_sequence_loss_equals_cross_entropy_over_all_windows():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, context_length=6, d_model=16, num_heads=2, num_layers=1))
    x, y = fixed_windows(torch.randint(0, 11, (40,)), 6)
    want = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
    assert sequence_loss(model, x, y, batch_size=2) == pytest.approx(want, abs=1e-5)  # float32 sums


# ----------------------------------------------------------------------------- GPT-2 format on disk

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def reloaded_gpt2(tmp_path_factory):
    """A random small GPT-2 saved with save_pretrained and loaded back with from_pretrained."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=61, n_positions=24, n_embd=32, n_layer=2, n_head=4,
                                  bos_token_id=None, eos_token_id=None)  # no end token: greedy never stops early
    folder = tmp_path_factory.mktemp("gpt2-small")
    quietly(transformers.GPT2LMHeadModel, cfg).save_pretrained(folder)
    return quietly(transformers.GPT2LMHeadModel.from_pretrained, folder).eval()


def test_gpt_saved_in_gpt2_format_reloads_and_matches_hf_logits(reloaded_gpt2):
    ours = GPT.from_hf_gpt2(reloaded_gpt2)
    idx = torch.randint(0, 61, (3, 24), generator=torch.Generator().manual_seed(4))
    diff = logits_gap(ours, reloaded_gpt2, idx)
    assert diff < TOL, diff


def test_our_greedy_generation_equals_hf_generate_token_for_token(reloaded_gpt2):
    ours = GPT.from_hf_gpt2(reloaded_gpt2)
    prompt = torch.tensor([[5, 17, 3, 42]])
    mine = generate(ours, prompt, 15, greedy=True)
    theirs = quietly(reloaded_gpt2.generate, prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                    max_new_tokens=15, pad_token_id=0)
    assert mine.tolist() == theirs.tolist()


def test_generate_drives_a_hugging_face_model_too(reloaded_gpt2):
    # generate() reads .logits and config.n_positions, so the same loop runs HF's model.
    ours = GPT.from_hf_gpt2(reloaded_gpt2)
    prompt = torch.tensor([[1, 2, 3]])
    assert torch.equal(generate(reloaded_gpt2, prompt, 8, greedy=True), generate(ours, prompt, 8, greedy=True))


def test_gpt_fast_path_equals_the_explicit_path_in_hidden_states_and_gradients():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, context_length=16, d_model=32, num_heads=4, num_layers=2))
    idx = torch.randint(50, (3, 12))
    fast = model.hidden_states(idx)
    fast.pow(2).mean().backward()  # a mean: gradients of order 1, so atol 1e-5 is a fair bar
    fast_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    slow, weights = model.hidden_states(idx, need_weights=True)
    slow.pow(2).mean().backward()
    assert len(weights) == 2 and weights[0].shape == (3, 4, 12, 12)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    for a, p in zip(fast_grads, model.parameters()):
        torch.testing.assert_close(a, p.grad, atol=1e-5, rtol=1e-5)
