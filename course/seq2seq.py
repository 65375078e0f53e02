"""Decoding with an encoder-decoder: greedy search, beam search, exact match, cross-attention maps.

All functions take a model with the :class:`course.models.EncoderDecoder` interface
(``encode(src)``, ``decode(tgt_in, memory, src, need_weights)``, ``config`` with ``context_length``,
``pad_id``) and source ids ``src [batch, s]`` padded with ``<pad>``; outputs are lists of token ids
without ``<bos>`` and ``<eos>``. The model's ``<bos>`` and ``<eos>`` ids default to the course
vocabulary's (1 and 2).

* :func:`greedy_decode` is batched: every step appends each row's most likely next token.
* :func:`beam_search` is batched too: all examples' beams go through the decoder together, and
  :func:`beam_step` (one step for one example, a small pure function) picks each example's survivors.
* :func:`compare_greedy_and_beam` measures what beam search changes: outputs changed, fixed and broken,
  exact match, and how likely the model finds each decoder's outputs.

Bad input (beam size < 1, an empty source, a source longer than the model's ``context_length``, a source
string with unknown characters) raises a ``ValueError`` with a one-line message.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from course.data.tasks import SEQ2SEQ_VOCAB, CharVocab, encode_sources
from course.utils import eval_mode

__all__ = ["cross_attention", "validate_source", "greedy_decode", "beam_step", "length_normalise", "beam_search",
           "sequence_log_prob", "exact_match", "DecodingComparison", "compare_greedy_and_beam", "cross_attention_maps", "translate"]

BOS_ID, EOS_ID = SEQ2SEQ_VOCAB.bos_id, SEQ2SEQ_VOCAB.eos_id


def cross_attention(x: Tensor, memory: Tensor, w_q: Tensor, w_k: Tensor, w_v: Tensor,
                    memory_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Single-head cross-attention, written in the open (lesson 09).

    The decoder asks, the encoder answers: queries from the decoder states ``x [b, t, d]``, keys and
    values from the encoder's ``memory [b, s, d]``; ``w_q, w_k, w_v [d, d_k]``; ``memory_mask [b, s]``
    is True at real source tokens (padding keys get no weight). No causal mask: every output
    position may look at the whole source. Returns ``(out [b, t, d_k], weights [b, t, s])``.
    """
    if x.dim() != 3 or memory.dim() != 3 or x.shape[0] != memory.shape[0] or x.shape[-1] != memory.shape[-1]:
        raise ValueError(f"cross_attention expects x [b, t, d] and memory [b, s, d], got "
                         f"{tuple(x.shape)} and {tuple(memory.shape)}")
    q, k, v = x @ w_q, memory @ w_k, memory @ w_v                      # [b, t, dk], [b, s, dk], [b, s, dk]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])          # [b, t, s]
    if memory_mask is not None:
        if memory_mask.shape != memory.shape[:2]:
            raise ValueError(f"memory_mask must be [b, s] = {tuple(memory.shape[:2])}, got {tuple(memory_mask.shape)}")
        scores = scores.masked_fill(~memory_mask[:, None, :], float("-inf"))
    weights = scores.softmax(dim=-1)                                   # each row sums to 1 over the source
    return weights @ v, weights


def validate_source(model: nn.Module, src: Tensor, max_new_tokens: int | None = None) -> None:
    """Raise a ``ValueError`` with a clear message unless ``src`` is a usable ``[batch, s]`` id tensor."""
    if not isinstance(src, Tensor):
        raise ValueError(f"src must be a tensor of token ids [batch, s], got {type(src).__name__}")
    if src.dim() != 2:
        raise ValueError(f"src must be [batch, s] token ids, got shape {tuple(src.shape)}")
    if src.dtype not in (torch.long, torch.int32, torch.int64):
        raise ValueError(f"src must hold integer token ids, got dtype {src.dtype}")
    limit = model.config.context_length
    if src.shape[0] == 0 or src.shape[1] == 0 or bool((src == model.config.pad_id).all(dim=1).any()):
        raise ValueError("the source is empty: every example needs at least one token")
    if src.shape[1] > limit:
        raise ValueError(f"the source has {src.shape[1]} tokens; the model reads at most context_length={limit}")
    if int(src.min()) < 0 or int(src.max()) >= model.config.vocab_size:
        raise ValueError(f"source ids must lie in [0, {model.config.vocab_size})")
    if max_new_tokens is not None and not 1 <= int(max_new_tokens) <= limit:
        raise ValueError(f"max_new_tokens must be between 1 and the model's context_length={limit}, got {max_new_tokens}")


def _strip(ids: Sequence[int], eos_id: int) -> list[int]:
    out = []
    for i in ids:
        if i == eos_id:
            break
        out.append(int(i))
    return out


@torch.no_grad()
def greedy_decode(model: nn.Module, src: Tensor, max_new_tokens: int, bos_id: int = BOS_ID,
                  eos_id: int = EOS_ID) -> list[list[int]]:
    """Batched greedy decoding: ``src [b, s]`` -> ``b`` lists of output ids (``<eos>`` and after dropped).

    Each step feeds ``<bos>`` + the tokens so far and appends the arg-max of the last position;
    a row stops at ``<eos>`` or after ``max_new_tokens`` tokens.
    """
    validate_source(model, src, max_new_tokens)
    out = torch.full((src.shape[0], 1), bos_id, dtype=torch.long, device=src.device)
    done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
    with eval_mode(model):
        memory = model.encode(src)
        for _ in range(max_new_tokens):
            logits = model.decode(out, memory, src)[:, -1]          # [b, vocab]
            nxt = logits.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
            out = torch.cat([out, nxt[:, None]], dim=1)
            done |= nxt == eos_id
            if bool(done.all()):
                break
    return [_strip(row[1:].tolist(), eos_id) for row in out]


def beam_step(scores: Tensor, log_probs: Tensor, finished: Tensor, beam_size: int,
              eos_id: int = EOS_ID) -> tuple[Tensor, Tensor, Tensor]:
    """One step of beam search, pure: which ``beam_size`` extensions of the current beams to keep.

    ``scores [n]``: each beam's total log-probability so far; ``log_probs [n, vocab]``: the model's
    next-token log-probabilities for each beam; ``finished [n]`` (bool): beams that already ended
    with ``<eos>``. A finished beam is kept as it is: its only continuation is ``<eos>`` again, at no
    cost (log-probability 0). Every (beam, token) pair is a candidate with score
    ``scores[beam] + log_probs[beam, token]``; the best ``beam_size`` over all ``n * vocab``
    candidates win.

    Returns ``(new_scores [k], parent [k], token [k])`` with ``k = min(beam_size, n * vocab)``,
    best first: the new beam ``j`` is beam ``parent[j]`` extended by ``token[j]``.
    """
    if scores.dim() != 1 or log_probs.dim() != 2 or finished.shape != scores.shape or \
            log_probs.shape[0] != scores.shape[0]:
        raise ValueError(f"beam_step expects scores [n], log_probs [n, vocab], finished [n]; got "
                         f"{tuple(scores.shape)}, {tuple(log_probs.shape)}, {tuple(finished.shape)}")
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}")
    vocab = log_probs.shape[1]
    candidates = log_probs.clone()
    candidates[finished] = float("-inf")
    candidates[finished, eos_id] = 0.0                                 # finished beams carry on unchanged
    total = scores[:, None] + candidates                               # [n, vocab]
    new_scores, flat = total.reshape(-1).topk(min(beam_size, total.numel()))
    return new_scores, flat // vocab, flat % vocab


def length_normalise(scores: Tensor, lengths: Tensor, alpha: float) -> Tensor:
    """Rank finished beams by ``score / length ** alpha``: ``alpha = 0`` is the plain sum of
    log-probabilities (short outputs win), ``alpha = 1`` the mean per token."""
    if scores.shape != lengths.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and lengths {tuple(lengths.shape)} must have the same shape")
    return scores / lengths.to(scores.dtype) ** alpha


@torch.no_grad()
def beam_search(model: nn.Module, src: Tensor, beam_size: int, max_new_tokens: int, length_penalty: float = 0.0,
                bos_id: int = BOS_ID, eos_id: int = EOS_ID, return_scores: bool = False):
    """Beam search: ``src [b, s]`` -> ``b`` lists of output ids.

    Keeps the ``beam_size`` best partial outputs (by total log-probability) for each example at each
    step, until every beam has produced ``<eos>`` or ``max_new_tokens`` tokens. The decoder runs once per step
    on all ``b * beam_size`` beams together (a batch); the choice of survivors is :func:`beam_step`,
    called for each example. The final choice among an example's beams uses :func:`length_normalise`
    with ``alpha = length_penalty`` (the length counts the ``<eos>``). With ``return_scores=True`` also
    returns each chosen output's total log-probability. ``beam_size=1`` is greedy decoding.
    """
    if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"beam_size must be a whole number >= 1, got {beam_size!r}")
    validate_source(model, src, max_new_tokens)
    b, device = src.shape[0], src.device
    beams = torch.full((b, 1, 1), bos_id, dtype=torch.long, device=device)      # [b, n, 1 + steps]
    scores = torch.zeros(b, 1, device=device)                                   # [b, n] sum of log-probs
    finished = torch.zeros(b, 1, dtype=torch.bool, device=device)
    lengths = torch.zeros(b, 1, dtype=torch.long, device=device)                # tokens incl. <eos>
    rows = torch.arange(b, device=device)[:, None]
    with eval_mode(model):
        memory = model.encode(src)                                              # [b, s, d]
        for _ in range(max_new_tokens):
            n = beams.shape[1]
            logits = model.decode(beams.flatten(0, 1), memory.repeat_interleave(n, 0), src.repeat_interleave(n, 0))
            log_probs = torch.log_softmax(logits[:, -1].float(), -1).view(b, n, -1)  # [b, n, vocab]
            steps = [beam_step(scores[i], log_probs[i], finished[i], beam_size, eos_id) for i in range(b)]
            scores, parent, token = (torch.stack(t) for t in zip(*steps))         # each [b, k]
            lengths = lengths[rows, parent] + (~finished[rows, parent]).long()
            finished = finished[rows, parent] | (token == eos_id)
            beams = torch.cat([beams[rows, parent], token[..., None]], dim=-1)
            if bool(finished.all()):
                break
    ranked = length_normalise(scores, lengths.clamp(min=1), length_penalty)
    ranked = torch.where(torch.isnan(ranked), torch.full_like(ranked, float("-inf")), ranked)
    best = ranked.argmax(-1)                                                    # [b]
    outputs = [_strip(beams[i, best[i], 1:].tolist(), eos_id) for i in range(b)]
    totals = [float(scores[i, best[i]]) for i in range(b)]
    return (outputs, totals) if return_scores else outputs


@torch.no_grad()
def sequence_log_prob(model: nn.Module, src: Tensor, outputs: Sequence[Sequence[int]], bos_id: int = BOS_ID,
                      eos_id: int = EOS_ID) -> Tensor:
    """Total log-probability ``[b]`` the model gives each output (its tokens, then ``<eos>``) for its source.

    One forward pass for the whole batch: the decoder inputs are padded at the end, and the causal mask
    keeps the padding from changing any real position's prediction; padded positions are not counted.
    """
    validate_source(model, src)
    if len(outputs) != src.shape[0]:
        raise ValueError(f"{len(outputs)} outputs for {src.shape[0]} sources")
    rows = [[bos_id, *out, eos_id] for out in outputs]
    lengths = torch.tensor([len(r) - 1 for r in rows], device=src.device)          # predicted tokens per row
    ids = torch.full((len(rows), max(map(len, rows))), getattr(model.config, "pad_id", 0), dtype=torch.long,
                     device=src.device)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    with eval_mode(model):
        logp = torch.log_softmax(model(src, ids[:, :-1]).float(), -1)              # [b, t, vocab]
    picked = logp.gather(-1, ids[:, 1:, None])[..., 0]                              # [b, t]
    counted = torch.arange(picked.shape[1], device=src.device)[None, :] < lengths[:, None]
    return torch.where(counted, picked, torch.zeros_like(picked)).sum(-1)


def exact_match(predictions: Sequence, targets: Sequence) -> float:
    """The fraction of predictions equal to their target, as a whole (strings or id lists)."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions but {len(targets)} targets")
    if len(targets) == 0:
        raise ValueError("exact_match needs at least one example")
    return sum(list(p) == list(t) if not isinstance(p, str) else p == t
               for p, t in zip(predictions, targets)) / len(targets)


@dataclass(frozen=True)
class DecodingComparison:
    """Greedy decoding against beam search on the same sources (see :func:`compare_greedy_and_beam`)."""

    n: int                      # sources compared
    greedy_exact: float         # exact-match accuracy of greedy decoding
    beam_exact: float           # ... and of beam search
    changed: int                # outputs where beam search differs from greedy
    fixed: int                  # greedy wrong, beam right
    broken: int                 # greedy right, beam wrong
    greedy_log_prob: float      # mean log-probability of greedy's outputs (then <eos>) under the model
    beam_log_prob: float        # ... of beam search's outputs
    beam_at_least_greedy: int   # sources where beam's output is at least as likely as greedy's


def compare_greedy_and_beam(model: nn.Module, src: Tensor, targets: Sequence[str], beam_size: int = 4,
                            max_new_tokens: int = 20, length_penalty: float = 0.0, vocab: CharVocab = SEQ2SEQ_VOCAB,
                            greedy_ids: Sequence[Sequence[int]] | None = None,
                            beam_ids: Sequence[Sequence[int]] | None = None) -> DecodingComparison:
    """Decode ``src [b, s]`` both ways and count what beam search changes against the ``b`` target strings.

    Outputs already decoded can be passed (``greedy_ids``, ``beam_ids``: ``b`` lists of ids, as
    :func:`greedy_decode` and :func:`beam_search` return them). The log-probabilities are
    :func:`sequence_log_prob`'s (each output followed by ``<eos>``); "at least as likely" allows 1e-4 of
    float32 rounding.
    """
    if len(targets) != src.shape[0]:
        raise ValueError(f"{len(targets)} targets for {src.shape[0]} sources")
    if greedy_ids is None:
        greedy_ids = greedy_decode(model, src, max_new_tokens)
    if beam_ids is None:
        beam_ids = beam_search(model, src, beam_size, max_new_tokens, length_penalty=length_penalty)
    if len(greedy_ids) != len(targets) or len(beam_ids) != len(targets):
        raise ValueError(f"{len(greedy_ids)} greedy and {len(beam_ids)} beam outputs for {len(targets)} targets")
    greedy = [vocab.decode(ids) for ids in greedy_ids]
    beam = [vocab.decode(ids) for ids in beam_ids]
    greedy_lp = sequence_log_prob(model, src, greedy_ids)
    beam_lp = sequence_log_prob(model, src, beam_ids)
    return DecodingComparison(
        n=len(targets),
        greedy_exact=exact_match(greedy, targets),
        beam_exact=exact_match(beam, targets),
        changed=sum(g != b for g, b in zip(greedy, beam)),
        fixed=sum(g != t and b == t for g, b, t in zip(greedy, beam, targets)),
        broken=sum(g == t and b != t for g, b, t in zip(greedy, beam, targets)),
        greedy_log_prob=float(greedy_lp.mean()),
        beam_log_prob=float(beam_lp.mean()),
        beam_at_least_greedy=int((beam_lp >= greedy_lp - 1e-4).sum()),
    )


@torch.no_grad()
def cross_attention_maps(model: nn.Module, src: Tensor, tgt_in: Tensor) -> Tensor:
    """Cross-attention weights of every decoder layer: ``[layers, b, heads, t, s]``.

    ``tgt_in [b, t]`` is the decoder's input (``<bos>`` + output so far); row ``i`` of a map says where
    in the source the decoder looked while predicting output token ``i``.
    """
    validate_source(model, src)
    if not isinstance(tgt_in, Tensor) or tgt_in.dim() != 2 or tgt_in.shape[0] != src.shape[0]:
        raise ValueError(f"tgt_in must be [batch, t] with the batch of src {tuple(src.shape)}, "
                         f"got {tuple(getattr(tgt_in, 'shape', ()))}")
    with eval_mode(model):
        _, cross = model.decode(tgt_in, model.encode(src), src, need_weights=True)
    return torch.stack(cross)


def translate(model: nn.Module, texts: Sequence[str] | str, vocab: CharVocab = SEQ2SEQ_VOCAB,
              beam_size: int = 1, max_new_tokens: int = 32, length_penalty: float = 0.0) -> list[str]:
    """Strings in, strings out: greedy (``beam_size=1``) or beam search. Bad input raises a one-line ``ValueError``."""
    src = encode_sources(texts, vocab, context_length=model.config.context_length)
    if beam_size == 1:
        ids = greedy_decode(model, src, max_new_tokens, vocab.bos_id, vocab.eos_id)
    else:
        ids = beam_search(model, src, beam_size, max_new_tokens, length_penalty, vocab.bos_id, vocab.eos_id)
    return [vocab.decode(row) for row in ids]
