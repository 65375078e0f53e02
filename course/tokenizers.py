"""Turning text into integers: characters, words, and a byte-pair encoder trained from scratch.

Four tokenisers with one interface, :class:`Tokenizer` (``encode(text) -> list[int]``,
``decode(ids) -> str``, ``vocab_size``):

- :class:`CharTokenizer`: one id per character seen in the training text.
- :class:`WordTokenizer`: one id per word or punctuation mark; unknown words become ``<unk>`` and
  decoding loses the original spacing.
- :class:`SpecialWordTokenizer`: lower-cased words with BERT's special tokens ([PAD], [CLS], [MASK],
  ...) first, and padded batches, for the encoders of lessons 07 and 10.
- :class:`BPETokenizer`: byte-pair encoding on UTF-8 bytes. It starts from the 256 byte values, so
  it can encode *any* string and decode it back exactly, and learns merges of frequent neighbours.

All but :class:`SpecialWordTokenizer` also show ``pieces(text) -> list[str]``, the text of each token.

And the embedding lookup every model starts with: :func:`one_hot_embedding` shows that
``nn.Embedding`` is a one-hot vector times a matrix, done without building the one-hot vector.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from course.data.sentences import split_words

UNK = "<unk>"
REPLACEMENT = "\N{REPLACEMENT CHARACTER}"  # what CharTokenizer decodes its <unk> id to


# ----------------------------------------------------------------------------------------------
# The interface
# ----------------------------------------------------------------------------------------------
@runtime_checkable
class Tokenizer(Protocol):
    """What every tokenizer of the course offers, and all that :func:`course.generate.generate_text`
    needs: ``encode(text) -> ids``, ``decode(ids) -> text`` and ``vocab_size`` (the number of ids, the
    size of a model's embedding table)."""

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


# ----------------------------------------------------------------------------------------------
# Characters
# ----------------------------------------------------------------------------------------------
class CharTokenizer:
    """One id per character.

    Ids follow the sorted order of the characters (so ``"\\n"`` and ``" "`` come first).

    Unknown characters (not in the text the tokenizer was fitted on):

    - ``unk=False`` (default): :meth:`encode` raises ``ValueError`` naming them, because silently
      dropping or replacing characters hides bugs.
    - ``unk=True``: id 0 is reserved for "unknown"; :meth:`encode` maps every unknown character to
      it and :meth:`decode` turns it into ``"\\N{REPLACEMENT CHARACTER}"`` (``"\ufffd"``).
    """

    def __init__(self, chars: Iterable[str], unk: bool = False) -> None:
        chars = sorted(set(chars))
        if any(len(c) != 1 for c in chars):
            raise ValueError("CharTokenizer needs single characters")
        if not chars:
            raise ValueError("CharTokenizer needs at least one character")
        self.unk = unk
        self.itos: list[str] = ([REPLACEMENT] if unk else []) + chars
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(self.itos) if not (unk and i == 0)}

    @classmethod
    def fit(cls, text: str, unk: bool = False) -> CharTokenizer:
        """A tokenizer whose vocabulary is every distinct character of ``text``."""
        if not text:
            raise ValueError("cannot fit a tokenizer on empty text")
        return cls(text, unk=unk)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        """``text`` -> one id per character (see the class docstring for unknown characters)."""
        if self.unk:
            return [self.stoi.get(c, 0) for c in text]
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            shown = ", ".join(repr(c) for c in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise ValueError(f"{len(unknown)} character(s) not in the vocabulary: {shown} "
                             "(fit on text that contains them, or use unk=True)")
        return [self.stoi[c] for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; raises ``ValueError`` for an id outside ``[0, vocab_size)``."""
        ids = _as_id_list(ids, self.vocab_size)
        return "".join(self.itos[i] for i in ids)

    def pieces(self, text: str) -> list[str]:
        """The text each token stands for (for display)."""
        return [_printable(self.itos[i]) for i in self.encode(text)]


# ----------------------------------------------------------------------------------------------
# Words
# ----------------------------------------------------------------------------------------------
WORD_PATTERN = re.compile(r"\w+|[^\w\s]")


class WordTokenizer:
    """One id per word (a run of letters, digits and ``_``) or punctuation mark; spaces are dropped.

    Id 0 is ``<unk>``: every word not in the vocabulary maps to it. :meth:`decode` joins the words
    with single spaces, so it does *not* give back the original text (spacing, newlines and the
    unknown words are lost): the price of a word vocabulary.
    """

    def __init__(self, words: Sequence[str]) -> None:
        self.itos: list[str] = [UNK] + [w for w in words if w != UNK]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}

    @staticmethod
    def split(text: str) -> list[str]:
        """Words and punctuation marks, in order: ``"Don't stop."`` -> ``Don ' t stop .``"""
        return WORD_PATTERN.findall(text)

    @classmethod
    def fit(cls, text: str, max_vocab: int | None = None) -> WordTokenizer:
        """Vocabulary: the words of ``text``, most frequent first (ties alphabetical), plus ``<unk>``.

        ``max_vocab`` caps the vocabulary size (including ``<unk>``); rarer words become unknown.
        """
        if max_vocab is not None and max_vocab < 2:
            raise ValueError(f"max_vocab must be at least 2 (<unk> and one word), got {max_vocab}")
        counts = Counter(cls.split(text))
        if not counts:
            raise ValueError("cannot fit a word tokenizer on text without words")
        ranked = sorted(counts, key=lambda w: (-counts[w], w))
        if max_vocab is not None:
            ranked = ranked[: max_vocab - 1]
        return cls(ranked)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(w, 0) for w in self.split(text)]

    def decode(self, ids: Iterable[int]) -> str:
        ids = _as_id_list(ids, self.vocab_size)
        return " ".join(self.itos[i] for i in ids)

    def pieces(self, text: str) -> list[str]:
        return [self.itos[i] for i in self.encode(text)]


# ----------------------------------------------------------------------------------------------
# Words, with BERT's special tokens (lessons 07 and 10)
# ----------------------------------------------------------------------------------------------
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class SpecialWordTokenizer:
    """One id per word, with BERT's special tokens first: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4.

    Words are split (and lower-cased) by ``split`` (default :func:`course.data.sentences.split_words`).
    ``encode`` wraps a text as ``[CLS] words [SEP]``; ``batch`` pads a list of texts with [PAD].
    """

    def __init__(self, words: Iterable[str], split: Callable[[str], list[str]] = split_words) -> None:
        self.itos: list[str] = list(SPECIAL_TOKENS) + [w for w in dict.fromkeys(words) if w not in SPECIAL_TOKENS]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        self.split = split
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = range(len(SPECIAL_TOKENS))
        self.num_special = len(SPECIAL_TOKENS)

    @classmethod
    def fit(cls, texts: Iterable[str], max_vocab: int | None = None,
            split: Callable[[str], list[str]] = split_words) -> SpecialWordTokenizer:
        """Vocabulary: the words of ``texts``, most frequent first (ties alphabetical), after the specials."""
        counts = Counter(w for t in texts for w in split(t))
        if not counts:
            raise ValueError("cannot fit a tokenizer on texts without words")
        ranked = sorted(counts, key=lambda w: (-counts[w], w))
        if max_vocab is not None:
            ranked = ranked[: max(0, max_vocab - len(SPECIAL_TOKENS))]
        return cls(ranked, split)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        """``text`` -> ids, ``[CLS] ... [SEP]`` around them if ``add_special``; "[MASK]" is kept as the mask token."""
        ids = []
        for piece in text.replace("[MASK]", " \0 ").split("\0"):
            ids += [self.stoi.get(w, self.unk_id) for w in self.split(piece)]
            ids.append(self.mask_id)
        ids.pop()
        return [self.cls_id, *ids, self.sep_id] if add_special else ids

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        ids = _as_id_list(ids, self.vocab_size)
        return " ".join(self.itos[i] for i in ids if not (skip_special and i < self.num_special))

    def batch(self, texts: Sequence[str], context_length: int | None = None) -> tuple[Tensor, Tensor]:
        """Encode and pad: -> (ids [batch, seq] long, attention_mask [batch, seq] long, 1 = real token).

        ``seq`` is the longest encoding; a text longer than ``context_length`` raises a ValueError naming it.
        """
        if isinstance(texts, str) or not texts:
            raise ValueError("batch expects a non-empty list of texts")
        encoded = [self.encode(t) for t in texts]
        longest = max(len(e) for e in encoded)
        if context_length is not None and longest > context_length:
            i = max(range(len(encoded)), key=lambda j: len(encoded[j]))
            raise ValueError(f"text {i} has {longest} tokens with [CLS] and [SEP], more than context_length={context_length}")
        ids = torch.full((len(encoded), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), longest), dtype=torch.long)
        for row, e in enumerate(encoded):
            ids[row, : len(e)] = torch.tensor(e)
            mask[row, : len(e)] = 1
        return ids, mask

    def special_mask(self, ids: Tensor) -> Tensor:
        """True at special tokens ([PAD], [UNK], [CLS], [SEP], [MASK]): ``ids [...] -> bool [...]``."""
        return ids < self.num_special


# ----------------------------------------------------------------------------------------------
# Byte-pair encoding
# ----------------------------------------------------------------------------------------------
Pair = tuple[int, int]

# Text is first cut into chunks (a word with its leading space, a number, a run of punctuation,
# a run of spaces); merges never cross a chunk boundary, so "the" and " the" become tokens but
# "e." does not. Every character matches one branch, so the chunks always join back to the text.
SPLIT_PATTERN = re.compile(r" ?[^\W\d]+| ?\d+| ?[^\s\w]+|\s+(?!\S)|\s+")


def get_pair_counts(ids: Sequence[int], counts: dict[Pair, int] | None = None,
                    weight: int = 1) -> dict[Pair, int]:
    """Count each pair of neighbours: ``[1, 2, 1, 2]`` -> ``{(1, 2): 2, (2, 1): 1}``.

    Pairs overlap: ``[7, 7, 7]`` holds ``(7, 7)`` twice. With ``counts`` given, adds ``weight``
    per occurrence into it (used by training, where a chunk that occurs ``weight`` times is
    counted once) and returns it.
    """
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def merge(ids: Sequence[int], pair: Pair, new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids`` by ``new_id``, scanning left to right.

    Occurrences do not overlap: merging ``(7, 7)`` in ``[7, 7, 7]`` gives ``[new_id, 7]``.
    Returns a new list; ``ids`` is not changed.
    """
    out: list[int] = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def most_frequent_pair(counts: Mapping[Pair, int]) -> Pair:
    """The pair with the highest count; ties go to the smallest pair (deterministic)."""
    if not counts:
        raise ValueError("no pairs to choose from")
    return min(counts, key=lambda p: (-counts[p], p))


def train_bpe_plain(text: str, vocab_size: int) -> dict[Pair, int]:
    """The byte-pair training loop with no shortcuts: what :meth:`BPETokenizer.train` computes.

    Slow (it recounts every pair after every merge); for small texts and for checking.
    Returns the merges ``{(a, b): new_id}`` in the order learned.
    """
    chunks = [list(chunk.encode("utf-8")) for chunk in SPLIT_PATTERN.findall(text)]
    merges: dict[Pair, int] = {}
    for new_id in range(256, vocab_size):
        counts: dict[Pair, int] = {}
        for ids in chunks:
            get_pair_counts(ids, counts)
        if not counts:
            break
        pair = most_frequent_pair(counts)
        if counts[pair] < 2:
            break
        chunks = [merge(ids, pair, new_id) for ids in chunks]
        merges[pair] = new_id
    return merges


class BPETokenizer:
    """Byte-pair encoding over UTF-8 bytes.

    Ids 0-255 are the single bytes; each merge ``(a, b) -> new_id`` (in training order, ids 256,
    257, ...) adds one token whose bytes are ``vocab[a] + vocab[b]``. Any string that is valid
    Unicode (no lone surrogates) encodes, and ``decode(encode(s)) == s`` exactly.
    """

    def __init__(self, merges: Mapping[Pair, int] | Iterable[tuple[Pair, int]] = ()) -> None:
        items = list(merges.items()) if isinstance(merges, Mapping) else list(merges)
        self.merges: dict[Pair, int] = {}
        self.vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}
        for (a, b), new_id in items:
            if new_id != len(self.vocab):
                raise ValueError(f"merge ids must count up from 256 in order; got {new_id} "
                                 f"where {len(self.vocab)} was expected")
            if a not in self.vocab or b not in self.vocab:
                raise ValueError(f"merge ({a}, {b}) uses an id not defined before it")
            self.merges[(a, b)] = new_id
            self.vocab[new_id] = self.vocab[a] + self.vocab[b]
        self._cache: dict[str, list[int]] = {}

    # -- training ---------------------------------------------------------------------------
    @staticmethod
    def split(text: str) -> list[str]:
        """The chunks merges stay inside (see ``SPLIT_PATTERN``); ``"".join(split(t)) == t``."""
        return SPLIT_PATTERN.findall(text)

    @classmethod
    def train(cls, text: str, vocab_size: int, show_progress: bool = False) -> BPETokenizer:
        """Learn ``vocab_size - 256`` merges from ``text``.

        The loop: count every neighbouring pair, take the most frequent (ties: the smallest
        pair), give it the next id, merge it everywhere, repeat; stop early when no pair occurs
        twice. Two book-keeping shortcuts make it fast without changing the result (a test checks
        it against the plain loop, :func:`train_bpe_plain`): each distinct chunk is stored once
        with its frequency, and after a merge only the chunks that changed are recounted.
        About a second on CPU for 200 kB of text and 512 tokens.
        """
        if vocab_size < 256:
            raise ValueError(f"vocab_size must be at least 256 (the single bytes), got {vocab_size}")
        if not text:
            raise ValueError("cannot train on empty text")
        chunk_counts = Counter(cls.split(text))  # insertion order: first appearance
        words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
        freqs = list(chunk_counts.values())
        counts: dict[Pair, int] = {}
        for ids, freq in zip(words, freqs):
            get_pair_counts(ids, counts, freq)
        merges: dict[Pair, int] = {}
        steps = range(256, vocab_size)
        if show_progress:
            from .progress import progress
            steps = progress(steps, desc="BPE merges")
        for new_id in steps:
            if not counts:
                break
            pair = most_frequent_pair(counts)
            if counts[pair] < 2:
                break
            merges[pair] = new_id
            for j, ids in enumerate(words):
                if pair[0] not in ids:  # a cheap test (in C) that skips most chunks
                    continue
                merged = merge(ids, pair, new_id)
                if len(merged) == len(ids):
                    continue
                get_pair_counts(ids, counts, -freqs[j])  # take out the chunk's old pairs ...
                get_pair_counts(merged, counts, freqs[j])  # ... and put in its new ones
                words[j] = merged
            if new_id % 32 == 0:  # now and then, forget the pairs that no longer occur
                counts = {p: c for p, c in counts.items() if c > 0}
        return cls(merges)

    # -- using it -----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return self.vocab_size

    def merge_list(self) -> list[tuple[Pair, int]]:
        """The merges in the order they were learned: ``[((a, b), new_id), ...]``."""
        return list(self.merges.items())

    def _encode_chunk(self, chunk: str) -> list[int]:
        cached = self._cache.get(chunk)
        if cached is not None:
            return cached
        ids = list(chunk.encode("utf-8"))
        while len(ids) >= 2:
            # Apply the earliest-learned merge present, exactly as training did.
            pair = min(set(zip(ids, ids[1:])), key=lambda p: self.merges.get(p, float("inf")))
            if pair not in self.merges:
                break
            ids = merge(ids, pair, self.merges[pair])
        if len(self._cache) < 100_000:
            self._cache[chunk] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Text -> ids. Raises ``ValueError`` if ``text`` is not valid Unicode (a lone surrogate)."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"text is not valid Unicode at position {exc.start}: {exc.reason}") from None
        out: list[int] = []
        for chunk in self.split(text):
            out.extend(self._encode_chunk(chunk))
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text. Ids that end inside a multi-byte character (possible for ids a model
        generated, never for ``encode``'s output) decode to ``"\ufffd"``."""
        ids = _as_id_list(ids, self.vocab_size)
        return b"".join(self.vocab[i] for i in ids).decode("utf-8", errors="replace")

    def token_text(self, token_id: int) -> str:
        """A token shown as text: spaces as ␣, newlines as ↵, bytes that are part of a character as \\xNN."""
        return _printable(self.vocab[token_id].decode("utf-8", errors="backslashreplace"))

    def pieces(self, text: str) -> list[str]:
        return [self.token_text(i) for i in self.encode(text)]

    def bytes_per_token(self, text: str) -> float:
        """Compression: UTF-8 bytes of ``text`` divided by the number of tokens (1.0 = no merges used)."""
        n = len(self.encode(text))
        if n == 0:
            raise ValueError("cannot measure compression on empty text")
        return len(text.encode("utf-8")) / n


# ----------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------
def _as_id_list(ids: Iterable[int], vocab_size: int) -> list[int]:
    """decode's input (a list, or a 1-D tensor) as a list of ints, each checked to lie in [0, vocab_size)."""
    if isinstance(ids, torch.Tensor):
        if ids.dim() > 1:
            raise ValueError(f"decode takes a 1-D sequence of ids, got a tensor of shape {tuple(ids.shape)}")
        ids = ids.tolist()
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"id {bad[0]} is outside the vocabulary [0, {vocab_size})")
    return ids


def _printable(s: str) -> str:
    return s.replace(" ", "␣").replace("\n", "↵").replace("\t", "→")


def tokenization_report(text: str, tokenizers: Mapping[str, object], max_chars: int = 400,
                        max_pieces: int = 60) -> str:
    """What each tokenizer makes of ``text``: one line per tokenizer, for a widget.

    Bad input gives a one-line message instead of an exception: empty text, text longer than
    ``max_chars``, characters a tokenizer cannot encode.
    """
    if not isinstance(text, str):
        return f"Expected text, got {type(text).__name__}."
    if not text.strip():
        return "Type some text to see its tokens."
    if len(text) > max_chars:
        return f"That is {len(text)} characters; this viewer shows at most {max_chars}."
    lines = []
    for name, tok in tokenizers.items():
        try:
            pieces = tok.pieces(text)
        except ValueError as exc:
            lines.append(f"{name}: cannot encode this text: {exc}")
            continue
        shown = " | ".join(pieces[:max_pieces]) + (" | ..." if len(pieces) > max_pieces else "")
        lines.append(f"{name} ({len(pieces)} tokens): {shown}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Embedding lookup
# ----------------------------------------------------------------------------------------------
def one_hot_embedding(ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Embed token ids the long way: ``one_hot(ids) @ weight``.

    ``ids``: integer tensor of any shape ``[...]`` with values in ``[0, vocab)``;
    ``weight``: ``[vocab, d_model]`` (row ``i`` is token ``i``'s vector) -> ``[..., d_model]``.
    Equal to ``nn.Embedding.from_pretrained(weight)(ids)``, which skips the one-hot vector and
    reads row ``i`` directly.
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be [vocab, d_model], got shape {tuple(weight.shape)}")
    if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"ids must be an integer tensor, got dtype {ids.dtype}")
    vocab = weight.shape[0]
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(f"ids must lie in [0, {vocab}) for weight of shape {tuple(weight.shape)}; "
                         f"got values from {int(ids.min())} to {int(ids.max())}")
    one_hot = F.one_hot(ids.long(), num_classes=vocab).to(weight.dtype)  # [..., vocab]
    return one_hot @ weight  # [..., vocab] @ [vocab, d_model] -> [..., d_model]
