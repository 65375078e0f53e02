"""Masked-language-model pretraining, BERT's way, and the small helpers lesson 07 needs.

The masking rule (Devlin et al., 2018): choose each non-special token with probability 0.15; of the
chosen, replace 80% by ``[MASK]``, 10% by a random word and leave 10% unchanged; the model must
predict the original word at every chosen position (``labels`` hold it) and nowhere else (``labels``
hold -100, the index ``torch.nn.functional.cross_entropy`` ignores).

:func:`apply_masking_rule` is the rule with its random draws passed in (so it can be checked
exactly); :func:`mask_tokens` draws them from a seeded ``torch.Generator`` and calls it.

Also batching (with :class:`course.tokenizers.SpecialWordTokenizer`, words with BERT's special
tokens), the MLM loss, top-k predictions for ``[MASK]`` positions, the padding mask of a
bidirectional encoder, [CLS] and mean pooling, and accuracy of a classifier.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from course.data.tasks import IGNORE_INDEX
from course.device import model_device
from course.lm import lm_loss
from course.seed import step_seed
from course.tokenizers import SPECIAL_TOKENS, SpecialWordTokenizer
from course.utils import eval_mode

__all__ = [
    "IGNORE_INDEX", "apply_masking_rule", "mask_tokens",
    "masking_fractions", "mlm_batches", "mlm_loss", "top_predictions", "bidirectional_mask",
    "mean_pool", "cls_pool", "classification_batches", "classification_loss", "accuracy",
]



# ----------------------------------------------------------------------------------------------
# The masking rule
# ----------------------------------------------------------------------------------------------

def _check_same_shape(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError("these must have the same shape: " + ", ".join(f"{k} {v}" for k, v in shapes.items()))


def apply_masking_rule(ids: Tensor, special: Tensor, select_u: Tensor, action_u: Tensor, random_ids: Tensor,
                       mask_id: int, mask_prob: float = 0.15) -> tuple[Tensor, Tensor]:
    """BERT's masking rule with its random draws given.

    ``ids [...]`` long; ``special [...]`` bool (True where a token may never be chosen);
    ``select_u``, ``action_u [...]`` uniform in [0, 1); ``random_ids [...]`` random word ids.
    A token is chosen where ``select_u < mask_prob`` and it is not special; a chosen token becomes
    ``mask_id`` where ``action_u < 0.8``, ``random_ids`` where ``0.8 <= action_u < 0.9``, and stays
    itself otherwise. Returns ``(inputs [...], labels [...])``, labels = ``ids`` at chosen positions
    and -100 elsewhere. ``ids`` is not modified.
    """
    _check_same_shape(ids=ids, special=special, select_u=select_u, action_u=action_u, random_ids=random_ids)
    chosen = (select_u < mask_prob) & ~special.bool()
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
    to_mask = chosen & (action_u < 0.8)
    to_random = chosen & (action_u >= 0.8) & (action_u < 0.9)
    inputs = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    inputs = torch.where(to_random, random_ids, inputs)
    return inputs, labels


def mask_tokens(ids: Tensor, special: Tensor, mask_id: int, vocab_size: int, generator: torch.Generator,
                mask_prob: float = 0.15, first_word_id: int = len(SPECIAL_TOKENS)) -> tuple[Tensor, Tensor]:
    """Draw the randomness from ``generator`` and apply :func:`apply_masking_rule`.

    Random replacements are words, ids in ``[first_word_id, vocab_size)`` (never a special token).
    ``ids, special: [...]`` -> ``(inputs [...], labels [...])``.
    """
    if not 0.0 < mask_prob < 1.0:
        raise ValueError(f"mask_prob must lie in (0, 1), got {mask_prob}")
    if not first_word_id < vocab_size:
        raise ValueError(f"no words to draw from: first_word_id={first_word_id}, vocab_size={vocab_size}")
    select_u = torch.rand(ids.shape, generator=generator)
    action_u = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(first_word_id, vocab_size, ids.shape, generator=generator)
    return apply_masking_rule(ids, special, select_u, action_u, random_ids.to(ids.dtype), mask_id, mask_prob)


def masking_fractions(ids: Tensor, special: Tensor, inputs: Tensor, labels: Tensor, mask_id: int) -> dict[str, float]:
    """What a masking did: the fraction of non-special tokens chosen, and how the chosen were split.

    -> ``{"chosen": ..., "[MASK]": ..., "random": ..., "unchanged": ...}`` (the last three sum to 1).
    """
    chosen = labels != IGNORE_INDEX
    n = max(1, int(chosen.sum()))
    masked = chosen & (inputs == mask_id)
    unchanged = chosen & (inputs == ids)
    return {"chosen": float(chosen.sum()) / max(1, int((~special).sum())),
            "[MASK]": float(masked.sum()) / n,
            "random": float((chosen & ~masked & ~unchanged).sum()) / n,
            "unchanged": float(unchanged.sum()) / n}


def mlm_batches(texts: Sequence[str], tokenizer: SpecialWordTokenizer, batch_size: int, seed: int = 0,
                mask_prob: float = 0.15) -> Callable[[int], dict[str, Tensor]]:
    """``next_batch(step)`` for :func:`course.train.train`: a random batch of texts, padded and masked.

    Returns dicts with ``input_ids``, ``attention_mask`` and ``labels``, all ``[batch, seq]``.
    Deterministic: the same ``seed`` and ``step`` give the same batch.
    """
    if not texts:
        raise ValueError("mlm_batches needs at least one text")

    def next_batch(step: int) -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(step_seed(seed, step))
        rows = torch.randint(0, len(texts), (batch_size,), generator=g).tolist()
        ids, attention = tokenizer.batch([texts[r] for r in rows])
        inputs, labels = mask_tokens(ids, tokenizer.special_mask(ids), tokenizer.mask_id, tokenizer.vocab_size,
                                     g, mask_prob, tokenizer.num_special)
        return {"input_ids": inputs, "attention_mask": attention, "labels": labels}

    return next_batch


def mlm_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Cross-entropy at the chosen positions only (labels -100 elsewhere): a scalar."""
    logits = model(batch["input_ids"], batch["attention_mask"])
    return lm_loss(logits, batch["labels"])


@torch.no_grad()
def top_predictions(model: nn.Module, tokenizer: SpecialWordTokenizer, text: str, k: int = 5) -> list[list[tuple[str, float]]]:
    """For each ``[MASK]`` in ``text``, the ``k`` likeliest words with their probabilities (the model
    runs on its own device)."""
    ids = torch.tensor([tokenizer.encode(text)])
    where = (ids[0] == tokenizer.mask_id).nonzero().flatten()
    if where.numel() == 0:
        raise ValueError("the text has no [MASK] to predict")
    with eval_mode(model):
        probs = model(ids.to(model_device(model))).softmax(-1)[0].cpu()
    out = []
    for pos in where.tolist():
        p, idx = probs[pos].topk(k)
        out.append([(tokenizer.itos[i], float(q)) for q, i in zip(p.tolist(), idx.tolist())])
    return out


# ----------------------------------------------------------------------------------------------
# Encoder helpers: padding mask, pooling, classification
# ----------------------------------------------------------------------------------------------

def bidirectional_mask(attention_mask: Tensor) -> Tensor:
    """Where each query may look in a bidirectional encoder: ``attention_mask [b, s]`` (1 = real token)
    -> bool ``[b, 1, s, s]``, True at (query i, key j) when key j is a real token.

    Every query, padding included, may see every real key (no causal triangle): padded queries get
    outputs nobody reads, but never a row with nothing to attend to (which would be NaN).
    """
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be [batch, seq], got shape {tuple(attention_mask.shape)}")
    keys = attention_mask.bool()[:, None, None, :]                      # [b, 1, 1, s]
    return keys.expand(-1, 1, attention_mask.shape[1], -1)              # [b, 1, s, s]


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Average of the real tokens' vectors: ``hidden [b, s, d]``, ``attention_mask [b, s]`` -> ``[b, d]``."""
    if hidden.dim() != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(f"mean_pool expects hidden [b, s, d] and attention_mask [b, s], got "
                         f"{tuple(hidden.shape)} and {tuple(attention_mask.shape)}")
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)            # [b, s, 1]
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def cls_pool(hidden: Tensor) -> Tensor:
    """The vector at the first position, where [CLS] sits: ``hidden [b, s, d] -> [b, d]``."""
    if hidden.dim() != 3:
        raise ValueError(f"cls_pool expects hidden [b, s, d], got {tuple(hidden.shape)}")
    return hidden[:, 0]


def classification_batches(texts: Sequence[str], labels: Sequence[int], tokenizer: SpecialWordTokenizer,
                           batch_size: int, seed: int = 0) -> Callable[[int], dict[str, Tensor]]:
    """``next_batch(step)`` giving ``input_ids``, ``attention_mask`` [batch, seq] and ``labels`` [batch]."""
    if len(texts) != len(labels) or not texts:
        raise ValueError(f"need as many labels as texts (and at least one), got {len(texts)} and {len(labels)}")
    y = torch.as_tensor(list(labels), dtype=torch.long)

    def next_batch(step: int) -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(step_seed(seed, step))
        rows = torch.randint(0, len(texts), (batch_size,), generator=g)
        ids, attention = tokenizer.batch([texts[r] for r in rows.tolist()])
        return {"input_ids": ids, "attention_mask": attention, "labels": y[rows]}

    return next_batch


def classification_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Cross-entropy of ``model(input_ids, attention_mask) -> logits [b, classes]`` against ``labels [b]``."""
    logits = model(batch["input_ids"], batch["attention_mask"])
    return nn.functional.cross_entropy(logits, batch["labels"])


@torch.no_grad()
def accuracy(model: nn.Module, tokenizer: SpecialWordTokenizer, texts: Sequence[str], labels: Sequence[int],
             batch_size: int = 256) -> float:
    """Fraction of ``texts`` whose arg-max class equals the label (model in eval mode, restored after;
    it runs on its own device)."""
    right, device = 0, model_device(model)
    with eval_mode(model):
        for start in range(0, len(texts), batch_size):
            ids, attention = tokenizer.batch(texts[start:start + batch_size])
            pred = model(ids.to(device), attention.to(device)).argmax(-1).cpu()
            right += int((pred == torch.as_tensor(list(labels[start:start + batch_size]))).sum())
    return right / max(1, len(texts))
