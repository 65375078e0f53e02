"""course.viz (lesson 10): attention rollout against a hand computation, validate_choice, and the
ModelExplorer widget driven through its Python objects (set .value, read the message and the picture)."""
from __future__ import annotations

import matplotlib

matplotlib.use("agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from course.viz import ALL_ROWS, MEAN_OF_HEADS, attention_rollout, model_explorer, validate_choice  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ----------------------------------------------------------------------------- rollout

def test_attention_rollout_matches_a_hand_computation():
    a1 = torch.tensor([[1.0, 0.0], [0.5, 0.5]])  # layer 0 (one head)
    a2 = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # layer 1
    # with the residual: A' = (A + I)/2
    r1 = torch.tensor([[1.0, 0.0], [0.25, 0.75]])
    r2 = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    expected = r2 @ r1  # later layer on the left: [[0.625, 0.375], [0.625, 0.375]]
    got = attention_rollout(torch.stack([a1, a2]).unsqueeze(1))
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)  # float32, exact fractions
    torch.testing.assert_close(got, torch.tensor([[0.625, 0.375], [0.625, 0.375]]), atol=1e-6, rtol=0)


def test_attention_rollout_without_residual_is_the_plain_product_of_head_means():
    att = torch.rand(3, 2, 4, 4).softmax(-1)
    means = att.mean(1)
    torch.testing.assert_close(attention_rollout(att, add_residual=False), means[2] @ means[1] @ means[0],
                               atol=1e-6, rtol=1e-5)


def test_attention_rollout_cumulative_and_list_input_agree_and_rows_sum_to_one():
    att = torch.rand(3, 2, 5, 5).softmax(-1)
    steps = attention_rollout([a.unsqueeze(0) for a in att], cumulative=True)
    assert steps.shape == (3, 5, 5)
    torch.testing.assert_close(steps[-1], attention_rollout(att))
    torch.testing.assert_close(steps.sum(-1), torch.ones(3, 5), atol=1e-5, rtol=0)


def test_attention_rollout_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\[layers, heads, seq, seq\]"):
        attention_rollout(torch.rand(2, 4, 4))
    with pytest.raises(ValueError, match="same shape"):
        attention_rollout([torch.rand(2, 4, 4), torch.rand(2, 5, 5)])


# ----------------------------------------------------------------------------- validate_choice

@pytest.mark.parametrize("layer,head,token,view,expected", [
    (0, 0, -1, "one head", ""),
    (1, MEAN_OF_HEADS, 3, "rollout", ""),
    (2, 0, -1, "one head", "Layer 2 is out of range"),
    (-1, 0, -1, "one head", "Layer -1 is out of range"),
    (0, 3, -1, "one head", "Head 3 is out of range"),
    (0, 0, 9, "one head", "Token 9 is out of range"),
    (0, 0, -1, "sideways", "Unknown view"),
    ("1", 0, -1, "one head", "Layer '1' is out of range"),
])
def test_validate_choice_names_the_valid_range(layer, head, token, view, expected):
    message = validate_choice(layer, head, token, num_layers=2, num_heads=3, num_tokens=5, view=view)
    assert (message == "") if not expected else (expected in message and "\n" not in message)


# ----------------------------------------------------------------------------- the explorer

def run(words):
    """A fake model: 2 layers, 3 heads, seeded by the sentence length; adds [CLS] and [SEP]."""
    n = len(words) + 2
    g = torch.Generator().manual_seed(n)
    return ["[CLS]", *words, "[SEP]"], torch.rand(2, 3, n, n, generator=g).softmax(-1)


SENTENCE = "the fox didn't cross the road because it was tired"


def make(**kw):
    return model_explorer(run, SENTENCE, max_tokens=12, describe_fn=lambda w: f"{len(w)} words", **kw)


def test_explorer_builds_controls_from_the_model():
    ex = make()
    assert [v for _, v in ex.layer.options] == [0, 1]
    assert [v for _, v in ex.head.options] == [0, 1, 2, MEAN_OF_HEADS]
    assert ex.token.options[0] == ("all rows", ALL_ROWS) and len(ex.token.options) == len(ex.tokens) + 1
    assert ex.attentions.shape == (2, 3, 12, 12) and ex.answer.value == "10 words"
    assert bytes(ex.image.value).startswith(b"\x89PNG")


def test_explorer_redraws_when_layer_head_token_or_view_change():
    ex = make()
    pictures = {bytes(ex.image.value)}
    for control, value in ((ex.head, 2), (ex.layer, 1), (ex.head, MEAN_OF_HEADS), (ex.token, 8),
                           (ex.view, "all heads"), (ex.view, "rollout")):
        control.value = value
        assert bytes(ex.image.value) not in pictures, f"no new picture after {control.description} = {value}"
        pictures.add(bytes(ex.image.value))
    assert "rollout through layer 1" in ex.message.value and "'it'" in ex.message.value.replace("&#x27;", "'")


def test_explorer_token_pick_reports_where_it_looks():
    ex = make(layer=1, head=2, token="it")
    weights = ex.attentions[1, 2, ex.tokens.index("it")]
    top = ex.tokens[int(weights.argmax())]
    message = ex.message.value.replace("&#x27;", "'")
    assert f"'it' looks most at '{top}'" in message and "layer 1, head 2" in message


def test_explorer_typing_a_sentence_runs_the_model_and_keeps_the_picked_token():
    ex = make(token="it")
    ex.text.value = "it was a cat"
    assert ex.tokens == ["[CLS]", "it", "was", "a", "cat", "[SEP]"] and ex.tokens[ex.token.value] == "it"
    assert ex.answer.value == "4 words"


@pytest.mark.parametrize("text,expected", [
    ("", "empty"),
    (" ".join(["word"] * 13), "Too long: 13 tokens, the limit is 12"),
    ("caf\u00e9 au lait", "Unknown character"),
])
def test_explorer_bad_sentence_gives_one_line_and_keeps_working(text, expected):
    ex = make()
    picture, tokens = bytes(ex.image.value), list(ex.tokens)
    ex.text.value = text
    assert expected in ex.message.value and "Traceback" not in ex.message.value
    assert bytes(ex.image.value) == picture and ex.tokens == tokens
    ex.head.value = 1  # still reacts
    assert bytes(ex.image.value) != picture


def test_explorer_unknown_words_name_them():
    ex = model_explorer(run, "the cat", max_tokens=5, vocab={"the", "cat", "dog"})
    ex.text.value = "the zebra"
    assert "'zebra'" in ex.message.value.replace("&#x27;", "'") and "dog" in ex.message.value


@pytest.mark.parametrize("choice,expected", [
    ({"layer": 5}, "Layer 5 is out of range: this model has layers 0 to 1"),
    ({"head": 7}, "Head 7 is out of range"),
    ({"token": 40}, "Token 40 is out of range"),
    ({"token": "zebra"}, "not in the sentence"),
    ({"view": "3d"}, "Unknown view"),
])
def test_explorer_out_of_range_choice_gives_one_line_and_changes_nothing(choice, expected):
    ex = make()
    picture, state = bytes(ex.image.value), (ex.layer.value, ex.head.value, ex.token.value, ex.view.value)
    assert ex.select(**choice) is False
    assert expected in ex.message.value and bytes(ex.image.value) == picture
    assert (ex.layer.value, ex.head.value, ex.token.value, ex.view.value) == state
    assert ex.select(layer=1, head=0) is True and bytes(ex.image.value) != picture


def test_explorer_reports_a_failing_model_in_one_line_and_keeps_the_last_picture():
    calls = {"n": 0}

    def flaky(words):
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("out of memory\nmore detail")
        return run(words)

    ex = model_explorer(flaky, "the cat sat", max_tokens=5)
    picture = bytes(ex.image.value)
    ex.text.value = "a dog ran"
    assert "RuntimeError: out of memory" in ex.message.value and "more detail" not in ex.message.value
    assert bytes(ex.image.value) == picture and ex.tokens[1:-1] == ["the", "cat", "sat"]


def test_explorer_rejects_attentions_of_the_wrong_shape():
    ex = model_explorer(lambda w: (w, torch.ones(2, 2)), "the cat", max_tokens=5)
    assert "expected (layers, heads, 2, 2)" in ex.message.value
