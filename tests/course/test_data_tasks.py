"""The generated sequence-to-sequence tasks of lesson 09: rules, splits, vocabulary, batching."""
from __future__ import annotations

import pytest
import torch

from course.data.tasks import (
    IGNORE_INDEX,
    SEQ2SEQ_VOCAB,
    TASKS,
    addition_target,
    batch_sampler,
    date_target,
    encode_sources,
    make_batch,
    number_to_words,
    reverse_target,
    shift_targets,
    task_split,
)


@pytest.mark.parametrize("n, words", [(0, "zero"), (7, "seven"), (13, "thirteen"), (20, "twenty"), (42, "forty-two"),
                                      (100, "one hundred"), (417, "four hundred seventeen"),
                                      (999, "nine hundred ninety-nine"), (310, "three hundred ten")])
def test_number_to_words_spells_whole_numbers(n, words):
    assert number_to_words(str(n)) == words


def test_each_task_rule_gives_the_documented_example():
    assert reverse_target("hello") == "olleh"
    assert date_target("2024-03-07") == "7 March 2024"
    assert date_target("2024-03-07", "mdy") == "March 7, 2024"
    assert addition_target("37+48") == "85"


@pytest.mark.parametrize("bad, fn", [("2024-13-01", date_target), ("1000", number_to_words), ("-3", number_to_words),
                                     ("3+", addition_target), ("abc", number_to_words)])
def test_task_rules_reject_malformed_sources_with_a_clear_message(bad, fn):
    with pytest.raises(ValueError, match="expected"):
        fn(bad)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_split_is_seeded_disjoint_and_uses_only_known_characters(task):
    train, test = task_split(task, 300, 100, seed=1)
    assert len(train) == 300 and len(test) == 100
    assert not {s for s, _ in train} & {s for s, _ in test}
    assert task_split(task, 300, 100, seed=1) == (train, test)
    assert task_split(task, 300, 100, seed=2) != (train, test)
    for src, tgt in train + test:
        SEQ2SEQ_VOCAB.validate(src)
        SEQ2SEQ_VOCAB.validate(tgt)
        assert TASKS[task].target(src) == tgt


def test_task_split_refuses_more_examples_than_the_task_has():
    with pytest.raises(ValueError, match="only 1000 distinct sources"):
        task_split("number_words", 900, 200)
    with pytest.raises(ValueError, match="unknown task"):
        task_split("sorting", 10, 10)


def test_vocab_round_trips_and_reserves_pad_bos_eos():
    v = SEQ2SEQ_VOCAB
    assert (v.pad_id, v.bos_id, v.eos_id) == (0, 1, 2) and v.itos[:3] == ["<pad>", "<bos>", "<eos>"]
    ids = v.encode("7 March 2024", bos=True, eos=True)
    assert ids[0] == 1 and ids[-1] == 2 and v.decode(ids) == "7 March 2024"
    assert v.decode(ids + [5, 6]) == "7 March 2024"  # stops at <eos>


def test_vocab_names_unknown_characters():
    with pytest.raises(ValueError, match="does not know: '!', 'é'"):
        SEQ2SEQ_VOCAB.encode("café!")


def test_encode_sources_rejects_empty_too_long_and_unknown_text():
    with pytest.raises(ValueError, match="empty"):
        encode_sources([""])
    with pytest.raises(ValueError, match="at most 5"):
        encode_sources(["abcdefg"], context_length=5)
    with pytest.raises(ValueError, match="does not know"):
        encode_sources(["12?"])
    assert encode_sources(["ab", "abcd"]).tolist() == [[13, 14, 0, 0], [13, 14, 15, 16]]


def test_shift_targets_puts_bos_before_the_input_and_eos_after_the_labels():
    tgt_in, labels = shift_targets(torch.tensor([5, 6, 7]), 1, 2)
    assert tgt_in.tolist() == [1, 5, 6, 7] and labels.tolist() == [5, 6, 7, 2]


def test_make_batch_pads_inputs_with_pad_and_labels_with_ignore_index():
    batch = make_batch([("ab", "xyz"), ("abc", "q")])
    v = SEQ2SEQ_VOCAB
    assert batch.src.shape == (2, 3) and batch.src[0, 2] == v.pad_id
    assert batch.tgt_in.tolist()[1] == [v.bos_id, v.stoi["q"], v.pad_id, v.pad_id]
    assert batch.labels.tolist()[1] == [v.stoi["q"], v.eos_id, IGNORE_INDEX, IGNORE_INDEX]
    assert batch.tgt_in.shape == batch.labels.shape == (2, 4)


def test_batch_sampler_is_deterministic_per_step():
    train, _ = task_split("date", 100, 10)
    next_batch = batch_sampler(train, 8, seed=0)
    assert torch.equal(next_batch(3).src, next_batch(3).src)
    assert not torch.equal(next_batch(3).src, next_batch(4).src)
    assert next_batch(0).src.shape == (8, 10)
