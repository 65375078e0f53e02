"""Lesson 18: retrieval-augmented generation, offline.

The documents are short notes about Vellmoor, a river town invented for this course
(``course/data/documents/*.txt``: a title line, then a paragraph), so no language model can know their facts.
MiniLM (lesson 07's sentence encoder) embeds the documents and a question; :func:`cosine_scores` ranks the
documents; :func:`top_k` keeps the best ``k``; :func:`rag_prompt` puts their text into the prompt that a chat
model (SmolLM2, lesson 12) answers.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["Document", "DOCUMENTS_DIR", "load_documents", "QUESTIONS", "cosine_scores", "top_k", "Retriever",
           "rag_prompt", "hit_rate"]

DOCUMENTS_DIR = Path(__file__).resolve().parent / "data" / "documents"


@dataclass(frozen=True)
class Document:
    """One note: ``name`` (its file's stem), ``title`` (first line) and ``text`` (the paragraph)."""

    name: str
    title: str
    text: str


def load_documents(folder: str | Path | None = None) -> list[Document]:
    """The course's documents (or the ``.txt`` files of ``folder``), sorted by file name."""
    folder = Path(folder) if folder is not None else DOCUMENTS_DIR
    docs = []
    for path in sorted(folder.glob("*.txt")):
        title, _, text = path.read_text(encoding="utf-8").strip().partition("\n")
        docs.append(Document(path.stem, title.strip(), " ".join(text.split())))
    if not docs:
        raise FileNotFoundError("no .txt documents found in the course's documents folder")
    return docs


#: questions whose answers are only in the documents: (question, file stem holding the answer, answer words)
QUESTIONS: list[tuple[str, str, str]] = [
    ("How many brass rings does a cart pay to cross the Copper Bridge in Vellmoor?", "01_bridge", "three"),
    ("On which day of the week is the Vellmoor market held?", "02_market", "Thursday"),
    ("What does the winner of Vellmoor's Festival of Kites have to do the next morning?", "03_festival", "bread"),
    ("For how many days can you borrow a book from the Vellmoor library?", "04_library", "nineteen"),
    ("Who is the mayor of Vellmoor?", "05_mayor", "Brannock"),
    ("What must every pupil of the Vellmoor school plant in their final year?", "06_school", "willow"),
    ("How many times is the Grey Bell rung when fog hides Vellmoor's clock tower?", "07_weather", "three"),
    ("What dish is Vellmoor known for?", "08_food", "dumplings"),
]


def cosine_scores(queries: Tensor, docs: Tensor) -> Tensor:
    """Cosine similarity of each query with each document: ``queries [q, d]`` (or ``[d]``), ``docs [n, d]`` ->
    ``[q, n]`` (or ``[n]``). Vectors are normalised here, so unnormalised embeddings are fine."""
    if queries.shape[-1] != docs.shape[-1]:
        raise ValueError(f"queries have size {queries.shape[-1]} and documents {docs.shape[-1]}: they must match")
    q = torch.nn.functional.normalize(queries, dim=-1)
    return q @ torch.nn.functional.normalize(docs, dim=-1).T


def top_k(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` highest scores along the last dimension, best first: ``[..., n] -> [..., k]``."""
    if not 1 <= k <= scores.shape[-1]:
        raise ValueError(f"k must be between 1 and the number of documents ({scores.shape[-1]}), got {k}")
    return scores.topk(k, dim=-1).indices


class Retriever:
    """Embeds documents once with ``embed(texts) -> [n, d]``; :meth:`search` returns the best ``k`` for a question."""

    def __init__(self, documents: Sequence[Document], embed: Callable[[Sequence[str]], Tensor]):
        self.documents, self.embed = list(documents), embed
        self.vectors = embed([f"{d.title}. {d.text}" for d in self.documents])    # [n, d]

    def search(self, question: str, k: int = 2) -> list[tuple[Document, float]]:
        """The ``k`` documents most similar to ``question``, best first, with their cosine scores."""
        scores = cosine_scores(self.embed([question])[0], self.vectors)            # [n]
        return [(self.documents[i], float(scores[i])) for i in top_k(scores, k).tolist()]


def rag_prompt(question: str, documents: Sequence[Document]) -> str:
    """The user message a chat model gets: the retrieved notes, then the question."""
    notes = "\n".join(f"- {d.title}: {d.text}" for d in documents)
    return f"Answer the question using these notes.\nNotes:\n{notes}\n\nQuestion: {question}"


def hit_rate(retriever: Retriever, questions: Sequence[tuple[str, str, str]], k: int) -> float:
    """Share of questions whose answering document is among the top ``k`` retrieved."""
    hits = sum(any(d.name == source for d, _ in retriever.search(q, k)) for q, source, _ in questions)
    return hits / len(questions)
