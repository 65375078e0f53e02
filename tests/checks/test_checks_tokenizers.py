"""Lesson 02's checkers: a library of wrong implementations, each caught with its own hint."""
from __future__ import annotations

import pytest
import torch.nn.functional as F

from checker_assertions import assert_fails_with
from course.checks.core import NOT_ATTEMPTED, PASSED
from course.checks.tokenizers import (
    check_merge,
    check_one_hot_embedding,
    check_pair_counts,
)
from course.tokenizers import get_pair_counts, merge


def _run(checker, fn):
    return checker(fn, strict=False)




# --- pair counts --------------------------------------------------------------------------------
def correct_pair_counts(ids):
    counts = {}
    for a, b in zip(ids, ids[1:]):
        counts[(a, b)] = counts.get((a, b), 0) + 1
    return counts


def _skip_after_repeat(ids):
    counts, i = {}, 0
    while i < len(ids) - 1:
        counts[(ids[i], ids[i + 1])] = counts.get((ids[i], ids[i + 1]), 0) + 1
        i += 2 if ids[i] == ids[i + 1] else 1
    return counts


def _no_last_pair(ids):
    counts = {}
    for i in range(len(ids) - 2):
        counts[(ids[i], ids[i + 1])] = counts.get((ids[i], ids[i + 1]), 0) + 1
    return counts


WRONG_PAIR_COUNTS = {
    "last pair dropped": (_no_last_pair, "last pair is not counted"),
    "runs counted once": (_skip_after_repeat, "overlapping pairs count separately"),
    "every other pair": (lambda ids: {p: list(zip(ids[::2], ids[1::2])).count(p) for p in zip(ids[::2], ids[1::2])},
                         "every other pair"),
    "set of pairs": (lambda ids: {p: 1 for p in set(zip(ids, ids[1:]))}, "counted once"),
    "reversed pairs": (lambda ids: correct_pair_counts(ids[::-1]), "reversed"),
}


def test_correct_pair_counts_and_the_course_version_pass():
    assert _run(check_pair_counts, correct_pair_counts).status == PASSED
    assert _run(check_pair_counts, get_pair_counts).line.startswith("✓ pair counts: correct on")


def test_a_counter_is_accepted_as_a_dict():
    from collections import Counter
    assert _run(check_pair_counts, lambda ids: Counter(zip(ids, ids[1:]))).passed


@pytest.mark.parametrize("name", list(WRONG_PAIR_COUNTS))
def test_each_wrong_pair_count_fails_with_its_hint(name):
    fn, words = WRONG_PAIR_COUNTS[name]
    assert_fails_with(_run(check_pair_counts, fn), words)


def test_pair_counts_of_the_wrong_type_get_a_one_line_message():
    assert_fails_with(_run(check_pair_counts, lambda ids: list(zip(ids, ids[1:]))), "should return a dict, got list")


def test_pair_counts_failure_names_the_first_difference():
    result = _run(check_pair_counts, lambda ids: {**correct_pair_counts(ids), (0, 0): 1})
    assert_fails_with(result, "(0, 0) should not be there")


# --- merge --------------------------------------------------------------------------------------
def correct_merge(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i < len(ids) - 1 and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _keeps_second(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i < len(ids) - 1 and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
        else:
            out.append(ids[i])
        i += 1
    return out


def _overlap_twice(ids, pair, new_id):
    # Marks every position where the pair starts, then drops the elements that ended a pair.
    starts = [i for i in range(len(ids) - 1) if (ids[i], ids[i + 1]) == pair]
    ends = {i + 1 for i in starts}
    return [new_id if i in starts else x for i, x in enumerate(ids) if i in starts or i not in ends]


def _drops_last(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _first_only(ids, pair, new_id):
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == pair:
            return ids[:i] + [new_id] + ids[i + 2:]
    return list(ids)


def _from_right(ids, pair, new_id):
    out, i = [], len(ids) - 1
    while i >= 0:
        if i > 0 and (ids[i - 1], ids[i]) == pair:
            out.append(new_id)
            i -= 2
        else:
            out.append(ids[i])
            i -= 1
    return out[::-1]


def _in_place(ids, pair, new_id):
    i = 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == pair:
            ids[i:i + 2] = [new_id]
        i += 1
    return ids


WRONG_MERGES = {
    "second element kept": (_keeps_second, "skip both elements"),
    "overlaps merged twice": (_overlap_twice, "overlapping occurrences were merged twice"),
    "last element dropped": (_drops_last, "last element was lost"),
    "first occurrence only": (_first_only, "only the first occurrence"),
    "scanned from the right": (_from_right, "merged from the right"),
    "nothing replaced": (lambda ids, pair, new_id: list(ids), "nothing was replaced"),
    "changed in place": (_in_place, "changed its input in place"),
}


def test_correct_merge_and_the_course_version_pass():
    assert _run(check_merge, correct_merge).passed
    assert _run(check_merge, merge).passed


@pytest.mark.parametrize("name", list(WRONG_MERGES))
def test_each_wrong_merge_fails_with_its_hint(name):
    fn, words = WRONG_MERGES[name]
    assert_fails_with(_run(check_merge, fn), words)


def test_merge_returning_a_string_gets_a_one_line_message():
    assert_fails_with(_run(check_merge, lambda ids, pair, new_id: str(ids)), "should return a list, got str")


def test_merge_that_raises_gets_a_one_line_message_naming_the_case():
    assert_fails_with(_run(check_merge, lambda ids, pair, new_id: ids[len(ids)]), "raised IndexError")


def test_unattempted_merge_says_not_attempted_yet():
    def merge_todo(ids, pair, new_id):
        raise NotImplementedError()

    result = _run(check_merge, merge_todo)
    assert result.status == NOT_ATTEMPTED and "not attempted yet" in result.line


def test_passing_the_result_instead_of_the_function_is_explained():
    assert_fails_with(_run(check_merge, [1, 2]), "pass the function itself")


# --- embedding lookup ----------------------------------------------------------------------------
def correct_embedding(ids, W):
    return F.one_hot(ids, num_classes=W.shape[0]).to(W.dtype) @ W


WRONG_EMBEDDINGS = {
    "transposed": (lambda ids, W: F.one_hot(ids, W.shape[1]).float() @ W.T, "wrong orientation"),
    "no num_classes": (lambda ids, W: F.one_hot(ids).float() @ W, "num_classes=W.shape[0]"),
    "integer one-hot": (lambda ids, W: F.one_hot(ids, W.shape[0]) @ W, "convert them to W's dtype"),
    "off by one": (lambda ids, W: F.one_hot((ids + 1) % W.shape[0], W.shape[0]).float() @ W, "off by one"),
}


def test_correct_embedding_and_a_direct_row_lookup_pass():
    assert _run(check_one_hot_embedding, correct_embedding).passed
    assert _run(check_one_hot_embedding, lambda ids, W: W[ids]).passed


@pytest.mark.parametrize("name", list(WRONG_EMBEDDINGS))
def test_each_wrong_embedding_fails_with_its_hint(name):
    fn, words = WRONG_EMBEDDINGS[name]
    assert_fails_with(_run(check_one_hot_embedding, fn), words)


def test_embedding_of_the_wrong_shape_gets_a_one_line_message():
    assert_fails_with(_run(check_one_hot_embedding, lambda ids, W: W), "has shape (5, 5), expected (2, 3, 5)")


def test_embedding_of_the_wrong_type_gets_a_one_line_message():
    assert_fails_with(_run(check_one_hot_embedding, lambda ids, W: W[ids].numpy()), "should be a torch.Tensor")
    assert_fails_with(_run(check_one_hot_embedding, lambda ids, W: W[ids].tolist()),
                      "output should be a torch.Tensor, got a list of 2 item(s)")
