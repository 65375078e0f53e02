"""The small helpers the modules share: eval mode, one-line errors, shapes, tables, widget messages."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from course.utils import describe_exception, eval_mode, first_line, format_table, shape_of, show_message


def test_eval_mode_restores_the_mode_the_model_was_in_also_after_an_error():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    with eval_mode(model) as inside:
        assert inside is model and not model.training and not model[1].training
    assert model.training and model[1].training
    model.eval()
    with eval_mode(model):
        pass
    assert not model.training
    model.train()
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("boom")
    assert model.training


def test_describe_exception_gives_the_type_and_the_first_line():
    assert describe_exception(ValueError("bad shape\nsecond line")) == "ValueError: bad shape"
    assert describe_exception(KeyError()) == "KeyError"
    assert describe_exception(RuntimeError("\n  \n  late start  \n")) == "RuntimeError: late start"
    long = describe_exception(ValueError("x" * 500), limit=20)
    assert long == "ValueError: " + "x" * 17 + "..."
    assert first_line("a" * 160) == "a" * 160 and first_line("") == ""


def test_shape_of_is_a_plain_tuple():
    assert shape_of(torch.zeros(2, 3)) == (2, 3) and f"{shape_of(torch.zeros(2, 3))}" == "(2, 3)"


def test_format_table_pads_columns_and_right_aligns_numbers():
    table = format_table([["rnn", 12], ["attention", 1]], header=["model", "steps"])
    assert table.splitlines() == ["model      steps", "---------  -----", "rnn           12", "attention      1"]
    with pytest.raises(ValueError):
        format_table([["a"]], header=["x", "y"])


def test_format_table_with_given_alignment_no_header_and_notes():
    assert format_table([["torch", "2.5"], ["einops", "0.8.2"]], align="<<").splitlines() == [
        "torch   2.5", "einops  0.8.2"]
    table = format_table([["naive", "1.5", "2.0"], ["flash", "not supported here: needs a GPU"]],
                         header=["backend", "ms", "MB"], align="<>>", notes=True)
    assert table.splitlines() == ["backend   ms   MB", "-------  ---  ---", "naive    1.5  2.0",
                                  "flash    not supported here: needs a GPU"]
    with pytest.raises(ValueError, match="align"):
        format_table([["a", "b"]], align="<")


def test_show_message_colours_and_escapes_the_line():
    class Box:
        value = ""

    box = Box()
    show_message(box, "<b>ok</b>", ok=True)
    assert box.value == '<span style="color:#2a7a2a">&lt;b&gt;ok&lt;/b&gt;</span>'
    show_message(box, "no", ok=False)
    assert "#b00020" in box.value
