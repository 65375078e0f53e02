"""course.viz's one widget style (Explorer, slider, set_range, FunctionExplorer) and the lessons' small
explorers (00 heads, 02 tokenizers, 04 positional encoding, 05 heads of a layer, 09 translation, 08 sampling),
driven through their Python objects: set ``.value``, read the message, the picture and the static form."""
from __future__ import annotations

import matplotlib

matplotlib.use("agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("ipywidgets")

from course.attention import MultiHeadAttention  # noqa: E402
from course.generate import SamplingWidget  # noqa: E402
from course.models.gpt import GPT, GPTConfig  # noqa: E402
from course.seed import seed_everything  # noqa: E402
from course.tokenizers import CharTokenizer, WordTokenizer  # noqa: E402
from course.viz import (STALE_CLASS, FunctionExplorer, attention_explorer, encoding_explorer, explore,  # noqa: E402
                        head_contributions, head_explorer, heads_explorer, most_common_offset, png_size, set_range,
                        slider, tokenizer_explorer, translation_explorer)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _figure(width_in: float, height_in: float):
    fig, ax = plt.subplots(figsize=(width_in, height_in))
    ax.plot([0, 1], [0, 1])
    return fig


def square(n: int):
    """A function for explore(): a line and a picture; refuses n = 3."""
    if n == 3:
        raise ValueError("3 is not allowed here")
    return f"n = {n}", _figure(1 + n, 1 + n)


# ----------------------------------------------------------------------------- sliders

@pytest.mark.parametrize("steps,px_per_step,track", [(400, 2, 800), (40, 8, 320), (10, 4, 200), (5000, 4, 880)])
def test_slider_track_gives_the_asked_pixels_per_step_within_bounds(steps, px_per_step, track):
    s = slider(0, 0, steps, 1, "n", px_per_step=px_per_step)
    assert s.layout.width == f"{track + 130 + 70}px" and s.layout.max_width == "100%"
    assert type(s).__name__ == "IntSlider" and s.continuous_update is False


def test_slider_is_a_float_slider_when_any_number_is_a_float_and_rejects_a_value_outside():
    assert type(slider(0.8, 0.0, 2.0, 0.05, "temperature")).__name__ == "FloatSlider"
    with pytest.raises(ValueError, match=r"slider 'temperature': need min <= value <= max"):
        slider(3.0, 0.0, 2.0, 0.05, "temperature")


def test_set_range_moves_the_range_either_way_and_clips_the_value():
    s = slider(100, 0, 127, 1, "dimension")
    set_range(s, 0, 15)
    assert (s.min, s.max, s.value) == (0, 15, 15)
    set_range(s, 200, 300)     # entirely above the old range: max first, then min
    assert (s.min, s.max, s.value) == (200, 300, 200)
    with pytest.raises(ValueError, match="empty range"):
        set_range(s, 5, 1)


# ----------------------------------------------------------------------------- the base

def test_picture_is_shown_at_its_natural_width_and_the_area_only_grows():
    ex = explore(square, "squares", n=slider(4, 1, 8, 1, "n"))
    width, height = png_size(ex.picture)
    assert ex.image.layout.width == f"{width}px"                     # its natural width: never stretched
    assert ex._area.layout.min_height == f"{height + 4}px"
    ex.controls["n"].value = 1                                        # a smaller picture
    assert png_size(ex.picture)[1] < height and ex._area.layout.min_height == f"{height + 4}px"


def test_refused_input_greys_the_last_picture_and_accepted_input_restores_it():
    ex = explore(square, "squares", n=slider(4, 1, 8, 1, "n"))
    picture = ex.picture
    ex.controls["n"].value = 3
    assert ex.message_text == "3 is not allowed here" and "#b00020" in ex.message.value
    assert ex.stale and STALE_CLASS in ex.image._dom_classes and ex.picture == picture
    ex.controls["n"].value = 5
    assert not ex.stale and STALE_CLASS not in ex.image._dom_classes and ex.picture != picture
    assert ex.message_text == "n = 5" and "#2a7a2a" in ex.message.value


def test_refusal_before_anything_was_shown_marks_nothing_stale():
    ex = explore(square, "squares", n=slider(3, 1, 8, 1, "n"))
    assert ex.picture is None and not ex.stale and "not allowed" in ex.message_text


def test_any_other_exception_becomes_one_line_naming_it():
    def broken(n):
        raise RuntimeError("out of memory\nsecond line")

    ex = explore(broken, "broken", n=slider(1, 1, 2, 1, "n"))
    assert ex.message_text == "Could not run: RuntimeError: out of memory"


def test_static_form_says_what_the_widget_does_and_carries_the_picture_never_the_widget_repr():
    ex = explore(square, "squares of a size", n=slider(2, 1, 8, 1, "n"))
    bundle = ex._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html", "application/vnd.jupyter.widget-view+json"}
    assert "VBox(" not in bundle["text/plain"] and "VBox(" not in bundle["text/html"]
    assert bundle["text/plain"].splitlines()[:2] == ["Interactive widget: squares of a size",
                                                     "Run the cell to use it (it needs a running kernel)."]
    assert "When the cell ran: n = 2" in bundle["text/plain"]
    assert 'src="data:image/png;base64,' in bundle["text/html"]
    assert f'width="{png_size(ex.picture)[0]}"' in bundle["text/html"]
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == ex.widget.model_id


def test_a_button_explorer_runs_only_when_pressed():
    calls = []
    box = slider(1, 1, 5, 1, "n")
    ex = FunctionExplorer(lambda n: calls.append(n) or f"ran with {n}", {"n": box}, "counts", picture=False,
                          text=False, button="Run")
    box.value = 2
    assert calls == [1] and ex.runs == 1
    ex.button.click()
    assert calls == [1, 2] and ex.message_text == "ran with 2"


# ----------------------------------------------------------------------------- lesson 00

def test_heads_explorer_splits_d_model_and_refuses_a_number_that_does_not_divide_it():
    ex = heads_explorer(d_model=512, heads=2)
    assert ex.message_text == "2 attention head(s) of size 256 for d_model = 512"
    ex.controls["heads"].value = 3
    assert ex.message_text == "512 features do not split into 3 equal heads: choose one of 1, 2, 4, 8, 16"
    assert ex.stale
    ex.controls["heads"].value = 8
    assert "size 64" in ex.message_text and not ex.stale


# ----------------------------------------------------------------------------- lesson 02

def test_tokenizer_explorer_counts_tokens_per_tokenizer_and_refuses_empty_text():
    text = "the cat sat on the mat"
    toks = {"characters": CharTokenizer.fit(text), "words": WordTokenizer.fit(text)}
    ex = tokenizer_explorer(toks, "the cat")
    assert ex.message_text == "7 characters; tokens per tokenizer: characters: 7, words: 2"
    assert "t | h | e" in ex.output.value
    ex.controls["text"].value = "   "
    assert "the box is empty" in ex.message_text and ex.stale and STALE_CLASS in ex.output._dom_classes
    ex.controls["text"].value = "the dog"        # 'd', 'o', 'g' never seen by the character tokenizer
    assert "characters: cannot encode it" in ex.message_text and not ex.stale
    ex.controls["text"].value = "x" * 401
    assert ex.message_text == "That is 401 characters; this viewer shows at most 400."


# ----------------------------------------------------------------------------- lesson 04

def test_encoding_explorer_dimension_range_follows_d_model():
    ex = encoding_explorer(position=20, dimension=100, d_model=128)
    dims = ex.controls["dimension"]
    assert dims.max == 127 and ex.message_text.startswith("PE[20, 100] = sin(")
    ex.controls["d_model"].value = "16"
    assert (dims.max, dims.value) == (15, 15) and ex.message_text.startswith("PE[20, 15] = cos(")
    ex.controls["d_model"].value = "64"
    assert dims.max == 63 and dims.value == 15


@pytest.mark.parametrize("d_model,words", [("15", "even number"), ("abc", "whole number"), ("", "empty")])
def test_encoding_explorer_bad_d_model_gives_one_line_and_greys_the_wave(d_model, words):
    ex = encoding_explorer()
    picture, dims = ex.picture, ex.controls["dimension"].max
    ex.controls["d_model"].value = d_model
    assert words in ex.message_text and ex.stale and ex.picture == picture
    assert ex.controls["dimension"].max == dims      # a bad d_model leaves the range alone


def test_encoding_explorer_position_slider_asks_four_pixels_per_position():
    ex = encoding_explorer(max_position=200)
    assert ex.controls["position"].layout.width == f"{800 + 130 + 70}px"


# ----------------------------------------------------------------------------- lesson 05

def test_head_contributions_add_up_to_the_modules_output():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(7, 16)
    weights, parts = head_contributions(mha, x)
    with torch.no_grad():
        whole, reference_weights = mha(x[None], x[None], x[None], need_weights=True)
    assert weights.shape == (4, 7, 7) and parts.shape == (4, 7, 16)
    torch.testing.assert_close(parts.sum(0) + mha.out_proj.bias, whole[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights, reference_weights[0], atol=1e-6, rtol=1e-6)


def test_head_contributions_rejects_the_wrong_width():
    with pytest.raises(ValueError, match=r"x must be \[seq, d_model=16\], got shape \(7, 8\)"):
        head_contributions(MultiHeadAttention(16, 4), torch.randn(7, 8))


def test_most_common_offset_finds_a_previous_token_head():
    w = torch.zeros(5, 5)
    w[0, 0] = 1
    for i in range(1, 5):
        w[i, i - 1] = 1
    assert most_common_offset(w.numpy()) == (1, 4)


def _read(text: str):
    if not text.isdigit():
        raise ValueError(f"digits only, got {text!r}")
    g = torch.Generator().manual_seed(len(text))
    return [f"{p}:{d}" for p, d in enumerate(text)], torch.randn(len(text), 16, generator=g)


def test_head_explorer_frames_the_picked_head_and_refuses_bad_text():
    torch.manual_seed(0)
    ex = head_explorer(MultiHeadAttention(16, 2).eval(), _read, "31415", head=0)
    assert ex.weights.shape == (2, 5, 5) and ex.contributions.shape == (2, 5, 16)
    assert ex.message_text.startswith("head 0: ") and "(head 1 " in ex.message_text
    first = ex.picture
    ex.head.value = 1
    assert ex.picture != first and ex.message_text.startswith("head 1: ")
    ex.text.value = "pi"
    assert ex.message_text == "digits only, got 'pi'" and ex.stale and ex.weights.shape == (2, 5, 5)
    ex.text.value = "2718"
    assert not ex.stale and ex.labels == ["0:2", "1:7", "2:1", "3:8"]


# ----------------------------------------------------------------------------- lesson 03

def test_attention_explorer_draws_two_maps_each_with_its_colour_bar_and_names_the_largest_weight():
    def attend(tokens):
        n = len(tokens)
        return torch.stack([torch.full((n, n), 1 / n), torch.eye(n)])

    ex = attention_explorer(attend, "the cat sat", max_tokens=5, head_titles=["flat", "self"])
    assert ex.message_text.endswith("Largest weight: 1.00.")
    ex.text.value = "the café"
    assert "Unknown character" in ex.message_text and ex.stale


# ----------------------------------------------------------------------------- lesson 09

def test_translation_explorer_shows_both_decoders_and_the_rule_and_refuses_unreadable_input():
    from course.data.tasks import SEQ2SEQ_VOCAB
    from course.models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig

    seed_everything(0)
    model = EncoderDecoder(EncoderDecoderConfig(vocab_size=len(SEQ2SEQ_VOCAB), context_length=20, d_model=32,
                                                num_heads=4, d_ff=64)).eval()
    ex = translation_explorer(model, "2001-09-30", max_new_tokens=4)
    assert "greedy: " in ex.message_text and "rule: '30 September 2001'" in ex.message_text
    ex.controls["date"].value = ""
    assert ex.message_text.startswith("Cannot translate: ") and "#b00020" in ex.message.value
    ex.controls["date"].value = "2001-02-30"
    assert "(not a valid date: the model will guess)" in ex.message_text


# ----------------------------------------------------------------------------- lesson 08

@pytest.fixture(scope="module")
def tiny_gpt():
    seed_everything(0)
    tok = CharTokenizer.fit("abcdefgh ")
    return GPT(GPTConfig(vocab_size=tok.vocab_size, context_length=8, d_model=16, num_heads=2, num_layers=1)).eval(), tok


def test_sampling_widget_says_when_the_same_seed_gives_the_same_text_and_counts_runs(tiny_gpt):
    model, tok = tiny_gpt
    w = SamplingWidget(model, tok, prompt="abc", max_new_tokens=6, temperature=1.0)
    assert w.message_text.startswith("Run 1: 6 new tokens, temperature 1") and "Same seed" not in w.message_text
    first = w.last
    w.update()
    assert w.last == first and w.message_text.startswith("Run 2:")
    assert "Same seed, same text: change the seed or the temperature" in w.message_text
    w.seed.value = 1
    w.update()
    assert w.message_text.startswith("Run 3:") and "Same seed" not in w.message_text
    w.greedy.value = True
    w.update()
    w.update()
    assert "Same settings, same text: greedy decoding has no randomness" in w.message_text


def test_sampling_widget_sliders_are_wide_and_bad_prompt_greys_the_last_text(tiny_gpt):
    model, tok = tiny_gpt
    w = SamplingWidget(model, tok, prompt="abc", max_new_tokens=6)
    assert w.temperature.layout.width == f"{320 + 130 + 70}px"      # 40 steps of 0.05, 8 px each
    w.prompt.value = "xyz"
    assert w.update() is False and w.stale and STALE_CLASS in w.output._dom_classes
    assert "abc" in w.output.value                                    # the last text stays, greyed


# ----------------------------------------------------------------------------- lesson 19

def test_memory_explorer_states_the_course_arithmetic_for_the_chosen_sizes():
    from course import distributed as dd
    from course.viz import memory_explorer

    ex = memory_explorer(n_params=7e9, world_size=8, gpu_gb=80)
    assert ex.message_text == ("7 B parameters: DDP 112.0 GB per GPU, FSDP over 8 14.0 GB; fits with FSDP on 80 GB "
                               "GPUs; FSDP needs at least 2 of them (before activations).")
    assert dd.gpus_needed(7_000_000_000, 80 * 10**9) == 2
    ex.controls["world_size"].value = 1
    assert "fits with neither" in ex.message_text
    ex.controls["n_params"].value = 1.24e8
    assert ex.message_text.startswith("124 M parameters: DDP 2.0 GB") and "fits with DDP and FSDP" in ex.message_text
    assert type(ex.controls["n_params"]).__name__ == "FloatLogSlider"
