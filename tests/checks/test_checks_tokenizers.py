"""Lesson 02's checkers: libraries of learner-style right and wrong answers (see answer_library.py), each
wrong one caught with the words of its hint, each right one accepted; every registered mistake reachable."""
from __future__ import annotations

from collections import Counter, defaultdict

import pytest
import torch
import torch.nn.functional as F

from answer_library import Right, Wrong, library_tests
from checker_assertions import assert_fails_with
from course.checks import tokenizers as ct
from course.checks.core import NOT_ATTEMPTED
from course.checks.tokenizers import check_merge, check_one_hot_embedding, check_pair_counts
from course.tokenizers import get_pair_counts, merge

pytestmark = pytest.mark.usefixtures("lenient_checks")


def _run(checker, fn):
    return checker(fn, strict=False)


# --- pair counts --------------------------------------------------------------------------------
def correct_pair_counts(ids):
    counts = {}
    for a, b in zip(ids, ids[1:]):
        counts[(a, b)] = counts.get((a, b), 0) + 1
    return counts


def pair_counts_indices(ids):
    counts = defaultdict(int)
    for i in range(len(ids) - 1):
        counts[ids[i], ids[i + 1]] += 1
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


def pair_counts_as_text(ids):
    text = ",".join(str(i) for i in ids)
    return {(a, b): text.count(f"{a},{b}") for a, b in zip(ids, ids[1:])}


def pair_counts_forgets_return(ids):
    counts = {}
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1


WRONG_PAIR_COUNTS = [
    Wrong("last pair dropped", _no_last_pair, "last pair is not counted"),
    Wrong("runs counted once", _skip_after_repeat, "overlapping pairs count separately"),
    Wrong("every other pair", lambda ids: {p: list(zip(ids[::2], ids[1::2])).count(p) for p in zip(ids[::2], ids[1::2])},
          "every other pair"),
    Wrong("set of pairs", lambda ids: {p: 1 for p in set(zip(ids, ids[1:]))}, "counted once"),
    Wrong("reversed pairs", lambda ids: correct_pair_counts(ids[::-1]), "reversed"),
    Wrong("counted in the text", pair_counts_as_text, "the ids were counted as text"),
    Wrong("a list of pairs", lambda ids: list(zip(ids, ids[1:])), "should return a dict, got list"),
    Wrong("string keys", lambda ids: Counter(f"{a},{b}" for a, b in zip(ids, ids[1:])), "the keys should be tuples like"),
    Wrong("no return", pair_counts_forgets_return, "did you forget `return`"),
    Wrong("an extra pair", lambda ids: {**correct_pair_counts(ids), (0, 0): 1}, "(0, 0) should not be there"),
    # holdout: written after the checker was finished; None where the line only shows the first difference
    Wrong("pairs two apart", lambda ids: dict(Counter(zip(ids, ids[2:]))), None),
    Wrong("every pair of distinct ids", lambda ids: {(a, b): 1 for a in set(ids) for b in set(ids) if a != b}, None),
]

RIGHT_PAIR_COUNTS = [
    Right("dict.get", correct_pair_counts),
    Right("the course's", get_pair_counts),
    Right("Counter", lambda ids: Counter(zip(ids, ids[1:]))),
    Right("defaultdict and indices", pair_counts_indices),
]


def test_the_course_pair_counts_pass_with_one_line():
    assert _run(check_pair_counts, get_pair_counts).line.startswith("✓ pair counts: correct on")


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


def merge_with_a_flag(ids, pair, new_id):
    out, skip = [], False
    for i, x in enumerate(ids):
        if skip:
            skip = False
            continue
        if i + 1 < len(ids) and (x, ids[i + 1]) == tuple(pair):
            out.append(new_id)
            skip = True
        else:
            out.append(x)
    return out


def merge_recursive(ids, pair, new_id):
    if len(ids) < 2:
        return list(ids)
    if (ids[0], ids[1]) == tuple(pair):
        return [new_id] + merge_recursive(ids[2:], pair, new_id)
    return [ids[0]] + merge_recursive(ids[1:], pair, new_id)


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


def _in_pairs(ids, pair, new_id):
    out = []
    for i in range(0, len(ids), 2):
        chunk = ids[i:i + 2]
        out.extend([new_id] if tuple(chunk) == pair else chunk)
    return out


def _as_text(ids, pair, new_id):
    text = " ".join(str(i) for i in ids)
    return [int(t) for t in text.replace(f"{pair[0]} {pair[1]}", str(new_id)).split()]


def _list_compare(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if ids[i:i + 2] == pair:  # a list slice never equals the tuple
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _either_order(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) in (tuple(pair), tuple(pair)[::-1]):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def merge_last_id_after_the_loop(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    if i == len(ids) - 1:
        out.append(ids[-1])
    return out


WRONG_MERGES = [
    Wrong("second element kept", _keeps_second, "skip both elements"),
    Wrong("overlaps merged twice", _overlap_twice, "overlapping occurrences were merged twice"),
    Wrong("last element dropped", _drops_last, "last element was lost"),
    Wrong("first occurrence only", _first_only, "only the first occurrence"),
    Wrong("scanned from the right", _from_right, "merged from the right"),
    Wrong("nothing replaced", lambda ids, pair, new_id: list(ids), "nothing was replaced"),
    Wrong("a slice compared with the tuple", _list_compare, "a list never equals a tuple"),
    Wrong("changed in place", _in_place, "changed its input in place"),
    Wrong("looks at pairs (0, 1), (2, 3), ...", _in_pairs, "only pairs starting at even positions"),
    Wrong("replaced in the text", _as_text, "the ids were replaced as text"),
    Wrong("a string", lambda ids, pair, new_id: str(ids), "should return a list, got str"),
    # holdout
    Wrong("the pair in either order", _either_order, None),
]

RIGHT_MERGES = [
    Right("while loop", correct_merge),
    Right("the course's", merge),
    Right("a skip flag", merge_with_a_flag),
    Right("recursive", merge_recursive),
    Right("returns a tuple", lambda ids, pair, new_id: tuple(correct_merge(ids, pair, new_id))),
    Right("the last id after the loop", merge_last_id_after_the_loop),
]  # holdout


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


WRONG_EMBEDDINGS = [
    Wrong("transposed", lambda ids, W: F.one_hot(ids, W.shape[1]).float() @ W.T, "wrong orientation"),
    Wrong("no num_classes", lambda ids, W: F.one_hot(ids).float() @ W, "num_classes=W.shape[0]"),
    Wrong("num_classes from d_model", lambda ids, W: F.one_hot(ids, W.shape[1]).float() @ W, "num_classes=W.shape[0]"),
    Wrong("integer one-hot", lambda ids, W: F.one_hot(ids, W.shape[0]) @ W, "convert them to W's dtype"),
    Wrong("off by one", lambda ids, W: F.one_hot((ids + 1) % W.shape[0], W.shape[0]).float() @ W, "off by one"),
    Wrong("ids counted from 1", lambda ids, W: W[ids - 1], "off by one"),
    Wrong("summed over the batch", lambda ids, W: (F.one_hot(ids, W.shape[0]).float() @ W).sum(0),
          "the first (batch) axis is missing"),
    Wrong("a list", lambda ids, W: W[ids].tolist(), "output should be a torch.Tensor, got a list of 2 item(s)"),
    Wrong("a NumPy array", lambda ids, W: W[ids].numpy(), "got a NumPy array"),
    Wrong("W itself", lambda ids, W: W, "has shape (5, 5), expected (2, 3, 5)"),
    # holdout
    Wrong("scaled by sqrt(d_model)", lambda ids, W: W[ids] * W.shape[1] ** 0.5, "off by a constant factor"),
    Wrong("ids read backwards", lambda ids, W: W[ids.flip(-1)], "reversed along axis 1"),
]

RIGHT_EMBEDDINGS = [Right("one_hot @ W", correct_embedding), Right("a row lookup", lambda ids, W: W[ids]),
                    Right("F.embedding", lambda ids, W: F.embedding(ids, W)),
                    Right("einsum", lambda ids, W: torch.einsum("...v,vd->...d", F.one_hot(ids, len(W)).float(), W)),
                    Right("index_select", lambda ids, W: W.index_select(0, ids.flatten()).reshape(*ids.shape, -1))]


# --- the libraries, in the shape answer_library.py reads ---------------------------------------------------
LIBRARY = {
    check_pair_counts: (WRONG_PAIR_COUNTS, RIGHT_PAIR_COUNTS),
    check_merge: (WRONG_MERGES, RIGHT_MERGES),
    check_one_hot_embedding: (WRONG_EMBEDDINGS, RIGHT_EMBEDDINGS),
}


test_each_wrong_answer_fails_with_its_words, test_each_right_answer_passes = library_tests(LIBRARY)


REGISTERED = ([(check_pair_counts, m) for m in ct.PAIR_COUNT_MISTAKES]
              + [(check_merge, m) for m in ct.MERGE_MISTAKES]
              + [(check_one_hot_embedding, m) for m in ct.EMBEDDING_MISTAKES])


@pytest.mark.parametrize("checker,mistake", REGISTERED, ids=[f"{c.__name__}:{m.hint[:40]}" for c, m in REGISTERED])
def test_every_registered_mistake_gets_its_own_hint(checker, mistake):
    assert_fails_with(_run(checker, mistake.fn), mistake.hint)
