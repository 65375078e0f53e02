"""Lesson 08's other pieces: the next-token loss, the unigram baseline, the training windows, and GPT-2 weights that go
through a save/reload on disk (tests/course/test_models_hf.py covers the in-memory case) and generate
the same tokens as Hugging Face's ``generate``.

Tolerance for logits: max |difference| below 1e-4 in float32 (the issue's bar).
"""
from __future__ import annotations

import math

import pytest
import torch
from hf_support import logits_gap, quietly

from course.generate import generate
from course.lm import fixed_windows, lm_loss, random_windows, sequence_loss, unigram_loss
from course.models import GPT, GPTConfig

TOL = 1e-4


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
