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
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course.data.sentences import (ANIMAL_ADJECTIVES, ANIMALS, PLACE_ADJECTIVES, PLACES, ItSentence, grammar_vocabulary,
                                   is_test_combo, it_sentence)
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
    "ROAD_SOURCES", "ROADS", "two_layer_roads", "coref_roads",
    "head_outputs", "head_means", "ablated_heads", "head_ablation_accuracy",
    "minimal_pairs", "PATCH_SITES", "patch_layers", "activation_at", "patched_logits", "PatchingResult",
    "flipped_share", "logit_difference", "activation_patching",
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


# ----------------------------------------------------------------------------------------------
# Roads through two layers: which attention paths can carry a word to the answer at "it"
# ----------------------------------------------------------------------------------------------

#: the sources whose roads :func:`coref_roads` measures, and the intermediate tokens a two-step road passes
ROAD_SOURCES = ("right noun", "wrong noun", "adjective")
ROADS = ("layer 0: it reads the word", "layer 1: it reads the word", "two hops via the adjective",
         "two hops via the right noun", "two hops via the wrong noun", "two hops via it", "two hops via other tokens")


def _role_positions(batch: CorefBatch) -> dict[str, Tensor]:
    return {"right noun": batch.right_pos, "wrong noun": batch.wrong_pos, "adjective": batch.adj_pos, "it": batch.it_pos}


def two_layer_roads(attentions: Tensor, query: Tensor, source: Tensor, via: Sequence[Tensor]) -> Tensor:
    """The attention roads from ``source`` to the last layer's row of ``query`` in a two-layer model.

    ``attentions [2, b, heads, s, s]`` (heads are averaged), ``query, source [b]`` positions and ``via``, a
    list of ``[b]`` positions naming intermediate tokens. Returns ``[b, 3 + len(via)]``:

    * ``A0[q, src]``: layer 0's row of the query reads the source (the residual stream then carries it up);
    * ``A1[q, src]``: layer 1's row of the query reads the source's position (its own word, kept there by
      the residual stream);
    * ``A1[q, m] * A0[m, src]`` for each ``m`` in ``via``: two hops, the source read by ``m`` in layer 0,
      then ``m`` read by the query in layer 1;
    * the two-hop weight through every other position (``sum_m A1[q, m] A0[m, src]`` minus the named ones;
      positions named twice in ``via`` would be counted twice, so name each once).
    """
    if attentions.dim() != 5 or attentions.shape[0] != 2 or attentions.shape[-1] != attentions.shape[-2]:
        raise ValueError(f"attentions must be [2 layers, batch, heads, seq, seq], got {tuple(attentions.shape)}")
    b = attentions.shape[1]
    for name, t in (("query", query), ("source", source), *((f"via[{i}]", v) for i, v in enumerate(via))):
        if t.shape != (b,):
            raise ValueError(f"{name} must have shape ({b},) to match attentions {tuple(attentions.shape)}, "
                             f"got {tuple(t.shape)}")
    a0, a1 = attentions.float().mean(2)  # each [b, s, s]
    rows = torch.arange(b, device=a0.device)
    hops = a1[rows, query] * a0[rows, :, source]  # [b, s]: through each intermediate position m
    named = [hops[rows, m] for m in via]
    others = hops.sum(-1) - sum(named, torch.zeros(b, device=a0.device))
    return torch.stack([a0[rows, query, source], a1[rows, query, source], *named, others], -1)


@torch.no_grad()
def coref_roads(model: ItResolver | BertEncoder, tokenizer: SpecialWordTokenizer,
                sentences: Sequence[ItSentence]) -> Tensor:
    """``[2 readings, 3 sources, 7 roads]``: the mean weight of each road (:data:`ROADS`) from each source
    (:data:`ROAD_SOURCES`: the right noun, the wrong noun, the adjective) to the last layer's row of "it",
    for the animal reading (index :data:`~course.data.sentences.ANIMAL_LABEL`) and the place reading.

    Only layer 1's row of "it" feeds the answer, so every road ends there; see :func:`two_layer_roads`.
    """
    encoder = model.encoder if isinstance(model, ItResolver) else model
    if encoder.config.num_layers != 2:
        raise ValueError(f"the roads are written out for two layers; this model has {encoder.config.num_layers}")
    batch = coref_batch(sentences, tokenizer)
    weights = encoder_attentions(encoder, batch.ids.to(model_device(encoder)), batch.mask.to(model_device(encoder)))
    weights = weights.cpu()
    roles = _role_positions(batch)
    via = [roles["adjective"], roles["right noun"], roles["wrong noun"], roles["it"]]
    labels = torch.tensor([s.label for s in sentences])
    out = torch.zeros(2, len(ROAD_SOURCES), len(ROADS))
    for j, name in enumerate(ROAD_SOURCES):
        roads = two_layer_roads(weights, batch.it_pos, roles[name], via)  # [b, roads]
        for reading in (0, 1):
            chosen = labels == reading
            if bool(chosen.any()):
                out[reading, j] = roads[chosen].mean(0)
    return out


# ----------------------------------------------------------------------------------------------
# Causal evidence: head ablation
# ----------------------------------------------------------------------------------------------

def _attention_modules(model: ItResolver | BertEncoder) -> list[nn.Module]:
    encoder = model.encoder if isinstance(model, ItResolver) else model
    return [block.self_attn for block in encoder.blocks]


def _check_heads(model: ItResolver | BertEncoder, heads: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    layers = _attention_modules(model)
    checked = []
    for item in heads:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(i, int) for i in item)):
            raise ValueError(f"a head is a (layer, head) pair of ints, got {item!r}")
        layer, head = item
        if not 0 <= layer < len(layers) or not 0 <= head < layers[layer].num_heads:
            raise ValueError(f"head ({layer}, {head}) does not exist: this model has layers 0 to {len(layers) - 1} "
                             f"and heads 0 to {layers[0].num_heads - 1}")
        checked.append((layer, head))
    return checked


@torch.no_grad()
def head_outputs(model: ItResolver | BertEncoder, ids: Tensor, mask: Tensor | None = None) -> Tensor:
    """What every head writes before the output projection: ``ids [b, s] -> [layers, b, s, heads, d_head]``.

    Head ``h``'s output at a position is its attention-weighted sum of values, ``sum_j A[i, j] v_j``; the
    attention's output projection then mixes the heads (``out_proj`` sees them side by side).
    """
    encoder = model.encoder if isinstance(model, ItResolver) else model
    kept: list[Tensor] = []
    hooks = [m.out_proj.register_forward_pre_hook(lambda _m, args: kept.append(args[0].detach()))
             for m in _attention_modules(model)]
    try:
        with eval_mode(encoder):
            encoder(ids, mask)
    finally:
        for hook in hooks:
            hook.remove()
    heads = _attention_modules(model)[0].num_heads
    return torch.stack([k.unflatten(-1, (heads, -1)) for k in kept])


@torch.no_grad()
def head_means(model: ItResolver | BertEncoder, tokenizer: SpecialWordTokenizer,
               sentences: Sequence[ItSentence]) -> Tensor:
    """Each head's mean output at each position over ``sentences``: ``[layers, seq, heads, d_head]``.

    ``seq`` is the longest sentence's length; a position counts only the sentences that reach it (padding
    is left out). These are the values that mean ablation puts in place of a head's output.
    """
    if not sentences:
        raise ValueError("head_means needs at least one sentence")
    batch = coref_batch(sentences, tokenizer)
    device = model_device(model)
    outs = head_outputs(model, batch.ids.to(device), batch.mask.to(device)).cpu()  # [layers, b, s, heads, dh]
    real = batch.mask.float()[None, :, :, None, None]  # [1, b, s, 1, 1]
    return (outs * real).sum(1) / real.sum(1).clamp_min(1.0)


def _replace_heads(module: nn.Module, layer: int, heads: list[int], means: Tensor | None):
    """A forward pre-hook for ``module.out_proj`` that overwrites ``heads``' part of its input."""

    def replace(_out_proj, args):
        x = args[0].unflatten(-1, (module.num_heads, module.d_head)).clone()  # [b, s, heads, d_head]
        if means is None:
            x[:, :, heads] = 0.0
        else:
            if x.shape[1] > means.shape[1]:
                raise ValueError(f"the means cover {means.shape[1]} positions, the batch has {x.shape[1]}")
            x[:, :, heads] = means[layer, : x.shape[1], heads].to(x)
        return (x.flatten(-2), *args[1:])

    return replace


@contextmanager
def ablated_heads(model: ItResolver | BertEncoder, heads: Sequence[tuple[int, int]], means: Tensor | None = None):
    """``with ablated_heads(model, [(layer, head), ...], means=None):`` the chosen heads' outputs are replaced.

    ``means=None``: zero ablation (the head writes zeros before ``out_proj``, so ``out_proj`` adds only its
    bias for that head's part). ``means [layers, seq, heads, d_head]`` (from :func:`head_means`): mean
    ablation, the head writes its dataset mean at each position instead. Done with forward pre-hooks on
    each attention's ``out_proj``, removed on exit, so the model itself is never changed.
    """
    heads = _check_heads(model, heads)
    modules = _attention_modules(model)
    if means is not None:
        m = modules[0]
        if means.dim() != 4 or means.shape[0] != len(modules) or tuple(means.shape[2:]) != (m.num_heads, m.d_head):
            raise ValueError(f"means must be [layers={len(modules)}, seq, heads={m.num_heads}, d_head={m.d_head}] "
                             f"(from head_means), got {tuple(means.shape)}")
    hooks = []
    try:
        for layer in sorted({l for l, _ in heads}):
            chosen = [h for l, h in heads if l == layer]
            hooks.append(modules[layer].out_proj.register_forward_pre_hook(
                _replace_heads(modules[layer], layer, chosen, means)))
        yield model
    finally:
        for hook in hooks:
            hook.remove()


@torch.no_grad()
def head_ablation_accuracy(model: ItResolver, tokenizer: SpecialWordTokenizer, sentences: Sequence[ItSentence],
                           means: Tensor | None = None) -> Tensor:
    """``[layers, heads]``: the accuracy on ``sentences`` with each head ablated alone (the others intact).

    ``means=None`` zero-ablates; ``means`` from :func:`head_means` mean-ablates (see :class:`ablated_heads`).
    """
    modules = _attention_modules(model)
    table = torch.zeros(len(modules), modules[0].num_heads)
    for layer in range(table.shape[0]):
        for head in range(table.shape[1]):
            with ablated_heads(model, [(layer, head)], means):
                table[layer, head] = coref_accuracy(model, tokenizer, sentences)
    return table


# ----------------------------------------------------------------------------------------------
# Causal evidence: activation patching on minimal pairs
# ----------------------------------------------------------------------------------------------

def minimal_pairs(n: int, seed: int = 0, verb: str = "didn't cross") -> list[tuple[ItSentence, ItSentence]]:
    """``n`` pairs ``(animal reading, place reading)`` that differ in the adjective alone.

    "The fox didn't cross the river because it was too tired ." / "... too wide ." Same animal, place and
    verb, so every position holds the same word in both except the adjective's. Each sentence's (referent,
    adjective) pair is a held-out one (:func:`~course.data.sentences.is_test_combo`): training never showed it.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    rng = random.Random(f"pairs-{seed}")
    pairs = []
    while len(pairs) < n:
        animal, place = rng.choice(ANIMALS), rng.choice(PLACES)
        tired = [a for a in ANIMAL_ADJECTIVES if is_test_combo(animal, a)]
        wide = [a for a in PLACE_ADJECTIVES if is_test_combo(place, a)]
        if tired and wide:
            pairs.append((it_sentence(animal, place, rng.choice(tired), verb),
                          it_sentence(animal, place, rng.choice(wide), verb)))
    return pairs


#: where :func:`patched_logits` can patch: the residual stream before block ``l`` (``l = layers``: after the
#: last block), or the output of block ``l``'s attention sublayer (before its residual add and norm)
PATCH_SITES = ("residual", "attention")


def _site_modules(model: ItResolver, site: str, layer: int) -> tuple[nn.Module, bool]:
    """The module whose input (``True``) or output (``False``) is the activation at (site, layer)."""
    blocks = model.encoder.blocks
    if site == "residual":
        if not 0 <= layer <= len(blocks):
            raise ValueError(f"the residual stream has layers 0 to {len(blocks)} (0: the embeddings, "
                             f"{len(blocks)}: after the last block), got {layer}")
        return (blocks[layer], True) if layer < len(blocks) else (blocks[-1], False)
    if site == "attention":
        if not 0 <= layer < len(blocks):
            raise ValueError(f"the attention sublayers are layers 0 to {len(blocks) - 1}, got {layer}")
        return blocks[layer].self_attn, False
    raise ValueError(f"site must be one of {PATCH_SITES}, got {site!r}")


def patch_layers(model: ItResolver, site: str) -> int:
    """How many layers ``site`` has: ``num_layers + 1`` residual streams, ``num_layers`` attention outputs."""
    return model.config.num_layers + (1 if site == "residual" else 0)


@torch.no_grad()
def activation_at(model: ItResolver, batch: CorefBatch, site: str, layer: int) -> Tensor:
    """The activation ``[b, s, d_model]`` at (``site``, ``layer``) when ``model`` reads ``batch``."""
    module, is_input = _site_modules(model, site, layer)
    kept: list[Tensor] = []

    def keep(_m, args, output=None):
        kept.append((args[0] if is_input else output).detach())

    hook = module.register_forward_pre_hook(keep) if is_input else module.register_forward_hook(keep)
    try:
        with eval_mode(model):
            _logits_at_it(model, batch)
    finally:
        hook.remove()
    return kept[0]


@torch.no_grad()
def patched_logits(model: ItResolver, batch: CorefBatch, site: str, layer: int, positions: Sequence[int] | None,
                   source: Tensor) -> Tensor:
    """Logits at "it" ``[b, vocab]`` when ``batch`` runs with the activation at (``site``, ``layer``) replaced,
    at ``positions`` (``None``: all), by ``source [b, s, d_model]`` (from :func:`activation_at` on another batch
    whose positions line up, e.g. the other halves of :func:`minimal_pairs`)."""
    module, is_input = _site_modules(model, site, layer)
    batch = to_device(batch, model_device(model))
    if source.shape[:2] != batch.ids.shape:
        raise ValueError(f"source must be [batch, seq, d_model] with batch, seq = {tuple(batch.ids.shape)}, "
                         f"got {tuple(source.shape)}")
    where = slice(None) if positions is None else list(positions)

    def swap(x: Tensor) -> Tensor:
        x = x.clone()
        x[:, where] = source[:, where].to(x)
        return x

    if is_input:
        hook = module.register_forward_pre_hook(lambda _m, args: (swap(args[0]), *args[1:]))
    else:
        hook = module.register_forward_hook(lambda _m, _args, output: swap(output))
    try:
        with eval_mode(model):
            return _logits_at_it(model, batch)
    finally:
        hook.remove()


@dataclass
class PatchingResult:
    """What :func:`activation_patching` measured.

    ``flipped [layers, seq]``: the mean over pairs of the share of the logit difference that flips,
    ``(clean - patched) / (clean - corrupted)`` (0: the clean answer, 1: fully the corrupted one);
    ``per_pair [layers, seq, pairs]``; ``clean, corrupted [pairs]``: logit(animal) - logit(place) at "it" in
    the two runs; ``tokens``: the words of the first pair's clean sentence, with the varying words named.
    """

    site: str
    flipped: Tensor
    per_pair: Tensor
    clean: Tensor
    corrupted: Tensor
    tokens: list[str]


def flipped_share(clean: Tensor, corrupted: Tensor, patched: Tensor) -> Tensor:
    """How much of the answer a patch flips: ``(clean - patched) / (clean - corrupted)``, elementwise.

    ``clean, corrupted, patched``: the logit difference (any shape, the same for all three) of the clean
    run, the corrupted run and the patched run. 0: the patch changed nothing; 1: the patched run gives the
    corrupted answer's logit difference; in between, part of the way; outside [0, 1], beyond either end.
    """
    return (clean - patched) / (clean - corrupted)


def logit_difference(logits: Tensor, a_ids: Tensor, b_ids: Tensor) -> Tensor:
    """``logits [b, vocab]`` -> ``logits[a] - logits[b]`` per row, ``[b]``."""
    rows = torch.arange(len(logits), device=logits.device)
    return logits[rows, a_ids.to(logits.device)] - logits[rows, b_ids.to(logits.device)]


@torch.no_grad()
def activation_patching(model: ItResolver, tokenizer: SpecialWordTokenizer,
                        pairs: Sequence[tuple[ItSentence, ItSentence]], site: str = "residual") -> PatchingResult:
    """Run each pair's first (clean) sentence with the second (corrupted) sentence's activation patched in
    at one (layer, position) at a time, for every layer of ``site`` and every position.

    The measure is the logit difference at "it", logit(animal) - logit(place): positive in the clean run
    ("too tired"), negative in the corrupted one ("too wide"). The pairs must line up position by position.
    """
    if not pairs:
        raise ValueError("activation_patching needs at least one pair")
    clean = coref_batch([c for c, _ in pairs], tokenizer)
    corrupt = coref_batch([w for _, w in pairs], tokenizer)
    if clean.ids.shape != corrupt.ids.shape or int((clean.ids != corrupt.ids).sum(1).max()) > 1:
        raise ValueError("each pair must be two sentences of the same length that differ in one word")
    animal = torch.tensor([tokenizer.stoi[c.animal] for c, _ in pairs])
    place = torch.tensor([tokenizer.stoi[c.place] for c, _ in pairs])
    with eval_mode(model):
        clean_diff = logit_difference(_logits_at_it(model, clean), animal, place).cpu()
        corrupt_diff = logit_difference(_logits_at_it(model, corrupt), animal, place).cpu()
    layers, seq = patch_layers(model, site), clean.ids.shape[1]
    per_pair = torch.zeros(layers, seq, len(pairs))
    for layer in range(layers):
        source = activation_at(model, corrupt, site, layer)
        for pos in range(seq):
            patched = logit_difference(patched_logits(model, clean, site, layer, [pos], source), animal, place).cpu()
            per_pair[layer, pos] = flipped_share(clean_diff, corrupt_diff, patched)
    first = pairs[0][0]
    tokens = ["[CLS]", *first.words, "[SEP]"]
    for word, name in ((first.animal, "ANIMAL"), (first.place, "PLACE"), (first.adjective, "ADJ")):
        tokens[first.words.index(word) + 1] = name
    return PatchingResult(site, per_pair.mean(-1), per_pair, clean_diff, corrupt_diff, tokens)
