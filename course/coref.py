"""Who is "it"? A small encoder trained to resolve "it", and tools to look at its attention (lesson 10).

The task: in "The fox didn't cross the river because it was too tired ." the model must say which
noun "it" stands for (here "fox"; with "too wide" it would be "river"). The sentences come from the
seeded grammar in :mod:`course.data.sentences`; the held-out (test) split uses (referent noun,
adjective) pairs that training never showed.

The model, :class:`ItResolver`, is the course's :class:`~course.models.BertEncoder` with a linear
head at every position over the vocabulary; at the position of "it" it is trained to output the
referent noun itself. To copy the right noun's identity into the "it" position the encoder must move
information from that noun to "it" through attention, so it is worth asking which heads do so:
:func:`it_attention_accuracy` measures, for every layer and head, how often the attention row of
"it" puts more weight on the right noun than on the wrong one.

Also here: the same "it" measurement for a real pretrained BERT-family model, and the explorers of
the lesson. The pictures (bertviz adapters, the table of heads) live in :mod:`course.viz`.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course.data.sentences import ItSentence, grammar_vocabulary
from course.device import model_device, to_device
from course.models.bert import BertConfig, BertEncoder
from course.seed import step_seed
from course.tokenizers import SpecialWordTokenizer
from course.utils import eval_mode

__all__ = [
    "coref_tokenizer", "ItResolver", "CorefBatch", "coref_batch", "coref_batches", "coref_loss",
    "coref_accuracy", "resolve_it", "encoder_attentions", "referent_attention_accuracy",
    "it_attention_accuracy", "rollout_it_accuracy", "best_heads",
    "pretrained_it_attention", "word_positions", "coref_explorer", "pretrained_explorer", "pretrained_it_leans",
]


# ----------------------------------------------------------------------------------------------
# Data and model
# ----------------------------------------------------------------------------------------------

def coref_tokenizer() -> SpecialWordTokenizer:
    """A word tokenizer over every word the sentence grammar can produce, BERT's specials first."""
    return SpecialWordTokenizer(grammar_vocabulary())


class ItResolver(nn.Module):
    """A :class:`BertEncoder` plus a linear head over the vocabulary at every position.

    ``forward(ids [b, s], attention_mask [b, s] | None, need_weights=False) -> logits [b, s, vocab]``
    (and, with ``need_weights=True``, the list of per-layer attention weights ``[b, heads, s, s]``).
    Only the logits at the position of "it" are trained: they must name the referent noun.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.encoder = BertEncoder(config)
        self.head = nn.Linear(config.d_model, config.vocab_size)

    def forward(self, ids: Tensor, attention_mask: Tensor | None = None, need_weights: bool = False):
        if need_weights:
            hidden, weights = self.encoder(ids, attention_mask, need_weights=True)
            return self.head(hidden), weights
        return self.head(self.encoder(ids, attention_mask))


@dataclass
class CorefBatch:
    """``ids, mask [b, s]``; ``it_pos, target, right_pos, wrong_pos, adj_pos [b]`` (positions count [CLS] as 0)."""

    ids: Tensor
    mask: Tensor
    it_pos: Tensor
    target: Tensor
    right_pos: Tensor
    wrong_pos: Tensor
    adj_pos: Tensor


def _wrong_index(s: ItSentence) -> int:
    """Index (in ``s.words``) of the noun that "it" does not refer to."""
    other = s.place if s.referent == s.animal else s.animal
    candidates = [i for i, w in enumerate(s.words[: s.it_index]) if w == other and i != s.referent_index]
    return candidates[-1] if candidates else 1


def coref_batch(sentences: Sequence[ItSentence], tokenizer: SpecialWordTokenizer) -> CorefBatch:
    """Encode ``sentences`` as ``[CLS] words [SEP]`` (padded) with the positions and target the task needs."""
    if not sentences:
        raise ValueError("coref_batch needs at least one sentence")
    ids, mask = tokenizer.batch([" ".join(s.words) for s in sentences])
    it_pos = torch.tensor([s.it_index + 1 for s in sentences])
    right = torch.tensor([s.referent_index + 1 for s in sentences])
    wrong = torch.tensor([_wrong_index(s) + 1 for s in sentences])
    target = torch.tensor([tokenizer.stoi.get(s.referent, tokenizer.unk_id) for s in sentences])
    adj = torch.tensor([s.words.index(s.adjective, s.it_index) + 1 for s in sentences])
    return CorefBatch(ids, mask, it_pos, target, right, wrong, adj)


def coref_batches(sentences: Sequence[ItSentence], tokenizer: SpecialWordTokenizer, batch_size: int,
                  seed: int = 0):
    """``next_batch(step) -> CorefBatch`` of ``batch_size`` sentences drawn at random (same step, same batch)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    pool = list(sentences)

    def next_batch(step: int) -> CorefBatch:
        rng = random.Random(step_seed(seed, step))
        return coref_batch([pool[rng.randrange(len(pool))] for _ in range(batch_size)], tokenizer)

    return next_batch


def _logits_at_it(model: nn.Module, batch: CorefBatch) -> Tensor:
    batch = to_device(batch, model_device(model))
    logits = model(batch.ids, batch.mask)  # [b, s, vocab]
    return logits[torch.arange(len(batch.ids), device=logits.device), batch.it_pos]  # [b, vocab]


def coref_loss(model: nn.Module, batch: CorefBatch) -> Tensor:
    """Cross-entropy of the word predicted at "it" against the referent noun (a scalar), on the model's device."""
    return F.cross_entropy(_logits_at_it(model, batch), batch.target.to(model_device(model)))


@torch.no_grad()
def coref_accuracy(model: nn.Module, tokenizer: SpecialWordTokenizer, sentences: Sequence[ItSentence],
                   batch_size: int = 256) -> float:
    """Share of ``sentences`` where the word predicted at "it" is exactly the referent noun."""
    correct = 0
    with eval_mode(model):
        for start in range(0, len(sentences), batch_size):
            batch = coref_batch(sentences[start:start + batch_size], tokenizer)
            correct += int((_logits_at_it(model, batch).argmax(-1).cpu() == batch.target).sum())
    return correct / len(sentences)


@torch.no_grad()
def resolve_it(model: nn.Module, tokenizer: SpecialWordTokenizer, words: Sequence[str]) -> tuple[str, float] | None:
    """The model's answer for the first "it" in ``words``: ``(word, probability)``, or None if there is no "it"."""
    lowered = [w.lower() for w in words]
    if "it" not in lowered:
        return None
    ids, mask = tokenizer.batch([" ".join(lowered)])
    with eval_mode(model):
        probs = model(ids, mask)[0, lowered.index("it") + 1].softmax(-1)
    p, i = probs.max(-1)
    return tokenizer.itos[int(i)], float(p)


# ----------------------------------------------------------------------------------------------
# Where does "it" look?
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def encoder_attentions(encoder: BertEncoder, ids: Tensor, mask: Tensor | None = None) -> Tensor:
    """Every layer's attention weights: ``ids [b, s] -> [layers, b, heads, s, s]`` (in eval mode, restored after)."""
    with eval_mode(encoder):
        _, weights = encoder(ids, mask, need_weights=True)
    return torch.stack(weights)


def referent_attention_accuracy(attentions: Tensor, it_pos: Tensor, right_pos: Tensor, wrong_pos: Tensor,
                                among: str = "nouns") -> Tensor:
    """For every layer and head, the share of examples whose "it" attends most to the right noun.

    ``attentions [layers, b, heads, s, s]``; ``it_pos, right_pos, wrong_pos [b]`` -> ``[layers, heads]``.

    ``among="nouns"``: the weight on the right noun beats the weight on the wrong noun (chance: 0.5).
    ``among="all"``: the right noun has the largest weight of all tokens in the row (stricter).
    """
    if attentions.dim() != 5 or attentions.shape[-1] != attentions.shape[-2]:
        raise ValueError(f"attentions must be [layers, batch, heads, seq, seq], got {tuple(attentions.shape)}")
    b = attentions.shape[1]
    for name, t in (("it_pos", it_pos), ("right_pos", right_pos), ("wrong_pos", wrong_pos)):
        if t.shape != (b,):
            raise ValueError(f"{name} must have shape ({b},) to match attentions {tuple(attentions.shape)}, "
                             f"got {tuple(t.shape)}")
    if among not in ("nouns", "all"):
        raise ValueError(f"among must be 'nouns' or 'all', got {among!r}")
    rows = attentions.transpose(0, 1)[torch.arange(b), :, :, it_pos]  # [b, layers, heads, s]: the row of "it"

    def weight_at(pos: Tensor) -> Tensor:
        return rows.gather(-1, pos.view(b, 1, 1, 1).expand(*rows.shape[:3], 1)).squeeze(-1)  # [b, layers, heads]

    if among == "nouns":
        hit = weight_at(right_pos) > weight_at(wrong_pos)
    else:
        hit = rows.argmax(-1) == right_pos.view(b, 1, 1)
    return hit.float().mean(0)  # [layers, heads]


@torch.no_grad()
def it_attention_accuracy(model: ItResolver | BertEncoder, tokenizer: SpecialWordTokenizer,
                          sentences: Sequence[ItSentence], among: str = "nouns", query: str = "it") -> Tensor:
    """``[layers, heads]``: how often each head's attention from "it" favours the right noun.

    ``among``: see :func:`referent_attention_accuracy` (``"nouns"``: right noun beats wrong noun,
    chance 0.5; ``"all"``: right noun is the row's maximum). ``query="adjective"`` measures the row of
    the adjective ("tired", "wide") instead of the row of "it".
    """
    if query not in ("it", "adjective"):
        raise ValueError(f"query must be 'it' or 'adjective', got {query!r}")
    encoder = model.encoder if isinstance(model, ItResolver) else model
    batch = coref_batch(sentences, tokenizer)
    weights = encoder_attentions(encoder, batch.ids, batch.mask)
    rows = batch.it_pos if query == "it" else batch.adj_pos
    return referent_attention_accuracy(weights, rows, batch.right_pos, batch.wrong_pos, among)


@torch.no_grad()
def rollout_it_accuracy(model: ItResolver | BertEncoder, tokenizer: SpecialWordTokenizer,
                        sentences: Sequence[ItSentence], among: str = "nouns") -> Tensor:
    """``[layers]``: the same measure on attention rollout (all heads, layers chained up to each layer).

    Rollout counts indirect paths: "it" looking at "tired", which looked at "fox" one layer earlier.
    """
    from course.viz import attention_rollout

    encoder = model.encoder if isinstance(model, ItResolver) else model
    batch = coref_batch(sentences, tokenizer)
    weights = encoder_attentions(encoder, batch.ids, batch.mask)  # [layers, b, heads, s, s]
    rolled = torch.stack([attention_rollout(weights[:, i], cumulative=True) for i in range(weights.shape[1])], 1)
    return referent_attention_accuracy(rolled.unsqueeze(2), batch.it_pos, batch.right_pos, batch.wrong_pos,
                                       among).squeeze(-1)


def best_heads(scores: Tensor, k: int = 3) -> list[tuple[int, int, float]]:
    """The ``k`` best (layer, head, score) of a ``[layers, heads]`` table, best first (ties: lower layer, head)."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be [layers, heads], got {tuple(scores.shape)}")
    flat = [(-float(scores[l, h]), l, h) for l in range(scores.shape[0]) for h in range(scores.shape[1])]
    return [(l, h, -s) for s, l, h in sorted(flat)[:k]]


# ----------------------------------------------------------------------------------------------
# A real pretrained model on the two classic sentences
# ----------------------------------------------------------------------------------------------

def word_positions(tokens: Sequence[str], word: str) -> list[int]:
    """Positions of ``word`` among WordPiece ``tokens`` (whole-token matches, case-insensitive)."""
    return [i for i, t in enumerate(tokens) if t.lower() == word.lower()]


@torch.no_grad()
def pretrained_it_attention(encoder: BertEncoder, tokenizer, text: str, nouns: Sequence[str] = ("animal", "street")
                            ) -> tuple[list[str], Tensor, Tensor]:
    """Attention from "it" to each noun in a real BERT-family model (our encoder holding its weights).

    -> ``(tokens, attentions [layers, 1, heads, s, s], to_nouns [len(nouns), layers, heads])`` where
    ``to_nouns[n, l, h]`` is the weight that head ``h`` of layer ``l`` gives to ``nouns[n]`` from "it".
    """
    batch = tokenizer([text], return_tensors="pt")
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    its = word_positions(tokens, "it")
    if not its:
        raise ValueError(f"no 'it' token in {text!r}")
    with eval_mode(encoder):
        _, weights = encoder(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"), need_weights=True)
    att = torch.stack(weights)  # [layers, 1, heads, s, s]
    rows = att[:, 0, :, its[0], :]  # [layers, heads, s]
    to_nouns = []
    for noun in nouns:
        where = word_positions(tokens, noun)
        if not where:
            raise ValueError(f"{noun!r} is not a single token in {text!r}: {tokens}")
        to_nouns.append(rows[..., where[0]])
    return tokens, att, torch.stack(to_nouns)


# ----------------------------------------------------------------------------------------------
# Explorers for the lesson
# ----------------------------------------------------------------------------------------------

def coref_explorer(model: ItResolver, tokenizer: SpecialWordTokenizer, sentence: str = "", **kw):
    """A :class:`course.viz.ModelExplorer` on the trained "it" model: its attention, live, and its answer."""
    from course.viz import model_explorer

    words_known = [w for w in tokenizer.itos[tokenizer.num_special:]]

    @torch.no_grad()
    def run(words: list[str]) -> tuple[list[str], Tensor]:
        lowered = [w.lower() for w in words]
        ids, mask = tokenizer.batch([" ".join(lowered)])
        weights = encoder_attentions(model.encoder, ids, mask)  # [layers, 1, heads, s, s]
        return ["[CLS]", *lowered, "[SEP]"], weights[:, 0]

    def describe(words: list[str]) -> str:
        found = resolve_it(model, tokenizer, words)
        if found is None:
            return "No 'it' in this sentence: the model's answer appears when there is one."
        word, p = found
        return f"The model says <b>it = {word}</b> (probability {p:.2f})."

    return model_explorer(run, sentence=sentence, max_tokens=model.config.context_length - 2,
                          vocab=words_known, describe_fn=describe, **kw)


def pretrained_explorer(encoder: BertEncoder, tokenizer, sentence: str = "", max_tokens: int = 30, **kw):
    """A :class:`course.viz.ModelExplorer` on a real BERT-family model (WordPiece tokens, any English words)."""
    from course.viz import model_explorer

    @torch.no_grad()
    def run(words: list[str]) -> tuple[list[str], Tensor]:
        batch = tokenizer([" ".join(words)], return_tensors="pt")
        if batch["input_ids"].shape[1] > encoder.config.context_length:
            raise ValueError(f"{batch['input_ids'].shape[1]} WordPiece tokens; the model reads at most "
                             f"{encoder.config.context_length}")
        with eval_mode(encoder):
            _, weights = encoder(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                                 need_weights=True)
        return tokenizer.convert_ids_to_tokens(batch["input_ids"][0]), torch.stack(weights)[:, 0]

    return model_explorer(run, sentence=sentence, max_tokens=max_tokens, **kw)


@torch.no_grad()
def pretrained_it_leans(encoder: BertEncoder, tokenizer, template: str = "The animal didn't cross the street because it was too {}.",
                        place_adjective: str = "wide", animal_adjective: str = "tired") -> dict:
    """The classic pair of sentences through a real model: which heads send "it" to the right noun?

    Returns a dict of ``[layers, heads]`` tensors and summaries:
    ``lean_place`` = weight(street) - weight(animal) from "it" in the "wide" sentence (positive: leans to street);
    ``lean_animal`` = weight(animal) - weight(street) in the "tired" sentence (positive: leans to animal);
    ``shift`` = how much more weight goes to street (relative to animal) when the adjective changes from
    "tired" to "wide" (the part of the attention that depends on the meaning);
    ``both`` = heads that lean the right way in both sentences; plus ``tokens`` and the attentions.
    """
    out = {}
    for key, adjective in (("place", place_adjective), ("animal", animal_adjective)):
        tokens, att, to = pretrained_it_attention(encoder, tokenizer, template.format(adjective))
        out[f"tokens_{key}"], out[f"attentions_{key}"], out[f"to_nouns_{key}"] = tokens, att, to
    lean_place = out["to_nouns_place"][1] - out["to_nouns_place"][0]
    lean_animal = out["to_nouns_animal"][0] - out["to_nouns_animal"][1]
    out["lean_place"], out["lean_animal"] = lean_place, lean_animal
    out["shift"] = lean_place + lean_animal
    both = (lean_place > 0) & (lean_animal > 0)
    out["both"] = [(int(l), int(h)) for l, h in both.nonzero()]
    return out
