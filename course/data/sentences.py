"""A seeded template grammar: short stories, and "it" sentences whose referent is known.

Everything here is generated, offline and deterministic (``random.Random(seed)``):

* :func:`story_sentences` / :func:`stories`: short sentences about animals and places
  ("the tired fox walked to the river .") for masked-language-model pretraining. Animal adjectives
  (tired, scared, ...) only ever describe animals and place adjectives (wide, icy, ...) only places,
  so a model that learns the grammar also learns which adjectives go with which kind of noun.
* :func:`it_sentences`: "The fox didn't cross the river because it was too tired ." The adjective
  decides what "it" refers to: tired/scared/lazy -> the animal, wide/busy/icy -> the place. Each is an
  :class:`ItSentence` record with the words, the index of "it", the referent and its index, and a label
  (0 = the animal, 1 = the place). ``split="test"`` holds (referent noun, adjective) combinations that
  ``split="train"`` never uses, while every noun and adjective still appears in both.

Words are lower-case and split by :func:`tokenize_words` ("didn't" stays one word).
"""
from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ANIMALS", "PLACES", "ANIMAL_ADJECTIVES", "PLACE_ADJECTIVES", "ANIMAL_LABEL", "PLACE_LABEL", "LABEL_NAMES",
    "ItSentence", "tokenize_words", "split_words", "it_sentence", "it_sentences", "is_test_combo", "story_sentences", "stories",
    "sentence_corpus", "grammar_vocabulary",
]

ANIMALS: tuple[str, ...] = (
    "animal", "dog", "cat", "fox", "horse", "rabbit", "deer", "cow", "goat", "sheep", "duck",
    "mouse", "squirrel", "badger", "donkey", "pig", "hedgehog", "wolf", "chicken", "turtle")
PLACES: tuple[str, ...] = (
    "street", "road", "river", "bridge", "field", "highway", "canal", "stream", "lane", "track",
    "square", "valley", "creek", "meadow", "railway", "avenue")
#: adjectives that make "it" the animal (it was too tired -> the animal was tired)
ANIMAL_ADJECTIVES: tuple[str, ...] = (
    "tired", "scared", "lazy", "sleepy", "weak", "nervous", "slow", "hungry", "shy", "frightened",
    "exhausted", "timid", "sick", "anxious")
#: adjectives that make "it" the place (it was too wide -> the street was wide)
PLACE_ADJECTIVES: tuple[str, ...] = (
    "wide", "busy", "icy", "crowded", "noisy", "muddy", "long", "dangerous", "flooded", "steep",
    "slippery", "dark", "deep", "rough")
ANIMAL_LABEL, PLACE_LABEL = 0, 1
LABEL_NAMES = ("animal", "place")

_NEGATED_VERBS = ("didn't cross", "did not cross", "wouldn't cross", "couldn't cross", "refused to cross")
_MOTION = ("walked to", "ran to", "went to", "looked at", "stopped near", "slept by", "waited at", "played near")
_FEELINGS = ("happy", "calm", "quiet", "cold", "warm", "curious")
_TIMES = ("every morning", "one day", "at night", "in the evening", "after lunch", "in winter")
_TOKEN = re.compile(r"[A-Za-z0-9]+(?:['-][A-Za-z0-9]+)*|[.,!?]")


def tokenize_words(text: str) -> list[str]:
    """Split a sentence into words and punctuation marks: "didn't cross." -> ["didn't", "cross", "."].

    The one word rule of the grammar, of the attention explorers (:mod:`course.viz`) and of the word
    tokenizer of lessons 07 and 10.
    """
    return _TOKEN.findall(text)


def split_words(text: str) -> list[str]:
    """Lower-cased words and punctuation: ``"The dog didn't cross."`` -> ``['the', 'dog', "didn't", 'cross', '.']``."""
    return [w.lower() for w in tokenize_words(text)]


@dataclass(frozen=True)
class ItSentence:
    """One "it" sentence. ``words[it_index] == "it"`` and ``words[referent_index] == referent``.

    ``label`` is :data:`ANIMAL_LABEL` (0) when "it" is the animal, :data:`PLACE_LABEL` (1) when it is the place.
    """

    text: str
    words: tuple[str, ...]
    it_index: int
    referent: str
    referent_index: int
    label: int
    animal: str
    place: str
    adjective: str

    @property
    def label_name(self) -> str:
        return LABEL_NAMES[self.label]


def is_test_combo(noun: str, adjective: str) -> bool:
    """True if (referent noun, adjective) is held out for the test split.

    About one pair in five, on a diagonal pattern, so every noun and every adjective keeps most of its
    pairs in the training split.
    """
    for nouns, adjectives in ((ANIMALS, ANIMAL_ADJECTIVES), (PLACES, PLACE_ADJECTIVES)):
        if noun in nouns and adjective in adjectives:
            return (nouns.index(noun) + adjectives.index(adjective)) % 5 == 0
    raise ValueError(f"{adjective!r} does not describe {noun!r} in this grammar")


def _make_it_sentence(animal: str, place: str, adjective: str, verb: str) -> ItSentence:
    text = f"The {animal} {verb} the {place} because it was too {adjective} ."
    words = tuple(split_words(text))
    label = ANIMAL_LABEL if adjective in ANIMAL_ADJECTIVES else PLACE_LABEL
    referent = animal if label == ANIMAL_LABEL else place
    it_index = words.index("it")
    referent_index = 1 if label == ANIMAL_LABEL else it_index - 2  # "... the <place> because it"
    assert words[referent_index] == referent
    return ItSentence(text, words, it_index, referent, referent_index, label, animal, place, adjective)


def it_sentence(animal: str, place: str, adjective: str, verb: str = "didn't cross") -> ItSentence:
    """The one "it" sentence with these words: ``"The {animal} {verb} the {place} because it was too {adjective} ."``.

    Two calls that differ only in ``adjective`` give a minimal pair (same length, same positions).
    """
    for word, pool, kind in ((animal, ANIMALS, "animal"), (place, PLACES, "place"),
                             (adjective, ANIMAL_ADJECTIVES + PLACE_ADJECTIVES, "adjective"), (verb, _NEGATED_VERBS, "verb")):
        if word not in pool:
            raise ValueError(f"{word!r} is not a {kind} of the grammar; choose from {', '.join(pool)}")
    return _make_it_sentence(animal, place, adjective, verb)


def it_sentences(n: int, seed: int = 0, split: str = "train",
                 adjectives: Sequence[str] | None = None) -> list[ItSentence]:
    """``n`` "it" sentences, half with the animal as referent and half with the place (alternating).

    ``split="train"`` never uses a (referent noun, adjective) pair that :func:`is_test_combo` holds
    out; ``split="test"`` uses only those; ``split="all"`` uses any. ``adjectives`` restricts the
    adjectives drawn (for experiments that hold whole adjectives out). Same arguments, same list.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    pools = []
    for label, adjs in ((ANIMAL_LABEL, ANIMAL_ADJECTIVES), (PLACE_LABEL, PLACE_ADJECTIVES)):
        chosen = [a for a in adjs if adjectives is None or a in adjectives]
        pools.append((label, chosen))
    if adjectives is not None:
        unknown = [a for a in adjectives if a not in ANIMAL_ADJECTIVES + PLACE_ADJECTIVES]
        if unknown:
            raise ValueError(f"unknown adjective {unknown[0]!r}; choose from ANIMAL_ADJECTIVES or PLACE_ADJECTIVES")
    rng = random.Random(f"it-{seed}-{split}")
    out: list[ItSentence] = []
    while len(out) < n:
        label, adjs = pools[len(out) % 2]
        if not adjs:
            label, adjs = pools[(len(out) + 1) % 2]
        if not adjs:
            raise ValueError("no adjectives left to draw from")
        animal, place, adjective = rng.choice(ANIMALS), rng.choice(PLACES), rng.choice(adjs)
        referent = animal if label == ANIMAL_LABEL else place
        if split != "all" and is_test_combo(referent, adjective) != (split == "test"):
            continue
        out.append(_make_it_sentence(animal, place, adjective, rng.choice(_NEGATED_VERBS)))
    return out


def _story_sentence(rng: random.Random) -> str:
    animal, other, place = rng.choice(ANIMALS), rng.choice(ANIMALS), rng.choice(PLACES)
    a_adj, p_adj = rng.choice(ANIMAL_ADJECTIVES), rng.choice(PLACE_ADJECTIVES)
    templates = (
        f"the {a_adj} {animal} {rng.choice(_MOTION)} the {place} .",
        f"the {animal} {rng.choice(_MOTION)} the {p_adj} {place} .",
        f"{rng.choice(_TIMES)} the {animal} {rng.choice(_MOTION)} the {place} .",
        f"the {animal} was {a_adj} because the {place} was {p_adj} .",
        f"the {place} was {p_adj} , so the {animal} stayed home .",
        f"the {animal} felt {a_adj} and {rng.choice(_FEELINGS)} .",
        f"a {animal} and a {other} {rng.choice(_MOTION)} the {place} .",
        f"the {p_adj} {place} scared the {a_adj} {animal} .",
        f"the {animal} {rng.choice(_NEGATED_VERBS)} the {place} because the {place} was too {p_adj} .",
        f"the {animal} {rng.choice(_NEGATED_VERBS)} the {place} because the {animal} was too {a_adj} .",
    )
    return rng.choice(templates)


def story_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` single sentences from the story grammar (lower-case, space before punctuation)."""
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    rng = random.Random(f"story-{seed}")
    return [_story_sentence(rng) for _ in range(n)]


def stories(n: int, seed: int = 0, sentences: tuple[int, int] = (2, 4)) -> list[str]:
    """``n`` short stories of ``sentences[0]`` to ``sentences[1]`` sentences each."""
    lo, hi = sentences
    if not 1 <= lo <= hi:
        raise ValueError(f"sentences must be (low, high) with 1 <= low <= high, got {sentences}")
    rng = random.Random(f"stories-{seed}")
    return [" ".join(_story_sentence(rng) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


def sentence_corpus(n: int, seed: int = 0, it_fraction: float = 0.25) -> list[str]:
    """A pretraining corpus: story sentences mixed with training-split "it" sentences (lower-case)."""
    if not 0.0 <= it_fraction <= 1.0:
        raise ValueError(f"it_fraction must lie in [0, 1], got {it_fraction}")
    n_it = round(n * it_fraction)
    texts = story_sentences(n - n_it, seed) + [" ".join(s.words) for s in it_sentences(n_it, seed, "train")]
    random.Random(f"corpus-{seed}").shuffle(texts)
    return texts


def grammar_vocabulary() -> list[str]:
    """Every word the grammar can produce, sorted (for building a vocabulary without sampling)."""
    words: set[str] = set(ANIMALS + PLACES + ANIMAL_ADJECTIVES + PLACE_ADJECTIVES + _FEELINGS)
    for phrase in _NEGATED_VERBS + _MOTION + _TIMES:
        words.update(split_words(phrase))
    words.update(split_words("the a and so was felt stayed home because it too scared . ,"))
    return sorted(words)
