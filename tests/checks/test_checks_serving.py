"""Lesson 18's checker: right answers pass; learner-style wrong answers get the hint for their mistake."""
from __future__ import annotations

import pytest
import torch
from answer_library import Right, Wrong, library_tests, unattempted_test

from course.checks.serving import check_cosine_scores

pytestmark = pytest.mark.usefixtures("lenient_checks")


def loop_cosine(q, d):
    out = torch.zeros(q.shape[0], d.shape[0])
    for i in range(q.shape[0]):
        for j in range(d.shape[0]):
            out[i, j] = (q[i] * d[j]).sum() / (q[i].norm() * d[j].norm())
    return out


def float64_cosine(q, d):
    q64, d64 = q.double(), d.double()
    return ((q64 / q64.norm(dim=1, keepdim=True)) @ (d64 / d64.norm(dim=1, keepdim=True)).T).float()


# Answers a learner might write (independent of the checker's own mistake library), in the shape
# tests/checks/answer_library.py reads: each wrong one with the words its line must contain.
WRONG = [
    Wrong("dot product only", lambda q, d: torch.matmul(q, d.transpose(0, 1)), "plain dot product"),
    Wrong("queries scaled, documents not", lambda q, d: (q / q.norm(dim=1, keepdim=True)) @ d.T, "documents need"),
    Wrong("documents scaled, queries not", lambda q, d: q @ (d / d.norm(dim=-1, keepdim=True)).T, "queries need"),
    Wrong("norm down the columns", lambda q, d: (q / q.norm(dim=0)) @ (d / d.norm(dim=0)).T, "wrong dimension"),
    Wrong("documents by queries", lambda q, d: torch.nn.functional.normalize(d, dim=-1)
          @ torch.nn.functional.normalize(q, dim=-1).T, "transposed"),
    Wrong("returns a list", lambda q, d: (q @ d.T).tolist(), "list"),
    Wrong("returns nothing", lambda q, d: None, "None"),
    # holdout, written after the checker: divides by the product of the two norms' sums
    Wrong("one norm for everything", lambda q, d: (q @ d.T) / (q.norm() * d.norm()), None),
]
RIGHT = [
    Right("two loops", loop_cosine),
    Right("float64 inside", float64_cosine),
    Right("torch's cosine_similarity broadcast",
          lambda q, d: torch.nn.functional.cosine_similarity(q[:, None, :], d[None, :, :], dim=-1)),
    Right("einsum", lambda q, d: torch.einsum("qd,nd->qn", q, d) / (q.norm(dim=-1)[:, None] * d.norm(dim=-1)[None])),
]

LIBRARY = {check_cosine_scores: (WRONG, RIGHT)}


# Each wrong answer fails, in one line holding its words; each right answer passes.
test_each_wrong_answer_fails_with_its_words, test_each_right_answer_passes = library_tests(LIBRARY)

test_an_unattempted_exercise_says_so = unattempted_test(LIBRARY)
