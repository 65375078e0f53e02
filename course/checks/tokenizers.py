"""Checkers for lesson 02 (tokens and embeddings): pair counts, merge, embedding lookup.

The cases hold the boundaries of each exercise: a pair at the very start and at the very end, runs of
one id (overlapping pairs), a single id and no ids at all, and ids that share digits (``[21, 3, 1, 3]``
holds ``(1, 3)`` once, though the text "21 3 1 3" holds "1 3" twice), so that tricks on the ids written
out as text do not pass. The embedding cases have the largest id both below and at ``vocab - 1``.

Two of these exercises return plain Python values (a dict of pair counts, a list of ids), which
:func:`course.checks.core.check_values` compares (the engine for plain values, beside the one for
tensors).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from course.tokenizers import get_pair_counts, merge, one_hot_embedding

from .core import CheckResult, Mistake, check_function, check_values


# ----------------------------------------------------------------------------------------------
# Exercise: get_pair_counts(ids) -> {(a, b): count}
# ----------------------------------------------------------------------------------------------
def _pair_counts_cases() -> list[tuple]:
    return [
        ([1, 2, 1, 2, 1, 2, 3],),     # every mistake below gives a different answer here
        ([21, 3, 1, 3],),             # ids that share digits: as text, "21 3 1 3" holds "1 3" twice
        ([1, 2, 3, 1, 2],),           # (1, 2) twice, the second time as the last pair
        ([5, 5, 5],),                 # overlapping: (5, 5) twice
        ([7, 8],),                    # a single pair, which is also the last pair
        ([4, 4, 4, 4, 9, 4, 4],),
        ([3],),                       # no pairs at all
        ([],),
        ([104, 101, 108, 108, 111, 32, 104, 101],),  # "hello he" as bytes
        ([1, 23, 1, 2],),             # "1 23 1 2" holds "1 2" twice, the pair (1, 2) once
    ]


def _counts(pairs) -> dict:
    out: dict = {}
    for p in pairs:
        out[p] = out.get(p, 0) + 1
    return out


def _count_skipping_runs(ids):
    out, i = {}, 0
    while i < len(ids) - 1:
        pair = (ids[i], ids[i + 1])
        out[pair] = out.get(pair, 0) + 1
        i += 2 if ids[i] == ids[i + 1] else 1
    return out


def _text_counts(ids):
    text = " ".join(map(str, ids))
    return {(a, b): text.count(f"{a} {b}") for a, b in zip(ids, ids[1:])}


PAIR_COUNT_MISTAKES = [
    Mistake("the last pair is not counted: the pairs run up to (ids[-2], ids[-1]); loop over range(len(ids) - 1) "
            "or zip(ids, ids[1:])",
            lambda ids: _counts(zip(ids[:-2], ids[1:-1]))),
    Mistake("overlapping pairs count separately: [7, 7, 7] holds (7, 7) twice (only merge skips ahead after a match)",
            _count_skipping_runs),
    Mistake("only every other pair is counted (ids[0:2], ids[2:4], ...): step through every position, "
            "so pairs overlap: zip(ids, ids[1:])",
            lambda ids: _counts(zip(ids[::2], ids[1::2]))),
    Mistake("each distinct pair is counted once: add 1 every time the pair occurs",
            lambda ids: {p: 1 for p in zip(ids, ids[1:])}),
    Mistake("the pairs are reversed: the key is (ids[i], ids[i + 1]), left element first",
            lambda ids: _counts(zip(ids[1:], ids))),
    Mistake("the ids were counted as text: in \"21 3 1 3\" the text \"1 3\" occurs twice, the pair (1, 3) once; "
            "count pairs of ids, zip(ids, ids[1:])", _text_counts),
]


def check_pair_counts(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(ids: list[int]) -> dict[(a, b), count]`` of neighbouring pairs (overlapping)."""
    return check_values("pair counts", fn, lambda ids: get_pair_counts(ids), _pair_counts_cases(),
                        mistakes=PAIR_COUNT_MISTAKES, strict=strict)


# ----------------------------------------------------------------------------------------------
# Exercise: merge(ids, pair, new_id) -> list
# ----------------------------------------------------------------------------------------------
def _merge_cases() -> list[tuple]:
    return [
        ([1, 2, 3], (1, 2), 9),          # at the very start
        ([1, 1, 2], (1, 2), 9),          # at an odd position, after a near miss
        ([1, 2, 3, 1, 2], (1, 2), 99),   # twice, the second time at the very end
        ([5, 5, 5], (5, 5), 256),        # overlapping: only the first two merge
        ([5, 5, 5, 5], (5, 5), 256),     # two occurrences back to back
        ([3, 1, 2, 4], (1, 2), 300),     # once, in the middle
        ([2, 1, 2, 1], (1, 2), 7),       # the reverse pair (2, 1) must be left alone
        ([1, 3, 2], (1, 2), 7),          # no occurrence
        ([], (1, 2), 7),
        ([4], (4, 4), 9),                # a single id
        ([11, 2, 1, 2], (1, 2), 99),     # ids that share digits: as text, "11 2" contains "1 2"
        ([1, 21, 2], (1, 2), 99),        # and "1 21" starts with "1 2"
    ]


def _merge_no_skip(ids, pair, new_id):
    out = []
    for i in range(len(ids)):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
        elif i > 0 and (ids[i - 1], ids[i]) == tuple(pair) and out and out[-1] == new_id:
            continue
        else:
            out.append(ids[i])
    return out


def _merge_replace_both(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += 1  # forgot to skip the pair's second element
        else:
            out.append(ids[i])
            i += 1
    return out


def _merge_drops_last(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _merge_first_only(ids, pair, new_id):
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == tuple(pair):
            return list(ids[:i]) + [new_id] + list(ids[i + 2:])
    return list(ids)


def _merge_from_right(ids, pair, new_id):
    return merge(list(ids)[::-1], (pair[1], pair[0]), new_id)[::-1]


def _merge_even_positions(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
        else:
            out.extend(ids[i:i + 2])
        i += 2
    return out


def _merge_as_text(ids, pair, new_id):
    text = " ".join(map(str, ids)).replace(f"{pair[0]} {pair[1]}", str(new_id))
    return [int(t) for t in text.split()]


MERGE_MISTAKES = [
    Mistake("after a match, skip both elements of the pair (i += 2): the pair's second element was kept",
            _merge_replace_both),
    Mistake("overlapping occurrences were merged twice: [7, 7, 7] merged on (7, 7) gives [new_id, 7] "
            "(after a match, jump past both elements)",
            _merge_no_skip),
    Mistake("the last element was lost: when the loop stops one short of the end, the final id still "
            "has to be appended",
            _merge_drops_last),
    Mistake("only the first occurrence was replaced: keep scanning to the end", _merge_first_only),
    Mistake("merged from the right: scan left to right, so [7, 7, 7] gives [new_id, 7], not [7, new_id]",
            _merge_from_right),
    Mistake("nothing was replaced: append new_id where the pair starts (a list never equals a tuple: compare "
            "(ids[i], ids[i + 1]) == tuple(pair), or element by element)",
            lambda ids, pair, new_id: list(ids)),
    Mistake("only pairs starting at even positions were looked at: after a non-match, move on by one (i += 1), "
            "not by two", _merge_even_positions),
    Mistake("the ids were replaced as text: \"11 2\" contains \"1 2\", though the ids are 11 and 2; compare ids, "
            "ids[i] == pair[0] and ids[i + 1] == pair[1]", _merge_as_text),
]


def check_merge(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(ids, pair, new_id) -> new list`` with each occurrence of ``pair`` replaced."""
    return check_values("merge", fn, lambda ids, pair, new_id: merge(ids, pair, new_id), _merge_cases(),
                        mistakes=MERGE_MISTAKES, strict=strict)


# ----------------------------------------------------------------------------------------------
# Exercise: embedding lookup as one_hot(ids) @ W
# ----------------------------------------------------------------------------------------------
def _embedding_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(2)
    return [
        # Square W first: the transposed orientation then has the right shape but wrong values.
        (torch.tensor([[0, 3, 1], [2, 2, 0]]), torch.randn(5, 5, generator=g)),
        # The largest id (2) is below vocab - 1: one_hot without num_classes gives too few columns.
        (torch.tensor([2, 0, 1, 2]), torch.randn(7, 3, generator=g)),
        (torch.tensor([6]), torch.randn(7, 4, generator=g)),
        (torch.randint(0, 11, (2, 3, 4), generator=g), torch.randn(11, 6, generator=g)),
    ]


EMBEDDING_MISTAKES = [
    Mistake("wrong orientation: row i of W is token i's vector, so multiply one_hot(ids) [..., vocab] by "
            "W [vocab, d]; you used W's columns (W.T)",
            lambda ids, W: F.one_hot(ids, W.shape[1]).to(W.dtype) @ W.T),
    Mistake("off by one: token i's vector is row i of W (ids start at 0)",
            lambda ids, W: F.one_hot((ids + 1) % W.shape[0], W.shape[0]).to(W.dtype) @ W),
    Mistake("off by one: token i's vector is row i of W (ids start at 0)",
            lambda ids, W: F.one_hot((ids - 1) % W.shape[0], W.shape[0]).to(W.dtype) @ W),
]

EMBEDDING_EXCEPTION_HINTS = [
    ("cannot be multiplied", "the one-hot vectors must have vocab = W.shape[0] entries to line up with W's rows: "
                             "F.one_hot(ids, num_classes=W.shape[0])"),
    ("dtype", "F.one_hot gives integers: convert them to W's dtype (.to(W.dtype) or .float()) before multiplying"),
    ("Long", "F.one_hot gives integers: convert them to W's dtype (.to(W.dtype) or .float()) before multiplying"),
]


def check_one_hot_embedding(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(ids: [...] int64, W: [vocab, d]) -> [..., d]``, the embedding of each id."""
    return check_function("embedding lookup", fn, one_hot_embedding, _embedding_cases(),
                          mistakes=EMBEDDING_MISTAKES, atol=1e-6,
                          exception_hints=EMBEDDING_EXCEPTION_HINTS, strict=strict)
