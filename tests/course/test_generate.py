"""course.generate: the filters against brute-force references, sampling, the generation loop,
text in and out, and the messages for bad input (never a crash deep in the stack)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from course.generate import (
    SamplingWidget,
    apply_temperature,
    generate,
    generate_text,
    prompt_problem,
    sample_next,
    top_k_filter,
    top_p_filter,
    validate_sampling,
    widget_settings,
)
from course.models import GPT, GPTConfig
from course.seed import seed_everything
from course.tokenizers import CharTokenizer

NEG_INF = float("-inf")


# ----------------------------------------------------------------------------- brute-force references

def brute_top_k(row: list[float], k: int) -> list[float]:
    """Keep every value >= the k-th largest (ties at the boundary kept), in plain Python."""
    kth = sorted(row, reverse=True)[min(k, len(row)) - 1]
    return [v if v >= kth else NEG_INF for v in row]


def brute_top_p(row: list[float], p: float) -> list[float]:
    """Add tokens from most to least likely until their probability reaches p, in plain Python."""
    m = max(row)
    exps = [math.exp(v - m) for v in row]
    probs = [e / sum(exps) for e in exps]
    keep, total = set(), 0.0
    for i in sorted(range(len(row)), key=lambda i: -probs[i]):
        if total >= p:
            break
        keep.add(i)
        total += probs[i]
    return [v if i in keep else NEG_INF for i, v in enumerate(row)]


def rows_of(x: torch.Tensor) -> list[list[float]]:
    return x.reshape(-1, x.shape[-1]).tolist()


@pytest.mark.parametrize("k", [1, 2, 5, 9, 30])
def test_top_k_filter_matches_brute_force_on_random_rows(k):
    x = torch.randn(4, 3, 9, generator=torch.Generator().manual_seed(k))
    got = top_k_filter(x, k)
    want = torch.tensor([brute_top_k(r, k) for r in rows_of(x)]).view_as(x)
    assert torch.equal(got, want)  # exact: values are copied or set to -inf


def test_top_k_filter_keeps_ties_at_the_boundary_and_leaves_its_input_alone():
    x = torch.tensor([3.0, 1.0, 2.0, 2.0, 0.0])
    before = x.clone()
    assert top_k_filter(x, 2).tolist() == [3.0, NEG_INF, 2.0, 2.0, NEG_INF]
    assert torch.equal(x, before)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.75, 0.9, 0.999])
def test_top_p_filter_matches_brute_force_on_random_rows(p):
    x = torch.randn(5, 2, 12, generator=torch.Generator().manual_seed(int(p * 1000))) * 2
    got = top_p_filter(x, p)
    want = torch.tensor([brute_top_p(r, p) for r in rows_of(x)]).view_as(x)
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    torch.testing.assert_close(got, want)  # float32: kept values are copies, exact


def test_top_p_filter_keeps_the_token_that_crosses_p_and_always_the_top_one():
    logits = torch.log(torch.tensor([[0.05, 0.30, 0.15, 0.50], [0.10, 0.70, 0.10, 0.10]]))
    kept = torch.isfinite(top_p_filter(logits, 0.6))
    assert kept.tolist() == [[False, True, False, True], [False, True, False, False]]
    assert torch.isfinite(top_p_filter(logits, 1e-6)).sum(-1).tolist() == [1, 1]


def test_top_p_of_one_keeps_every_token_even_with_rounding():
    x = torch.randn(3, 1000) * 10  # many tiny probabilities: their cumulative sum may round past 1
    assert torch.isfinite(top_p_filter(x, 1.0)).all()


def test_apply_temperature_divides_the_logits_and_sharpens_below_one():
    x = torch.tensor([[2.0, 1.0, 0.0]])
    torch.testing.assert_close(apply_temperature(x, 0.5), x / 0.5)
    assert apply_temperature(x, 0.5).softmax(-1)[0, 0] > x.softmax(-1)[0, 0] > apply_temperature(x, 2.0).softmax(-1)[0, 0]


@pytest.mark.parametrize("call, words", [
    (lambda x: apply_temperature(x, 0), "greedy"),
    (lambda x: apply_temperature(x, -1.0), "must be >= 0"),
    (lambda x: apply_temperature(x, float("nan")), "finite number"),
    (lambda x: top_k_filter(x, 0), "top_k must be None"),
    (lambda x: top_k_filter(x, 2.5), "top_k must be None"),
    (lambda x: top_p_filter(x, 0.0), r"top_p must be None \(off\) or in \(0, 1\]"),
    (lambda x: top_p_filter(x, 1.5), r"in \(0, 1\]"),
    (lambda x: top_p_filter(x, -0.2), r"in \(0, 1\]"),
    (lambda x: top_k_filter(x.long(), 2), "floating-point logits"),
], ids=["t0", "t-neg", "t-nan", "k0", "k-float", "p0", "p>1", "p<0", "int-logits"])
def test_filters_reject_bad_arguments_with_a_message(call, words):
    with pytest.raises(ValueError, match=words):
        call(torch.randn(2, 5))


# ----------------------------------------------------------------------------- one sampling step

def test_sample_next_greedy_and_temperature_zero_are_the_argmax():
    x = torch.randn(6, 20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample_next(x, greedy=True), x.argmax(-1))
    assert torch.equal(sample_next(x, temperature=0), x.argmax(-1))
    assert torch.equal(sample_next(x, top_k=1, generator=torch.Generator().manual_seed(1)), x.argmax(-1))


def test_sample_next_at_a_tiny_temperature_equals_greedy():
    x = torch.randn(8, 30, generator=torch.Generator().manual_seed(2))
    got = sample_next(x, temperature=1e-3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(got, x.argmax(-1))


def test_sample_next_is_reproducible_with_a_seeded_generator():
    x = torch.randn(4, 50)
    a = sample_next(x, 1.0, 10, 0.9, generator=torch.Generator().manual_seed(7))
    b = sample_next(x, 1.0, 10, 0.9, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.dtype == torch.long and a.shape == (4,)


def test_sample_next_draws_with_the_softmax_frequencies_and_never_a_filtered_token():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    draws = sample_next(logits.expand(20000, 4), generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).double() / 20000
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.double), atol=0.015, rtol=0)
    nucleus = sample_next(logits.expand(2000, 4), top_p=0.7, generator=torch.Generator().manual_seed(0))
    assert set(nucleus.tolist()) == {0, 1}


# ----------------------------------------------------------------------------- the loop

class LastTokenModel(nn.Module):
    """A toy LM whose next-token logits favour (last token + 1) mod vocab; it records its inputs."""

    def __init__(self, vocab: int = 7, context_length: int = 4):
        super().__init__()
        self.vocab, self.context_length = vocab, context_length
        self.dummy = nn.Parameter(torch.zeros(1))
        self.seen: list[tuple[int, ...]] = []

    def forward(self, idx):
        assert idx.shape[1] <= self.context_length, "generate must crop to the window"
        self.seen.append(tuple(idx.shape))
        return torch.nn.functional.one_hot((idx + 1) % self.vocab, self.vocab).float() * 5


def test_generate_appends_tokens_and_crops_a_long_prompt_to_the_window():
    model = LastTokenModel(context_length=4)
    prompt = torch.tensor([[0, 1, 2, 3, 4, 5]])  # longer than the window of 4
    out = generate(model, prompt, 5, greedy=True)
    assert out.tolist() == [[0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3]]
    assert all(shape[1] <= 4 for shape in model.seen)


def test_generate_accepts_a_1d_prompt_and_returns_1d():
    out = generate(LastTokenModel(), torch.tensor([3]), 3, temperature=0)
    assert out.tolist() == [3, 4, 5, 6]


def test_generate_zero_new_tokens_returns_the_prompt():
    prompt = torch.tensor([[1, 2]])
    assert torch.equal(generate(LastTokenModel(), prompt, 0), prompt)


@pytest.mark.parametrize("kwargs, words", [
    (dict(temperature=-0.5), "temperature must be >= 0"),
    (dict(top_p=0.0), r"top_p .* \(0, 1\]"),
    (dict(top_p=1.01), r"top_p .* \(0, 1\]"),
    (dict(top_k=0), "top_k must be None"),
    (dict(max_new_tokens=-1), "max_new_tokens must be an integer >= 0"),
], ids=["negative-temperature", "p0", "p>1", "k0", "negative-length"])
def test_generate_rejects_bad_arguments_before_running_the_model(kwargs, words):
    model = LastTokenModel()
    kwargs = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(ValueError, match=words):
        generate(model, torch.tensor([[1]]), **kwargs)
    assert model.seen == []


def test_generate_rejects_an_empty_prompt_and_float_ids_with_a_message():
    with pytest.raises(ValueError, match="empty prompt"):
        generate(LastTokenModel(), torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="integer token ids"):
        generate(LastTokenModel(), torch.zeros(1, 2), 3)


@pytest.fixture(scope="module")
def tiny_gpt_and_tokenizer():
    seed_everything(0)
    tok = CharTokenizer.fit("abcdefgh ")
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, context_length=8, d_model=16, num_heads=2, num_layers=1))
    return model.eval(), tok


def test_gpt_generation_is_reproducible_and_restores_training_mode(tiny_gpt_and_tokenizer):
    model, _ = tiny_gpt_and_tokenizer
    model.train()
    prompt = torch.tensor([[1, 2, 3]])
    a = generate(model, prompt, 20, top_k=5, top_p=0.9, generator=torch.Generator().manual_seed(0))
    b = generate(model, prompt, 20, top_k=5, top_p=0.9, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (1, 23)
    assert model.training
    model.eval()


def test_gpt_temperature_zero_equals_greedy(tiny_gpt_and_tokenizer):
    model, _ = tiny_gpt_and_tokenizer
    prompt = torch.tensor([[0, 4, 2, 7, 1, 1, 3, 5, 2, 0]])  # longer than the window of 8
    assert torch.equal(generate(model, prompt, 12, temperature=0), generate(model, prompt, 12, greedy=True))


# ----------------------------------------------------------------------------- text

def test_generate_text_returns_the_prompt_and_the_continuation(tiny_gpt_and_tokenizer):
    model, tok = tiny_gpt_and_tokenizer
    text = generate_text(model, tok, "abc", max_new_tokens=10, generator=torch.Generator().manual_seed(0))
    assert text.startswith("abc") and len(text) == 13
    assert set(text) <= set("abcdefgh ")


def test_generate_text_reads_a_prompt_longer_than_the_window(tiny_gpt_and_tokenizer):
    model, tok = tiny_gpt_and_tokenizer
    prompt = "abcdefgh abcdefgh"  # 17 characters, window 8
    assert len(generate_text(model, tok, prompt, max_new_tokens=3, greedy=True)) == 20


@pytest.mark.parametrize("prompt, kwargs, words", [
    ("", {}, "the prompt is empty"),
    ("abz€", {}, r"2 character\(s\) .* not in the model's vocabulary: 'z', '€'"),
    ("abc", dict(temperature=-1), "temperature must be >= 0"),
    ("abc", dict(top_p=2.0), r"\(0, 1\]"),
    ("abc", dict(top_k=-3), "top_k must be None"),
], ids=["empty", "unknown-chars", "negative-t", "p2", "k-neg"])
def test_generate_text_bad_input_gives_one_line_value_error(tiny_gpt_and_tokenizer, prompt, kwargs, words):
    model, tok = tiny_gpt_and_tokenizer
    with pytest.raises(ValueError, match=words) as info:
        generate_text(model, tok, prompt, max_new_tokens=3, **kwargs)
    assert "\n" not in str(info.value)


def test_prompt_problem_works_with_any_tokenizer_with_encode():
    class Words:
        def encode(self, text):
            if "?" in text:
                raise KeyError("unknown word '?'")
            return text.split()

    assert prompt_problem("hello there", Words()) == ""
    assert "cannot encode" in prompt_problem("what?", Words())
    assert "gave no tokens" in prompt_problem("   ", Words())
    assert "must be a string" in prompt_problem(None, Words())


def test_validate_sampling_accepts_the_edges_of_the_ranges():
    assert validate_sampling(0, 1, 1.0, 0) == ""
    assert validate_sampling(2.5, None, 1e-9, 10) == ""
    assert "temperature" in validate_sampling(True)  # a bool is not a temperature


# ----------------------------------------------------------------------------- widget

def test_widget_settings_map_slider_conventions_and_report_problems(tiny_gpt_and_tokenizer):
    _, tok = tiny_gpt_and_tokenizer
    kwargs, problem, note = widget_settings("abc", tok, 0.0, 0, 1.0, False, 10, context_length=8)
    assert problem == "" and note == ""
    assert kwargs == dict(temperature=0.0, top_k=None, top_p=None, greedy=False, max_new_tokens=10)
    _, problem, _ = widget_settings("", tok, 1.0, 0, 1.0, False, 10)
    assert "empty" in problem
    _, problem, _ = widget_settings("xyz", tok, 1.0, 0, 1.0, False, 10)
    assert "'x', 'y', 'z'" in problem
    _, problem, _ = widget_settings("abc", tok, -0.1, 0, 1.0, False, 10)
    assert "temperature" in problem
    _, _, note = widget_settings("abcdefgh abc", tok, 1.0, 0, 1.0, False, 10, context_length=8)
    assert "reads only the last 8" in note


def test_sampling_widget_shows_one_red_line_on_bad_input_and_text_on_good(tiny_gpt_and_tokenizer):
    pytest.importorskip("ipywidgets")
    model, tok = tiny_gpt_and_tokenizer
    w = SamplingWidget(model, tok, prompt="abc", max_new_tokens=5)
    assert w.last is not None and w.last.startswith("abc") and "<b>abc</b>" in w.text.value
    w.prompt.value = "a€"
    assert w.update() is False
    assert "not in the model&#x27;s vocabulary: &#x27;€&#x27;" in w.message.value and "#b00020" in w.message.value
    w.prompt.value = ""
    assert w.update() is False and "empty" in w.message.value
    w.prompt.value, w.greedy.value = "ab", True
    first = (w.update(), w.last)
    w.seed.value = 5
    assert first == (w.update(), w.last)  # greedy does not depend on the seed
