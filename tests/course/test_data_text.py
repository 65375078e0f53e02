"""The offline corpus: deterministic, non-empty, free of machine paths, and split as documented."""
from __future__ import annotations

import re

import pytest
import torch

from course.data import corpus_fingerprint, stdlib_corpus, train_val_split
from course.data.text import REFERENCE_FINGERPRINT, STDLIB_MODULES, normalise

MACHINE_PATH = re.compile(r"(/work/|/root/|/home/[a-z_][\w-]*/|/tmp/|site-packages|[A-Z]:\\Users\\)")


def test_corpus_is_large_nonempty_text_of_every_module():
    text = stdlib_corpus()
    assert 150_000 < len(text) < 300_000
    for name in STDLIB_MODULES:
        assert f"# module: {name}\n" in text


def test_corpus_is_identical_on_every_call():
    assert stdlib_corpus() == stdlib_corpus()


def test_corpus_matches_the_reference_fingerprint_of_cpython_3_10_to_3_13():
    # The modules were chosen because their source is byte-identical in CPython 3.10-3.13, so
    # lessons' check_output cells (BPE merges, compression) agree everywhere. If this fails, a new
    # Python changed one of the modules: pick modules that are still identical.
    assert corpus_fingerprint(stdlib_corpus()) == REFERENCE_FINGERPRINT


def test_corpus_shows_no_machine_paths():
    assert not MACHINE_PATH.search(stdlib_corpus())


def test_corpus_is_normalised():
    text = stdlib_corpus()
    assert "\r" not in text and "\t" not in text
    assert all(line == line.rstrip() for line in text.split("\n"))
    assert "\n\n\n\n" not in text


def test_max_chars_keeps_a_prefix():
    assert stdlib_corpus(max_chars=1000) == stdlib_corpus()[:1000]
    with pytest.raises(ValueError, match="max_chars"):
        stdlib_corpus(max_chars=0)


def test_unknown_module_is_named_in_the_error():
    with pytest.raises(ValueError, match="no_such_module_xyz"):
        stdlib_corpus(modules=("no_such_module_xyz",))


def test_normalise_unifies_line_ends_tabs_and_blank_runs():
    assert normalise("a\r\nb\rc\t|  \n\n\n\n\nd") == "a\nb\nc   |\n\n\nd\n"


def test_split_sizes_are_contiguous_and_add_up():
    text = stdlib_corpus(max_chars=10_001)
    train, val = train_val_split(text, val_fraction=0.1)
    assert len(val) == round(10_001 * 0.1) == 1000
    assert len(train) + len(val) == 10_001
    assert train + val == text


def test_split_works_on_token_id_lists_and_tensors():
    ids = list(range(50))
    train, val = train_val_split(ids, val_fraction=0.2)
    assert train == list(range(40)) and val == list(range(40, 50))
    t_train, t_val = train_val_split(torch.arange(50), val_fraction=0.2)
    assert t_train.shape == (40,) and t_val.shape == (10,)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_fractions_outside_zero_one(fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split("abcdefghij", val_fraction=fraction)


def test_split_rejects_text_too_short_to_split():
    with pytest.raises(ValueError, match="too short"):
        train_val_split("abc", val_fraction=0.1)
