"""Checkers for lesson 18 (the ecosystem and serving): the retriever's cosine scores.

``check_cosine_scores`` compares the learner's ``cosine_scores(queries [q, d], docs [n, d]) -> [q, n]`` with
:func:`course.rag.cosine_scores`. The cases give queries and documents very different lengths (so a plain dot
product, or normalising only one side, changes the scores), a square case (so normalising over the wrong
dimension does not raise), a single query and a single document, and one document pointing the same way as a
query (a score of exactly 1). tests/checks/test_checks_serving.py proves each mistake gets its hint.
"""
from __future__ import annotations

import torch

from course.rag import cosine_scores
from .core import CheckResult, Mistake, check_function

__all__ = ["check_cosine_scores"]


def cosine_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(0)
    docs = torch.randn(5, 8, generator=g) * torch.tensor([[0.5], [3.0], [1.0], [8.0], [0.2]])
    queries = torch.randn(3, 8, generator=g) * torch.tensor([[2.0], [0.3], [5.0]])
    same = torch.randn(4, 6, generator=g) * torch.tensor([[1.0], [4.0], [0.5], [2.0]])
    aligned_docs = torch.cat([torch.randn(3, 6, generator=g) * 3, same[:1] * 7.0])   # doc 3 = query 0, longer
    return [
        (queries, docs),                                   # [3, 8] x [5, 8]
        (same, aligned_docs),                              # square [4, 6] x [4, 6]
        (torch.randn(1, 16, generator=g) * 4, torch.randn(1, 16, generator=g) * 0.1),   # one of each
    ]


def _norm(x, dim=-1):
    return x / x.norm(dim=dim, keepdim=True)


COSINE_MISTAKES = [
    Mistake("a plain dot product: divide each vector by its length first (cosine = dot of unit vectors)",
            lambda q, d: q @ d.T),
    Mistake("only the queries were normalised: the documents need unit length too, or long documents win",
            lambda q, d: _norm(q) @ d.T),
    Mistake("only the documents were normalised: the queries need unit length too",
            lambda q, d: q @ _norm(d).T),
    Mistake("normalised over the wrong dimension: each vector's length is over its last dimension (dim=-1)",
            lambda q, d: _norm(q, 0) @ _norm(d, 0).T),
    Mistake("the scores are transposed: rows are queries, columns are documents ([q, n])",
            lambda q, d: _norm(d) @ _norm(q).T),
]


def check_cosine_scores(fn, strict: bool | None = None) -> CheckResult:
    """Check ``fn(queries [q, d], docs [n, d]) -> [q, n]``, the cosine similarity of each query with each document."""
    return check_function("cosine_scores", fn, cosine_scores, cosine_cases(), mistakes=COSINE_MISTAKES,
                          atol=1e-5, strict=strict)
