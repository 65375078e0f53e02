"""Sequence-to-sequence tasks generated on the spot (nothing to download), for lesson 09.

Each task turns a source string into a target string by a fixed rule:

    reverse        "hello"        -> "olleh"
    date           "2024-03-07"   -> "7 March 2024"        (style="dmy")  or "March 7, 2024" (style="mdy")
    number_words   "417"          -> "four hundred seventeen"
    addition       "37+48"        -> "85"

:func:`task_split` draws seeded train and test sets whose sources never overlap, so test accuracy
measures generalisation, not memory. :class:`CharVocab` maps characters to ids (``<pad>`` = 0,
``<bos>`` = 1, ``<eos>`` = 2, then one id per character) and rejects characters it does not know
with a message that names them. :func:`make_batch` pads a list of pairs into the three tensors an
encoder-decoder trains on (source, shifted decoder input, labels).
"""
from __future__ import annotations

import datetime as _dt
import functools
import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from course.seed import step_seed

__all__ = [
    "PAD", "BOS", "EOS", "IGNORE_INDEX", "CharVocab", "SEQ2SEQ_VOCAB", "Seq2SeqTask", "TASKS", "get_task",
    "reverse_target", "date_target", "number_to_words", "addition_target", "task_split", "Seq2SeqBatch",
    "shift_targets", "make_batch", "batch_sampler", "encode_sources",
]

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
IGNORE_INDEX = -100  # label value that the loss skips (padding, unmasked tokens); the default of F.cross_entropy

# ------------------------------------------------------------------------------------ vocabulary


class CharVocab:
    """Characters <-> ids, with ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2 before the characters.

    ``encode("abc", bos=False, eos=False) -> list[int]``; ``decode(ids) -> str`` stops at the first
    ``<eos>`` and drops ``<pad>`` and ``<bos>``. Unknown characters raise a ``ValueError`` naming them.
    """

    specials = (PAD, BOS, EOS)

    def __init__(self, chars: str):
        if len(set(chars)) != len(chars):
            raise ValueError("CharVocab: the characters must be distinct")
        self.chars = chars
        self.itos: list[str] = [*self.specials, *chars]
        self.stoi: dict[str, int] = {ch: i for i, ch in enumerate(self.itos)}
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2

    def __len__(self) -> int:
        return len(self.itos)

    def __repr__(self) -> str:
        return f"CharVocab({len(self)} ids: 3 specials + {len(self.chars)} characters)"

    def validate(self, text: str, what: str = "text") -> str:
        """Return ``text`` if every character is known; otherwise raise a ``ValueError`` naming the unknown ones."""
        if not isinstance(text, str):
            raise ValueError(f"{what} must be a string, got {type(text).__name__}")
        unknown = sorted({ch for ch in text if ch not in self.stoi or ch in self.specials})
        if unknown:
            shown = ", ".join(repr(ch) for ch in unknown[:8])
            raise ValueError(f"{what} {text[:40]!r} has character(s) the vocabulary does not know: {shown}")
        return text

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """``text -> [<bos>?] + one id per character + [<eos>?]``."""
        self.validate(text)
        ids = [self.stoi[ch] for ch in text]
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """Ids -> text: stops at the first ``<eos>``, skips ``<pad>`` and ``<bos>``."""
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            if not 0 <= i < len(self.itos):
                raise ValueError(f"id {i} is outside the vocabulary [0, {len(self.itos)})")
            out.append(self.itos[i])
        return "".join(out)

    def tokens(self, ids: Sequence[int] | Tensor) -> list[str]:
        """Each id as its symbol (specials included), for axis labels."""
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        return [self.itos[int(i)] for i in ids]


#: One vocabulary for every task: digits, letters, space and the punctuation the tasks use.
SEQ2SEQ_VOCAB = CharVocab(string.digits + string.ascii_lowercase + string.ascii_uppercase + " -+,")

# ------------------------------------------------------------------------------------ the tasks

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def reverse_target(src: str) -> str:
    """``"hello" -> "olleh"``."""
    return src[::-1]


def date_target(src: str, style: str = "dmy") -> str:
    """``"2024-03-07" -> "7 March 2024"`` (``style="dmy"``) or ``"March 7, 2024"`` (``style="mdy"``)."""
    try:
        day = _dt.date.fromisoformat(src)
    except (TypeError, ValueError):
        raise ValueError(f"expected an ISO date like '2024-03-07', got {src!r}") from None
    if style == "dmy":
        return f"{day.day} {MONTHS[day.month - 1]} {day.year}"
    if style == "mdy":
        return f"{MONTHS[day.month - 1]} {day.day}, {day.year}"
    raise ValueError(f"style must be 'dmy' or 'mdy', got {style!r}")


def number_to_words(src: str | int) -> str:
    """``"417" -> "four hundred seventeen"``, for whole numbers 0..999 (no "and")."""
    try:
        n = int(src)
    except (TypeError, ValueError):
        raise ValueError(f"expected a whole number 0..999, got {src!r}") from None
    if not 0 <= n <= 999 or (isinstance(src, str) and not src.isdigit()):
        raise ValueError(f"expected a whole number 0..999, got {src!r}")
    words = []
    hundreds, rest = divmod(n, 100)
    if hundreds:
        words += [_ONES[hundreds], "hundred"]
    if rest >= 20:
        tens, ones = divmod(rest, 10)
        words.append(_TENS[tens] + (f"-{_ONES[ones]}" if ones else ""))
    elif rest or not hundreds:
        words.append(_ONES[rest])
    return " ".join(words)


def addition_target(src: str) -> str:
    """``"37+48" -> "85"``."""
    parts = src.split("+")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"expected two whole numbers joined by '+', like '37+48', got {src!r}")
    return str(int(parts[0]) + int(parts[1]))


@dataclass(frozen=True)
class Seq2SeqTask:
    """A rule ``target(src)``, a way to draw sources, and (for small tasks) every possible source."""

    name: str
    target: Callable[[str], str]
    sample: Callable[[random.Random], str]
    all_sources: Callable[[], list[str]] | None = None
    example: str = ""

    def pair(self, src: str) -> tuple[str, str]:
        return src, self.target(src)


@functools.lru_cache(maxsize=4)
def _all_dates(first: int = 1950, last: int = 2049) -> tuple[str, ...]:
    start, end = _dt.date(first, 1, 1), _dt.date(last, 12, 31)
    return tuple((start + _dt.timedelta(days=i)).isoformat() for i in range((end - start).days + 1))


def _dates() -> list[str]:
    """Every day from 1950-01-01 to 2049-12-31 in ISO format (a fresh list: callers shuffle it)."""
    return list(_all_dates())


def _sample_reverse(rng: random.Random, lo: int = 3, hi: int = 10) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(lo, hi)))


TASKS: dict[str, Seq2SeqTask] = {
    "reverse": Seq2SeqTask("reverse", reverse_target, _sample_reverse, None, "hello -> olleh"),
    "date": Seq2SeqTask("date", date_target, lambda rng: rng.choice(_all_dates()), _dates,
                        "2024-03-07 -> 7 March 2024"),
    "date_mdy": Seq2SeqTask("date_mdy", lambda s: date_target(s, "mdy"), lambda rng: rng.choice(_all_dates()), _dates,
                            "2024-03-07 -> March 7, 2024"),
    "number_words": Seq2SeqTask("number_words", number_to_words, lambda rng: str(rng.randint(0, 999)),
                                lambda: [str(n) for n in range(1000)], "417 -> four hundred seventeen"),
    "addition": Seq2SeqTask("addition", addition_target, lambda rng: f"{rng.randint(0, 99)}+{rng.randint(0, 99)}",
                            lambda: [f"{a}+{b}" for a in range(100) for b in range(100)], "37+48 -> 85"),
}


def get_task(name: str) -> Seq2SeqTask:
    """The task called ``name`` (one of :data:`TASKS`), with a clear message for a wrong name."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]


def task_split(task: str, n_train: int, n_test: int, seed: int = 0) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Seeded ``(train_pairs, test_pairs)`` of ``(source, target)`` strings; no source is in both.

    Small tasks (dates, numbers, additions) are shuffled from the full list of sources; the reverse
    task draws fresh random strings until it has enough distinct ones.
    """
    spec = get_task(task)
    if n_train < 0 or n_test < 0 or n_train + n_test < 1:
        raise ValueError(f"n_train and n_test must be >= 0 and not both 0, got {n_train} and {n_test}")
    rng = random.Random(seed)
    need = n_train + n_test
    if spec.all_sources is not None:
        sources = spec.all_sources()
        if need > len(sources):
            raise ValueError(f"task {task!r} has only {len(sources)} distinct sources; asked for "
                             f"{n_train} + {n_test} = {need}")
        rng.shuffle(sources)
        chosen = sources[:need]
    else:
        seen: dict[str, None] = {}
        for _ in range(50 * need):
            seen.setdefault(spec.sample(rng))
            if len(seen) == need:
                break
        if len(seen) < need:
            raise ValueError(f"could not draw {need} distinct sources for task {task!r}")
        chosen = list(seen)
    pairs = [spec.pair(s) for s in chosen]
    return pairs[:n_train], pairs[n_train:]


# ------------------------------------------------------------------------------------ batching


@dataclass
class Seq2SeqBatch:
    """``src [b, s]`` (padded with 0), ``tgt_in [b, t]`` = ``<bos>`` + target (padded with 0),
    ``labels [b, t]`` = target + ``<eos>`` (padded with :data:`IGNORE_INDEX`)."""

    src: Tensor
    tgt_in: Tensor
    labels: Tensor

    def to(self, device) -> "Seq2SeqBatch":
        return Seq2SeqBatch(self.src.to(device), self.tgt_in.to(device), self.labels.to(device))


def shift_targets(target_ids: Tensor, bos_id: int, eos_id: int) -> tuple[Tensor, Tensor]:
    """Teacher forcing: ``target [t] -> (tgt_in [t+1], labels [t+1])``.

    ``tgt_in = <bos> + target`` is what the decoder reads; ``labels = target + <eos>`` is what it must
    predict at each position: position ``i`` reads the tokens before it and predicts token ``i``.
    """
    if target_ids.dim() != 1:
        raise ValueError(f"target_ids must be 1-D [t], got shape {tuple(target_ids.shape)}")
    bos = target_ids.new_tensor([bos_id])
    eos = target_ids.new_tensor([eos_id])
    return torch.cat([bos, target_ids]), torch.cat([target_ids, eos])


def _pad(rows: list[list[int]], value: int) -> Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def encode_sources(texts: Sequence[str], vocab: CharVocab = SEQ2SEQ_VOCAB, context_length: int | None = None) -> Tensor:
    """Source strings -> ``[b, s]`` ids padded with ``<pad>``; empty text, unknown characters or a text
    longer than ``context_length`` (the model's) is a ``ValueError``."""
    if isinstance(texts, str):
        texts = [texts]
    if len(texts) == 0:
        raise ValueError("no source texts were given")
    rows = []
    for text in texts:
        vocab.validate(text, "source")
        if len(text) == 0:
            raise ValueError("the source is empty: type at least one character")
        if context_length is not None and len(text) > context_length:
            raise ValueError(f"the source {text[:40]!r} has {len(text)} characters; at most {context_length} fit")
        rows.append(vocab.encode(text))
    return _pad(rows, vocab.pad_id)


def make_batch(pairs: Sequence[tuple[str, str]], vocab: CharVocab = SEQ2SEQ_VOCAB) -> Seq2SeqBatch:
    """Pad ``(source, target)`` pairs into a :class:`Seq2SeqBatch` (teacher forcing, see :func:`shift_targets`)."""
    if len(pairs) == 0:
        raise ValueError("make_batch needs at least one (source, target) pair")
    src = encode_sources([s for s, _ in pairs], vocab)
    ins, labels = [], []
    for _, tgt in pairs:
        tgt_in, lab = shift_targets(torch.tensor(vocab.encode(tgt), dtype=torch.long), vocab.bos_id, vocab.eos_id)
        ins.append(tgt_in.tolist())
        labels.append(lab.tolist())
    return Seq2SeqBatch(src, _pad(ins, vocab.pad_id), _pad(labels, IGNORE_INDEX))


def batch_sampler(pairs: Sequence[tuple[str, str]], batch_size: int, vocab: CharVocab = SEQ2SEQ_VOCAB,
                  seed: int = 0) -> Callable[[int], Seq2SeqBatch]:
    """``next_batch(step) -> Seq2SeqBatch`` of ``batch_size`` random pairs; the same step gives the same batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if len(pairs) == 0:
        raise ValueError("batch_sampler needs at least one pair")
    pairs = list(pairs)

    def next_batch(step: int) -> Seq2SeqBatch:
        rng = random.Random(step_seed(seed, step))
        return make_batch([pairs[rng.randrange(len(pairs))] for _ in range(batch_size)], vocab)

    return next_batch
