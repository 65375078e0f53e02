"""course.viz: sentence validation (pure function), heatmaps, the explorer widget building and updating,
the table of heads and the bertviz adapters."""
from __future__ import annotations

import json
import re

import matplotlib

matplotlib.use("agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from course.models import GPT, EncoderDecoder, EncoderDecoderConfig, GPTConfig  # noqa: E402
from course.seed import seed_everything  # noqa: E402
from course.viz import (  # noqa: E402
    attention_explorer,
    attention_heads,
    attention_heatmap,
    cross_attentions_for_bertviz,
    draw_head_table,
    gpt_attentions,
    to_bertviz,
    tokenize_words,
    validate_sentence,
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def uniform(tokens):
    n = len(tokens)
    return torch.full((n, n), 1.0 / n)


# ----------------------------------------------------------------------------- validate_sentence

def test_tokenize_words_keeps_contractions_and_splits_punctuation():
    assert tokenize_words("The animal didn't cross, wide.") == ["The", "animal", "didn't", "cross", ",", "wide", "."]


def test_validate_sentence_accepts_a_normal_sentence():
    tokens, message = validate_sentence("The animal didn't cross the street", max_tokens=10)
    assert message == "" and tokens == ["The", "animal", "didn't", "cross", "the", "street"]


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_validate_sentence_rejects_empty_text(text):
    tokens, message = validate_sentence(text, max_tokens=10)
    assert tokens == [] and "empty" in message and "\n" not in message


def test_validate_sentence_rejects_too_many_tokens_naming_the_limit():
    tokens, message = validate_sentence("a b c d e f", max_tokens=4)
    assert tokens == [] and "6 tokens" in message and "limit is 4" in message


def test_validate_sentence_rejects_unknown_characters_naming_them():
    tokens, message = validate_sentence("the café @ noon", max_tokens=10)
    assert tokens == [] and "'é'" in message and "'@'" in message and "\n" not in message


def test_validate_sentence_rejects_words_outside_the_vocabulary():
    tokens, message = validate_sentence("The dog crossed", max_tokens=10, vocab={"the", "dog", "cross"})
    assert tokens == [] and "'crossed'" in message and "cross" in message


def test_validate_sentence_vocabulary_is_case_insensitive():
    tokens, message = validate_sentence("The DOG", max_tokens=10, vocab={"the", "dog"})
    assert message == "" and tokens == ["The", "DOG"]


def test_validate_sentence_rejects_only_punctuation():
    tokens, message = validate_sentence("'-'", max_tokens=10)
    assert tokens == [] and message


# ----------------------------------------------------------------------------- heatmaps

def test_attention_heatmap_labels_rows_and_columns():
    ax = attention_heatmap(torch.eye(3), ["a", "b", "c"])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]


def test_attention_heatmap_cross_attention_uses_query_tokens():
    ax = attention_heatmap(torch.full((2, 3), 1 / 3), ["a", "b", "c"], query_tokens=["x", "y"])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["x", "y"]


def test_attention_heatmap_rejects_shape_that_does_not_match_tokens():
    with pytest.raises(ValueError, match=r"\(3, 3\).*2 query tokens x 2 key tokens"):
        attention_heatmap(torch.eye(3), ["a", "b"])


def test_attention_heads_draws_one_panel_per_head_and_one_shared_colour_bar():
    fig = attention_heads(torch.rand(3, 4, 4), list("abcd"), titles=["p", "q", "r"])
    assert [ax.get_title() for ax in fig.axes] == ["p", "q", "r", ""]   # the last axes: the colour bar
    assert fig.axes[-1].get_ylabel() == "attention weight"


def test_attention_heads_on_their_own_scales_get_a_colour_bar_each_and_their_values():
    w = torch.full((2, 3, 3), 1 / 3)
    w[1] = torch.eye(3) * 0.56 + 0.44 / 3       # its largest weight: 0.56 + 0.44 / 3 = 0.71
    fig = attention_heads(w, list("abc"), shared_scale=False)
    assert len(fig.axes) == 4                    # two maps, two colour bars
    assert fig.axes[1].images[0].get_clim() == pytest.approx((0.0, float(w[1].max())))
    assert ".71" in [t.get_text() for t in fig.axes[1].texts]


# ----------------------------------------------------------------------------- explorer widget

def test_explorer_builds_and_draws_the_first_sentence():
    ex = attention_explorer(uniform, sentence="the cat sat", max_tokens=5)
    assert ex.tokens == ["the", "cat", "sat"] and ex.weights.shape == (3, 3)
    assert "3 tokens" in ex.message.value
    assert ex.text in ex.widget.children and ex.message in ex.widget.children
    assert ex.image in ex.widget.children[-1].children      # the picture area, last
    assert bytes(ex.image.value).startswith(b"\x89PNG")  # the heatmap, drawn


def test_explorer_updates_when_the_text_box_changes():
    ex = attention_explorer(uniform, sentence="the cat sat", max_tokens=5)
    first = bytes(ex.image.value)
    ex.text.value = "a dog ran away"
    assert ex.tokens == ["a", "dog", "ran", "away"] and ex.weights.shape == (4, 4)
    assert bytes(ex.image.value).startswith(b"\x89PNG") and bytes(ex.image.value) != first  # redrawn


@pytest.mark.parametrize("text,expected", [("", "empty"), ("a b c d e f g", "Too long"), ("na\u00efve", "Unknown character")])
def test_explorer_shows_a_one_line_message_for_bad_input_and_keeps_the_last_picture(text, expected):
    ex = attention_explorer(uniform, sentence="the cat sat", max_tokens=5)
    picture = bytes(ex.image.value)
    ex.text.value = text
    assert expected in ex.message.value and "Traceback" not in ex.message.value
    assert ex.tokens == ["the", "cat", "sat"] and bytes(ex.image.value) == picture


def test_explorer_reports_an_exception_from_attend_fn_in_one_line():
    def broken(tokens):
        raise RuntimeError("shapes do not fit\nsecond line")

    ex = attention_explorer(broken, sentence="the cat", max_tokens=5)
    assert "RuntimeError: shapes do not fit" in ex.message.value and "second line" not in ex.message.value


def test_explorer_reports_wrong_weight_shape():
    ex = attention_explorer(lambda tokens: torch.ones(2, 2), sentence="the cat sat", max_tokens=5)
    assert "expected (3, 3)" in ex.message.value


def test_explorer_draws_several_heads_side_by_side():
    ex = attention_explorer(lambda t: torch.stack([uniform(t), torch.eye(len(t))]), sentence="x y", max_tokens=5,
                            head_titles=["uniform", "self"])
    assert ex.weights.shape == (2, 2, 2) and "2 tokens" in ex.message.value


# --- show_bertviz / patient_bertviz_html (the browser side is in tests/browser/test_bertviz_page.py) ---

def _bertviz_html(view_name: str = "head_view") -> str:
    bertviz = pytest.importorskip("bertviz")
    attention = tuple(torch.rand(1, 2, 3, 3).softmax(-1) for _ in range(2))
    return getattr(bertviz, view_name)(attention, ["a", "b", "c"], html_action="return").data


@pytest.mark.parametrize("view_name", ["head_view", "model_view"])
def test_patient_bertviz_html_keeps_the_view_and_waits_for_require(view_name):
    from course.viz import BERTVIZ_OFFLINE_MESSAGE, patient_bertviz_html

    raw = _bertviz_html(view_name)
    patient = patient_bertviz_html(raw, wait_s=7)
    div_id = re.search(r'id="(bertviz-[0-9a-f]{32})"', raw).group(1)
    assert patient.count(div_id) == raw.count(div_id) + 1     # bertviz's own uses, and our note's lookup
    assert "require.min.js" in patient and "requirejs(['jquery', 'd3']" in patient
    assert "waitMs = 7000" in patient and json.dumps(BERTVIZ_OFFLINE_MESSAGE) in patient
    assert patient.count("<script") == 2 and patient.rstrip().endswith("</script>")
    # bertviz's code now runs inside start(), after the check for require.js
    assert patient.index('typeof window.require.config') < patient.index("require.config({")


def test_patient_bertviz_html_rejects_html_that_is_not_a_bertviz_view():
    from course.viz import patient_bertviz_html

    with pytest.raises(ValueError, match="not a bertviz view"):
        patient_bertviz_html("<div>hello</div>")


def test_show_bertviz_displays_one_html_output(monkeypatch):
    import IPython.display

    from course.viz import show_bertviz

    bertviz = pytest.importorskip("bertviz")
    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    show_bertviz(bertviz.head_view, (torch.rand(1, 1, 2, 2).softmax(-1),), ["a", "b"], wait_s=1)
    assert len(shown) == 1 and "course-bertviz-offline" in shown[0].data
    with pytest.raises(ValueError, match="html_action"):
        show_bertviz(bertviz.head_view, (torch.rand(1, 1, 2, 2),), ["a", "b"], html_action="return")


@pytest.mark.parametrize("attention, tokens", [
    ((), []),                                          # nothing at all
    ((torch.rand(2, 4, 4),), list("abcd")),            # a layer without its batch dimension
    ((torch.rand(1, 2, 4, 4),), list("abc")),          # one token short
])
def test_show_bertviz_turns_bad_attention_into_one_message(attention, tokens):
    from course.viz import show_bertviz

    bertviz = pytest.importorskip("bertviz")
    with pytest.raises(ValueError, match=r"bertviz could not draw this: .*to_bertviz") as caught:
        show_bertviz(bertviz.head_view, attention, tokens)
    assert "\n" not in str(caught.value)


def test_to_bertviz_gives_one_batch_heads_seq_seq_tensor_per_layer():
    out = to_bertviz(torch.rand(3, 2, 5, 5).softmax(-1))
    assert len(out) == 3 and out[0].shape == (1, 2, 5, 5) and out[0].dtype == torch.float64
    with pytest.raises(ValueError, match="expected"):
        to_bertviz(torch.rand(5, 5))


def test_gpt_attentions_give_the_same_hidden_states_and_causal_weights():
    seed_everything(0)
    gpt = GPT(GPTConfig(vocab_size=30, context_length=16, d_model=32, num_heads=4, num_layers=2)).eval()
    idx = torch.randint(0, 30, (2, 7))
    hidden, weights = gpt_attentions(gpt, idx)
    torch.testing.assert_close(hidden, gpt.hidden_states(idx), atol=1e-6, rtol=1e-5)  # float32, same arithmetic
    assert len(weights) == 2 and weights[0].shape == (2, 4, 7, 7)
    assert float(weights[1].triu(1).abs().max()) == 0.0  # nothing attends to the future


def test_cross_attention_adapter_gives_target_by_source_maps():
    seed_everything(0)
    model = EncoderDecoder(EncoderDecoderConfig(vocab_size=20, context_length=16, d_model=32, num_heads=4))
    src, tgt = torch.randint(3, 20, (1, 6)), torch.randint(3, 20, (1, 4))
    cross = cross_attentions_for_bertviz(model, src, tgt)
    assert len(cross) == 2 and cross[0].shape == (1, 4, 4, 6)
    torch.testing.assert_close(cross[0].sum(-1), torch.ones(1, 4, 4, dtype=torch.float64), atol=3e-3, rtol=0)


def test_draw_head_table_annotates_every_head():
    fig, ax = plt.subplots()
    draw_head_table(ax, torch.tensor([[0.1, 0.9], [0.5, 0.7]]), "title")
    assert [t.get_text() for t in ax.texts] == ["0.10", "0.90", "0.50", "0.70"] and ax.get_title() == "title"
    with pytest.raises(ValueError, match=r"\[layers, heads\]"):
        draw_head_table(ax, torch.zeros(2, 2, 2))
